//! Runs the real `ml` binary against a test api, with a config directory of
//! its own and nothing from the test's environment.

use fetchml_tests::app::{TestApp, key_of, ml_binary};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// What one run of `ml` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Stdout as NDJSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect()
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "ml failed: {self:?}");
        self
    }
}

/// One user's `ml`: the api's URL and (unless logged in instead) the user's
/// key in the environment, and a config directory of its own.
pub struct Ml {
    pub api: String,
    pub key: Option<String>,
    pub home: tempfile::TempDir,
    pub extra_env: Vec<(String, String)>,
}

impl Ml {
    pub fn new(app: &TestApp, user: &str) -> Self {
        Ml {
            api: format!("http://{}", app.addr),
            key: Some(key_of(user)),
            home: tempfile::tempdir().unwrap(),
            extra_env: Vec::new(),
        }
    }

    /// The config file `ml login` writes (`$XDG_CONFIG_HOME/fetchml/config.yaml`).
    pub fn config_file(&self) -> PathBuf {
        self.home.path().join("xdg").join("fetchml").join("config.yaml")
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(ml_binary());
        c.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("xdg"))
            .env("FETCHML_API", &self.api)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(k) = &self.key {
            c.env("FETCHML_API_KEY", k);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args), None).await
    }

    /// With `input` on stdin.
    pub async fn run_stdin(&self, args: &[&str], input: &str) -> Run {
        self.run_with(self.command(args), Some(input)).await
    }

    pub async fn run_with(&self, mut cmd: tokio::process::Command, input: Option<&str>) -> Run {
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(i) = input {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(i.as_bytes()).await.unwrap();
            drop(stdin);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("ml ends within 120 s")
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Queues a job and returns its id.
    pub async fn queue(&self, args: &[&str]) -> String {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        let r = self.run(&all).await.ok();
        let id = r.stdout.trim().to_owned();
        assert_eq!(id.len(), 36, "queue prints the job id: {r:?}");
        id
    }

    /// `ml list --json` until `f` holds of its items (the list is read from
    /// the read model, which follows the log by milliseconds).
    pub async fn list_until(&self, args: &[&str], f: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let mut all = vec!["list", "--json"];
        all.extend_from_slice(args);
        fetchml_tests::eventually(Duration::from_secs(30), || async {
            let r = self.run(&all).await.ok();
            let items = r.json()["items"].as_array().cloned().unwrap_or_default();
            f(&items).then_some(items)
        })
        .await
    }
}

/// A job that reports progress, a metric and log lines, then exits with
/// `code` after `secs` seconds.
pub fn progress_job(code: u8, secs: &str) -> String {
    format!(
        r#"echo '##fetchml {{"percent": 50}}'; echo '##fetchml {{"metric": "loss", "value": 0.25, "step": 3}}'; echo step-one; sleep {secs}; echo '##fetchml {{"percent": 100}}'; exit {code}"#
    )
}
