#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The Postgres read models: one per role, exactly-once in effect under a
//! killed projector, rebuilt identically, and writes available while Postgres
//! is down.

mod usage;

use fetchml_tests::app::{TestApp, spawn_app, spawn_app_with, spawn_worker};
use fetchml_tests::eventually;
use serde_json::{Value, json};
use std::time::Duration;

async fn submit(app: &TestApp, client: &reqwest::Client, spec: Value) -> Value {
    let r = client.post(app.url("/v1/jobs")).json(&spec).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.unwrap()
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn each_role_reads_its_own_model_and_reads_its_writes() {
    let app = spawn_app().await;
    let a = submit(&app, &app.http, json!({"executor": "noop", "command": ["train.py"], "env": {"MODEL_MODE": "t0p"}}))
        .await;
    let b = submit(&app, &app.as_user("bob"), json!({"executor": "noop", "command": []})).await;
    let seq = b["seq"].as_u64().unwrap().max(a["seq"].as_u64().unwrap());

    // Read your writes: the list waits until the model has the job.
    let (s, mine) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={seq}"))).await;
    assert_eq!(s, 200, "{mine}");
    let ids: Vec<_> = mine["items"].as_array().unwrap().iter().map(|j| j["id"].clone()).collect();
    assert_eq!(ids, [a["id"].clone()]);
    let (_, all) = get(&app.as_user("root"), app.url(&format!("/v1/jobs?after_seq={seq}"))).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let (_, summary) = get(&app.as_user("ana"), app.url(&format!("/v1/jobs?after_seq={seq}"))).await;
    let text = summary.to_string();
    assert_eq!(summary["items"].as_array().unwrap().len(), 2);
    for leak in ["t0p", "MODEL_MODE", "train.py", "alice", "bob", "owner"] {
        assert!(!text.contains(leak), "analyst sees {leak}: {text}");
    }
    // A sequence the log has not reached was never answered to a write: 400
    // at once (503 `not_caught_up` is for a write the model has not reached).
    let (s, b) = get(&app.http, app.url("/v1/jobs?after_seq=999999")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_parameter")));
}

#[tokio::test]
async fn a_read_of_its_own_write_does_not_wait_out_the_projectors_batching() {
    // The embedded projector waits 10 s for more of the log before it commits
    // a batch; a read may wait 3 s for its write. It is answered only because
    // the projector commits a batch that a read of its process waits for at
    // once (a projector that waited out its window would answer 503).
    let app = spawn_app_with(|s| {
        s.postgres.projector_batch_wait_ms = 10_000;
        s.api.read_your_writes_ms = 3_000;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
        ids.push(r["id"].clone());
        let (s, list) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", r["seq"]))).await;
        assert_eq!(s, 200, "{list}");
        let listed: Vec<_> = list["items"].as_array().unwrap().iter().map(|j| j["id"].clone()).collect();
        assert!(ids.iter().all(|id| listed.contains(id)), "{ids:?} not all in {listed:?}");
    }
    // A write nobody waits for stays in the open batch: the window still holds.
    let quiet = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let projected = fetchml_projections::checkpoint(&pool).await.unwrap();
    assert!(projected < quiet["seq"].as_u64().unwrap(), "committed {projected} without a reader or a full window");
}

#[tokio::test]
async fn the_analyst_tables_hold_no_command_line_environment_or_log() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let r = submit(
        &app,
        &app.http,
        json!({"command": ["sh", "-c", "echo l0gline; exit 3"], "env": {"PRIVATE_OPTION": "hunter2"}, "experiment": "e1"}),
    )
    .await;
    let id = r["id"].as_str().unwrap();
    let job = app.until_terminal(id).await;
    let (_, _) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", job["seq"]))).await;
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'analyst_jobs'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for forbidden in ["command", "env", "working_dir", "spec", "owner", "reason", "tags", "worker"] {
        assert!(!cols.iter().any(|c| c == forbidden), "analyst_jobs has a {forbidden} column");
    }
    let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM analyst_jobs t").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    for leak in ["hunter2", "PRIVATE_OPTION", "l0gline", "exit 3", "alice"] {
        assert!(!rows[0].contains(leak), "analyst row holds {leak}: {}", rows[0]);
    }
    // The admin model does hold them (so the test above can fail).
    let admin: String = sqlx::query_scalar("SELECT t::text FROM admin_jobs t").fetch_one(&pool).await.unwrap();
    assert!(admin.contains("hunter2") && admin.contains("exit 3"));
    // The admin and researcher views show every column of `jobs`: a migration
    // that adds one must recreate them (a view's `SELECT *` is expanded once).
    let columns = |relation: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
        )
        .bind(relation)
        .fetch_all(&pool)
    };
    let table = columns("jobs").await.unwrap();
    assert!(table.len() > 20, "{table:?}");
    assert_eq!(columns("admin_jobs").await.unwrap(), table);
    assert_eq!(columns("researcher_jobs").await.unwrap(), table);
}

