#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a test failure

//! spawn_app: the real api on port 0 in a fresh namespace; spawn_worker: the
//! real `fetchml worker` binary as a child process, killed on drop.

use fetchml_runtime::Settings;
use fetchml_tests::{nats_url, unique_namespace};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub settings: Settings,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    let mut settings = Settings::default();
    settings.nats.url = nats_url();
    settings.nats.namespace = unique_namespace().to_string();
    settings.api.listen = "127.0.0.1:0".into();
    let app = fetchml_api::Application::build(settings.clone()).await.expect("api builds");
    let addr = app.local_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp { addr, http: reqwest::Client::new(), settings, _stop: tx }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn submit(&self, body: Value) -> (u16, Value) {
        let r = self.http.post(self.url("/v1/jobs")).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the job reaches a terminal state (bounded).
    pub async fn until_terminal(&self, id: &str) -> Value {
        fetchml_tests::eventually(Duration::from_secs(30), || async {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            let terminal = ["succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];
            terminal.contains(&job["state"].as_str().unwrap_or("")).then_some(job)
        })
        .await
    }
}

/// The built `fetchml` binary next to this test's executable.
pub fn fetchml_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("fetchml");
    assert!(bin.exists(), "{} is missing: run ./deploy/test (it builds the binaries first)", bin.display());
    bin
}

/// A `fetchml worker` process serving the app's namespace.
pub struct WorkerProcess {
    child: Child,
    pub job_root: tempfile::TempDir,
}

pub fn spawn_worker(settings: &Settings) -> WorkerProcess {
    let job_root = tempfile::tempdir().unwrap();
    let quiet = std::env::var("TEST_LOG").is_err();
    let child = Command::new(fetchml_binary())
        .arg("worker")
        .env("FETCHML_NATS__URL", &settings.nats.url)
        .env("FETCHML_NATS__NAMESPACE", &settings.nats.namespace)
        .env("FETCHML_WORKER__JOB_ROOT", job_root.path())
        .env("FETCHML_WORKER__KILL_GRACE_SECS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .unwrap();
    WorkerProcess { child, job_root }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
