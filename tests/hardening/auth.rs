//! Hardening tests: authentication, authorization and refusals. Throttling
//! never locks out a known-good credential (defect 2); logout, and revocation
//! by a users-file reload, end sessions and open sockets (defect 6); repeated
//! refusals are folded into counted events (defect 12); two `Authorization`
//! headers are refused (defect 13); one visibility policy answers the job
//! read, the stream and the logs route alike, and every refusal is recorded.

use fetchml_tests::app::{TestApp, client_with_key, key_of, spawn_app, spawn_app_with, users_file};
use fetchml_tests::eventually;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client sending `key` from the loopback address `127.0.0.<last>`: several
/// "machines" against one api.
fn client_from(last: u8, key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .build()
        .unwrap()
}

async fn status(client: &reqwest::Client, url: String) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

async fn user_events(app: &TestApp, user: &str) -> Vec<Value> {
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let events = store.load(&store.subjects().user(user)).await.unwrap();
    events.iter().map(|e| e.json().unwrap()).collect()
}

/// A private copy of the test users file, edited by `edit`, that the test may
/// rewrite (the api reloads it when it changes).
fn users_file_with(edit: impl FnOnce(String) -> String) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), edit(std::fs::read_to_string(users_file()).unwrap())).unwrap();
    file
}

/// The users file without `name`'s entry.
fn without_user(yaml: &str, name: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in yaml.lines() {
        if line.starts_with("  - name: ") {
            skipping = line == format!("  - name: {name}");
        }
        if !skipping {
            out.push(line);
        }
    }
    out.join("\n") + "\n"
}

async fn ws_connect(app: &TestApp, bearer: &str) -> Ws {
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    fetchml_tests::next_ws_json(ws).await
}

/// The close code the server ends `ws` with (pings and messages skipped).
async fn close_code(ws: &mut Ws) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("a close within 30 s") {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error instead of a close frame: {e}"),
        }
    }
}

