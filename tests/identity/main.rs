#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! Who may do what: the role matrix over every endpoint, failed logins
//! (recorded and throttled), sessions, and key revocation by reload.

use fetchml_tests::app::{TestApp, client_with_key, key_of, spawn_app, spawn_app_with};
use fetchml_tests::eventually;
use serde_json::{Value, json};
use std::time::Duration;

async fn call(client: &reqwest::Client, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn alices_job(app: &TestApp) -> String {
    let (s, b) = app.submit(json!({"command": ["true"], "env": {"PRIVATE_SETTING": "s3cr3t"}})).await;
    assert_eq!(s, 202);
    b["id"].as_str().unwrap().to_owned()
}

async fn user_events(app: &TestApp, user: &str) -> Vec<Value> {
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let events = store.load(&store.subjects().user(user)).await.unwrap();
    events.iter().map(|e| e.json().unwrap()).collect()
}

#[tokio::test]
async fn the_role_matrix_holds_on_every_endpoint() {
    // Repeated identical refusals are folded into one counted event per window.
    let app = spawn_app_with(|s| s.auth.refusal_window_secs = 1).await;
    // caller → expected status per endpoint, on a fresh queued job owned by alice
    // (group vision). Cancel runs before retry, so an allowed retry finds the
    // job cancelled and re-queues it (202).
    let table: &[(&str, [u16; 7])] = &[
        //          submit get  events cancel retry list workers
        ("root", [202, 200, 200, 202, 202, 200, 200]),
        ("alice", [202, 200, 200, 202, 202, 200, 200]),
        ("bob", [202, 404, 404, 404, 404, 200, 200]),
        ("carol", [202, 200, 200, 403, 403, 200, 403]),
        ("ana", [403, 200, 403, 403, 403, 200, 200]),
    ];
    for (user, expected) in table {
        let c = client_with_key(&key_of(user));
        let id = alices_job(&app).await;
        let u = |p: &str| app.url(p);
        let got = [
            call(&c, "POST", u("/v1/jobs"), Some(json!({"command": ["true"]}))).await.0,
            call(&c, "GET", u(&format!("/v1/jobs/{id}")), None).await.0,
            call(&c, "GET", u(&format!("/v1/jobs/{id}/events")), None).await.0,
            call(&c, "POST", u(&format!("/v1/jobs/{id}/cancel")), None).await.0,
            call(&c, "POST", u(&format!("/v1/jobs/{id}/retry")), None).await.0,
            call(&c, "GET", u("/v1/jobs"), None).await.0,
            call(&c, "GET", u("/v1/workers"), None).await.0,
        ];
        assert_eq!(&got, expected, "caller {user}");
    }
    // Without credentials, or with a wrong key, nothing but health answers.
    let anon = reqwest::Client::new();
    let wrong = client_with_key(&format!("fml_00000000_{}", "0".repeat(64)));
    for c in [&anon, &wrong] {
        for (m, p) in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/workers"), ("GET", "/v1/auth/whoami")] {
            let (s, b) = call(c, m, app.url(p), Some(json!({"command": ["true"]}))).await;
            assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthenticated")), "{m} {p}");
        }
    }
    assert_eq!(call(&anon, "GET", app.url("/healthz"), None).await.0, 200);
    // Each denial is on the record.
    let denied = eventually(Duration::from_secs(10), || async {
        let ev = user_events(&app, "bob").await;
        let n: u64 = ev
            .iter()
            .filter(|e| e["type"] == "access_denied")
            .map(|e| e["payload"]["count"].as_u64().unwrap_or(1))
            .sum();
        (n >= 4).then_some(ev)
    })
    .await;
    let d = denied.iter().find(|e| e["type"] == "access_denied").unwrap();
    assert_eq!(d["payload"]["permission"], "jobs:read");
    assert!(d["payload"]["resource"].as_str().unwrap().starts_with("job/"));
}

