//! Secrets: a job names them, the worker's host supplies them, and their
//! values reach the job's process and nothing else. Keys and tokens never
//! enter the log either.

use crate::helpers::{containing, everything_in};
use fetchml_tests::app::{TestApp, client_with_key, key_of, spawn_app, spawn_worker_with};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;

async fn store_of(app: &TestApp) -> fetchml_eventstore::EventStore {
    fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await
}

/// The log, the progress stream and every read model, as bytes and text.
async fn everywhere(app: &TestApp) -> (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>, String) {
    let store = store_of(app).await;
    let s = store.subjects();
    let events = everything_in(&store, &s.events_stream(), &s.all_events()).await;
    let progress = everything_in(&store, &s.progress_stream(), &s.all_progress()).await;
    let pool = sqlx::PgPool::connect(&app.settings.postgres.url).await.unwrap();
    let mut models = String::new();
    for t in ["admin_jobs", "researcher_jobs", "analyst_jobs", "experiment_metrics", "workers"] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {t} t")))
            .fetch_all(&pool)
            .await
            .unwrap();
        models.push_str(&rows.join("\n"));
    }
    (events, progress, models)
}

#[tokio::test]
async fn a_secret_reaches_the_process_and_no_event_progress_message_log_or_read_model() {
    let app = spawn_app().await;
    let from_file = format!("file-secret-{}", uuid::Uuid::new_v4().simple());
    let from_env = format!("env-secret-{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    std::fs::write(&file, format!("TRAIL_FILE_SECRET: {from_file}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let worker = spawn_worker_with(
        &app.settings,
        &[],
        &[("FETCHML_SECRETS__FILE", file.to_str().unwrap()), ("TRAIL_ENV_SECRET", &from_env)],
    );

    // The job prints both values (as a careless program would) and leaves
    // them in a file of its working directory, where only its host sees them.
    let script = "echo file=$TRAIL_FILE_SECRET env=$TRAIL_ENV_SECRET; \
                  printf '%s\\n%s\\n' \"$TRAIL_FILE_SECRET\" \"$TRAIL_ENV_SECRET\" > seen";
    let (s, job) = app
        .submit(json!({
            "command": [script], "shell": true, "experiment": "secrets",
            "secrets": ["TRAIL_FILE_SECRET", "TRAIL_ENV_SECRET"],
        }))
        .await;
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = app.until_terminal(id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["spec"]["secrets"], json!(["TRAIL_FILE_SECRET", "TRAIL_ENV_SECRET"]), "{done}");

    let seen = std::fs::read_to_string(worker.job_root.path().join("seen")).unwrap();
    assert_eq!(seen, format!("{from_file}\n{from_env}\n"), "the process got its secrets");

    let logs = app.http.get(app.url(&format!("/v1/jobs/{id}/logs"))).send().await.unwrap().text().await.unwrap();
    assert!(logs.contains("file=[secret] env=[secret]"), "the printed values are redacted: {logs}");

    let (s, _) = app.get(&format!("/v1/jobs?after_seq={}", done["seq"])).await;
    assert_eq!(s, 200);
    let (events, progress, models) = everywhere(&app).await;
    assert!(!events.is_empty() && !progress.is_empty() && models.contains("secrets"));
    for value in [&from_file, &from_env] {
        assert_eq!(containing(&events, value), Vec::<&str>::new(), "in the log");
        assert_eq!(containing(&progress, value), Vec::<&str>::new(), "in the progress stream");
        assert!(!models.contains(value.as_str()), "in a read model");
    }
}

#[tokio::test]
async fn a_secret_the_host_does_not_provide_fails_the_attempt_and_says_which() {
    let app = spawn_app().await;
    let _worker = spawn_worker_with(&app.settings, &[], &[]);
    let (s, job) =
        app.submit(json!({"command": ["true"], "secrets": ["TRAIL_NOWHERE"], "retry": {"max_attempts": 1}})).await;
    assert_eq!(s, 202, "{job}");
    let done = app.until_terminal(job["id"].as_str().unwrap()).await;
    // An infrastructure failure (another host may have it), out of attempts.
    assert_eq!((&done["state"], &done["failure_class"]), (&json!("dead_lettered"), &json!("infrastructure")), "{done}");
    assert!(done["reason"].as_str().unwrap().contains("secret TRAIL_NOWHERE is not provided"), "{done}");
}

#[tokio::test]
async fn env_values_that_look_like_credentials_are_refused_with_a_pointer_to_secrets() {
    let app = spawn_app().await;
    for (env, field) in [
        (json!({"WANDB_API_KEY": "abc"}), "env.WANDB_API_KEY"),
        (json!({"NOTE": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}), "env.NOTE"),
    ] {
        let (s, body) = app.submit(json!({"command": ["true"], "env": env})).await;
        assert_eq!(s, 422, "{body}");
        assert_eq!((&body["error"]["code"], &body["error"]["field"]), (&json!("secret_in_env"), &json!(field)));
        assert!(body["error"]["message"].as_str().unwrap().contains("secrets"), "{body}");
        // The batch route applies the same rule.
        let r = app
            .http
            .post(app.url("/v1/jobs/batch"))
            .json(&json!({"jobs": [{"command": ["true"]}, {"command": ["true"], "env": env}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], format!("jobs[1].{field}"), "{body}");
    }
    for (spec, code) in [
        (json!({"command": ["true"], "secrets": ["9LIVES"]}), "invalid_secret_name"),
        (json!({"command": ["true"], "secrets": ["FETCHML_X"]}), "invalid_secret_name"),
        (json!({"command": ["true"], "secrets": ["A", "A"]}), "duplicate_secret"),
        (json!({"command": ["true"], "secrets": ["A"], "env": {"A": "1"}}), "duplicate_secret"),
    ] {
        let (s, body) = app.submit(spec.clone()).await;
        assert_eq!((s, &body["error"]["code"]), (422, &json!(code)), "{spec}: {body}");
    }
    // Ordinary ML settings pass.
    let (s, body) =
        app.submit(json!({"executor": "noop", "command": [], "env": {"TOKENIZERS_PARALLELISM": "false"}})).await;
    assert_eq!(s, 202, "{body}");
}

#[tokio::test]
async fn api_keys_and_session_tokens_appear_nowhere_in_the_log() {
    let app = spawn_app().await;
    let key = key_of("alice");
    let secret_part = key.rsplit('_').next().unwrap().to_owned();
    // Log in, use the token, log out; fail with a near-miss of a real key and
    // with another user's key id; be refused; use the key itself.
    let r = reqwest::Client::new().post(app.url("/v1/auth/login")).json(&json!({"api_key": key})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let with_token = client_with_key(&token);
    assert_eq!(with_token.get(app.url("/v1/auth/whoami")).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(with_token.post(app.url("/v1/auth/logout")).send().await.unwrap().status().as_u16(), 204);
    // The last character changed (to one it is not: a key ending in 0 would
    // otherwise be its own near miss).
    let last = if key.ends_with('0') { '1' } else { '0' };
    let near_miss = format!("{}{last}", &key[..key.len() - 1]);
    assert_ne!(near_miss, key);
    let root_key = key_of("root");
    let root_id_with_alice_secret = format!("{}_{secret_part}", &root_key[..root_key.rfind('_').unwrap()]);
    for wrong in [&near_miss, &root_id_with_alice_secret] {
        let r = reqwest::Client::new().post(app.url("/v1/auth/login")).json(&json!({"api_key": wrong})).send().await;
        assert_eq!(r.unwrap().status().as_u16(), 401);
        let r = client_with_key(wrong).get(app.url("/v1/jobs")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let r = app.as_user("ana").post(app.url("/v1/jobs")).json(&json!({"command": ["true"]})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (s, _) = app.submit(json!({"executor": "noop", "command": []})).await;
    assert_eq!(s, 202);

    // The audit events of all this are stored in the background: wait for
    // the refusals and the logout, then scan the whole log.
    let store = store_of(&app).await;
    let s = store.subjects().clone();
    let (store, s) = (&store, &s);
    let events = fetchml_tests::eventually(std::time::Duration::from_secs(10), move || async move {
        let events = everything_in(store, &s.events_stream(), &s.all_events()).await;
        let text: Vec<String> = events.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect();
        let all = text.join("\n");
        (all.contains("user_logged_out") && all.contains("access_denied") && all.contains("authentication_failed"))
            .then_some(events)
    })
    .await;
    for needle in [key.as_str(), secret_part.as_str(), token.as_str(), &token[4..], near_miss.as_str()] {
        assert_eq!(containing(&events, needle), Vec::<&str>::new(), "a credential is in the log");
    }
}