async fn login(app: &TestApp, user: &str) -> String {
    let r = reqwest::Client::new()
        .post(app.url("/v1/auth/login"))
        .json(&json!({"api_key": key_of(user)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
}

/// Defect 2: one address whose script keeps failing (a lab behind one NAT)
/// is throttled for new, unproven credentials only; a cached key and a valid
/// session from the same address keep working.
#[tokio::test]
async fn a_throttled_address_still_serves_known_good_credentials() {
    let app = spawn_app_with(|s| s.auth.max_failures_per_minute = 3).await;
    let nat = 3;
    let alice = client_from(nat, &key_of("alice"));
    assert_eq!(status(&alice, app.url("/v1/jobs")).await, 200); // verified once, now cached
    let bob = client_from(nat, &login(&app, "bob").await);
    let bad_script = client_from(nat, &format!("fml_0badc0de_{}", "1".repeat(64)));
    for _ in 0..3 {
        assert_eq!(status(&bad_script, app.url("/v1/jobs")).await, 401);
    }
    let r = bad_script.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Unknown session tokens from there are refused the same way.
    assert_eq!(status(&client_from(nat, &format!("fms_{}", "2".repeat(64))), app.url("/v1/jobs")).await, 429);
    // Known-good credentials from the same address still work.
    assert_eq!(status(&alice, app.url("/v1/jobs")).await, 200);
    assert_eq!(status(&bob, app.url("/v1/auth/whoami")).await, 200);
    // Another address is not affected at all.
    assert_eq!(status(&client_from(4, &key_of("root")), app.url("/v1/jobs")).await, 200);
}

/// Defect 2: wrong secrets naming alice's public key id, from elsewhere, do
/// not lock alice's valid key out.
#[tokio::test]
async fn wrong_secrets_naming_a_key_id_do_not_lock_its_owner_out() {
    let app = spawn_app_with(|s| s.auth.max_failures_per_minute = 3).await;
    let alice_id = &key_of("alice")[4..12];
    let attacker = client_from(5, &format!("fml_{alice_id}_{}", "0".repeat(64)));
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(status(&attacker, app.url("/v1/jobs")).await);
    }
    assert_eq!(answers, [401, 401, 401, 429, 429]);
    // alice's first use of her key (not cached yet), from her own machine.
    assert_eq!(status(&client_from(6, &key_of("alice")), app.url("/v1/jobs")).await, 200);
}

/// Defect 6: `POST /v1/auth/logout` ends the presented session.
#[tokio::test]
async fn logout_ends_the_session_it_is_sent_with() {
    let app = spawn_app().await;
    let token = login(&app, "carol").await;
    let carol = client_with_key(&token);
    assert_eq!(status(&carol, app.url("/v1/auth/whoami")).await, 200);
    let r = carol.post(app.url("/v1/auth/logout")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = carol.get(app.url("/v1/auth/whoami")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "unauthenticated");
    // An API key is not a session: it is revoked in the users file.
    let r = app.http.post(app.url("/v1/auth/logout")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_a_session");
    // The logout is on record.
    eventually(Duration::from_secs(10), || async {
        user_events(&app, "carol").await.iter().any(|e| e["type"] == "user_logged_out").then_some(())
    })
    .await;
}

/// Defect 6: a logout also closes the sockets opened with that session.
#[tokio::test]
async fn logout_closes_the_sockets_of_the_session() {
    let app = spawn_app().await;
    let token = login(&app, "alice").await;
    let mut ws = ws_connect(&app, &token).await;
    let r = client_with_key(&token).post(app.url("/v1/auth/logout")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(close_code(&mut ws).await, 4001);
}

/// Defect 6: removing a user (or one key) from the users file ends the
/// sessions made with it and closes the open sockets with 4001.
#[tokio::test]
async fn revoking_a_user_or_key_ends_its_sessions_and_sockets() {
    let file = users_file_with(|y| y);
    let path = file.path().to_owned();
    let app = spawn_app_with(|s| s.auth.users_file = path.clone()).await;
    let bob_token = login(&app, "bob").await;
    let alice_token = login(&app, "alice").await;
    let carol_token = login(&app, "carol").await;
    let mut bob_session_ws = ws_connect(&app, &bob_token).await;
    let mut bob_key_ws = ws_connect(&app, &key_of("bob")).await;
    let mut carol_ws = ws_connect(&app, &carol_token).await;
    // Remove bob altogether and alice's key (alice herself stays).
    let alice_id = &key_of("alice")[4..12];
    let original = std::fs::read_to_string(&path).unwrap();
    let revoked: String = without_user(&original, "bob")
        .lines()
        .map(|l| if l.contains(alice_id) { "    keys: []" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, revoked).unwrap();
    assert_eq!(close_code(&mut bob_session_ws).await, 4001);
    assert_eq!(close_code(&mut bob_key_ws).await, 4001);
    assert_eq!(status(&client_with_key(&bob_token), app.url("/v1/auth/whoami")).await, 401);
    assert_eq!(status(&client_with_key(&alice_token), app.url("/v1/auth/whoami")).await, 401);
    // carol is untouched: her session works and her socket still serves.
    assert_eq!(status(&client_with_key(&carol_token), app.url("/v1/auth/whoami")).await, 200);
    carol_ws.send(Message::Text(json!({"op": "ping"}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut carol_ws).await["type"], "pong");
}

/// Defect 13: two `Authorization` headers are ambiguous and refused.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let app = spawn_app().await;
    let r = reqwest::Client::new()
        .get(app.url("/v1/auth/whoami"))
        .header("authorization", format!("Bearer {}", key_of("bob")))
        .header("authorization", format!("Bearer {}", key_of("alice")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "ambiguous_credentials");
}

/// `n` submits by the analyst at once, each refused (403).
async fn refused_submits_by_ana(app: &fetchml_tests::app::TestApp, n: u64) {
    let ana = app.as_user("ana");
    let answers = futures::future::join_all((0..n).map(|_| {
        let ana = ana.clone();
        let url = app.url("/v1/jobs");
        async move { ana.post(url).json(&json!({"command": ["true"]})).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 403), "{answers:?}");
}

/// Defect 12: a burst of identical refused requests is on record as a few
/// events whose counts add up to the burst.
#[tokio::test]
async fn a_burst_of_identical_refusals_is_folded_into_counted_events() {
    let app = spawn_app_with(|s| s.auth.refusal_window_secs = 1).await;
    let burst: u64 = 200;
    refused_submits_by_ana(&app, burst).await;
    let denied = eventually(Duration::from_secs(20), || async {
        let ev: Vec<Value> = user_events(&app, "ana")
            .await
            .into_iter()
            .filter(|e| e["type"] == "access_denied" && e["payload"]["permission"] == "jobs:create")
            .collect();
        let total: u64 = ev.iter().map(|e| e["payload"]["count"].as_u64().unwrap_or(1)).sum();
        (total >= burst).then_some((ev, total))
    })
    .await;
    assert_eq!(denied.1, burst, "every refusal counted once");
    assert!(denied.0.len() <= 4, "{} events for one burst", denied.0.len());
}

/// Refusals of a burst are all stored even unfolded: audit appends to one
/// user's chain do not race each other into conflicts (and get lost).
#[tokio::test]
async fn every_refusal_of_a_burst_is_stored_when_folding_is_off() {
    let app = spawn_app_with(|s| s.auth.refusal_window_secs = 0).await;
    let burst: usize = 100;
    refused_submits_by_ana(&app, burst as u64).await;
    eventually(Duration::from_secs(30), || async {
        let n = user_events(&app, "ana").await.iter().filter(|e| e["type"] == "access_denied").count();
        (n == burst).then_some(())
    })
    .await;
}

/// One visibility policy: a `jobs:read:group` caller gets the same answer from
/// the job read, the logs route and the stream; an outsider gets "not found"
/// from all three.
#[tokio::test]
async fn a_group_reader_gets_one_answer_from_job_read_stream_and_logs() {
    // carol's role reads her group's jobs and their logs.
    let file = users_file_with(|y| {
        y.replace(
            "groupie: [jobs:create, jobs:read, jobs:read:group]",
            "groupie: [jobs:create, jobs:read, jobs:read:group, jobs:logs]",
        )
    });
    let path = file.path().to_owned();
    let app = spawn_app_with(|s| s.auth.users_file = path.clone()).await;
    let (s, job) = app.submit(json!({"command": ["true"]})).await;
    assert_eq!(s, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    for (user, read, logs, stream) in [("carol", 200, 200, "subscribed"), ("bob", 404, 404, "error")] {
        let c = app.as_user(user);
        assert_eq!(status(&c, app.url(&format!("/v1/jobs/{id}"))).await, read, "{user}: job read");
        assert_eq!(status(&c, app.url(&format!("/v1/jobs/{id}/logs"))).await, logs, "{user}: logs");
        let mut ws = ws_connect(&app, &key_of(user)).await;
        let sub = json!({"op": "subscribe", "id": "s", "stream": "progress", "target": {"job": id}, "kinds": ["log"]});
        ws.send(Message::Text(sub.to_string().into())).await.unwrap();
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["type"], stream, "{user}: stream {answer}");
        if stream == "error" {
            assert_eq!(answer["code"], "job_not_found");
        }
    }
}

/// Every refusal goes through the recorded path, the experiments routes' too.
#[tokio::test]
async fn an_experiments_refusal_is_recorded() {
    // eve may read experiments but no jobs at all.
    let eve = fetchml_identity::generate_key().unwrap();
    let file = users_file_with(|y| {
        y.replace("roles:\n", "roles:\n  browser: [experiments:read]\n")
            + &format!(
                "  - name: eve\n    role: browser\n    keys: [{{id: \"{}\", hash: \"{}\"}}]\n",
                eve.key_id, eve.hash
            )
    });
    let path = file.path().to_owned();
    let app = spawn_app_with(|s| s.auth.users_file = path.clone()).await;
    let r = client_with_key(&eve.key).get(app.url("/v1/experiments")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    let denied = eventually(Duration::from_secs(10), || async {
        user_events(&app, "eve").await.into_iter().find(|e| e["type"] == "access_denied")
    })
    .await;
    assert_eq!(denied["payload"]["resource"], "experiments");
}
