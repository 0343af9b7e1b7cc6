#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The thin path end to end over HTTP, with a real worker process, real NATS.

mod docs;
mod hygiene;
mod metrics;

use fetchml_tests::app::{spawn_app, spawn_worker};
use serde_json::json;

#[tokio::test]
async fn a_queued_command_runs_on_a_worker_and_its_history_reads_back_in_order() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let (status, body) = app.submit(json!({"command": ["echo", "hi"]})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(body["seq"].as_u64().unwrap() >= 1);

    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["exit_code"], 0);
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["owner"], "alice");
    assert_eq!(job["id"], id.as_str());

    let (status, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, 200);
    let items = events["items"].as_array().unwrap();
    let types: Vec<_> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job_queued", "job_started", "job_succeeded"]);
    let seqs: Vec<u64> = items.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Each event links to its predecessor.
    for w in items.windows(2) {
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }

    // The output line reached PROGRESS.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let js = store.jetstream();
    let stream = js.get_stream(store.subjects().progress_stream()).await.unwrap();
    let job_id: fetchml_events::JobId = id.parse().unwrap();
    let msg = stream.direct_get_first_for_subject(store.subjects().job_progress(job_id)).await.unwrap();
    let line: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(line["line"], "hi");
    assert_eq!(line["stream"], "stdout");
}

#[tokio::test]
async fn a_command_that_exits_non_zero_fails_with_its_exit_code() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let (_, body) = app.submit(json!({"command": ["sh", "-c", "exit 3"]})).await;
    let job = app.until_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["exit_code"], 3);
    assert_eq!(job["failure_class"], "code");
}

#[tokio::test]
async fn a_command_that_does_not_exist_fails_clearly() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let (_, body) = app.submit(json!({"command": ["fetchml-no-such-program-xyz"]})).await;
    let job = app.until_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(job["exit_code"].is_null());
    assert!(job["reason"].as_str().unwrap().contains("command not found"), "{job}");
}