#[tokio::test]
async fn experiments_group_jobs_and_keep_the_last_and_best_metric_values() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let mut last = Value::Null;
    for loss in ["0.5", "0.2", "0.4"] {
        let script = format!(r###"echo '##fetchml {{"metric": "loss", "value": {loss}, "step": 1}}'"###);
        let r = submit(&app, &app.http, json!({"command": ["sh", "-c", script], "experiment": "resnet"})).await;
        last = app.until_terminal(r["id"].as_str().unwrap()).await;
    }
    let (s, e) = get(&app.http, app.url(&format!("/v1/experiments/resnet?after_seq={}", last["seq"]))).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!((e["jobs"].as_i64(), e["succeeded"].as_i64()), (Some(3), Some(3)));
    assert_eq!(e["metrics"]["loss"], json!({"last": 0.4, "min": 0.2, "max": 0.5}));
    let (_, list) = get(&app.as_user("bob"), app.url("/v1/experiments")).await;
    assert!(list["items"].as_array().unwrap().is_empty(), "bob sees alice's experiment: {list}");
    let (s, _) = get(&app.http, app.url("/v1/experiments/nope")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_projector_killed_mid_batch_converges_to_what_a_rebuild_produces() {
    let app = spawn_app_with(|s| s.api.embedded_projector = false).await;
    let w = spawn_worker(&app.settings);
    let mut last = Value::Null;
    for i in 0..150 {
        last = submit(
            &app,
            &app.http,
            json!({"executor": if i % 3 == 0 { "fail" } else { "noop" }, "command": [], "experiment": "x"}),
        )
        .await;
    }
    // Metrics and a cancelled job, so every kind of row is compared.
    for v in ["0.5", "0.25"] {
        let script = format!(r###"echo '##fetchml {{"metric": "loss", "value": {v}, "step": 3}}'"###);
        last =
            submit(&app, &app.http, json!({"command": ["sh", "-c", script], "experiment": "x", "tags": {"t": "a\\b"}}))
                .await;
        app.until_terminal(last["id"].as_str().unwrap()).await;
    }
    let c = submit(&app, &app.http, json!({"command": ["sleep", "30"], "env": {"A": "line\nbreak"}})).await;
    app.until_state(c["id"].as_str().unwrap(), "running").await;
    let r = app.http.post(app.url(&format!("/v1/jobs/{}/cancel", c["id"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    app.until_terminal(c["id"].as_str().unwrap()).await;
    app.until_terminal(last["id"].as_str().unwrap()).await;
    drop(w);
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let head = store.last_sequence().await.unwrap();
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();

    let projector = || {
        std::process::Command::new(fetchml_tests::app::fetchml_binary())
            .arg("projector")
            .env("FETCHML_NATS__URL", &app.settings.nats.url)
            .env("FETCHML_NATS__NAMESPACE", &app.settings.nats.namespace)
            .env("FETCHML_POSTGRES__URL", &app.settings.postgres.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // A projector run until it has folded the log up to `head`.
    let project_to_head = || async {
        let mut p = projector();
        eventually(Duration::from_secs(60), || async {
            (fetchml_projections::checkpoint(&pool).await.unwrap_or(0) >= head).then_some(())
        })
        .await;
        p.kill().unwrap();
        p.wait().unwrap();
    };
    // Kill it as soon as it has committed something, before it is done.
    let mut p = projector();
    let at_kill = eventually(Duration::from_secs(30), || async {
        let cp = fetchml_projections::checkpoint(&pool).await.unwrap_or(0);
        (cp > 0).then_some(cp)
    })
    .await;
    p.kill().unwrap();
    p.wait().unwrap();
    assert!(at_kill <= head);
    project_to_head().await;
    let live = fetchml_projections::checksums(&pool).await.unwrap();
    // The projector's running count of jobs per state is the count of its rows.
    let by_state = "SELECT state, n FROM job_counts ORDER BY state";
    let grouped = "SELECT state, count(*) FROM jobs GROUP BY state ORDER BY state";
    let kept: Vec<(String, i64)> = sqlx::query_as(by_state).fetch_all(&pool).await.unwrap();
    assert_eq!(kept, sqlx::query_as::<_, (String, i64)>(grouped).fetch_all(&pool).await.unwrap());
    let states: Vec<&str> = kept.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(states, ["cancelled", "failed", "succeeded"], "every job ended, in three ways");
    let indexes = "SELECT tablename, indexname, regexp_replace(indexdef, ' ON \\S+ ', ' ON ') FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2";
    let indexes_before: Vec<(String, String, String)> = sqlx::query_as(indexes).fetch_all(&pool).await.unwrap();
    // And the same storage parameters: an operator's fillfactor survives.
    sqlx::query("ALTER TABLE jobs SET (fillfactor = 90)").execute(&pool).await.unwrap();
    let options = "SELECT relname::text, reloptions::text FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND reloptions IS NOT NULL ORDER BY 1";
    let options_before: Vec<(String, String)> = sqlx::query_as(options).fetch_all(&pool).await.unwrap();
    assert_eq!(options_before, [("jobs".to_string(), "{fillfactor=90}".to_string())]);
    // The role views read the one `jobs` table; a rebuild replaces the table
    // under them and must leave them as they were, over the new one.
    let views = "SELECT viewname::text, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1";
    let views_before: Vec<(String, String)> = sqlx::query_as(views).fetch_all(&pool).await.unwrap();
    let names: Vec<&str> = views_before.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(names, ["admin_jobs", "analyst_jobs", "researcher_jobs"]);
    let rebuilt_to = fetchml_projections::rebuild(&pool, &store).await.unwrap();
    assert_eq!(rebuilt_to, head);
    // The tables are loaded without indexes and indexed afterwards: the same
    // indexes and keys, under the same names.
    let indexes_after: Vec<(String, String, String)> = sqlx::query_as(indexes).fetch_all(&pool).await.unwrap();
    assert!(indexes_before.len() >= 10, "{indexes_before:?}");
    assert_eq!(indexes_before, indexes_after);
    let options_after: Vec<(String, String)> = sqlx::query_as(options).fetch_all(&pool).await.unwrap();
    assert_eq!(options_before, options_after);
    let rebuilt = fetchml_projections::checksums(&pool).await.unwrap();
    assert_eq!(live, rebuilt);
    let views_after: Vec<(String, String)> = sqlx::query_as(views).fetch_all(&pool).await.unwrap();
    assert_eq!(views_before, views_after);
    for view in ["admin_jobs", "researcher_jobs", "analyst_jobs"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {view}")))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 153, "{view}");
    }
    let m: i64 = sqlx::query_scalar("SELECT count(*) FROM experiment_metrics").fetch_one(&pool).await.unwrap();
    assert_eq!(m, 1);
    // The usage tables are among those compared, and hold every attempt:
    // each start is either counted (it ended) or still open.
    let (counted, open, by_pool): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(attempts), 0)::int8 FROM usage_daily),
            (SELECT count(*) FROM usage_open_attempts),
            (SELECT coalesce(sum(attempts), 0)::int8 FROM analyst_usage_daily)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let started = starts_in_log(&store, head).await;
    assert!(started >= 153, "{started}");
    assert_eq!((counted + open, by_pool), (started, counted));
    for t in ["usage_open_attempts", "usage_daily", "analyst_usage_daily"] {
        assert!(live.iter().any(|(name, _)| name == t), "{t} is not compared");
    }
    // Every event delivered a second time changes nothing (what a projector
    // behind a rebuild does after the swap): the checkpoint goes back to the
    // start and the projector folds the whole log again onto full tables.
    sqlx::query("UPDATE projection_checkpoints SET last_seq = 0").execute(&pool).await.unwrap();
    project_to_head().await;
    assert_eq!(fetchml_projections::checksums(&pool).await.unwrap(), rebuilt);
    let kept: Vec<(String, i64)> = sqlx::query_as(by_state).fetch_all(&pool).await.unwrap();
    assert_eq!(kept, sqlx::query_as::<_, (String, i64)>(grouped).fetch_all(&pool).await.unwrap());
}

#[tokio::test]
async fn a_rebuild_under_a_live_projector_swaps_in_complete_tables() {
    let app = spawn_app().await;
    let mut last = Value::Null;
    for _ in 0..30 {
        last = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    }
    let (_, _) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", last["seq"]))).await;
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let before = fetchml_projections::checksums(&pool).await.unwrap();
    let (rebuilt, _) = tokio::join!(fetchml_projections::rebuild(&pool, &store), async {
        // Keep writing while the rebuild runs.
        for _ in 0..10 {
            submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
        }
    });
    rebuilt.unwrap();
    let last = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let (s, list) = get(&app.as_user("root"), app.url(&format!("/v1/jobs?limit=500&after_seq={}", last["seq"]))).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 41);
    assert_ne!(before, fetchml_projections::checksums(&pool).await.unwrap());
}

#[tokio::test]
async fn commands_are_accepted_while_postgres_is_down_and_reads_catch_up() {
    let Some(pg) = fetchml_tests::pg::PgProcess::start() else { return };
    let db = fetchml_tests::fresh_database_on(&pg.url());
    let url = db.url.clone();
    let app = spawn_app_with(|s| s.postgres.url = url.clone()).await;
    let first = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let (s, _) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", first["seq"]))).await;
    assert_eq!(s, 200);

    pg.stop_server();
    let mut last = Value::Null;
    for _ in 0..10 {
        last = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    }
    let (s, b) = get(&app.http, app.url("/v1/jobs")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("read_model_unavailable")), "{b}");
    // The job itself is still readable: it is folded from the log.
    let (s, _) = get(&app.http, app.url(&format!("/v1/jobs/{}", last["id"].as_str().unwrap()))).await;
    assert_eq!(s, 200);

    pg.start_server();
    let list = eventually(Duration::from_secs(60), || async {
        let (s, b) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", last["seq"]))).await;
        (s == 200).then_some(b)
    })
    .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 11);
    drop(app);
    drop(db);
}

#[tokio::test]
async fn a_database_serves_the_read_models_of_one_namespace_only() {
    let app = spawn_app().await;
    let last = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let (s, _) = get(&app.http, app.url(&format!("/v1/jobs?after_seq={}", last["seq"]))).await;
    assert_eq!(s, 200);
    let other = fetchml_tests::store_at(&app.settings.nats.url, fetchml_tests::unique_namespace()).await;
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let err = fetchml_projections::rebuild(&pool, &other).await.unwrap_err();
    assert!(matches!(err, fetchml_projections::ProjectionError::WrongNamespace { .. }), "{err}");
    fetchml_tests::delete_namespace(&app.settings.nats.url, other.subjects().namespace().as_str());
}

/// How many attempts the log started up to `head`, read from the log itself.
async fn starts_in_log(store: &fetchml_eventstore::EventStore, head: u64) -> i64 {
    use futures::StreamExt;
    let s = store.subjects();
    let mut read = store
        .read_stream(&s.events_stream(), vec![s.all_job_events()], fetchml_eventstore::StartAt::Beginning)
        .await
        .unwrap();
    let mut started = 0;
    while let Some(ev) = read.next().await {
        let ev = ev.unwrap();
        if matches!(ev.job_event().unwrap().payload, fetchml_events::job::JobEvent::JobStarted { .. }) {
            started += 1;
        }
        if ev.seq >= head || ev.pending == Some(0) {
            return started;
        }
    }
    started
}

/// The projector finds its rows by key however much the table grew after it
/// connected. Postgres keeps a generic plan for a prepared statement from its
/// sixth run on; planned while `jobs` held a few rows, that plan scanned the
/// whole table for every batch from then on (until autovacuum's next ANALYZE),
/// so a fresh deployment's projector cost more per job as its first jobs came
/// in (BENCHMARKS.md, fifteenth session).
#[tokio::test]
async fn the_projector_reads_rows_by_key_after_the_table_grew_under_it() {
    let app = spawn_app().await;
    let pg = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    // No ANALYZE under the test: it would re-plan, and hide the stale plan.
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)").execute(&pg).await.unwrap();
    // Every statement of the projector runs more than six times on a small
    // table: a job queued, then cancelled, each projected in a batch of its
    // own (the checkpoint moves with the rows, in one transaction).
    let projected = |r: Value| {
        let pg = pg.clone();
        async move {
            let seq = r["seq"].as_u64().unwrap();
            assert!(fetchml_projections::wait_for(&pg, seq, Duration::from_secs(60), None).await.unwrap());
        }
    };
    let queue_and_cancel = || async {
        let job = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
        projected(job.clone()).await;
        let r =
            app.http.post(app.url(&format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 202);
        projected(r.json().await.unwrap()).await;
    };
    const BEFORE: i64 = 8;
    const AFTER: i64 = 3;
    for _ in 0..BEFORE {
        queue_and_cancel().await;
    }
    // The table grows under the projector's connection (rows of jobs it will
    // never touch), then it projects a few more jobs.
    const GROWN: i64 = 20_000;
    sqlx::query(
        "INSERT INTO jobs (id, owner, state, attempt, attempts_in_run, pool, priority, labels, tags, command, env,
            spec, metrics, created_at, updated_at, last_seq)
         SELECT gen_random_uuid(), 'filler', 'succeeded', 1, 1, 'default', 0, '{}', '{}', '[]', '{}', '{}', '{}',
            now(), now(), 0 FROM generate_series(1, $1)",
    )
    .bind(GROWN)
    .execute(&pg)
    .await
    .unwrap();
    for _ in 0..AFTER {
        queue_and_cancel().await;
    }
    // Postgres publishes a backend's table statistics when it idles (within
    // seconds), all of a table's counters at once: once every cancellation's
    // update shows, so do the scans before it.
    let scanned: i64 = eventually(Duration::from_secs(60), || async {
        let (updated, scanned): (i64, i64) =
            sqlx::query_as("SELECT n_tup_upd, seq_tup_read FROM pg_stat_user_tables WHERE relname = 'jobs'")
                .fetch_one(&pg)
                .await
                .unwrap();
        (updated >= BEFORE + AFTER).then_some(scanned)
    })
    .await;
    assert!(scanned < GROWN, "the projector scanned {scanned} rows of jobs: a whole-table scan per batch");
}

/// fetchml's connections plan each run for its values unless the database
/// URL says otherwise: an operator's `plan_cache_mode` is kept.
#[tokio::test]
async fn connections_plan_each_run_unless_the_url_sets_the_plan_cache_mode() {
    let db = fetchml_tests::fresh_database();
    let mode = |url: String| async move {
        let pool = fetchml_projections::pool(&url).unwrap();
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode").fetch_one(&pool).await.unwrap();
        pool.close().await;
        mode
    };
    assert_eq!(mode(db.url.clone()).await, "force_custom_plan");
    let own = format!("{}?options=-c%20plan_cache_mode%3Dforce_generic_plan", db.url);
    assert_eq!(mode(own).await, "force_generic_plan");
}
