#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! Live streams over a real WebSocket: replay then tail through the seam,
//! resume after reconnect, backpressure, role filtering, protocol errors; the
//! plain-HTTP log follower; and the job list as of a past sequence.

use fetchml_tests::app::{TestApp, key_of, spawn_app, spawn_app_with, spawn_worker};
use fetchml_tests::eventually;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connects as `user`; `rcvbuf` shrinks the socket's receive buffer (slow client).
async fn connect(app: &TestApp, user: &str, rcvbuf: Option<u32>) -> Ws {
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of(user)).parse().unwrap());
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b).unwrap();
    }
    let tcp = sock.connect(app.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], 1);
    ws
}

async fn next_json(ws: &mut Ws) -> Value {
    fetchml_tests::next_ws_json(ws).await
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Reads `message`s of subscription `sub` until `n` have arrived (the items
/// of `messages` frames count one each, as the `message` they stand for).
async fn collect(ws: &mut Ws, sub: &str, n: usize) -> Vec<Value> {
    collect_frames(ws, sub, n).await.0
}

/// [`collect`], and the number of frames the messages came in.
async fn collect_frames(ws: &mut Ws, sub: &str, n: usize) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut frames = 0;
    while out.len() < n {
        let m = next_json(ws).await;
        if m["type"] == "message" && m["sub"] == sub {
            out.push(m);
            frames += 1;
        } else if m["type"] == "messages" && m["sub"] == sub {
            let items = m["items"].as_array().unwrap();
            assert!(!items.is_empty(), "an empty batch: {m}");
            out.extend(items.iter().map(|i| as_message(&m, i)));
            frames += 1;
        } else {
            assert!(m["type"] == "subscribed", "unexpected {m}");
        }
    }
    (out, frames)
}

/// An item of a `messages` frame as the `message` frame it stands for.
fn as_message(frame: &Value, item: &Value) -> Value {
    json!({"type": "message", "sub": frame["sub"], "stream": frame["stream"], "seq": item["seq"],
        "subject_kind": item["subject_kind"], "data": item["data"]})
}

async fn submit(app: &TestApp, client: &reqwest::Client, spec: Value) -> Value {
    let r = client.post(app.url("/v1/jobs")).json(&spec).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.json().await.unwrap()
}

#[tokio::test]
async fn a_replay_that_starts_during_appends_delivers_every_event_once_in_order() {
    let app = spawn_app().await;
    let http = app.http.clone();
    let url = app.url("/v1/jobs");
    let writer = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..200 {
            let r = http.post(&url).json(&json!({"executor": "noop", "command": []})).send().await.unwrap();
            seqs.push(r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap());
        }
        seqs
    });
    // Subscribe while the writer is busy: the replay meets the live tail.
    eventually(Duration::from_secs(20), || async {
        let (_, b) = (0, app.http.get(app.url("/v1/jobs?limit=60")).send().await.ok()?.json::<Value>().await.ok()?);
        (b["items"].as_array()?.len() >= 50).then_some(())
    })
    .await;
    let mut ws = connect(&app, "alice", None).await;
    send(&mut ws, json!({"op": "subscribe", "id": "all", "stream": "events", "target": "all", "from": "beginning"}))
        .await;
    let seqs = writer.await.unwrap();
    let got: Vec<u64> = collect(&mut ws, "all", 200).await.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or duplicated: {got:?}");
    assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), seqs.into_iter().collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn a_client_that_reconnects_from_its_last_sequence_misses_nothing_and_repeats_nothing() {
    let app = spawn_app().await;
    for _ in 0..10 {
        submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    }
    let mut ws = connect(&app, "alice", None).await;
    send(&mut ws, json!({"op": "subscribe", "id": "s", "stream": "events", "target": "all", "from": "beginning"}))
        .await;
    let first = collect(&mut ws, "s", 6).await;
    drop(ws);
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    for _ in 0..10 {
        submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    }
    let mut ws = connect(&app, "alice", None).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "stream": "events", "target": "all", "from": {"seq": last + 1}}),
    )
    .await;
    let rest = collect(&mut ws, "s", 14).await;
    let all: Vec<u64> = first.iter().chain(&rest).map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(all.len(), 20);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_while_another_keeps_receiving() {
    slow_and_fast_clients(false).await;
}

/// The same with batched frames: the slow client's `lagged` says to resume
/// right after the last message of the last frame it got, whatever the
/// frames held.
#[tokio::test]
async fn a_batching_client_that_stops_reading_is_cut_off_and_resumes_without_a_gap() {
    slow_and_fast_clients(true).await;
}

