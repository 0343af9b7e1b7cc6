//! Hardening tests: transport. Connections that never finish their headers or
//! body, bodies declared too large, more connections than the limit (defect 3);
//! streaming routes that must end when the client leaves or the data does
//! (defects 4, 5); the WebSocket's slow-reader and oversized-frame closes
//! (defect 11); the transport's answers in the JSON error format and strict
//! query parameters on the logs route (defect 13).

use fetchml_tests::app::{TestApp, key_of, spawn_app, spawn_app_with, spawn_worker};
use fetchml_tests::eventually;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the server sends until it closes the connection (bounded: a
/// connection still open after `within` fails the test).
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open; it sent {:?}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw HTTP/1.1 response.
fn json_body(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn partial_headers_silence_and_idle_keep_alive_are_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.api.header_read_timeout_ms = 300).await;
    // Half a request, then nothing.
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let got = read_until_closed(&mut partial, Duration::from_secs(20)).await;
    assert!(!got.contains(" 200 "), "{got}");
    // Nothing at all.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(20)).await;
    // A finished request on a keep-alive connection, then silence.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut idle, Duration::from_secs(20)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_the_connection_closed() {
    let app = spawn_app_with(|s| s.api.body_timeout_ms = 300).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let head =
        "POST /v1/auth/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(20)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert_eq!(json_body(&got)["error"]["code"], "body_timeout", "{got}");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_at_once_and_no_100_continue() {
    let app = spawn_app().await;
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut tcp = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n{expect}\r\n",
            key_of("alice")
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // Not one byte of the body is sent: the answer comes anyway, and the
        // connection ends (the body is never read).
        let got = read_until_closed(&mut tcp, Duration::from_secs(20)).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        assert!(!got.contains("100 Continue"), "{got}");
        assert_eq!(json_body(&got)["error"]["code"], "body_too_large", "{got}");
    }
}

