//! `ml` against an `https://` api: the test api behind a small TLS-terminating
//! proxy whose certificate is signed by a CA made for the test (rcgen), as an
//! api behind a private CA would be.

use crate::helpers::Ml;
use fetchml_tests::app::{spawn_app, spawn_worker};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;

/// A CA's certificate (PEM) and a TLS acceptor with a certificate it signed
/// for `localhost` and `127.0.0.1`.
fn test_pki() -> (String, tokio_rustls::TlsAcceptor) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fetchml test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Terminates TLS on a port of its own and relays each connection to `to`.
async fn tls_proxy(to: SocketAddr, acceptor: tokio_rustls::TlsAcceptor) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(to).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_https_api_behind_a_private_ca_works_with_ca_file_and_says_what_to_do_without() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let (ca_pem, acceptor) = test_pki();
    let port = tls_proxy(app.addr, acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    let mut ml = Ml::new(&app, "alice");
    ml.api = format!("https://localhost:{port}");

    // Without the CA: one line, unavailable, and the flag that fixes it.
    let refused = ml.run(&["whoami"]).await;
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(refused.stderr.contains("--ca-file"), "{refused:?}");

    ml.extra_env.push(("FETCHML_CA_FILE".into(), ca_file.to_str().unwrap().into()));
    let me = ml.run(&["whoami", "--json"]).await.ok().json();
    assert_eq!(me["user"], "alice");
    // The WebSocket goes over wss with the same trust.
    let id = ml.queue(&["--executor", "noop", "--", "x"]).await;
    let watched = ml.run(&["watch", &id]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    assert!(watched.stdout.contains("job_succeeded"), "{watched:?}");

    // A CA file that is not one: a clear usage error naming it.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let mut bad = ml.command(&["--ca-file", junk.to_str().unwrap(), "whoami"]);
    bad.env_remove("FETCHML_CA_FILE");
    let r = ml.run_with(bad, None).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("junk.pem") && r.stderr.contains("no PEM certificate"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
}