async fn slow_and_fast_clients(batch: bool) {
    let app = spawn_app_with(|s| {
        s.streaming.buffer = 64;
        s.streaming.send_timeout_ms = 300;
    })
    .await;
    let job = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let job_id: fetchml_events::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let sub = json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "from": "live", "batch": batch});
    let mut slow = connect(&app, "alice", Some(4096)).await;
    send(&mut slow, sub.clone()).await;
    let mut fast = connect(&app, "alice", None).await;
    send(&mut fast, sub).await;
    for ws in [&mut slow, &mut fast] {
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    // Flood the job's progress subject directly.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let subject = store.subjects().progress(&fetchml_events::UserName::parse("alice").unwrap(), job_id, "log");
    let js = store.jetstream().clone();
    let n = 40_000usize;
    let flood = async move {
        let pad = "x".repeat(200);
        let mut acks = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let body = json!({"job_id": job_id, "attempt": 1, "stream": "stdout", "line": format!("{i} {pad}")});
            acks.push(std::future::IntoFuture::into_future(
                js.publish(subject.clone(), bytes::Bytes::from(body.to_string())).await.unwrap(),
            ));
            if acks.len() > 512 {
                acks.next().await.unwrap().unwrap();
            }
        }
        while let Some(a) = acks.next().await {
            a.unwrap();
        }
    };
    // The fast client gets every message, in order, while the slow one sleeps.
    let (got, ()) = tokio::join!(collect(&mut fast, "p", n), flood);
    assert!(got.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    let last_seq = got.last().unwrap()["seq"].as_u64().unwrap();

    // Now the slow client reads: some messages, then where to resume, then 4008.
    let mut seen = Vec::new();
    let resume_from = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match m["type"].as_str().unwrap() {
                    "message" => seen.push(m["seq"].as_u64().unwrap()),
                    "messages" if batch => {
                        seen.extend(m["items"].as_array().unwrap().iter().map(|i| i["seq"].as_u64().unwrap()))
                    }
                    "lagged" => break m["resume_from"].as_u64().unwrap(),
                    other => panic!("unexpected {other}"),
                }
            }
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected a lagged notice, got {other:?}"),
        }
    };
    assert!(seen.len() < n, "the slow client was never cut off");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break f,
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected close, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 4008);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "out of order or repeated");
    assert_eq!(resume_from, seen.last().map(|s| s + 1).unwrap_or(resume_from));
    // Resuming from there delivers the rest without a gap.
    let mut again = connect(&app, "alice", None).await;
    send(&mut again, json!({"op": "subscribe", "id": "r", "stream": "progress", "target": {"job": job_id}, "from": {"seq": resume_from}})).await;
    let first = collect(&mut again, "r", 1).await;
    assert_eq!(first[0]["seq"].as_u64().unwrap(), resume_from);
    assert!(resume_from <= last_seq);
}

#[tokio::test]
async fn a_researcher_sees_only_own_jobs_and_an_analyst_no_log_line() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let script = r###"echo secret-log-line; echo '##fetchml {"metric": "loss", "value": 1.5}'"###;
    let mine = submit(&app, &app.http, json!({"command": ["sh", "-c", script], "env": {"K": "hidden-env"}})).await;
    let theirs = submit(&app, &app.as_user("bob"), json!({"executor": "noop", "command": []})).await;
    app.until_terminal(mine["id"].as_str().unwrap()).await;
    let root = app.as_user("root");
    let theirs_url = app.url(&format!("/v1/jobs/{}", theirs["id"].as_str().unwrap()));
    eventually(Duration::from_secs(60), || async {
        let j: Value = root.get(&theirs_url).send().await.ok()?.json().await.ok()?;
        (j["state"] == "succeeded").then_some(())
    })
    .await;

    let mut ws = connect(&app, "alice", None).await;
    send(&mut ws, json!({"op": "subscribe", "id": "e", "stream": "events", "target": "all", "from": "beginning"}))
        .await;
    let got = collect(&mut ws, "e", 3).await;
    assert!(
        got.iter().all(|m| m["data"]["aggregate_id"].as_str().unwrap().replace('-', "")
            == mine["id"].as_str().unwrap().replace('-', "")),
        "{got:?}"
    );
    // Bob's job is refused, and the refusal is recorded.
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "b", "stream": "events", "target": {"job": theirs["id"]}, "from": "beginning"}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("job_not_found"), Some("b"))
    );

    let mut ana = connect(&app, "ana", None).await;
    send(&mut ana, json!({"op": "subscribe", "id": "l", "stream": "progress", "target": "all", "kinds": ["log"], "from": "beginning"})).await;
    let e = next_json(&mut ana).await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("forbidden")));
    send(&mut ana, json!({"op": "subscribe", "id": "p", "stream": "progress", "target": "all", "from": "beginning"}))
        .await;
    let m = collect(&mut ana, "p", 1).await;
    assert_eq!(m[0]["subject_kind"], "metric");
    send(&mut ana, json!({"op": "subscribe", "id": "e", "stream": "events", "target": "all", "from": "beginning"}))
        .await;
    let events = collect(&mut ana, "e", 6).await;
    let text = serde_json::to_string(&events).unwrap();
    for leak in ["secret-log-line", "hidden-env", "alice", "bob", "echo"] {
        assert!(!text.contains(leak), "analyst stream shows {leak}");
    }
}