#[tokio::test]
async fn a_researcher_lists_only_own_jobs_and_an_analyst_sees_no_command_lines() {
    let app = spawn_app().await;
    let id = alices_job(&app).await;
    let bob = app.as_user("bob");
    let (s, b) = bob
        .post(app.url("/v1/jobs"))
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(s.as_u16(), 202);
    let seq = b.json::<Value>().await.unwrap()["seq"].as_u64().unwrap();
    let (_, list) = call(&bob, "GET", app.url(&format!("/v1/jobs?after_seq={seq}")), None).await;
    let owners: Vec<_> = list["items"].as_array().unwrap().iter().map(|j| j["owner"].as_str().unwrap()).collect();
    assert_eq!(owners, ["bob"]);

    let ana = app.as_user("ana");
    let (_, list) = call(&ana, "GET", app.url(&format!("/v1/jobs?after_seq={seq}")), None).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let text = list.to_string();
    for secret in ["s3cr3t", "PRIVATE_SETTING", "\"command\"", "\"owner\"", "alice", "bob"] {
        assert!(!text.contains(secret), "analyst list leaks {secret}: {text}");
    }
    let (s, job) = call(&ana, "GET", app.url(&format!("/v1/jobs/{id}")), None).await;
    assert_eq!(s, 200);
    assert!(job.get("spec").is_none() && job.get("owner").is_none(), "{job}");
    assert_eq!(job["state"], "queued");
    let (s, _) = call(&ana, "GET", app.url("/v1/jobs?owner=alice"), None).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn failed_authentications_are_recorded_and_throttled() {
    let app = spawn_app_with(|s| s.auth.max_failures_per_minute = 3).await;
    let alice_id = key_of("alice")[4..12].to_owned();
    let wrong_secret = client_with_key(&format!("fml_{alice_id}_{}", "0".repeat(64)));
    for _ in 0..3 {
        let (s, _) = call(&wrong_secret, "GET", app.url("/v1/jobs"), None).await;
        assert_eq!(s, 401);
    }
    let r = wrong_secret.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "too_many_attempts");
    // The source is throttled: even the right key waits now, as it is not
    // known-good yet (a cached key or a session would pass).
    let (s, _) = call(&app.http, "GET", app.url("/v1/jobs"), None).await;
    assert_eq!(s, 429);

    let failures = eventually(Duration::from_secs(10), || async {
        let ev = user_events(&app, "alice").await;
        let f: Vec<Value> = ev.into_iter().filter(|e| e["type"] == "authentication_failed").collect();
        (f.len() >= 3).then_some(f)
    })
    .await;
    assert_eq!(failures[0]["payload"]["reason"], "wrong secret");
    assert_eq!(failures[0]["payload"]["source"], "127.0.0.1");
}

#[tokio::test]
async fn an_unknown_key_is_recorded_under_the_unknown_user() {
    let app = spawn_app().await;
    let c = client_with_key(&format!("fml_0badc0de_{}", "1".repeat(64)));
    assert_eq!(call(&c, "GET", app.url("/v1/jobs"), None).await.0, 401);
    let ev = eventually(Duration::from_secs(10), || async {
        let ev = user_events(&app, fetchml_events::user::UNKNOWN_USER).await;
        (!ev.is_empty()).then_some(ev)
    })
    .await;
    assert_eq!(ev[0]["payload"]["reason"], "unknown key id");
}

#[tokio::test]
async fn a_login_gives_a_session_token_that_authenticates_and_is_recorded() {
    let app = spawn_app().await;
    let anon = reqwest::Client::new();
    let (s, b) = call(&anon, "POST", app.url("/v1/auth/login"), Some(json!({"api_key": key_of("carol")}))).await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().unwrap();
    assert!(token.starts_with("fms_"));
    assert_eq!(b["user"], "carol");
    let (s, me) = call(&client_with_key(token), "GET", app.url("/v1/auth/whoami"), None).await;
    assert_eq!((s, me["user"].as_str(), me["role"].as_str()), (200, Some("carol"), Some("groupie")));
    let (s, _) = call(&client_with_key("fms_nonsense"), "GET", app.url("/v1/auth/whoami"), None).await;
    assert_eq!(s, 401);
    let (s, b) = call(&anon, "POST", app.url("/v1/auth/login"), Some(json!({"api_key": "nope"}))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthenticated")));
    let ev = eventually(Duration::from_secs(10), || async {
        let ev = user_events(&app, "carol").await;
        ev.iter().any(|e| e["type"] == "user_authenticated" && e["payload"]["method"] == "login").then_some(ev)
    })
    .await;
    assert!(ev.iter().all(|e| e["actor"].is_object()));
}

#[tokio::test]
async fn a_key_removed_from_the_config_stops_working_after_the_reload() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let original = std::fs::read_to_string(fetchml_tests::app::users_file()).unwrap();
    std::fs::write(file.path(), &original).unwrap();
    let path = file.path().to_owned();
    let app = spawn_app_with(|s| s.auth.users_file = path.clone()).await;
    assert_eq!(call(&app.http, "GET", app.url("/v1/jobs"), None).await.0, 200);
    // Drop alice's key (keep her user); the api notices the change by itself.
    let alice_id = &key_of("alice")[4..12];
    let revoked: String =
        original.lines().map(|l| if l.contains(alice_id) { "    keys: []" } else { l }).collect::<Vec<_>>().join("\n");
    assert_ne!(revoked, original);
    std::fs::write(file.path(), revoked).unwrap();
    eventually(Duration::from_secs(10), || async {
        (call(&app.http, "GET", app.url("/v1/jobs"), None).await.0 == 401).then_some(())
    })
    .await;
    // Others are unaffected.
    assert_eq!(call(&app.as_user("bob"), "GET", app.url("/v1/jobs"), None).await.0, 200);
}
