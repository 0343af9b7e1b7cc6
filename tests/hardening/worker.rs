//! Hardening tests: workers and dispatch (defects 10, 13 in part, 14 and 17;
//! 15 and 16 were the reconciler's, which the scheduler replaced). Real NATS;
//! real worker processes where a worker is involved.

use fetchml_tests::app::{TestApp, spawn_app, spawn_app_with, spawn_worker, spawn_worker_with};
use fetchml_tests::eventually;
use fetchml_tests::relay::{Fault, NatsRelay};
use serde_json::{Value, json};
use std::time::Duration;

async fn submit(app: &TestApp, spec: Value) -> String {
    let (status, body) = app.submit(spec).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Defect 10: `_` is the dispatch subject's token for "no labels", so a job
/// with `labels: ["_"]` was queued with the unlabelled jobs and ran on a
/// worker offering no labels.
#[tokio::test]
async fn a_job_needing_the_label_of_no_labels_is_refused() {
    let app = spawn_app().await;
    for labels in [json!(["_"]), json!(["gpu", "_"]), json!(["_gpu"])] {
        let (status, body) = app.submit(json!({"executor": "noop", "command": [], "labels": labels})).await;
        assert_eq!(status, 422, "{labels}: {body}");
        assert_eq!(body["error"]["code"], "invalid_label", "{body}");
        assert!(body["error"]["field"].as_str().unwrap().starts_with("labels["), "{body}");
    }
}

/// Defect 13 (the worker's part): built-in executor arguments and retry
/// delays that could not mean what they say are refused at submit.
#[tokio::test]
async fn builtin_executor_arguments_and_huge_backoffs_are_refused_at_submit() {
    let app = spawn_app().await;
    let cases = [
        (json!({"executor": "sleep", "command": ["abc"]}), "invalid_argument", "command[0]"),
        (json!({"executor": "sleep", "command": ["-1"]}), "invalid_argument", "command[0]"),
        (json!({"executor": "sleep", "command": ["18446744073709551616"]}), "out_of_range", "command[0]"),
        (json!({"executor": "fail", "command": ["0"]}), "out_of_range", "command[0]"),
        (
            json!({"command": ["true"], "retry": {"backoff_initial_ms": 18446744073709551615u64,
                "backoff_max_ms": 18446744073709551615u64}}),
            "out_of_range",
            "retry.backoff_initial_ms",
        ),
    ];
    for (spec, code, field) in cases {
        let (status, body) = app.submit(spec.clone()).await;
        assert_eq!(status, 422, "{spec}: {body}");
        assert_eq!((body["error"]["code"].as_str(), body["error"]["field"].as_str()), (Some(code), Some(field)));
    }
}

/// Defect 14: a `working_dir` that is a symlink out of the job root was an
/// `infrastructure` failure, retried three times and dead-lettered. It is the
/// job's own fault: `code`, not retried.
#[tokio::test]
async fn a_symlink_out_of_the_job_root_fails_the_job_as_its_own_fault() {
    let app = spawn_app().await;
    let worker = spawn_worker(&app.settings);
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), worker.job_root.path().join("out")).unwrap();
    let id = submit(&app, json!({"command": ["touch", "escaped"], "working_dir": "out/sub"})).await;
    let job = app.until_terminal(&id).await;
    assert_eq!(
        (job["state"].as_str(), job["failure_class"].as_str(), job["attempt"].as_u64()),
        (Some("failed"), Some("code"), Some(1)),
        "{job}"
    );
    assert!(job["reason"].as_str().unwrap().contains("leaves the job root"), "{job}");
    assert!(!app.event_types(&id).await.iter().any(|t| t == "job_retry_scheduled"));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside the root");
}

/// Defect 17: a draining worker (SIGTERM, finishing its running jobs) stopped
/// its heartbeat with the same signal that stopped pulling, and vanished from
/// `GET /v1/workers` while it still ran jobs (and the reconciler would have
/// handed them over). With a 3 s registry TTL, a job that outlives it: the
/// worker must stay listed, as draining, for as long as the job runs.
#[tokio::test]
async fn a_draining_worker_stays_listed_as_draining_until_its_jobs_end() {
    let app = spawn_app_with(|s| s.nats.worker_ttl_secs = 3).await;
    let mut worker = spawn_worker_with(
        &app.settings,
        &[],
        &[("FETCHML_NATS__WORKER_TTL_SECS", "3"), ("FETCHML_WORKER__DRAIN_SECS", "120")],
    );
    let id = submit(&app, json!({"executor": "sleep", "command": ["9000"]})).await;
    app.until_state(&id, "running").await;
    let workers = || async {
        let (status, body) = app.get("/v1/workers").await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    };
    let listed = eventually(Duration::from_secs(10), || async {
        workers().await.into_iter().find(|w| w["pid"] == worker.pid()).map(|w| w["id"].clone())
    })
    .await;

    let pid = nix::unistd::Pid::from_raw(worker.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut draining_seen = false;
    loop {
        let items = workers().await;
        let (_, job) = app.get(&format!("/v1/jobs/{id}")).await;
        if job["state"] != "running" {
            // Finished by the draining worker, never handed over.
            assert_eq!((job["state"].as_str(), job["attempt"].as_u64()), (Some("succeeded"), Some(1)), "{job}");
            break;
        }
        // The job still ran after the listing was read, so its worker was alive.
        let me = items.iter().find(|w| w["id"] == listed);
        let me = me.unwrap_or_else(|| panic!("a draining worker running a job is missing from {items:?}"));
        draining_seen |= me["draining"] == true;
        tokio::time::sleep(Duration::from_millis(200)).await; // polling pace
    }
    assert!(draining_seen, "the entry said draining while the job finished");
    // Done draining: the worker records its stop, leaves the registry and exits.
    eventually(Duration::from_secs(20), || async { workers().await.iter().all(|w| w["id"] != listed).then_some(()) })
        .await;
    assert!(worker.terminate().success());
}

/// A worker's `job_started` can be stored while its acknowledgement is lost
/// (a reconnect, a timeout). The worker took that as "not claimed" and dropped
/// the assignment: the log said the job ran there, no process ran it, and it
/// stayed `running` until that worker stopped (found in review, 2026-12-02).
/// The worker now retries under the same command id, finds its start stored,
/// and runs the job.
#[tokio::test]
async fn a_start_stored_whose_acknowledgement_was_lost_still_runs() {
    let app = spawn_app().await;
    let relay = NatsRelay::start(&b"\"type\":\"job_started\""[..], Fault::LoseTheAnswer, true).await;
    let mut through_relay = app.settings.clone();
    through_relay.nats.url = relay.url.clone();
    let _worker = spawn_worker(&through_relay);
    let id = submit(&app, json!({"executor": "noop", "command": []})).await;
    let job = app.until_terminal(&id).await;
    assert!(relay.fired(), "the start's acknowledgement reached the worker: nothing was tested");
    assert_eq!((job["state"].as_str(), job["attempt"].as_u64()), (Some("succeeded"), Some(1)), "{job}");
    assert_eq!(app.event_types(&id).await, ["job_queued", "job_started", "job_succeeded"]);
}