#[tokio::test]
async fn malformed_or_oversized_messages_get_a_protocol_error_and_the_session_goes_on() {
    let app = spawn_app().await;
    let mut ws = connect(&app, "alice", None).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "invalid_message");
    send(&mut ws, json!({"op": "subscribe", "id": "x", "stream": "events", "target": "everything"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "invalid_message");
    let big = json!({"op": "ping", "pad": "y".repeat(100_000)}).to_string();
    ws.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "message_too_large");
    ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "binary_not_supported");
    send(&mut ws, json!({"op": "unsubscribe", "id": "nope"})).await;
    assert_eq!(next_json(&mut ws).await["code"], "unknown_subscription");
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    // Without credentials the upgrade itself is refused.
    let req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn logs_over_plain_http_replay_and_follow_until_the_job_ends() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let script = "for i in 1 2 3; do echo line-$i; sleep 0.3; done";
    let job = submit(&app, &app.http, json!({"command": ["sh", "-c", script]})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.until_state(&id, "running").await;
    // Follow while it runs: the body ends when the job ends.
    let body =
        app.http.get(app.url(&format!("/v1/jobs/{id}/logs?follow=true"))).send().await.unwrap().text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let texts: Vec<&str> = lines.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(texts, ["line-1", "line-2", "line-3"]);
    // Replay after the fact, and resume from a sequence.
    let body = app.http.get(app.url(&format!("/v1/jobs/{id}/logs"))).send().await.unwrap().text().await.unwrap();
    assert_eq!(body.lines().count(), 3);
    let second = lines[1]["seq"].as_u64().unwrap();
    let body = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}/logs?from_seq={second}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.lines().count(), 2);
    // Another researcher may not read them.
    let r = app.as_user("bob").get(app.url(&format!("/v1/jobs/{id}/logs"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn the_job_list_as_of_a_past_sequence_is_rebuilt_from_the_log() {
    let app = spawn_app().await;
    let a = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let b = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let then = b["seq"].as_u64().unwrap();
    let r = app.http.post(app.url(&format!("/v1/jobs/{}/cancel", a["id"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let past: Value =
        app.http.get(app.url(&format!("/v1/jobs?as_of_seq={then}"))).send().await.unwrap().json().await.unwrap();
    let states: Vec<&str> = past["items"].as_array().unwrap().iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["queued", "queued"]);
    assert_eq!(past["as_of_seq"].as_u64(), Some(then));
    let now: Value = app.http.get(app.url("/v1/jobs?as_of_seq=1000000")).send().await.unwrap().json().await.unwrap();
    assert_eq!(now["items"].as_array().unwrap().len(), 3);
    assert!(now["items"].as_array().unwrap().iter().any(|j| j["state"] == "cancelled"));
    let bob: Value =
        app.as_user("bob").get(app.url("/v1/jobs?as_of_seq=1000000")).send().await.unwrap().json().await.unwrap();
    assert!(bob["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn connections_beyond_the_per_user_cap_are_closed_with_4029() {
    let app = spawn_app_with(|s| s.streaming.max_connections_per_user = 2).await;
    let _a = connect(&app, "alice", None).await;
    let _b = connect(&app, "alice", None).await;
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (mut third, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), third.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4029),
        other => panic!("expected close 4029, got {other:?}"),
    }
    // Another user is not affected.
    let _c = connect(&app, "bob", None).await;
}

#[tokio::test]
async fn live_followers_of_one_job_share_one_consumer_and_each_gets_every_message() {
    let app = spawn_app().await;
    let job = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let job_id: fetchml_events::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let sub = json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "from": "live"});
    let mut clients = Vec::new();
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let progress = store.subjects().progress_stream();
    let consumers = || async {
        let mut s = store.jetstream().get_stream(&progress).await.unwrap();
        s.info().await.unwrap().state.consumer_count
    };
    for (i, user) in ["alice", "alice", "alice", "root", "ana"].into_iter().enumerate() {
        let mut ws = connect(&app, user, None).await;
        send(&mut ws, sub.clone()).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        clients.push((user, ws));
        // The owner and the admin see the same subjects: one consumer. The
        // analyst's subscription leaves out the log lines: a second one.
        assert_eq!(consumers().await, if i < 4 { 1 } else { 2 }, "after {user}");
    }
    let subject = store.subjects().progress(&fetchml_events::UserName::parse("alice").unwrap(), job_id, "metric");
    for i in 0..10 {
        let body = json!({"job_id": job_id, "attempt": 1, "name": "loss", "value": i, "step": i});
        store.jetstream().publish(subject.clone(), body.to_string().into()).await.unwrap().await.unwrap();
    }
    for (user, ws) in &mut clients {
        let got = collect(ws, "p", 10).await;
        let values: Vec<i64> = got.iter().map(|m| m["data"]["value"].as_i64().unwrap()).collect();
        assert_eq!(values, (0..10).collect::<Vec<_>>(), "{user}");
        assert!(got.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    }
    // The last follower to leave stops the shared consumer.
    for (_, mut ws) in clients {
        let _ = ws.close(None).await;
    }
    eventually(Duration::from_secs(10), || async { (consumers().await == 0).then_some(()) }).await;
}

/// Publishes `n` log lines of `job_id` (owner alice) pipelined; returns their
/// sequences.
async fn flood_log(app: &TestApp, job_id: fetchml_events::JobId, n: usize, pad: usize) -> Vec<u64> {
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let subject = store.subjects().progress(&fetchml_events::UserName::parse("alice").unwrap(), job_id, "log");
    let js = store.jetstream().clone();
    let pad = "x".repeat(pad);
    let mut acks = futures::stream::FuturesOrdered::new();
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({"job_id": job_id, "attempt": 1, "stream": "stdout", "line": format!("{i} {pad}")});
        acks.push_back(std::future::IntoFuture::into_future(
            js.publish(subject.clone(), bytes::Bytes::from(body.to_string())).await.unwrap(),
        ));
        if acks.len() > 256 {
            seqs.push(acks.next().await.unwrap().unwrap().sequence);
        }
    }
    while let Some(a) = acks.next().await {
        seqs.push(a.unwrap().sequence);
    }
    seqs
}

/// Clients that take batches, live (through the shared consumer) and from
/// the beginning (a consumer of their own), next to one that does not: each
/// gets every message once, in order; batched frames hold many messages and
/// stay within `max_message_bytes`; the other client gets one frame a message.
#[tokio::test]
async fn batched_frames_carry_every_message_once_in_order_within_the_size_bound() {
    let max = 4096;
    let app = spawn_app_with(|s| s.streaming.max_message_bytes = max).await;
    let job = submit(&app, &app.http, json!({"executor": "noop", "command": []})).await;
    let job_id: fetchml_events::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let subscribe = |from: Value, batch: bool| json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "kinds": ["log"], "from": from, "batch": batch});
    let mut live = connect(&app, "alice", None).await;
    send(&mut live, subscribe(json!("live"), true)).await;
    let mut single = connect(&app, "alice", None).await;
    send(&mut single, subscribe(json!("live"), false)).await;
    for ws in [&mut live, &mut single] {
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    // Lines of about 300 bytes: a dozen fit a frame.
    let n = 5000;
    let seqs = flood_log(&app, job_id, n, 300).await;
    let mut replay = connect(&app, "alice", None).await;
    send(&mut replay, subscribe(json!("beginning"), true)).await;

    for (name, ws, batched) in
        [("live", &mut live, true), ("replay", &mut replay, true), ("single", &mut single, false)]
    {
        let mut got = Vec::new();
        let mut frames = 0;
        let mut largest = 0;
        while got.len() < n {
            let t = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Ping(_))) => continue,
                other => panic!("{name}: {other:?}"),
            };
            let m: Value = serde_json::from_str(&t).unwrap();
            match m["type"].as_str().unwrap() {
                "subscribed" => continue,
                "message" => got.push(m),
                "messages" => {
                    assert!(batched, "{name} did not ask for batches");
                    let items = m["items"].as_array().unwrap();
                    assert!(t.len() <= max || items.len() == 1, "{name}: a frame of {} bytes", t.len());
                    largest = largest.max(items.len());
                    got.extend(items.iter().map(|i| as_message(&m, i)));
                }
                other => panic!("{name}: unexpected {other}"),
            }
            frames += 1;
        }
        let got_seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(got_seqs, seqs, "{name}: every message once, in order");
        let lines: Vec<String> =
            got.iter().map(|m| m["data"]["line"].as_str().unwrap().split(' ').next().unwrap().to_owned()).collect();
        assert_eq!(lines, (0..n).map(|i| i.to_string()).collect::<Vec<_>>(), "{name}");
        assert!(got.iter().all(|m| m["sub"] == "p" && m["stream"] == "progress" && m["subject_kind"] == "log"));
        if batched {
            assert!(largest > 1 && frames < n, "{name}: {n} messages in {frames} frames, at most {largest} a frame");
        } else {
            assert_eq!(frames, n, "{name}: one frame a message");
        }
    }
    // Nothing more: no message was repeated after the last.
    send(&mut live, json!({"op": "ping"})).await;
    assert_eq!(next_json(&mut live).await["type"], "pong");
}
