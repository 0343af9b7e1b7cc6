#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! `./deploy/up` then `./deploy/down` in a scratch FETCHML_HOME, on free ports:
//! fetchml comes up ready, a second `up` changes nothing, and `down` leaves no
//! process of ours running.

use fetchml_tests::{free_port, repo_root};
use std::path::Path;
use std::process::Command;

/// `ports`: the api's, NATS's and the worker's metrics listener's.
fn script(
    name: &str,
    home: &Path,
    (api_port, nats_port, metrics_port): (u16, u16, u16),
    db: &str,
) -> std::process::Output {
    let nats_dir = fetchml_tests::nats_server_binary().parent().unwrap().parent().unwrap().to_owned();
    Command::new(repo_root().join("deploy").join(name))
        .env("FETCHML_HOME", home)
        .env("FETCHML_NATS_DIR", nats_dir)
        .env("FETCHML_API_PORT", api_port.to_string())
        .env("FETCHML_NATS_PORT", nats_port.to_string())
        .env("FETCHML_WORKER_METRICS_PORT", metrics_port.to_string())
        .env("FETCHML_PROFILE", "dev")
        // deploy/test built the binaries; cargo's lock is held by this run.
        .env("FETCHML_SKIP_BUILD", "1")
        .env("FETCHML_PG_DATABASE", db)
        .output()
        .unwrap()
}

fn pids(home: &Path) -> Vec<u32> {
    ["api", "worker", "nats"]
        .iter()
        .filter_map(|s| std::fs::read_to_string(home.join("run").join(format!("{s}.pid"))).ok())
        .map(|p| p.trim().parse().unwrap())
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes; /proc/PID/stat's state is 'Z' then.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Runs `down` if the test ends early, so a failed test leaves nothing running.
struct DownOnDrop<'a>(&'a Path, (u16, u16, u16), &'a str);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = script("down", self.0, self.1, self.2);
    }
}

#[tokio::test]
async fn up_then_down_leaves_nothing_of_ours_running() {
    let home = tempfile::tempdir().unwrap();
    let ports = (free_port(), free_port(), free_port());
    let (api_port, nats_port, metrics_port) = ports;
    // A database of the test's own (up creates one if missing; this one is dropped after).
    let db = fetchml_tests::fresh_database();
    let _down = DownOnDrop(home.path(), ports, &db.name);
    let up = script("up", home.path(), ports, &db.name);
    assert!(up.status.success(), "up failed: {}", String::from_utf8_lossy(&up.stderr));
    assert!(String::from_utf8_lossy(&up.stdout).contains(&format!("http://127.0.0.1:{api_port}")));

    let started = pids(home.path());
    assert_eq!(started.len(), 3, "pid files: {started:?}");
    assert!(started.iter().all(|p| alive(*p)));

    let ready = reqwest::get(format!("http://127.0.0.1:{api_port}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    // Both Prometheus endpoints answer: the api's and the worker's own.
    let api_metrics = reqwest::get(format!("http://127.0.0.1:{api_port}/metrics")).await.unwrap();
    assert_eq!(api_metrics.status().as_u16(), 200);
    let worker_metrics = fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.ok()?.text().await.ok()
    })
    .await;
    assert!(worker_metrics.contains("fetchml_worker_running_jobs"), "{worker_metrics}");
    // NATS runs with authorization: the api and the worker got in with their
    // own keys (ready, running); a client without one is refused.
    let anonymous = fetchml_eventstore::connect(&format!("nats://127.0.0.1:{nats_port}"), "anonymous").await;
    assert!(anonymous.is_err(), "nats-server accepts clients without credentials");
    for role in ["api", "worker", "reader"] {
        use std::os::unix::fs::PermissionsExt;
        let seed = home.path().join(format!("nats-auth/{role}.nk"));
        let mode = std::fs::metadata(&seed).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", seed.display());
    }

    let again = script("up", home.path(), ports, &db.name);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));
    assert_eq!(pids(home.path()), started, "a second up changed something");

    let down = script("down", home.path(), ports, &db.name);
    assert!(down.status.success(), "down failed: {}", String::from_utf8_lossy(&down.stderr));
    for pid in &started {
        assert!(!alive(*pid), "pid {pid} still runs after down");
    }
    assert!(pids(home.path()).is_empty());
}
