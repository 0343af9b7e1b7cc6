//! spawn_app: the real api on port 0 in a fresh namespace; spawn_worker: the
//! real `fetchml worker` binary as a child process, killed on drop.

use crate::{nats_url, unique_namespace};
use fetchml_runtime::Settings;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestApp {
    pub addr: SocketAddr,
    /// A client that authenticates as `alice` (a researcher).
    pub http: reqwest::Client,
    pub settings: Settings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub db: Option<crate::TestDatabase>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        crate::delete_namespace(&self.settings.nats.url, &self.settings.nats.namespace);
    }
}

/// The test users: name, role, groups. Keys are generated once per test binary.
pub const USERS: &[(&str, &str, &[&str])] = &[
    ("root", "admin", &[]),
    ("alice", "researcher", &["vision"]),
    ("bob", "researcher", &["nlp"]),
    ("carol", "groupie", &["vision"]),
    ("ana", "analyst", &[]),
];

struct TestUsers {
    file: tempfile::NamedTempFile,
    keys: std::collections::HashMap<&'static str, String>,
}

fn test_users() -> &'static TestUsers {
    static USERS_FILE: std::sync::OnceLock<TestUsers> = std::sync::OnceLock::new();
    USERS_FILE.get_or_init(|| {
        let mut keys = std::collections::HashMap::new();
        // carol's custom role reads her group's jobs and creates her own.
        let mut yaml = String::from("roles:\n  groupie: [jobs:create, jobs:read, jobs:read:group]\nusers:\n");
        for (name, role, groups) in USERS {
            let k = fetchml_identity::generate_key().unwrap();
            yaml.push_str(&format!(
                "  - name: {name}\n    role: {role}\n    groups: [{}]\n    keys: [{{id: \"{}\", hash: \"{}\"}}]\n",
                groups.join(", "),
                k.key_id,
                k.hash
            ));
            keys.insert(*name, k.key);
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        TestUsers { file, keys }
    })
}

/// The API key of a test user.
pub fn key_of(user: &str) -> String {
    test_users().keys[user].clone()
}

/// A users file with the test users (shared by the tests of one binary).
pub fn users_file() -> PathBuf {
    test_users().file.path().to_owned()
}

/// An HTTP client that sends `key` as its bearer credential.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The api with settings adjusted by `tune` (NATS url and namespace are set first).
pub async fn spawn_app_with(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::default();
    settings.nats.url = nats_url();
    settings.nats.namespace = unique_namespace().to_string();
    settings.api.listen = "127.0.0.1:0".into();
    settings.auth.users_file = users_file();
    settings.nats.progress_max_bytes = crate::TEST_PROGRESS_BYTES;
    let db = crate::fresh_database();
    settings.postgres.url = db.url.clone();
    tune(&mut settings);
    let (addr, stop, served) = serve(settings.clone()).await;
    TestApp {
        addr,
        http: client_with_key(&key_of("alice")),
        settings,
        stop: Some(stop),
        served: Some(served),
        db: Some(db),
    }
}

type Served = (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>);

/// Builds the api and serves it until the returned sender fires (or drops).
async fn serve(settings: Settings) -> Served {
    let app = fetchml_api::Application::build(settings).await.expect("api builds");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    (addr, tx, served)
}

impl TestApp {
    /// Stops the api (it closes its WebSockets with 1001 and drains) and
    /// starts it again on the same address, namespace and database: for
    /// clients that must survive a dropped connection.
    pub async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
        }
        let mut settings = self.settings.clone();
        settings.api.listen = self.addr.to_string();
        let (addr, stop, served) = serve(settings).await;
        assert_eq!(addr, self.addr);
        self.stop = Some(stop);
        self.served = Some(served);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A client authenticated as one of [`USERS`].
    pub fn as_user(&self, user: &str) -> reqwest::Client {
        client_with_key(&key_of(user))
    }

    pub async fn submit(&self, body: Value) -> (u16, Value) {
        let r = self.http.post(self.url("/v1/jobs")).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = self.http.post(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the job is in `state` (bounded).
    pub async fn until_state(&self, id: &str, state: &str) -> Value {
        crate::eventually(Duration::from_secs(60), || async {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            (job["state"] == state).then_some(job)
        })
        .await
    }

    /// The types of the job's events, in order.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        let (_, events) = self.get(&format!("/v1/jobs/{id}/events")).await;
        events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }

    /// Waits until the job reaches a terminal state (bounded).
    pub async fn until_terminal(&self, id: &str) -> Value {
        crate::eventually(Duration::from_secs(90), || async {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            let terminal = ["succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];
            terminal.contains(&job["state"].as_str().unwrap_or("")).then_some(job)
        })
        .await
    }
}

/// The built `fetchml` binary next to this test's executable, or in
/// `FETCHML_TEST_BIN_DIR` (measurements point it at a release build).
pub fn fetchml_binary() -> PathBuf {
    let dir = match std::env::var_os("FETCHML_TEST_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned(),
    };
    let bin = dir.join("fetchml");
    assert!(bin.exists(), "{} is missing: run ./deploy/test (it builds the binaries first)", bin.display());
    bin
}

/// The built `ml` CLI next to this test's executable.
pub fn ml_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("ml");
    assert!(bin.exists(), "{} is missing: run ./deploy/test (it builds the binaries first)", bin.display());
    bin
}

