//! `GET /v1/audit`: every family of the log for `audit:read`, filtered and
//! paged; refusals everywhere (routes, streams, logs, experiments) and
//! failed logins are on it with actor and source.

use fetchml_tests::app::{TestApp, key_of, spawn_app};
use fetchml_tests::eventually;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn audit(app: &TestApp, query: &str) -> Value {
    let r = app.as_user("root").get(app.url(&format!("/v1/audit?{query}"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{query}");
    r.json().await.unwrap()
}

fn items(page: &Value) -> Vec<Value> {
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn refusals_and_failed_logins_everywhere_are_listed_with_actor_and_source() {
    let app = spawn_app().await;
    let (_, job) = app.submit(json!({"executor": "sleep", "command": ["60000"]})).await;
    let id = job["id"].as_str().unwrap();
    let ana = app.as_user("ana");
    // A route (cancel), logs, an experiment read by a role without it, the
    // audit itself, a stream subscription, and a failed login.
    let refused = [
        ana.post(app.url(&format!("/v1/jobs/{id}/cancel"))).send().await.unwrap().status().as_u16(),
        ana.get(app.url(&format!("/v1/jobs/{id}/logs"))).send().await.unwrap().status().as_u16(),
        app.as_user("alice").get(app.url("/v1/audit")).send().await.unwrap().status().as_u16(),
        ana.get(app.url("/v1/audit")).send().await.unwrap().status().as_u16(),
    ];
    assert_eq!(refused, [403, 403, 403, 403]);
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("ana")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["type"], "hello");
    let sub = json!({"op": "subscribe", "id": "l", "stream": "progress", "target": "all", "kinds": ["log"]});
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["code"], "forbidden");
    let r = reqwest::Client::new()
        .post(app.url("/v1/auth/login"))
        .json(&json!({"api_key": "fml_00000000_0000000000000000000000000000000000000000000000000000000000000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Audit events are stored in the background: wait until all are listed.
    let page = eventually(Duration::from_secs(10), || async {
        let page = audit(&app, "outcome=refused&limit=500").await;
        (items(&page).len() >= 6).then_some(page)
    })
    .await;
    let refusals = items(&page);
    assert!(refusals.iter().all(|e| e["outcome"] == "refused" && e["family"] == "user"), "{page}");
    assert!(refusals.iter().all(|e| e["source"] == "127.0.0.1"), "every refusal names its source: {page}");
    let resources: Vec<&str> = refusals
        .iter()
        .filter(|e| e["type"] == "access_denied")
        .map(|e| e["payload"]["resource"].as_str().unwrap())
        .collect();
    for what in [format!("job/{id}"), format!("job/{id}/logs"), "audit".to_owned()] {
        assert!(resources.iter().any(|r| *r == what), "{what} not in {resources:?}");
    }
    assert!(resources.iter().any(|r| r.starts_with("stream/")), "{resources:?}");
    let by_alice = audit(&app, "actor=alice&type=access_denied").await;
    assert_eq!(items(&by_alice).len(), 1, "{by_alice}");
    assert_eq!(items(&by_alice)[0]["payload"]["permission"], "audit:read");
    let failed = audit(&app, "type=authentication_failed").await;
    assert_eq!(items(&failed).len(), 1, "{failed}");
    assert_eq!(items(&failed)[0]["aggregate_id"], "_unknown");
}

#[tokio::test]
async fn the_trail_pages_newest_or_oldest_first_and_filters_by_family_aggregate_and_time() {
    let app = spawn_app().await;
    let before = chrono::Utc::now();
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let (s, job) = app.submit(json!({"executor": "noop", "command": []})).await;
        assert_eq!(s, 202);
        jobs.push(job);
    }
    let (s, _) = app.post(&format!("/v1/jobs/{}/cancel", jobs[0]["id"].as_str().unwrap())).await;
    assert_eq!(s, 202);

    // Newest first, two at a time, down to the start: every job event once,
    // in descending order, and no more pages after the first event.
    let mut seen = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let q = match cursor {
            Some(c) => format!("family=job&limit=2&cursor={c}"),
            None => "family=job&limit=2".to_owned(),
        };
        let page = audit(&app, &q).await;
        seen.extend(items(&page).iter().map(|e| e["seq"].as_u64().unwrap()));
        match page["next"].as_u64() {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "strictly newest first, no repeats");
    assert_eq!(seen.len(), 4, "three job_queued and a job_cancelled: {seen:?}");

    // Oldest first gives the same events ascending.
    let page = audit(&app, "family=job&order=oldest").await;
    let asc: Vec<u64> = items(&page).iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(asc, seen.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(page["next"], Value::Null);

    // One aggregate: the cancelled job's two events, with its chain.
    let first = jobs[0]["id"].as_str().unwrap();
    let page = audit(&app, &format!("family=job&aggregate={first}&order=oldest")).await;
    let types: Vec<&str> = page["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job_queued", "job_cancelled"]);
    assert!(items(&page).iter().all(|e| e["aggregate_id"] == first && e["hash"].as_str().unwrap().len() == 64));

    // Time: nothing before the test started, everything since.
    let t = |d: chrono::DateTime<chrono::Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let page = audit(&app, &format!("family=job&until={}", t(before).replace('+', "%2B"))).await;
    assert_eq!(items(&page).len(), 0, "{page}");
    let page = audit(&app, &format!("family=job&since={}&order=oldest", t(before).replace('+', "%2B"))).await;
    assert_eq!(items(&page).len(), 4, "{page}");

    // A filter that matches nothing answers at once, with no next page.
    let page = audit(&app, "type=no_such_event").await;
    assert_eq!((items(&page).len(), &page["next"]), (0, &Value::Null));
    let page = audit(&app, "family=worker&order=oldest").await;
    assert_eq!((items(&page).len(), &page["next"]), (0, &Value::Null));

    // Bad parameters are 400 with the parameter named.
    for q in ["family=jobs", "limit=0", "limit=501", "actor=a.b", "cursor=999999", "order=sideways", "nope=1"] {
        let r = app.as_user("root").get(app.url(&format!("/v1/audit?{q}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{q}");
    }
}

#[tokio::test]
async fn an_auditors_stream_of_everything_includes_logins_and_refusals() {
    let app = spawn_app().await;
    let r = app.as_user("ana").post(app.url("/v1/jobs")).json(&json!({"command": ["true"]})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("root")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["type"], "hello");
    let sub = json!({"op": "subscribe", "id": "a", "stream": "events", "target": "all", "from": "beginning"});
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    let mut types = Vec::new();
    while !types.contains(&"access_denied".to_owned()) {
        let m = fetchml_tests::next_ws_json(&mut ws).await;
        if m["type"] == "message" {
            types.push(m["subject_kind"].as_str().unwrap_or("").to_owned());
        }
    }
    // A researcher's everything is still only jobs.
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["type"], "hello");
    let (_, job) = app.submit(json!({"executor": "noop", "command": []})).await;
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    loop {
        let m = fetchml_tests::next_ws_json(&mut ws).await;
        if m["type"] == "message" {
            let text = m.to_string();
            assert!(!text.contains("access_denied") && !text.contains("user_authenticated"), "{m}");
            if text.contains(job["id"].as_str().unwrap()) {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    let _ = ws.next().await;
}
