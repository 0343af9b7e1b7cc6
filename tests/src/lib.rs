//! Helpers shared by fetchml's end-to-end tests.
//!
//! Tests talk to a real nats-server, never a mock. `./deploy/test` starts one
//! throwaway server (the pinned release, store in a temp dir) and exports
//! `FETCHML_TEST_NATS_URL`; each test then works in its own namespace, so tests
//! run in parallel without seeing each other. Tests that must stop or restart
//! NATS start their own server with [`NatsProcess`], killed on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

pub mod app;
pub mod cluster;
pub mod pg;
pub mod relay;

pub use tokio_util::sync::CancellationToken;

use fetchml_events::ids::Namespace;
use fetchml_events::subject::Subjects;
use fetchml_eventstore::{EventStore, StreamSettings};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The shared test server's URL, from `./deploy/test`.
pub fn nats_url() -> String {
    std::env::var("FETCHML_TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "FETCHML_TEST_NATS_URL is not set: run the suite with ./deploy/test, which starts the pinned nats-server"
        )
    })
}

/// A namespace no other test uses.
pub fn unique_namespace() -> Namespace {
    let id = uuid::Uuid::now_v7().simple().to_string();
    Namespace::parse(format!("t{}", &id[id.len() - 16..])).unwrap()
}

/// An event store in a fresh namespace on the shared server.
pub async fn fresh_store() -> EventStore {
    store_at(&nats_url(), unique_namespace()).await
}

pub async fn store_at(url: &str, ns: Namespace) -> EventStore {
    let client = fetchml_eventstore::connect(url, "fetchml-test").await.unwrap();
    EventStore::open(client, Subjects::new(ns), &test_stream_settings()).await.unwrap()
}

/// PROGRESS reserves its byte limit on the server's disk: keep test namespaces
/// small so that many fit side by side.
pub const TEST_PROGRESS_BYTES: i64 = 16 << 20;

pub fn test_stream_settings() -> StreamSettings {
    StreamSettings { progress_max_bytes: TEST_PROGRESS_BYTES, ..StreamSettings::default() }
}

/// Deletes a namespace's streams and buckets (tests leave nothing behind).
/// Blocking, so that it can run from `Drop`.
pub fn delete_namespace(url: &str, ns: &str) {
    let (url, ns) = (url.to_owned(), ns.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let Ok(client) = async_nats::connect(&url).await else { return };
            let js = async_nats::jetstream::new(client);
            let Ok(ns) = fetchml_events::ids::Namespace::parse(ns.as_str()) else { return };
            let s = fetchml_events::subject::Subjects::new(ns);
            for stream in [s.events_stream(), s.progress_stream()] {
                let _ = js.delete_stream(stream).await;
            }
            for bucket in [s.workers_bucket(), s.sessions_bucket(), s.leases_bucket()] {
                let _ = js.delete_key_value(bucket).await;
            }
        });
    })
    .join();
}

/// The test PostgreSQL server (`./deploy/test` exports it), without a database.
pub fn pg_server_url() -> String {
    std::env::var("FETCHML_TEST_PG_URL").unwrap_or_else(|_| {
        panic!("FETCHML_TEST_PG_URL is not set: run the suite with ./deploy/test, which provides PostgreSQL")
    })
}

/// A database of this test's own, dropped (with its connections) on drop.
pub struct TestDatabase {
    pub url: String,
    server: String,
    pub name: String,
}

/// Creates an empty database on `server` (a URL without a database).
pub fn fresh_database_on(server: &str) -> TestDatabase {
    let name = format!("fetchml_{}", unique_namespace().as_str().to_ascii_lowercase());
    let server = server.trim_end_matches('/').to_owned();
    let admin = format!("{server}/postgres");
    let create = format!("CREATE DATABASE {name}");
    run_blocking(async move {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut c).await.unwrap();
    });
    TestDatabase { url: format!("{server}/{name}"), server, name }
}

pub fn fresh_database() -> TestDatabase {
    fresh_database_on(&pg_server_url())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = format!("{}/postgres", self.server);
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        run_blocking(async move {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut c).await;
            }
        });
    }
}

/// Runs `f` to completion on a runtime of its own (usable from `Drop`).
pub fn run_blocking<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(f);
    })
    .join();
}

/// Deletes its namespace when dropped.
pub struct NamespaceGuard {
    pub url: String,
    pub ns: String,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        delete_namespace(&self.url, &self.ns);
    }
}

/// The pinned nats-server binary installed by the deploy scripts.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("FETCHML_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".fetchml/nats/bin/nats-server");
    assert!(p.exists(), "{} is missing: run ./deploy/test (it installs the pinned nats-server)", p.display());
    p
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `addr` accepts TCP connections, bounded.
pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on 127.0.0.1:{port} after {within:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A nats-server of this test's own, with its store in a temp dir. Killed (and
/// its store removed) on drop.
pub struct NatsProcess {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    /// A configuration file (`-c`), e.g. an authorization block.
    config: Option<PathBuf>,
}

impl NatsProcess {
    pub fn start() -> Self {
        Self::start_with_config(None)
    }

    /// A server that also reads `config` (flags still set address, port and store).
    pub fn start_with_config(config: Option<PathBuf>) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut me = Self { child: None, port: free_port(), store, config };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_binary());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM: JetStream flushes to disk) and
    /// starts it again on the same port and store.
    pub fn graceful_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        self.spawn();
    }

    /// Kills the server with SIGKILL and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some`, bounded. For conditions that have no
/// event to await (a process's state as seen from outside).
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next JSON text frame of a WebSocket, within 30 s; pings and pongs are
/// skipped, anything else fails the test.
pub async fn next_ws_json<S>(ws: &mut S) -> serde_json::Value
where
    S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a message within 30 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}
