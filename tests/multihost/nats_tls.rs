//! TLS to NATS with client certificates: the api and a worker connect to a
//! nats-server that requires TLS and verifies clients, and run a job over it;
//! a client without the certificate, or trusting the wrong CA, is refused
//! with an error that says what to check.

use crate::pki::Pki;
use fetchml_eventstore::{ConnectSecurity, connect_secure};
use fetchml_tests::NatsProcess;
use fetchml_tests::app::{spawn_app_with, spawn_worker_with};
use serde_json::json;

/// A nats-server of the test's own that requires TLS and a client
/// certificate signed by the test's CA.
fn tls_nats(pki: &Pki) -> NatsProcess {
    let conf = pki.dir.path().join("nats-tls.conf");
    let text = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 5\n}}\n",
        pki.server_cert, pki.server_key, pki.ca
    );
    std::fs::write(&conf, text).unwrap();
    NatsProcess::start_with_config(Some(conf))
}

#[tokio::test]
async fn the_api_and_a_worker_run_a_job_over_tls_with_client_certificates() {
    let pki = Pki::new();
    let nats = tls_nats(&pki);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let full = ConnectSecurity {
        tls_ca_file: Some(pki.ca.clone()),
        tls_client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..ConnectSecurity::default()
    };

    // Refused: no TLS settings at all (the server's certificate is not from a
    // public CA), the right CA but no client certificate, the wrong CA.
    let plain = connect_secure(&url, "plain", &ConnectSecurity::default()).await.unwrap_err().to_string();
    assert!(plain.contains("cannot connect to NATS") && plain.contains("nats.tls_ca_file"), "{plain}");
    let no_cert = ConnectSecurity { tls_client_cert: None, ..full.clone() };
    let e = connect_secure(&url, "no-cert", &no_cert).await.unwrap_err().to_string();
    assert!(e.contains("cannot connect to NATS") && e.contains("requires a client certificate"), "{e}");
    let wrong_ca = ConnectSecurity { tls_ca_file: Some(pki.other_ca()), ..full.clone() };
    let e = connect_secure(&url, "wrong-ca", &wrong_ca).await.unwrap_err().to_string();
    assert!(e.contains("cannot connect to NATS") && e.contains("tls_ca_file"), "{e}");
    // A missing file is named before any connection is tried.
    let missing = ConnectSecurity { tls_ca_file: Some(pki.dir.path().join("nope.pem")), ..full.clone() };
    let e = connect_secure(&url, "missing", &missing).await.unwrap_err().to_string();
    assert!(e.contains("nope.pem"), "{e}");

    // With the CA and the client certificate: the whole path, end to end.
    let client = connect_secure(&url, "full", &full).await.unwrap();
    assert!(client.server_info().tls_required, "the server did not require TLS");
    drop(client);
    let app = spawn_app_with(|s| {
        s.nats.url = url.clone();
        s.nats.tls_ca_file = Some(pki.ca.clone());
        s.nats.tls_cert_file = Some(pki.client_cert.clone());
        s.nats.tls_key_file = Some(pki.client_key.clone());
    })
    .await;
    let env = [
        ("FETCHML_NATS__TLS_CA_FILE", pki.ca.to_str().unwrap()),
        ("FETCHML_NATS__TLS_CERT_FILE", pki.client_cert.to_str().unwrap()),
        ("FETCHML_NATS__TLS_KEY_FILE", pki.client_key.to_str().unwrap()),
    ];
    let _worker = spawn_worker_with(&app.settings, &[], &env);
    let (s, job) = app.submit(json!({"command": ["echo", "over tls"]})).await;
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.until_terminal(id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let logs = app.http.get(app.url(&format!("/v1/jobs/{id}/logs"))).send().await.unwrap().text().await.unwrap();
    assert!(logs.contains("over tls"), "{logs}");
}

#[tokio::test]
async fn a_worker_without_the_client_certificate_does_not_start_and_says_why() {
    let pki = Pki::new();
    let nats = tls_nats(&pki);
    let out = tokio::process::Command::new(fetchml_tests::app::fetchml_binary())
        .arg("worker")
        .env("FETCHML_NATS__URL", format!("tls://127.0.0.1:{}", nats.port))
        .env("FETCHML_NATS__TLS_CA_FILE", &pki.ca)
        .env("FETCHML_WORKER__JOB_ROOT", pki.dir.path().join("jobs"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to NATS") && err.contains("tls_cert_file"), "{err}");
}
