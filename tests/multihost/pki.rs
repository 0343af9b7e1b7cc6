//! A throwaway PKI made at test time: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and a client certificate, as PEM files in a
//! temp dir (the servers under test read files, as they would in production).

use std::path::{Path, PathBuf};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_cert, issuer) = ca("fetchml test CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        server.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(rcgen::DnType::CommonName, "fetchml-worker");
        client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).unwrap();
        let d = dir.path().to_owned();
        Self {
            ca: write(&d, "ca.pem", &ca_cert.pem()),
            server_cert: write(&d, "server.pem", &server_cert.pem()),
            server_key: write(&d, "server-key.pem", &server_key.serialize_pem()),
            client_cert: write(&d, "client.pem", &client_cert.pem()),
            client_key: write(&d, "client-key.pem", &client_key.serialize_pem()),
            dir,
        }
    }

    /// The PEM of a CA that signed nothing here (a wrong trust anchor).
    pub fn other_ca(&self) -> PathBuf {
        let (cert, _) = ca("some other CA");
        write(self.dir.path(), "other-ca.pem", &cert.pem())
    }
}
