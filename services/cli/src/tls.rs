//! TLS for `https://` and `wss://` apis: rustls with the ring provider (no
//! OpenSSL), the system's trusted roots, and optionally the CAs of a PEM file
//! (`--ca-file`, `FETCHML_CA_FILE`), for an api behind a private CA. One
//! configuration serves the HTTP client and the WebSocket.

use crate::error::{CliError, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use std::path::Path;
use std::sync::Arc;

/// The client configuration. The system's roots are read only for an
/// `https` api (reading them costs time every command would pay).
pub fn client_config(https: bool, ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| {
                CliError::usage(format!("--ca-file {}: not a usable CA certificate: {e}", path.display()))
            })?;
        }
    }
    if https {
        // Certificates the platform offers but rustls cannot use are skipped,
        // as a browser would.
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::local("TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The api speaks HTTP/1.1 (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; a file without any, or that does not
/// parse, is refused with its name.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| CliError::usage(format!("--ca-file {}: {why}", path.display()));
    let text = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM file of certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("ml-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = client_config(false, Some(&path)).expect_err("refused").to_string();
        assert!(err.contains("--ca-file") && err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