#[tokio::test]
async fn arguments_are_passed_without_a_shell() {
    let app = spawn_app().await;
    let w = spawn_worker(&app.settings);
    let marker = w.job_root.path().join("out.txt");
    // With a shell, `;` would run a second command; as argv it is just text.
    let (_, body) =
        app.submit(json!({"command": ["sh", "-c", "printf %s \"$1\" > out.txt", "x", "a; touch pwned"]})).await;
    let job = app.until_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "a; touch pwned");
    assert!(!w.job_root.path().join("pwned").exists());
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_changes_nothing() {
    let app = spawn_app().await;
    let (s, b) = app.submit(json!({"command": ["x"], "priority": 11})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["error"]["field"].as_str()),
        (422, Some("out_of_range"), Some("priority"))
    );
    let (s, b) = app.submit(json!({"command": []})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("command_empty")));
    let (s, b) = app.submit(json!({"comand": ["x"]})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_body")), "{b}");
    let r = app.http.post(app.url("/v1/jobs")).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let big = "x".repeat(2 << 20);
    let r = app.http.post(app.url("/v1/jobs")).body(big).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let (s, b) = app.get("/v1/jobs/not-a-uuid").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_job_id")));
    let (s, b) = app.get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7())).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("job_not_found")));
    let (s, _) = app.get(&format!("/v1/jobs/{}/events", uuid::Uuid::now_v7())).await;
    assert_eq!(s, 404);
    let (s, b) = app.get("/v1/nothing").await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("route_not_found")));
    // Nothing of the above reached the job log.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    assert!(store.load(&store.subjects().all_job_events()).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_same_idempotency_key_names_the_same_job_once() {
    let app = spawn_app().await;
    let send = || async {
        let r = app
            .http
            .post(app.url("/v1/jobs"))
            .header("Idempotency-Key", "train-run-7")
            .json(&json!({"command": ["true"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let (a, b) = (send().await, send().await);
    assert_eq!(a["id"], b["id"]);
    assert_eq!(a["seq"], b["seq"]);
    let (_, events) = app.get(&format!("/v1/jobs/{}/events", a["id"].as_str().unwrap())).await;
    assert_eq!(events["items"].as_array().unwrap().len(), 1);
}

async fn post_batch(
    app: &fetchml_tests::app::TestApp,
    key: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = app.http.post(app.url("/v1/jobs/batch")).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_batch_queues_every_job_once_and_each_runs() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let batch = json!({"jobs": [
        {"command": ["true"]},
        {"command": ["sh", "-c", "exit 4"]},
        {"executor": "noop", "command": [], "priority": 9},
    ]});
    let (status, body) = post_batch(&app, Some("sweep-1"), &batch).await;
    assert_eq!(status, 202, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    let ids: Vec<String> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "{ids:?}");
    assert!(jobs.iter().all(|j| j["duplicate"] == false && j["seq"].as_u64().unwrap() >= 1), "{body}");

    // In order: job i is spec i.
    let states: Vec<_> = futures::future::join_all(ids.iter().map(|id| app.until_terminal(id))).await;
    let states: Vec<&str> = states.iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["succeeded", "failed", "succeeded"]);

    // The same batch with the same key names the same jobs and stores nothing new.
    let (status, again) = post_batch(&app, Some("sweep-1"), &batch).await;
    assert_eq!(status, 202, "{again}");
    for (a, b) in jobs.iter().zip(again["jobs"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["seq"]), (&b["id"], &b["seq"]));
        assert_eq!(b["duplicate"], true);
    }
    for id in &ids {
        assert_eq!(app.event_types(id).await.iter().filter(|t| *t == "job_queued").count(), 1);
    }
}

#[tokio::test]
async fn an_invalid_batch_stores_nothing_and_says_which_job_is_wrong() {
    let app = spawn_app().await;
    let (s, b) = post_batch(&app, None, &json!({"jobs": [{"command": ["true"]}, {"command": []}]})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["error"]["field"].as_str()),
        (422, Some("command_empty"), Some("jobs[1].command")),
        "{b}"
    );
    let (s, b) = post_batch(&app, None, &json!({"jobs": [{"command": ["true"]}, {"comand": ["x"]}]})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_body")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("jobs[1]"), "{b}");
    let (s, b) = post_batch(&app, None, &json!({"jobs": []})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("empty_batch")));
    let too_many: Vec<_> = (0..=fetchml_api::MAX_BATCH).map(|_| json!({"command": ["true"]})).collect();
    let (s, b) = post_batch(&app, None, &json!({ "jobs": too_many })).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("batch_too_large")));
    let (s, b) = post_batch(&app, None, &json!([{"command": ["true"]}])).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_body")));
    // An analyst may not queue jobs, one or many.
    let r = app
        .as_user("ana")
        .post(app.url("/v1/jobs/batch"))
        .json(&json!({"jobs": [{"command": ["true"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    assert!(store.load(&store.subjects().all_job_events()).await.unwrap().is_empty());
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let (s, b) = app.get("/healthz").await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let (s, b) = app.get("/readyz").await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ready")), "{b}");
}

#[tokio::test]
async fn readiness_says_503_while_nats_is_down_and_recovers() {
    let mut nats = fetchml_tests::NatsProcess::start();
    let mut settings = fetchml_runtime::Settings::default();
    settings.nats.url = nats.url();
    settings.api.listen = "127.0.0.1:0".into();
    settings.auth.users_file = fetchml_tests::app::users_file();
    let db = fetchml_tests::fresh_database();
    settings.postgres.url = db.url.clone();
    let app = fetchml_api::Application::build(settings).await.unwrap();
    let url = format!("http://{}/readyz", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 200);
    nats.kill();
    let body: serde_json::Value = fetchml_tests::eventually(std::time::Duration::from_secs(20), || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status().as_u16() == 503).then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(body["error"]["code"], "not_ready");
    // A batch while NATS is away: nothing is stored, and the answer says so per job.
    let alice = fetchml_tests::app::client_with_key(&fetchml_tests::app::key_of("alice"));
    let batch_url = url.replace("/readyz", "/v1/jobs/batch");
    let r = alice
        .post(&batch_url)
        .json(&serde_json::json!({"jobs": [{"command": ["true"]}, {"command": ["true"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "event_store_unavailable", "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|j| j["error"]["code"] == "event_store_unavailable" && j["id"].is_string()), "{body}");
    nats.restart();
    fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_older_nats_server_is_refused_with_a_clear_message() {
    // Debian's nats-server 2.9, where the machine has it; a fresh machine may not.
    let old = std::path::Path::new("/usr/sbin/nats-server");
    if !old.exists() {
        eprintln!("skipped: no Debian nats-server at {} to test against", old.display());
        return;
    }
    let port = fetchml_tests::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(old)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fetchml_tests::wait_for_port(port, std::time::Duration::from_secs(10));
    let err = fetchml_eventstore::connect(&format!("nats://127.0.0.1:{port}"), "t").await.err();
    let _ = child.kill();
    let _ = child.wait();
    let err = err.expect("an old server must be refused");
    assert!(matches!(err, fetchml_eventstore::StoreError::ServerTooOld { .. }), "{err}");
    assert!(err.to_string().contains("too old"), "{err}");
}
