//! `postgres.read_url`: the api's queries read through it, the projector and
//! the migrations write through `postgres.url`. The "replica" here is the
//! same database reached as a role that may only SELECT in read-only
//! transactions, so any write through it would fail; a real deployment
//! points it at a streaming replica (see the README).

use fetchml_tests::app::spawn_app_with;
use fetchml_tests::{pg_server_url, run_blocking, unique_namespace};
use serde_json::json;
use sqlx::Connection;

/// A login role of the test's own, dropped on drop (roles are cluster-wide).
struct ReadOnlyRole {
    name: String,
}

impl Drop for ReadOnlyRole {
    fn drop(&mut self) {
        let (admin, drop) = (format!("{}/postgres", pg_server_url()), format!("DROP ROLE IF EXISTS {}", self.name));
        run_blocking(async move {
            if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut c).await;
            }
        });
    }
}

#[tokio::test]
async fn queries_read_through_read_url_and_the_projector_writes_through_url() {
    // Declared first, dropped last: after the app and its database.
    let role = ReadOnlyRole { name: format!("fetchml_ro_{}", unique_namespace().as_str().to_ascii_lowercase()) };
    let ro_user = role.name.clone();
    let app = spawn_app_with(|s| {
        s.postgres.read_url = s.postgres.url.replacen("postgres@", &format!("{ro_user}@"), 1);
        assert_ne!(s.postgres.read_url, s.postgres.url);
    })
    .await;
    // The tables exist now (the api migrated them through the writer's URL).
    let db = &app.db.as_ref().unwrap().name;
    let mut admin = sqlx::PgConnection::connect(&app.settings.postgres.url).await.unwrap();
    for stmt in [
        format!("CREATE ROLE {ro_user} LOGIN"),
        format!("ALTER ROLE {ro_user} SET default_transaction_read_only = on"),
        format!("GRANT CONNECT ON DATABASE {db} TO {ro_user}"),
        format!("GRANT USAGE ON SCHEMA public TO {ro_user}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ro_user}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&mut admin).await.unwrap();
    }

    // Commands, the projector (writer) and the queries (replica) all work.
    let (s, job) = app.submit(json!({"executor": "noop", "command": [], "experiment": "replica"})).await;
    assert_eq!(s, 202, "{job}");
    let seq = job["seq"].as_u64().unwrap();
    let (s, list) = app.get(&format!("/v1/jobs?after_seq={seq}")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"][0]["id"], job["id"], "{list}");
    let (s, exps) = app.get("/v1/experiments").await;
    assert_eq!(s, 200, "{exps}");
    // Through the read-only role: its sessions are the api's query pool.
    let readers: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2")
        .bind(&ro_user)
        .bind(db)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(readers >= 1, "no session of the read role: the queries did not use read_url");
    let (s, ready) = app.get("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["read_models"], "up", "{ready}");
    assert_eq!(ready["read_replica"], "up", "{ready}");
    // The role really cannot write (checked after the count above, which
    // must see the api's sessions only).
    let mut ro = sqlx::PgConnection::connect(&app.settings.postgres.read_url).await.unwrap();
    let e = sqlx::query("DELETE FROM projection_checkpoints").execute(&mut ro).await.unwrap_err();
    assert!(e.to_string().contains("read-only") || e.to_string().contains("permission"), "{e}");
    ro.close().await.unwrap();
    admin.close().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_replica_fails_the_reads_only_and_readyz_says_which() {
    // Nothing listens on a port just bound and released.
    let dead = format!("postgres://postgres@127.0.0.1:{}/fetchml", fetchml_tests::free_port());
    let app = spawn_app_with(|s| s.postgres.read_url = dead.clone()).await;
    let (s, job) = app.submit(json!({"executor": "noop", "command": []})).await;
    assert_eq!(s, 202, "{job}");
    let (s, body) = app.get("/v1/jobs").await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "read_model_unavailable", "{body}");
    let (s, ready) = app.get("/readyz").await;
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["read_models"], "up", "{ready}");
    assert_eq!(ready["read_replica"], "unavailable", "{ready}");
    // The projector still writes through the writer's URL.
    let writer = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let seq = job["seq"].as_u64().unwrap();
    fetchml_tests::eventually(std::time::Duration::from_secs(20), || {
        let writer = writer.clone();
        async move { (fetchml_projections::checkpoint(&writer).await.ok()? >= seq).then_some(()) }
    })
    .await;
    writer.close().await;
}
