//! Connecting to NATS, refusing servers older than fetchml supports.

use crate::error::StoreError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The oldest nats-server fetchml accepts. 2.9 (Debian's) has known JetStream
/// bugs and lacks features we rely on (direct get by wildcard subject, per-message
/// TTL), so it is refused with a clear message rather than half working.
pub const MIN_SERVER_VERSION: ServerVersion = ServerVersion { major: 2, minor: 11, patch: 0 };

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `2.14.6`, `v2.14.6` or `2.12.0-beta.1` (the suffix is ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let core = s.trim().trim_start_matches('v').split(['-', '+']).next()?;
        let mut it = core.split('.').map(str::parse::<u32>);
        let major = it.next()?.ok()?;
        let minor = it.next()?.ok()?;
        let patch = it.next().unwrap_or(Ok(0)).ok()?;
        Some(Self { major, minor, patch })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
pub fn check_server_version(reported: &str) -> Result<ServerVersion, StoreError> {
    let too_old = || StoreError::ServerTooOld { found: reported.to_owned(), required: MIN_SERVER_VERSION.to_string() };
    let v = ServerVersion::parse(reported).ok_or_else(too_old)?;
    if v < MIN_SERVER_VERSION {
        return Err(too_old());
    }
    Ok(v)
}

/// Connects to NATS at `url` as `name`, and checks the server version.
///
/// The client reconnects on its own after a connection loss; requests made
/// while disconnected fail with [`StoreError::Unavailable`] after the request
/// timeout instead of hanging.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, StoreError> {
    connect_with(url, name, None).await
}

/// [`connect`], authenticating with the NKey seed in `nkey_file` when given
/// (a server run with authorization, see [`crate::authorization`]).
pub async fn connect_with(
    url: &str,
    name: &str,
    nkey_file: Option<&std::path::Path>,
) -> Result<async_nats::Client, StoreError> {
    let security = ConnectSecurity { nkey_file: nkey_file.map(ToOwned::to_owned), ..ConnectSecurity::default() };
    connect_secure(url, name, &security).await
}

/// How a process proves who it is to NATS and checks who NATS is: what a
/// host other than the server's own needs (see the README, "Running on
/// several machines").
#[derive(Clone, Debug, Default)]
pub struct ConnectSecurity {
    /// An NKey seed file (`fetchml nats-auth` writes one per class of process).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its NKey seed), for servers run in
    /// operator mode (`nsc`); the alternative to `nkey_file`.
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates the server's certificate must chain to; given, the
    /// connection must be TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// A PEM client certificate and its key, for servers that verify clients
    /// (`verify: true` in the server's `tls` block).
    pub tls_client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse a server that does not offer TLS (implied by `tls://` URLs and
    /// by any of the TLS files).
    pub require_tls: bool,
}

impl ConnectSecurity {
    fn wants_tls(&self) -> bool {
        self.require_tls || self.tls_ca_file.is_some() || self.tls_client_cert.is_some()
    }
}

/// Checks that a file named in the settings is readable before the
/// connection tries it: the client would otherwise report a bare I/O error
/// without the file's name, and retry forever.
fn readable(what: &str, path: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path).map(drop).map_err(|e| StoreError::Invalid(format!("NATS {what} {}: {e}", path.display())))
}

/// [`connect`] with the authentication and TLS of `security`.
pub async fn connect_secure(
    url: &str,
    name: &str,
    security: &ConnectSecurity,
) -> Result<async_nats::Client, StoreError> {
    let first = Arc::new(AtomicBool::new(true));
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &security.nkey_file {
        // The seed is a secret: its text never goes into an error or a log.
        let seed = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Invalid(format!("NATS nkey file {}: {e}", path.display())))?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(path) = &security.credentials_file {
        readable("credentials file", path)?;
        // The error names the file only: the client's message could quote the seed.
        options = options.credentials_file(path).await.map_err(|_| {
            StoreError::Invalid(format!("NATS credentials file {} is not a valid .creds file", path.display()))
        })?;
    }
    if let Some(ca) = &security.tls_ca_file {
        readable("CA file", ca)?;
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &security.tls_client_cert {
        readable("client certificate", cert)?;
        readable("client key", key)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if security.wants_tls() {
        options = options.require_tls(true);
    }
    let client = options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .max_reconnects(None)
        // The client reconnects by itself; count each return so an operator
        // sees a flapping link (`fetchml_nats_reconnects_total`). Every
        // connection raises `Connected`, the first one too: that one is not a
        // reconnect.
        .event_callback(move |event| {
            let first = first.clone();
            async move {
                if matches!(event, async_nats::Event::Connected) && !first.swap(false, Ordering::Relaxed) {
                    metrics::counter!("fetchml_nats_reconnects_total").increment(1);
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to NATS at {url}: {e}{}", hint(&e, security, url)))
        })?;
    // Without retry_on_initial_connect, connect returns after the handshake, so
    // the server's INFO (version, JetStream) is known here.
    let info = client.server_info();
    check_server_version(&info.version)?;
    if !info.jetstream {
        return Err(StoreError::Invalid(format!("NATS at {url} runs without JetStream; start it with -js")));
    }
    Ok(client)
}

/// What to check, for the failures whose cause the client's message leaves
/// to the reader: rustls names the TLS alert or the verdict on the server's
/// certificate, and this says which setting that points to.
fn hint(e: &async_nats::ConnectError, security: &ConnectSecurity, url: &str) -> &'static str {
    use async_nats::ConnectErrorKind as K;
    let tls = security.wants_tls() || url.starts_with("tls://");
    let text = e.to_string();
    match e.kind() {
        K::Tls | K::Io if tls && text.contains("CertificateRequired") => {
            " (TLS: the server requires a client certificate: set nats.tls_cert_file and nats.tls_key_file)"
        }
        K::Tls | K::Io if tls && (text.contains("UnknownCA") || text.contains("BadCertificate")) => {
            " (TLS: the server does not accept this client certificate: it must be signed by a CA in the \
             server's tls ca_file; see nats.tls_cert_file)"
        }
        K::Tls | K::Io if tls && text.contains("invalid peer certificate") => {
            " (TLS: the server's certificate is not trusted here: nats.tls_ca_file must hold the CA that \
             signed it, and the URL's host must be named in it)"
        }
        K::Tls | K::Io if tls => {
            " (TLS: check nats.tls_ca_file (the CA of the server's certificate), nats.tls_cert_file and \
             nats.tls_key_file (this host's client certificate), and that the URL's host is named in the \
             server's certificate)"
        }
        K::AuthorizationViolation | K::Authentication => {
            " (check nats.nkey_file or nats.credentials_file: the server did not accept this process's identity)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_nats_is_refused_and_current_ones_pass() {
        assert!(matches!(check_server_version("2.9.25"), Err(StoreError::ServerTooOld { .. })));
        assert!(matches!(check_server_version("garbage"), Err(StoreError::ServerTooOld { .. })));
        assert_eq!(check_server_version("2.14.6").unwrap(), ServerVersion { major: 2, minor: 14, patch: 6 });
        assert!(check_server_version("v2.11.0-RC.1").is_ok());
        assert!(check_server_version("3.0").is_ok());
    }
}
