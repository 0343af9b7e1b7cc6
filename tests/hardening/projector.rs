//! Hardening tests: the projector and the read models' queries.
//!
//! Hostile events are appended straight to the log (the api refuses them at
//! the edge now, but the log may hold them from before, or from another
//! writer): nothing the log can hold may stop the projector.

use chrono::{DateTime, Utc};
use fetchml_events::hash::GENESIS;
use fetchml_events::job::{JobEvent, JobSpec, Metric, Metrics};
use fetchml_events::{Actor, JobId, UserName, WorkerId};
use fetchml_eventstore::{CommandContext, EventStore};
use fetchml_tests::app::{TestApp, spawn_app, spawn_app_with};
use fetchml_tests::eventually;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A job's chain of events, appended by hand (no decision, no validation).
struct Chain {
    id: JobId,
    subject: String,
    seq: u64,
    version: u64,
    hash: String,
}

impl Chain {
    fn new(store: &EventStore) -> Self {
        let id = JobId::new();
        let subject = store.subjects().job(&alice(), &fetchml_events::job::default_pool(), id);
        Chain { id, subject, seq: 0, version: 0, hash: GENESIS.to_owned() }
    }

    async fn push(&mut self, store: &EventStore, event: JobEvent) -> u64 {
        let ctx = CommandContext::new(Actor::User { name: alice() });
        let (appended, hash) = store
            .append_event(&self.subject, &self.id.to_string(), self.seq, self.version + 1, &self.hash, event, &ctx)
            .await
            .unwrap();
        (self.seq, self.version, self.hash) = (appended.seq, self.version + 1, hash);
        appended.seq
    }
}

fn alice() -> UserName {
    UserName::parse("alice").unwrap()
}

fn metrics(name: &str, value: f64) -> Metrics {
    Metrics::from([(name.to_owned(), Metric { value, step: Some(1) })])
}

async fn store_of(app: &TestApp) -> EventStore {
    fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await
}

