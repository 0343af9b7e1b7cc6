#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The job lifecycle under faults: killed workers, a killed api, a restarted
//! NATS, cancel and timeout of process trees, retries, priorities, labels,
//! graceful stop, a scheduler started late, and progress. Real NATS, real worker
//! processes; each test in its own namespace.

use fetchml_tests::app::{
    TestApp, processes_with, spawn_app, spawn_app_with, spawn_worker, spawn_worker_with, unique_sleep,
};
use fetchml_tests::eventually;
use serde_json::{Value, json};
use std::time::Duration;

async fn submit(app: &TestApp, spec: Value) -> String {
    let (status, body) = app.submit(spec).await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn count(types: &[String], t: &str) -> usize {
    types.iter().filter(|x| *x == t).count()
}

const TERMINAL: [&str; 5] = ["job_succeeded", "job_failed", "job_timed_out", "job_dead_lettered", "job_cancelled"];

fn terminal_events(types: &[String]) -> usize {
    types.iter().filter(|t| TERMINAL.contains(&t.as_str())).count()
}

async fn until_gone(marker: &str) {
    eventually(Duration::from_secs(20), || async { processes_with(marker).is_empty().then_some(()) }).await;
}

/// A process the job starts outside its process group (`setsid`, as daemons
/// do) that keeps the job's output open. The worker waited for that output's
/// end, so the attempt never ended and its slot stayed taken (found in review,
/// 2026-12-02). The supervisor, a child subreaper, now kills what the program
/// left behind when it ends.
#[tokio::test]
async fn a_process_that_left_the_jobs_group_ends_with_the_job() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let marker = unique_sleep();
    let script = format!("setsid sleep {marker} & echo started");
    let id = submit(&app, json!({"command": ["sh", "-c", script]})).await;
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // Killed and reaped before the supervisor exited, so before the end was recorded.
    assert_eq!(processes_with(&marker), Vec::<u32>::new(), "the escaped process outlived its job");
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_the_attempt_and_another_worker_completes_it() {
    let app = spawn_app().await;
    let mut a = spawn_worker(&app.settings);
    let marker = unique_sleep();
    let script = format!(r#"if [ "$FETCHML_ATTEMPT" = 1 ]; then exec sleep {marker}; fi; echo second"#);
    let id = submit(&app, json!({"command": ["sh", "-c", script], "retry": {"backoff_initial_ms": 100}})).await;
    app.until_state(&id, "running").await;
    eventually(Duration::from_secs(10), || async { (!processes_with(&marker).is_empty()).then_some(()) }).await;

    a.kill9();
    // The supervisor notices its worker died and stops the job's processes,
    // so attempt 1 cannot run on while attempt 2 starts.
    until_gone(&marker).await;

    let _b = spawn_worker(&app.settings);
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2);
    let types = app.event_types(&id).await;
    assert_eq!(terminal_events(&types), 1, "{types:?}");
    assert_eq!(count(&types, "job_started"), 2, "{types:?}");
    let (_, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    let lost = events["items"].as_array().unwrap().iter().find(|e| e["type"] == "job_retry_scheduled").unwrap();
    assert_eq!(lost["payload"]["class"], "infrastructure");
    assert_eq!(lost["payload"]["attempt"], 1);
}

#[tokio::test]
async fn a_job_acknowledged_by_an_api_that_is_killed_at_once_still_runs() {
    let base = spawn_app_with(|s| s.api.embedded_scheduler = false).await;
    // A real api process, killed with SIGKILL right after it answered 202.
    let port = fetchml_tests::free_port();
    let mut api = std::process::Command::new(fetchml_tests::app::fetchml_binary())
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env("FETCHML_NATS__URL", &base.settings.nats.url)
        .env("FETCHML_NATS__NAMESPACE", &base.settings.nats.namespace)
        .env("FETCHML_AUTH__USERS_FILE", fetchml_tests::app::users_file())
        .env("FETCHML_POSTGRES__URL", &base.settings.postgres.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fetchml_tests::wait_for_port(port, Duration::from_secs(20));
    let http = fetchml_tests::app::client_with_key(&fetchml_tests::app::key_of("alice"));
    let url = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(20), || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    let r = http.post(format!("{url}/v1/jobs")).json(&json!({"command": ["true"]})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    api.kill().unwrap();
    api.wait().unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // Another api (with its scheduler) and a worker take it from the log.
    let app = spawn_app_with(|s| s.nats.namespace = base.settings.nats.namespace.clone()).await;
    let _w = spawn_worker(&app.settings);
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test]
async fn a_nats_restart_loses_no_job_and_runs_none_twice_at_once() {
    let mut nats = fetchml_tests::NatsProcess::start();
    let url = nats.url();
    let app = spawn_app_with(|s| s.nats.url = url.clone()).await;
    let _w1 = spawn_worker(&app.settings);
    let _w2 = spawn_worker(&app.settings);
    let mut ids = Vec::new();
    for i in 0..20 {
        let ms = if i % 2 == 0 { "1500" } else { "50" };
        ids.push(
            submit(
                &app,
                json!({"executor": "sleep", "command": [ms], "retry": {"backoff_initial_ms": 100, "max_attempts": 10}}),
            )
            .await,
        );
    }
    // Some are running, some queued: restart the server under them. (Wait for
    // "started", not for "running": a short job may already be done.)
    eventually(Duration::from_secs(60), || async {
        let (_, j) = app.get(&format!("/v1/jobs/{}", ids[0])).await;
        (j["attempt"].as_u64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    nats.graceful_restart();
    for i in 20..30 {
        let _ = i;
        // Submits right after the restart may meet a reconnecting client;
        // a 503 is an honest answer, and a retry with the same key is safe.
        let key = uuid::Uuid::new_v4().to_string();
        let id = eventually(Duration::from_secs(30), || async {
            let r = app
                .http
                .post(app.url("/v1/jobs"))
                .header("Idempotency-Key", &key)
                .json(&json!({"executor": "sleep", "command": ["50"]}))
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != 202 {
                return None;
            }
            r.json::<Value>().await.ok()?["id"].as_str().map(str::to_owned)
        })
        .await;
        ids.push(id);
    }
    for id in &ids {
        let job = app.until_terminal(id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let types = app.event_types(id).await;
        assert_eq!(terminal_events(&types), 1, "{id}: {types:?}");
        // Every start is preceded by the end of the attempt before it.
        let mut running = false;
        for t in &types {
            match t.as_str() {
                "job_started" => {
                    assert!(!running, "{id}: two attempts at once: {types:?}");
                    running = true;
                }
                "job_retry_scheduled" | "job_succeeded" => running = false,
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_whole_process_tree() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let (child, main) = (unique_sleep(), unique_sleep());
    let script = format!("sleep {child} & exec sleep {main}");
    let id = submit(&app, json!({"command": ["sh", "-c", script]})).await;
    app.until_state(&id, "running").await;
    eventually(Duration::from_secs(10), || async {
        (!processes_with(&child).is_empty() && !processes_with(&main).is_empty()).then_some(())
    })
    .await;
    let (s, b) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, 202, "{b}");
    until_gone(&child).await;
    until_gone(&main).await;
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "cancelled");
    let types = app.event_types(&id).await;
    assert_eq!(terminal_events(&types), 1, "{types:?}");
    // A second cancel is refused clearly.
    let (s, b) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("job_terminal")));
}

/// A stopping worker lets its running jobs finish and must still obey a
/// cancel. It stopped reading its inbox at the stop, so the scheduler's stop
/// message went unread and the job ran on until the attempt's next lease
/// check (found in review, 2026-12-02).
#[tokio::test]
async fn a_stopping_worker_stops_a_cancelled_job_when_told() {
    let app = spawn_app().await;
    // A lease check every 40 s: here the stop message must be what stops it.
    let mut w = spawn_worker_with(
        &app.settings,
        &[],
        &[("FETCHML_WORKER__LEASE_SECS", "120"), ("FETCHML_WORKER__DRAIN_SECS", "300")],
    );
    let marker = unique_sleep();
    let id = submit(&app, json!({"command": ["sleep", marker]})).await;
    app.until_state(&id, "running").await;
    eventually(Duration::from_secs(10), || async { (!processes_with(&marker).is_empty()).then_some(()) }).await;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    // Draining: its registry entry says so once it has stopped taking jobs.
    eventually(Duration::from_secs(10), || async {
        let (_, workers) = app.get("/v1/workers").await;
        workers["items"].as_array()?.iter().any(|x| x["pid"] == w.pid() && x["draining"] == true).then_some(())
    })
    .await;
    let (s, b) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, 202, "{b}");
    // Well before the lease check would have found the cancel.
    eventually(Duration::from_secs(15), || async { processes_with(&marker).is_empty().then_some(()) }).await;
    assert_eq!(app.until_terminal(&id).await["state"], "cancelled");
    // Nothing left to run: the drain ends and the worker exits.
    assert!(w.terminate().success());
}

#[tokio::test]
async fn a_cancelled_queued_job_never_starts() {
    let app = spawn_app().await;
    let id = submit(&app, json!({"command": ["true"]})).await;
    let (s, _) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, 202);
    let _w = spawn_worker(&app.settings);
    // A job queued after it runs, so the worker has seen the cancelled ticket.
    let later = submit(&app, json!({"command": ["true"]})).await;
    app.until_terminal(&later).await;
    let types = app.event_types(&id).await;
    assert_eq!(types, ["job_queued", "job_cancelled"]);
}

#[tokio::test]
async fn a_job_that_outlives_its_timeout_is_timed_out_and_its_processes_are_gone() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let (child, main) = (unique_sleep(), unique_sleep());
    let script = format!("sleep {child} & exec sleep {main}");
    let id = submit(&app, json!({"command": ["sh", "-c", script], "timeout_secs": 1})).await;
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "timed_out", "{job}");
    assert_eq!(job["failure_class"], "resource");
    until_gone(&child).await;
    until_gone(&main).await;
}

#[tokio::test]
async fn two_hundred_jobs_across_three_workers_with_random_kills_each_end_exactly_once() {
    let app = spawn_app().await;
    let mut workers: Vec<_> = (0..3).map(|_| spawn_worker(&app.settings)).collect();
    let mut ids = Vec::new();
    for i in 0..200 {
        let ms = 20 + (i % 5) * 20;
        ids.push(
            submit(&app, json!({"executor": "sleep", "command": [ms.to_string()], "retry": {"backoff_initial_ms": 50, "max_attempts": 20}}))
                .await,
        );
    }
    // Kill a worker every so often while the queue drains, and replace it.
    for round in 0..4 {
        let (_, list) = app.get("/v1/jobs?state=succeeded&limit=500").await;
        let done = list["items"].as_array().unwrap().len();
        if done >= 200 {
            break;
        }
        let victim = (round * 7 + done) % workers.len();
        workers[victim].kill9();
        workers[victim] = spawn_worker(&app.settings);
        // The next kill waits until the fleet has made progress since this one.
        eventually(Duration::from_secs(60), || async {
            let (_, list) = app.get("/v1/jobs?state=succeeded&limit=500").await;
            (list["items"].as_array().map_or(0, Vec::len) > done).then_some(())
        })
        .await;
    }
    for id in &ids {
        let job = app.until_terminal(id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let types = app.event_types(id).await;
        assert_eq!(terminal_events(&types), 1, "{id}: {types:?}");
    }
}

#[tokio::test]
async fn exhausted_retries_dead_letter_a_job_which_is_listed_and_can_be_retried() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let id = submit(
        &app,
        json!({"executor": "fail", "command": ["2"], "retry": {"max_attempts": 2, "backoff_initial_ms": 50, "retry_on": ["code"]}}),
    )
    .await;
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "dead_lettered", "{job}");
    assert_eq!((job["attempt"].as_u64(), job["exit_code"].as_i64()), (Some(2), Some(2)));
    let (_, list) = app.get(&format!("/v1/jobs?state=dead_lettered&after_seq={}", job["seq"])).await;
    let listed: Vec<_> = list["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [id.as_str()]);

    let (s, b) = app.post(&format!("/v1/jobs/{id}/retry")).await;
    assert_eq!(s, 202, "{b}");
    let job = app.until_state(&id, "dead_lettered").await;
    let types = app.event_types(&id).await;
    assert_eq!(count(&types, "job_requeued"), 1);
    assert_eq!(count(&types, "job_started"), 4, "{types:?}");
    assert_eq!(job["attempt"], 4);
}

#[tokio::test]
async fn higher_priority_jobs_start_first_and_fifo_within_a_priority() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for p in [1, 5, 10, 5, 1, 10] {
        ids.push((p, submit(&app, json!({"executor": "noop", "command": [], "priority": p})).await));
    }
    // Wait until the scheduler holds all six, then let one single-slot worker drain them.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    eventually(Duration::from_secs(10), || async {
        let pools = fetchml_scheduler::ask(&store, &fetchml_scheduler::Query::Pools).await.ok()?;
        (pools[0]["waiting"] == 6).then_some(())
    })
    .await;
    let _w = spawn_worker_with(&app.settings, &["--concurrency", "1"], &[]);
    let mut started = Vec::new();
    for (p, id) in &ids {
        app.until_terminal(id).await;
        let (_, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
        let seq = events["items"].as_array().unwrap().iter().find(|e| e["type"] == "job_started").unwrap()["seq"]
            .as_u64()
            .unwrap();
        started.push((seq, *p, id.clone()));
    }
    started.sort();
    let order: Vec<u8> = started.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(order, [10, 10, 5, 5, 1, 1]);
    // FIFO within a priority: the earlier submitted 10 started first.
    assert_eq!(started[0].2, ids[2].1);
    assert_eq!(started[2].2, ids[1].1);
}

#[tokio::test]
async fn a_job_needing_a_label_waits_for_a_worker_that_offers_it() {
    let app = spawn_app().await;
    let _plain = spawn_worker(&app.settings);
    let gpu = submit(&app, json!({"executor": "noop", "command": [], "labels": ["gpu"]})).await;
    let plain = submit(&app, json!({"executor": "noop", "command": []})).await;
    app.until_terminal(&plain).await;
    let (_, job) = app.get(&format!("/v1/jobs/{gpu}")).await;
    assert_eq!(job["state"], "queued", "a worker without the label took it");
    let gpu_worker = spawn_worker_with(&app.settings, &["--label", "gpu"], &[]);
    let job = app.until_terminal(&gpu).await;
    assert_eq!(job["state"], "succeeded");
    let workers: Value = app.http.get(app.url("/v1/workers")).send().await.unwrap().json().await.unwrap();
    let items = workers["items"].as_array().unwrap();
    let w = items.iter().find(|w| w["id"] == job["worker"]).expect("the gpu worker is registered");
    assert_eq!(w["labels"], json!(["gpu"]));
    assert_eq!(w["pid"], gpu_worker.pid());
}

#[tokio::test]
async fn a_worker_stopped_gracefully_hands_its_unfinished_job_to_another() {
    let app = spawn_app().await;
    let mut a = spawn_worker_with(&app.settings, &[], &[("FETCHML_WORKER__DRAIN_SECS", "1")]);
    let marker = unique_sleep();
    let script = format!(r#"if [ "$FETCHML_ATTEMPT" = 1 ]; then exec sleep {marker}; fi"#);
    let id = submit(&app, json!({"command": ["sh", "-c", script], "retry": {"backoff_initial_ms": 50}})).await;
    app.until_state(&id, "running").await;
    let status = a.terminate();
    assert!(status.success(), "worker exit: {status:?}");
    until_gone(&marker).await;
    let job = app.until_state(&id, "retry_scheduled").await;
    assert!(job["reason"].as_str().unwrap().contains("worker stopped"), "{job}");
    let _b = spawn_worker(&app.settings);
    let job = app.until_terminal(&id).await;
    assert_eq!((job["state"].as_str(), job["attempt"].as_u64()), (Some("succeeded"), Some(2)));
}

#[tokio::test]
async fn a_worker_stopped_while_the_broker_is_gone_exits_after_one_try_to_record_it() {
    let mut nats = fetchml_tests::NatsProcess::start();
    let url = nats.url();
    let app = spawn_app_with(|s| s.nats.url = url.clone()).await;
    let mut w = spawn_worker(&app.settings);
    // Registered: it has announced itself, so its stop has something to record.
    let pid = w.pid();
    eventually(Duration::from_secs(30), || async {
        let (_, workers) = app.get("/v1/workers").await;
        workers["items"].as_array()?.iter().any(|x| x["pid"] == pid).then_some(())
    })
    .await;
    nats.kill();
    let t0 = std::time::Instant::now();
    let status = w.terminate();
    let took = t0.elapsed();
    assert!(status.success(), "worker exit: {status:?}");
    // One append waits out its 5 s timeout. Before, a heartbeat in flight and
    // the registry's open and delete each waited out theirs as well (20-25 s).
    assert!(took < Duration::from_secs(12), "the worker took {took:?} to stop");
}

#[tokio::test]
async fn a_job_queued_while_no_scheduler_runs_starts_once_one_does() {
    // No scheduler: the job is in the log, and a worker is idle.
    let app = spawn_app_with(|s| s.api.embedded_scheduler = false).await;
    let _w = spawn_worker(&app.settings);
    let id = submit(&app, json!({"executor": "noop", "command": []})).await;
    assert_eq!(app.get(&format!("/v1/jobs/{id}")).await.1["state"], "queued");
    // A standalone scheduler, started afterwards, finds it in the log.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let stop = fetchml_tests::CancellationToken::new();
    let scheduler =
        fetchml_scheduler::Scheduler::new(store.clone(), app.settings.scheduling.clone(), app.settings.worker_ttl());
    let run = tokio::spawn(scheduler.run(fetchml_eventstore::LogSource::Direct(Box::new(store)), stop.clone()));
    assert_eq!(app.until_terminal(&id).await["state"], "succeeded");
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn progress_lines_become_metrics_in_the_job_state() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let script = r###"echo '##fetchml {"percent": 50}'; echo '##fetchml {"metric": "loss", "value": 0.5, "step": 1}'; echo '##fetchml {"metric": "loss", "value": 0.25, "step": 2}'; echo plain"###;
    let id = submit(&app, json!({"command": ["sh", "-c", script]})).await;
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["metrics"]["loss"], json!({"value": 0.25, "step": 2}));
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let progress = store.jetstream().get_stream(store.subjects().progress_stream()).await.unwrap();
    let job_id: fetchml_events::JobId = id.parse().unwrap();
    let owner = fetchml_events::UserName::parse("alice").unwrap();
    let pct = progress.direct_get_last_for_subject(store.subjects().progress(&owner, job_id, "percent")).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&pct.payload).unwrap()["percent"], 50.0);
    let log = progress.direct_get_last_for_subject(store.subjects().progress(&owner, job_id, "log")).await.unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&log.payload).unwrap()["line"], "plain");
}