#[tokio::test]
async fn a_wrong_method_gets_405_in_the_json_format_with_allow() {
    let app = spawn_app().await;
    let r = app.http.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let allow = r.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(allow.contains("GET"), "Allow: {allow:?}");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "method_not_allowed");
    assert!(b["error"]["message"].is_string());
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_health_answers_once_they_close() {
    let app = spawn_app_with(|s| s.api.max_connections = 4).await;
    // Four connections that say nothing hold every slot.
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // The fifth is not served while they are open (it waits in the backlog).
    let mut fifth = TcpStream::connect(app.addr).await.unwrap();
    fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut first)).await;
    assert!(early.is_err(), "a connection beyond the limit was served");
    // Once they close, it is answered, and so is a new one.
    drop(holders);
    let got = read_until_closed(&mut fifth, Duration::from_secs(20)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let r = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A job of alice's with `lines` log lines, finished.
async fn finished_job_with_lines(app: &TestApp, lines: usize) -> String {
    let script = (1..=lines).map(|i| format!("echo line-{i}")).collect::<Vec<_>>().join("; ");
    let (s, job) = app.submit(json!({"command": ["sh", "-c", script]})).await;
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = app.until_terminal(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    id
}

async fn log_lines(app: &TestApp, path: &str) -> Vec<Value> {
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        app.http.get(app.url(path)).send().await.unwrap().text().await.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("{path} did not end"));
    r.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn progress_consumers(app: &TestApp) -> usize {
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let name = store.subjects().progress_stream();
    let mut s = store.jetstream().get_stream(name).await.unwrap();
    s.info().await.unwrap().state.consumer_count
}

#[tokio::test]
async fn reading_logs_past_the_end_ends_at_once_and_a_departed_follower_leaves_no_consumer() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let id = finished_job_with_lines(&app, 3).await;
    let all = log_lines(&app, &format!("/v1/jobs/{id}/logs")).await;
    assert_eq!(all.len(), 3);
    let past = all[2]["seq"].as_u64().unwrap() + 100;
    assert!(log_lines(&app, &format!("/v1/jobs/{id}/logs?from_seq={past}")).await.is_empty());
    // Following past the end of a finished job ends too.
    assert!(log_lines(&app, &format!("/v1/jobs/{id}/logs?from_seq={past}&follow=true")).await.is_empty());
    eventually(Duration::from_secs(30), || async { (progress_consumers(&app).await == 0).then_some(()) }).await;

    // A follower of a job that does not end, who then hangs up.
    let (_, waiting) = app.submit(json!({"command": ["true"], "pool": "nobody-serves-this"})).await;
    let waiting = waiting["id"].as_str().unwrap().to_owned();
    let r = app.http.get(app.url(&format!("/v1/jobs/{waiting}/logs?follow=true"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually(Duration::from_secs(30), || async { (progress_consumers(&app).await == 1).then_some(()) }).await;
    drop(r);
    eventually(Duration::from_secs(30), || async { (progress_consumers(&app).await == 0).then_some(()) }).await;
}

#[tokio::test]
async fn following_the_logs_of_a_finished_job_always_returns_every_line() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let id = finished_job_with_lines(&app, 3).await;
    for i in 0..30 {
        let got = log_lines(&app, &format!("/v1/jobs/{id}/logs?follow=true")).await;
        let texts: Vec<&str> = got.iter().map(|l| l["line"].as_str().unwrap_or("")).collect();
        assert_eq!(texts, ["line-1", "line-2", "line-3"], "read {i}");
    }
}

#[tokio::test]
async fn the_logs_route_refuses_unknown_and_malformed_parameters() {
    let app = spawn_app().await;
    let (_, job) = app.submit(json!({"executor": "noop", "command": []})).await;
    let id = job["id"].as_str().unwrap();
    for (query, code) in [
        ("foo=1", "unknown_parameter"),
        ("follow=maybe", "invalid_parameter"),
        ("follow=", "invalid_parameter"),
        ("from_seq=x", "invalid_parameter"),
        ("follow=true&follow=false", "invalid_parameter"),
    ] {
        let (s, b) = app.get(&format!("/v1/jobs/{id}/logs?{query}")).await;
        assert_eq!((s, b["error"]["code"].as_str()), (400, Some(code)), "{query}: {b}");
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(app: &TestApp) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws
}

#[tokio::test]
async fn an_oversized_websocket_frame_closes_with_1009() {
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app_with(|s| s.streaming.max_message_bytes = 1024).await;
    let mut ws = ws_connect(&app).await;
    // Over the protocol limit only: an error, and the session goes on.
    ws.send(Message::Text(format!("{{\"op\":\"ping\",\"pad\":\"{}\"}}", "y".repeat(2048)).into())).await.unwrap();
    // Over 16 times the limit: the transport refuses it with 1009.
    ws.send(Message::Text("z".repeat(64 * 1024).into())).await.unwrap();
    let mut seen = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("an answer within 20 s") {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str::<Value>(&t).unwrap()),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?} after {seen:?}"),
        }
    };
    assert_eq!(close, 1009);
    assert!(seen.iter().any(|m| m["code"] == "message_too_large"), "{seen:?}");
}

/// The session logic without sockets: a client that stops reading but keeps
/// sending keepalive pings still gets `lagged` (where to resume: right after
/// the last message it got) and close 4008, like a slow client that does not
/// ping. First with protocol pings only (every pong must wait for the client),
/// then with WebSocket and protocol pings while more lines arrive.
#[tokio::test]
async fn a_slow_reader_that_keeps_pinging_gets_lagged_and_4008() {
    use fetchml_api::stream::session::{self, Inbound, Outbound};
    let app = spawn_app().await;
    let built = fetchml_api::Application::build(app.settings.clone()).await.unwrap();
    let state = built.state().clone();
    let alice = fetchml_events::UserName::parse("alice").unwrap();
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    for more_lines in [0, 40] {
        let key = fetchml_tests::app::key_of("alice");
        let key_id = fetchml_identity::ParsedKey::parse(&key).unwrap().key_id.to_owned();
        let caller = fetchml_api::auth::Caller {
            principal: state.auth.directory().user(&alice).unwrap().clone(),
            source: "test".into(),
            credential: fetchml_api::auth::Credential::Key { key_id },
        };
        let (_, job) = app.submit(json!({"executor": "noop", "command": [], "pool": "nobody-serves-this"})).await;
        let job_id: fetchml_events::JobId = job["id"].as_str().unwrap().parse().unwrap();
        let subject = store.subjects().progress(&alice, job_id, "log");
        let publish = |n: usize| {
            let (js, subject) = (store.jetstream().clone(), subject.clone());
            async move {
                for i in 0..n {
                    let body = json!({"job_id": job_id, "attempt": 1, "stream": "stdout", "line": format!("l{i}")});
                    js.publish(subject.clone(), body.to_string().into()).await.unwrap().await.unwrap();
                }
            }
        };
        publish(3).await;
        let limits = session::Limits {
            buffer: 16,
            send_timeout: Duration::from_millis(200),
            ping_every: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            ..session::Limits::default()
        };
        // The socket: room for one frame beyond what the client has read.
        let (sink, mut socket) = tokio::sync::mpsc::channel::<Outbound>(1);
        let sink = tokio_util::sync::PollSender::new(sink);
        let (client, inbound) = futures::channel::mpsc::unbounded::<Inbound>();
        let shutdown = fetchml_tests::CancellationToken::new();
        let run = tokio::spawn(session::run(state.clone(), caller, limits, sink, inbound, shutdown.clone()));
        let text = |o: &Outbound| match o {
            Outbound::Text(t) => serde_json::from_str::<Value>(t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        };
        assert_eq!(text(&socket.recv().await.unwrap())["type"], "hello");
        let sub =
            json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "from": "beginning"});
        client.unbounded_send(Inbound::Text(sub.to_string())).unwrap();
        assert_eq!(text(&socket.recv().await.unwrap())["type"], "subscribed");
        let mut last_seen = 0;
        for _ in 0..3 {
            let m = text(&socket.recv().await.unwrap());
            assert_eq!(m["type"], "message");
            last_seen = m["seq"].as_u64().unwrap();
        }
        // The client stops reading but keeps pinging.
        for _ in 0..5 {
            client.unbounded_send(Inbound::Text(json!({"op": "ping"}).to_string())).unwrap();
            if more_lines > 0 {
                client.unbounded_send(Inbound::Ping).unwrap();
            }
        }
        publish(more_lines).await;
        // The session gives up on it: its subscription (a consumer on the
        // server) is stopped while the client still has not read.
        eventually(Duration::from_secs(30), || async { (progress_consumers(&app).await == 0).then_some(()) }).await;
        // When it reads again: what got through, where to resume, then 4008.
        let mut frames = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(30), socket.recv()).await {
            let closed = matches!(f, Outbound::Close(..));
            frames.push(f);
            if closed {
                break;
            }
        }
        let texts: Vec<Value> = frames.iter().filter(|f| matches!(f, Outbound::Text(_))).map(text).collect();
        if let Some(seq) = texts.iter().filter(|m| m["type"] == "message").filter_map(|m| m["seq"].as_u64()).max() {
            last_seen = seq;
        }
        let lagged: Vec<&Value> = texts.iter().filter(|m| m["type"] == "lagged").collect();
        assert_eq!(lagged.len(), 1, "{more_lines}: {frames:?}");
        assert_eq!(lagged[0]["sub"], "p");
        assert_eq!(lagged[0]["resume_from"].as_u64(), Some(last_seen + 1), "{frames:?}");
        assert!(matches!(frames.last(), Some(Outbound::Close(4008, _))), "{more_lines}: {frames:?}");
        // The client answers the close; the session ends.
        client.unbounded_send(Inbound::Close).unwrap();
        tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap();
    }
}