async fn get_as(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn no_event_the_log_can_hold_stops_the_projector_and_a_rebuild_agrees() {
    let app = spawn_app().await;
    let store = store_of(&app).await;
    let worker = WorkerId::new();

    // NUL in the experiment, a tag key and value, a metric name and a reason:
    // Postgres's text and jsonb cannot hold it.
    let mut nul = Chain::new(&store);
    let mut spec = JobSpec::command(["true"]);
    spec.experiment = Some("exp\0eriment".into());
    spec.tags.insert("k\0".into(), "v\0".into());
    nul.push(&store, JobEvent::JobQueued { owner: alice(), spec }).await;
    nul.push(&store, JobEvent::JobStarted { attempt: 1, worker, placement: Default::default() }).await;
    nul.push(&store, JobEvent::JobSucceeded { attempt: 1, exit_code: 0, metrics: metrics("lo\0ss", 0.5) }).await;
    let mut cancelled = Chain::new(&store);
    cancelled.push(&store, JobEvent::JobQueued { owner: alice(), spec: JobSpec::command(["true"]) }).await;
    cancelled.push(&store, JobEvent::JobCancelled { reason: "because\0".into() }).await;

    // A metric whose (experiment, owner, name) is larger than a btree index
    // entry can be, whatever its content.
    let mut huge = Chain::new(&store);
    let mut spec = JobSpec::command(["true"]);
    spec.experiment = Some((0..3000).map(|i| char::from(b'a' + ((i * 7919) % 26) as u8)).collect());
    huge.push(&store, JobEvent::JobQueued { owner: alice(), spec }).await;
    huge.push(&store, JobEvent::JobStarted { attempt: 1, worker, placement: Default::default() }).await;
    let huge_end =
        huge.push(&store, JobEvent::JobSucceeded { attempt: 1, exit_code: 0, metrics: metrics("loss", 0.1) }).await;

    // Bytes that are no event at all.
    let garbage = store
        .append(
            &store.subjects().job(&alice(), &fetchml_events::job::default_pool(), JobId::new()),
            0,
            "g1",
            b"{".to_vec(),
        )
        .await
        .unwrap()
        .seq;

    // A normal job after all of them is listed.
    let (s, normal) = app.submit(json!({"executor": "noop", "command": []})).await;
    assert_eq!(s, 202, "{normal}");
    let (s, list) = app.get(&format!("/v1/jobs?limit=500&after_seq={}", normal["seq"])).await;
    assert_eq!(s, 200, "the projector is stuck: {list}");
    let items = list["items"].as_array().unwrap();
    let row = |id: &str| items.iter().find(|j| j["id"] == id).cloned().unwrap_or(Value::Null);
    assert_eq!(row(normal["id"].as_str().unwrap())["state"], "queued");
    // NUL is stored as U+FFFD; the rest of each job as it is.
    let n = row(&nul.id.to_string());
    assert_eq!((n["state"].as_str(), n["experiment"].as_str()), (Some("succeeded"), Some("exp\u{FFFD}eriment")));
    assert_eq!(n["tags"], json!({"k\u{FFFD}": "v\u{FFFD}"}));
    assert_eq!(n["metrics"]["lo\u{FFFD}ss"]["value"], 0.5);
    let c = row(&cancelled.id.to_string());
    assert_eq!((c["state"].as_str(), c["reason"].as_str()), (Some("cancelled"), Some("because\u{FFFD}")));
    // The huge-key job is listed; only its experiment summary is missing.
    assert_eq!(row(&huge.id.to_string())["state"], "succeeded");

    // What could not be stored is on record, and /readyz counts it.
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let faults: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, model, code FROM projection_faults ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(
        faults,
        [
            (huge_end as i64, "experiment_metrics".to_owned(), "metric_key_too_large".to_owned()),
            (garbage as i64, "jobs".to_owned(), "undecodable_event".to_owned()),
        ]
    );
    let (s, ready) = app.get("/readyz").await;
    assert_eq!((s, &ready["projection_faults"], &ready["read_models"]), (200, &json!(2), &json!("up")), "{ready}");

    // A rebuild from sequence 1 survives the same events the same way.
    let live = fetchml_projections::checksums(&pool).await.unwrap();
    let head = store.last_sequence().await.unwrap();
    assert_eq!(fetchml_projections::rebuild(&pool, &store).await.unwrap(), head);
    assert_eq!(live, fetchml_projections::checksums(&pool).await.unwrap());
}

#[tokio::test]
async fn an_event_postgres_refuses_for_an_unforeseen_reason_is_a_fault_and_the_rest_goes_on() {
    let app = spawn_app().await;
    let (_, first) = app.submit(json!({"executor": "noop", "command": []})).await;
    let (s, _) = app.get(&format!("/v1/jobs?after_seq={}", first["seq"])).await;
    assert_eq!(s, 200);
    // A refusal no rule of the projector foresees (a constraint an operator
    // added, say): the same for the live tables and a rebuild's copies.
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    sqlx::query("ALTER TABLE jobs ADD CONSTRAINT test_refuses CHECK (experiment IS DISTINCT FROM 'refused')")
        .execute(&pool)
        .await
        .unwrap();
    // One request, so that both jobs are likely in one projector batch.
    let r = app
        .http
        .post(app.url("/v1/jobs/batch"))
        .json(&json!({"jobs": [
            {"executor": "noop", "command": [], "experiment": "refused"},
            {"executor": "noop", "command": [], "experiment": "fine"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let jobs: Value = r.json().await.unwrap();
    let (refused, fine) = (&jobs["jobs"][0], &jobs["jobs"][1]);
    let last = refused["seq"].as_u64().unwrap().max(fine["seq"].as_u64().unwrap());
    let (s, list) = app.get(&format!("/v1/jobs?after_seq={last}")).await;
    assert_eq!(s, 200, "the projector is stuck: {list}");
    let ids: Vec<&Value> = list["items"].as_array().unwrap().iter().map(|j| &j["id"]).collect();
    assert!(ids.contains(&&fine["id"]) && !ids.contains(&&refused["id"]), "{list}");
    let faults: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, model, code FROM projection_faults").fetch_all(&pool).await.unwrap();
    assert_eq!(faults, [(refused["seq"].as_i64().unwrap(), "jobs".to_owned(), "refused_by_postgres".to_owned())]);

    // A rebuild skips what the live projector could not store...
    let store = store_of(&app).await;
    let live = fetchml_projections::checksums(&pool).await.unwrap();
    fetchml_projections::rebuild(&pool, &store).await.unwrap();
    assert_eq!(live, fetchml_projections::checksums(&pool).await.unwrap());
    // ...and, knowing no faults (a fresh database), finds the same on its own.
    sqlx::query("DELETE FROM projection_faults").execute(&pool).await.unwrap();
    fetchml_projections::rebuild(&pool, &store).await.unwrap();
    assert_eq!(live, fetchml_projections::checksums(&pool).await.unwrap());
}

/// Microsecond instants (Postgres keeps microseconds, the log nanoseconds).
fn instant(v: &Value) -> Option<i64> {
    v.as_str().map(|s| s.parse::<DateTime<Utc>>().unwrap().timestamp_micros())
}

#[tokio::test]
async fn a_cancelled_retry_reads_the_same_in_the_job_and_in_the_list() {
    let app = spawn_app().await;
    let store = store_of(&app).await;
    let mut job = Chain::new(&store);
    job.push(&store, JobEvent::JobQueued { owner: alice(), spec: JobSpec::command(["true"]) }).await;
    job.push(&store, JobEvent::JobStarted { attempt: 1, worker: WorkerId::new(), placement: Default::default() }).await;
    let not_before = Utc::now() + chrono::Duration::hours(1);
    job.push(
        &store,
        JobEvent::JobRetryScheduled {
            attempt: 1,
            exit_code: Some(1),
            signal: None,
            class: fetchml_events::job::FailureClass::Infrastructure,
            reason: "lost".into(),
            not_before,
            metrics: Metrics::new(),
        },
    )
    .await;
    let id = job.id.to_string();
    let (s, r) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(s, 202, "{r}");

    let (_, read) = app.get(&format!("/v1/jobs/{id}")).await;
    let (s, list) = app.get(&format!("/v1/jobs?after_seq={}", r["seq"])).await;
    assert_eq!(s, 200, "{list}");
    let row = list["items"].as_array().unwrap().iter().find(|j| j["id"] == id.as_str()).unwrap().clone();
    assert_eq!(read["state"], "cancelled");
    // A cancelled job waits for nothing.
    assert_eq!(read["not_before"], Value::Null, "{read}");
    for k in ["state", "attempt", "exit_code", "failure_class", "reason", "owner", "worker", "metrics", "seq"] {
        assert_eq!(read[k], row[k], "{k}: job {read} list {row}");
    }
    for k in ["not_before", "created_at", "started_at", "finished_at"] {
        assert_eq!(instant(&read[k]), instant(&row[k]), "{k}: job {read} list {row}");
    }
}

#[tokio::test]
async fn as_of_applies_the_tag_filter_as_the_list_does() {
    let app = spawn_app().await;
    let (_, tagged) = app.submit(json!({"executor": "noop", "command": [], "tags": {"team": "a"}})).await;
    let (_, other) = app.submit(json!({"executor": "noop", "command": [], "tags": {"team": "b"}})).await;
    let seq = other["seq"].as_u64().unwrap();
    let (s, live) = app.get(&format!("/v1/jobs?tag=team=a&after_seq={seq}")).await;
    assert_eq!(s, 200, "{live}");
    let (s, then) = app.get(&format!("/v1/jobs?tag=team=a&as_of_seq={seq}")).await;
    assert_eq!(s, 200, "{then}");
    for l in [&live, &then] {
        let ids: Vec<&Value> = l["items"].as_array().unwrap().iter().map(|j| &j["id"]).collect();
        assert_eq!(ids, [&tagged["id"]], "{l}");
    }
}

#[tokio::test]
async fn filters_the_read_models_cannot_hold_are_bad_requests_never_500() {
    let app = spawn_app().await;
    let (_, last) = app.submit(json!({"executor": "noop", "command": [], "experiment": "e"})).await;
    let (s, _) = app.get(&format!("/v1/jobs?after_seq={}", last["seq"])).await;
    assert_eq!(s, 200);
    let root = app.as_user("root");
    for (path, param) in [
        ("/v1/jobs?owner=%00", "owner"),
        ("/v1/jobs?experiment=%00", "experiment"),
        ("/v1/jobs?tag=%00=%00", "tag"),
        ("/v1/jobs?pool=a%00b", "pool"),
        ("/v1/jobs?experiment=%1b%5b31m", "experiment"),
        ("/v1/jobs?tag=k=%00&as_of_seq=1", "tag"),
        ("/v1/experiments/%00", "name"),
    ] {
        let (s, b) = get_as(&root, app.url(path)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{path}: {b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{param}:")), "{path}: {message}");
    }
    // Analysts' summaries have no tags: a tag filter is refused, by design.
    for path in ["/v1/jobs?tag=a=b", "/v1/jobs?tag=a=b&as_of_seq=1"] {
        let (s, b) = get_as(&app.as_user("ana"), app.url(path)).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_parameter")), "{path}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().starts_with("tag:"), "{b}");
    }
    // Plain values still select.
    let (s, b) = get_as(&root, app.url("/v1/experiments/e")).await;
    assert_eq!((s, &b["jobs"]), (200, &json!(1)), "{b}");
}

#[tokio::test]
async fn reads_answer_at_once_while_postgres_is_down_and_recover_when_it_is_back() {
    let Some(pg) = fetchml_tests::pg::PgProcess::start() else { return };
    let db = fetchml_tests::fresh_database_on(&pg.url());
    let url = db.url.clone();
    // A pool that would wait 30 s for a connection: a quick 503 can only come
    // from knowing that Postgres is down.
    let app = spawn_app_with(|s| {
        s.postgres.url = url.clone();
        s.postgres.acquire_timeout_ms = 30_000;
    })
    .await;
    let (_, first) = app.submit(json!({"executor": "noop", "command": []})).await;
    let (s, _) = app.get(&format!("/v1/jobs?after_seq={}", first["seq"])).await;
    assert_eq!(s, 200);

    pg.stop_server();
    let (s, b) = app.get("/v1/jobs").await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("read_model_unavailable")), "{b}");
    for path in ["/v1/jobs", "/v1/experiments", "/v1/experiments/x", "/v1/workers?history=true"] {
        let t = Instant::now();
        let (s, b) = app.get(path).await;
        assert_eq!((s, b["error"]["code"].as_str()), (503, Some("read_model_unavailable")), "{path}: {b}");
        assert!(t.elapsed() < Duration::from_secs(10), "{path} waited {:?} for the pool", t.elapsed());
    }
    let (s, ready) = app.get("/readyz").await;
    assert_eq!((s, &ready["read_models"]), (200, &json!("unavailable")), "{ready}");

    pg.start_server();
    let (_, last) = app.submit(json!({"executor": "noop", "command": []})).await;
    eventually(Duration::from_secs(60), || async {
        let (s, _) = app.get(&format!("/v1/jobs?after_seq={}", last["seq"])).await;
        (s == 200).then_some(())
    })
    .await;
    drop(app);
    drop(db);
}

/// A job whose events are stamped at the given times (the store stamps
/// `occurred_at` from the command's context).
async fn push_at(chain: &mut Chain, store: &EventStore, at: &str, event: JobEvent) -> u64 {
    let mut ctx = CommandContext::new(Actor::User { name: alice() });
    ctx.now = at.parse().unwrap();
    let (appended, hash) = store
        .append_event(&chain.subject, &chain.id.to_string(), chain.seq, chain.version + 1, &chain.hash, event, &ctx)
        .await
        .unwrap();
    (chain.seq, chain.version, chain.hash) = (appended.seq, chain.version + 1, hash);
    appended.seq
}

#[tokio::test]
async fn usage_splits_attempts_at_midnight_survives_absurd_clocks_and_a_rebuild_agrees() {
    use fetchml_events::job::{FailureClass, Placement};
    let app = spawn_app().await;
    let store = store_of(&app).await;
    let worker = WorkerId::new();
    let placed = Placement { host: "h1".into(), gpus: vec!["0".into(), "1".into()], cpus: 4, memory_mb: 1000 };

    // Across midnight, on two GPUs: 10 s on the 1st, 10.5 s on the 2nd; a
    // retry, then a second attempt that a late duplicate end cannot extend.
    let mut a = Chain::new(&store);
    let q = JobEvent::JobQueued { owner: alice(), spec: JobSpec::command(["true"]) };
    push_at(&mut a, &store, "2026-01-01T23:00:00Z", q).await;
    let start = JobEvent::JobStarted { attempt: 1, worker, placement: placed.clone() };
    push_at(&mut a, &store, "2026-01-01T23:59:50Z", start).await;
    let retry = JobEvent::JobRetryScheduled {
        attempt: 1,
        exit_code: None,
        signal: Some(9),
        class: FailureClass::Infrastructure,
        reason: "lost".into(),
        not_before: "2026-01-02T00:00:11Z".parse().unwrap(),
        metrics: Metrics::new(),
    };
    push_at(&mut a, &store, "2026-01-02T00:00:10.5Z", retry).await;
    let start2 = JobEvent::JobStarted { attempt: 2, worker, placement: placed.clone() };
    push_at(&mut a, &store, "2026-01-02T01:00:00Z", start2).await;
    let done = JobEvent::JobSucceeded { attempt: 2, exit_code: 0, metrics: Metrics::new() };
    push_at(&mut a, &store, "2026-01-02T01:00:01Z", done.clone()).await;
    push_at(&mut a, &store, "2026-01-02T05:00:00Z", done).await;

    // No placement (an event from before placements): the spec's resources;
    // cancelled while running.
    let mut b = Chain::new(&store);
    let mut spec = JobSpec::command(["true"]);
    spec.resources.cpus = Some(3);
    spec.resources.memory_mb = Some(2048);
    push_at(&mut b, &store, "2026-01-02T10:00:00Z", JobEvent::JobQueued { owner: alice(), spec }).await;
    let start = JobEvent::JobStarted { attempt: 1, worker, placement: Default::default() };
    push_at(&mut b, &store, "2026-01-02T10:00:00Z", start).await;
    push_at(&mut b, &store, "2026-01-02T10:00:02Z", JobEvent::JobCancelled { reason: "enough".into() }).await;

    // A clock eight thousand years off: a fault, not millions of rows.
    let mut c = Chain::new(&store);
    let q = JobEvent::JobQueued { owner: alice(), spec: JobSpec::command(["true"]) };
    push_at(&mut c, &store, "2000-01-01T00:00:00Z", q).await;
    let start = JobEvent::JobStarted { attempt: 1, worker, placement: placed };
    push_at(&mut c, &store, "2000-01-01T00:00:00Z", start).await;
    let end = JobEvent::JobTimedOut { attempt: 1, reason: "late".into(), metrics: Metrics::new() };
    let absurd = push_at(&mut c, &store, "9999-01-01T00:00:00Z", end).await;

    let (s, normal) = app.submit(json!({"executor": "noop", "command": []})).await;
    assert_eq!(s, 202, "{normal}");
    let root = app.as_user("root");
    let (s, report) = get_as(
        &root,
        app.url(&format!("/v1/usage?since=2026-01-01&until=2026-01-02&group_by=user,day&after_seq={}", normal["seq"])),
    )
    .await;
    assert_eq!(s, 200, "the projector is stuck: {report}");
    let rows: Vec<(String, u64, f64, f64, f64, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_owned(),
                r["attempts"].as_u64().unwrap(),
                r["slot_seconds"].as_f64().unwrap(),
                r["gpu_seconds"].as_f64().unwrap(),
                r["cpu_seconds"].as_f64().unwrap(),
                r["memory_mb_seconds"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("2026-01-01".to_owned(), 1, 10.0, 20.0, 40.0, 10_000),
            // 10.5 s + 1 s of job a (2 GPUs, 4 CPUs, 1000 MB), 2 s of b (3 CPUs, 2048 MB);
            // attempt 1 of a counts on the day it started.
            ("2026-01-02".to_owned(), 1 + 1, 13.5, 23.0, 52.0, 10_500 + 1_000 + 4_096),
        ],
        "{report}"
    );
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let faults: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, model, code FROM projection_faults ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(faults, [(absurd as i64, "usage_daily".to_owned(), "usage_attempt_too_long".to_owned())]);
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_open_attempts").fetch_one(&pool).await.unwrap();
    assert_eq!(open, 0, "every attempt ended");

    let live = fetchml_projections::checksums(&pool).await.unwrap();
    let head = store.last_sequence().await.unwrap();
    assert_eq!(fetchml_projections::rebuild(&pool, &store).await.unwrap(), head);
    assert_eq!(live, fetchml_projections::checksums(&pool).await.unwrap());
}
