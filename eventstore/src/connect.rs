//! Connecting to NATS, refusing servers older than fetchml supports.

use crate::error::StoreError;
use std::fmt;
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
    let first = Arc::new(AtomicBool::new(true));
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = nkey_file {
        // The seed is a secret: its text never goes into an error or a log.
        let seed = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Invalid(format!("NATS nkey file {}: {e}", path.display())))?;
        options = options.nkey(seed.trim().to_owned());
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
        .map_err(|e| StoreError::Unavailable(format!("cannot connect to NATS at {url}: {e}")))?;
    // Without retry_on_initial_connect, connect returns after the handshake, so
    // the server's INFO (version, JetStream) is known here.
    let info = client.server_info();
    check_server_version(&info.version)?;
    if !info.jetstream {
        return Err(StoreError::Invalid(format!("NATS at {url} runs without JetStream; start it with -js")));
    }
    Ok(client)
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