/// The same over a real socket: a client with a small receive buffer that
/// pings (WebSocket and protocol pings) but does not read while a flood
/// arrives, with the server pinging often too.
#[tokio::test]
async fn a_pinging_client_that_does_not_read_gets_lagged_and_4008_over_a_socket() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app_with(|s| {
        s.streaming.buffer = 64;
        s.streaming.send_timeout_ms = 300;
        s.streaming.ping_secs = 1;
    })
    .await;
    let (_, job) = app.submit(json!({"executor": "noop", "command": [], "pool": "nobody-serves-this"})).await;
    let job_id: fetchml_events::JobId = job["id"].as_str().unwrap().parse().unwrap();
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(app.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let sub = json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "from": "live"});
    tx.send(Message::Text(sub.to_string().into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("subscribed") => break,
            Some(Ok(_)) => continue,
            other => panic!("expected subscribed, got {other:?}"),
        }
    }
    // Flood the job's log while the client only pings.
    let store = fetchml_tests::store_at(&app.settings.nats.url, app.settings.namespace()).await;
    let subject = store.subjects().progress(&fetchml_events::UserName::parse("alice").unwrap(), job_id, "log");
    let js = store.jetstream().clone();
    let pad = "x".repeat(200);
    // More than the socket buffers on both sides hold.
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..40_000 {
        let body = json!({"job_id": job_id, "attempt": 1, "stream": "stdout", "line": format!("{i} {pad}")});
        acks.push(std::future::IntoFuture::into_future(
            js.publish(subject.clone(), body.to_string().into()).await.unwrap(),
        ));
        if acks.len() > 512 {
            acks.next().await.unwrap().unwrap();
        }
        if i % 2000 == 0 {
            let _ = tokio::time::timeout(Duration::from_millis(50), tx.send(Message::Ping(Vec::new().into()))).await;
            let ping = Message::Text(json!({"op": "ping"}).to_string().into());
            let _ = tokio::time::timeout(Duration::from_millis(50), tx.send(ping)).await;
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    // Keep pinging until the server has given up on the subscription.
    let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
    eventually(Duration::from_secs(60), || {
        let (tx, app) = (tx.clone(), &app);
        async move {
            let mut tx = tx.lock().await;
            let _ = tokio::time::timeout(Duration::from_millis(50), tx.send(Message::Ping(Vec::new().into()))).await;
            drop(tx);
            (progress_consumers(app).await == 0).then_some(())
        }
    })
    .await;
    // Reading now: messages, where to resume, then 4008.
    let mut last_seen = None;
    let mut lagged = None;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await.expect("a frame within 30 s") {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match m["type"].as_str() {
                    Some("message") => last_seen = m["seq"].as_u64(),
                    Some("lagged") => lagged = m["resume_from"].as_u64(),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?} (lagged {lagged:?})"),
        }
    };
    assert_eq!(code, 4008);
    let resume = lagged.expect("a lagged notice");
    if let Some(seen) = last_seen {
        assert_eq!(resume, seen + 1);
    }
}