/// The api as its own `fetchml api` process ([`fetchml_binary`]), for
/// measurements of a release build; settings as [`spawn_app_with`]'s.
/// Killed, its namespace and database removed, on drop.
pub struct ApiProcess {
    pub addr: SocketAddr,
    pub settings: Settings,
    child: tokio::process::Child,
    _db: crate::TestDatabase,
}

pub async fn spawn_api_process(ui_dir: &std::path::Path) -> ApiProcess {
    let db = crate::fresh_database();
    let ns = unique_namespace().to_string();
    let port = crate::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let quiet = std::env::var("TEST_LOG").is_err();
    let child = tokio::process::Command::new(fetchml_binary())
        .args(["api", "--listen", &addr.to_string()])
        .env("FETCHML_NATS__URL", nats_url())
        .env("FETCHML_NATS__NAMESPACE", &ns)
        .env("FETCHML_NATS__PROGRESS_MAX_BYTES", crate::TEST_PROGRESS_BYTES.to_string())
        .env("FETCHML_AUTH__USERS_FILE", users_file())
        .env("FETCHML_POSTGRES__URL", &db.url)
        .env("FETCHML_API__UI_DIR", ui_dir)
        .env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    crate::eventually(Duration::from_secs(60), || async {
        let r = http.get(format!("http://{addr}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let mut settings = Settings::default();
    settings.nats.url = nats_url();
    settings.nats.namespace = ns;
    settings.nats.progress_max_bytes = crate::TEST_PROGRESS_BYTES;
    settings.postgres.url = db.url.clone();
    settings.api.listen = addr.to_string();
    ApiProcess { addr, settings, child, _db: db }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        crate::delete_namespace(&self.settings.nats.url, &self.settings.nats.namespace);
    }
}

/// A `fetchml worker` process serving the app's namespace.
pub struct WorkerProcess {
    child: Child,
    pub job_root: tempfile::TempDir,
}

pub fn spawn_worker(settings: &Settings) -> WorkerProcess {
    spawn_worker_with(settings, &[], &[])
}

/// A worker with extra flags (`--label gpu`) and `FETCHML_WORKER__*` variables.
/// The lease is 3 s unless `env` says otherwise, so fault tests stay short.
pub fn spawn_worker_with(settings: &Settings, args: &[&str], env: &[(&str, &str)]) -> WorkerProcess {
    let job_root = tempfile::tempdir().unwrap();
    let quiet = std::env::var("TEST_LOG").is_err();
    let mut cmd = Command::new(fetchml_binary());
    cmd.arg("worker")
        .args(args)
        .env("FETCHML_NATS__URL", &settings.nats.url)
        .env("FETCHML_NATS__NAMESPACE", &settings.nats.namespace)
        // The worker applies its stream limits too: with the default (1 GiB)
        // JetStream refuses to start it when the test disk is nearly full.
        .env("FETCHML_NATS__PROGRESS_MAX_BYTES", settings.nats.progress_max_bytes.to_string())
        .env("FETCHML_WORKER__JOB_ROOT", job_root.path())
        .env("FETCHML_WORKER__KILL_GRACE_SECS", "2")
        .env("FETCHML_WORKER__LEASE_SECS", "3")
        .env("FETCHML_WORKER__CONCURRENCY", "4");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .unwrap();
    WorkerProcess { child, job_root }
}

/// A standalone `fetchml scheduler` process for the app's namespace.
pub fn spawn_scheduler(settings: &Settings) -> WorkerProcess {
    let job_root = tempfile::tempdir().unwrap();
    let quiet = std::env::var("TEST_LOG").is_err();
    let child = Command::new(fetchml_binary())
        .arg("scheduler")
        .env("FETCHML_NATS__URL", &settings.nats.url)
        .env("FETCHML_NATS__NAMESPACE", &settings.nats.namespace)
        .env("FETCHML_NATS__PROGRESS_MAX_BYTES", settings.nats.progress_max_bytes.to_string())
        .env("FETCHML_NATS__WORKER_TTL_SECS", settings.nats.worker_ttl_secs.to_string())
        .env("FETCHML_SCHEDULING__FAIR_SHARE", settings.scheduling.fair_share.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .unwrap();
    WorkerProcess { child, job_root }
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited (nor been killed).
    pub fn still_running(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful stop); waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line contains `marker` (a unique string a test put
/// in a job's argv), to check that a job's processes are gone.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .filter(|pid| {
            // Zombies are gone for our purposes.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .collect()
}

/// A unique `sleep` duration usable as a process marker: `sleep 300.<digits>`.
pub fn unique_sleep() -> String {
    format!("300.{}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000)
}