#[tokio::test]
async fn a_working_dir_that_escapes_the_job_root_through_a_symlink_is_refused() {
    let app = spawn_app().await;
    let w = spawn_worker(&app.settings);
    std::os::unix::fs::symlink("/tmp", w.job_root.path().join("out")).unwrap();
    let id = submit(&app, json!({"command": ["true"], "working_dir": "out", "retry": {"max_attempts": 1}})).await;
    let job = app.until_terminal(&id).await;
    assert_ne!(job["state"], "succeeded", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("leaves the job root"), "{job}");
}

#[tokio::test]
async fn listing_jobs_filters_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let mut last = Value::Null;
    for i in 0..5 {
        let (_, b) = app
            .submit(json!({"executor": "noop", "command": [], "pool": if i % 2 == 0 { "a" } else { "b" }, "tags": {"run": i.to_string()}}))
            .await;
        last = b;
    }
    let (_, page1) = app.get(&format!("/v1/jobs?limit=2&after_seq={}", last["seq"])).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let next = page1["next"].as_str().unwrap();
    let (_, page2) = app.get(&format!("/v1/jobs?limit=2&cursor={next}")).await;
    let (_, page3) = app.get(&format!("/v1/jobs?limit=2&cursor={}", page2["next"].as_str().unwrap())).await;
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert!(page3["next"].is_null());
    let mut all: Vec<String> = [&page1, &page2, &page3]
        .iter()
        .flat_map(|p| p["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()))
        .collect();
    all.dedup();
    assert_eq!(all.len(), 5);
    let (_, pool_a) = app.get("/v1/jobs?pool=a").await;
    assert_eq!(pool_a["items"].as_array().unwrap().len(), 3);
    let (_, tagged) = app.get("/v1/jobs?tag=run=3").await;
    assert_eq!(tagged["items"].as_array().unwrap().len(), 1);
    let (s, b) = app.get("/v1/jobs?state=bogus").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_parameter")));
    let (s, b) = app.get("/v1/jobs?colour=red").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("unknown_parameter")));
}

#[tokio::test]
async fn the_podman_executor_runs_a_job_in_a_container_where_podman_is_installed() {
    let has_podman = std::process::Command::new("podman")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_podman {
        eprintln!("skipped: podman is not installed on this machine");
        return;
    }
    // No image registry is reachable from CI: the image must already be local.
    let Ok(image) = std::env::var("FETCHML_TEST_PODMAN_IMAGE") else {
        eprintln!("skipped: set FETCHML_TEST_PODMAN_IMAGE to a locally available image to test podman");
        return;
    };
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let id = submit(&app, json!({"executor": "podman", "image": image, "command": ["sh", "-c", "exit 4"]})).await;
    let job = app.until_terminal(&id).await;
    assert_eq!((job["state"].as_str(), job["exit_code"].as_i64()), (Some("failed"), Some(4)), "{job}");
}
