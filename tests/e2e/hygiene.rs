//! HTTP hygiene and tracing across processes: request ids (echoed, made,
//! replaced; in the request's log lines), the answer deadline (504 for a slow
//! answer, never for a stream), CORS only when configured, gzip for large
//! JSON only, and one id from the submit's request to its events and the
//! dispatcher's and worker's log lines.

use fetchml_tests::app::{TestApp, fetchml_binary, key_of, spawn_app, spawn_app_with, spawn_worker};
use fetchml_tests::eventually;
use futures::SinkExt;
use serde_json::{Value, json};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Log lines written on this thread while the guard lives. `#[tokio::test]`
/// runs the test and the api it spawns on one thread, so these are the api's
/// (and its embedded dispatcher's) lines, and no other test's.
///
/// One global subscriber writes each line to its thread's buffer, if any.
/// Scoped subscribers (`set_default`) per test would be simpler, but tracing
/// caches each call site's interest across threads, and with tests starting
/// and ending their own subscribers in parallel a line is sometimes lost.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Captured>> = const { std::cell::RefCell::new(None) };
}

/// Stops this thread's capture when dropped.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// The writer of the global subscriber: the current thread's buffer.
struct ThreadBuffer;

impl std::io::Write for ThreadBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(Captured(buf)) = &*c.borrow() {
                buf.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn start() -> (Self, CaptureGuard) {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info,fetchml_api=debug"))
                .with_ansi(false)
                .with_writer(|| ThreadBuffer)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in e2e");
        });
        let buf = Captured::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(buf.clone()));
        (buf, CaptureGuard)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_owned).collect()
    }
}

fn request_id_of(r: &reqwest::Response) -> String {
    r.headers().get("x-request-id").expect("x-request-id in every answer").to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_request_id_is_echoed_made_when_absent_and_replaced_when_insane() {
    let app = spawn_app().await;
    let sent = app.http.get(app.url("/v1/auth/whoami")).header("x-request-id", "client-7.a:b_c").send().await.unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(request_id_of(&sent), "client-7.a:b_c");

    // Made when absent, for errors and unknown routes too.
    for path in ["/v1/auth/whoami", "/v1/nope", "/healthz"] {
        let made = app.http.get(app.url(path)).send().await.unwrap();
        let id = request_id_of(&made);
        assert!(uuid::Uuid::try_parse(&id).is_ok(), "{path}: {id:?} is not a UUID");
    }
    let refused = reqwest::Client::new().get(app.url("/v1/auth/whoami")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(uuid::Uuid::try_parse(&request_id_of(&refused)).is_ok());

    // One that could forge log lines, or is too long, is replaced.
    for insane in ["has space".to_owned(), "a".repeat(129), "semi;colon".to_owned()] {
        let r = app.http.get(app.url("/v1/auth/whoami")).header("x-request-id", &insane).send().await.unwrap();
        let id = request_id_of(&r);
        assert_ne!(id, insane);
        assert!(uuid::Uuid::try_parse(&id).is_ok(), "{id:?}");
    }
}

#[tokio::test]
async fn a_request_s_log_lines_carry_its_request_id_and_its_route_template_not_its_path() {
    let (logs, _guard) = Captured::start();
    // No projector, and a short wait for the read models: `after_seq` of a
    // stored write then answers 503 (and logs it from inside the handler) soon.
    let app = spawn_app_with(|s| {
        s.api.read_your_writes_ms = 100;
        s.api.embedded_projector = false;
    })
    .await;
    let (status, queued) = app.submit(json!({"executor": "noop", "command": [], "pool": "nobody"})).await;
    assert_eq!(status, 202, "{queued}");
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs?after_seq={}", queued["seq"])))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let mine: Vec<String> = logs.lines().into_iter().filter(|l| l.contains("request_id=trace-me-42")).collect();
    let answered = mine.iter().find(|l| l.contains("answered")).unwrap_or_else(|| panic!("no answer line: {mine:#?}"));
    assert!(answered.contains("route=/v1/jobs "), "{answered}");
    assert!(answered.contains("method=GET"), "{answered}");
    assert!(answered.contains("status=503"), "{answered}");
    assert!(answered.contains("latency_ms="), "{answered}");
    assert!(!answered.contains("after_seq"), "the raw path or query is not logged: {answered}");
    // The handler's own line is in the request's span too.
    assert!(mine.iter().any(|l| l.contains("read model not caught up")), "{mine:#?}");

    // An id in the path is not in the span: the template is.
    let id = uuid::Uuid::now_v7();
    let r =
        app.http.get(app.url(&format!("/v1/jobs/{id}"))).header("x-request-id", "trace-me-43").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let line = logs
        .lines()
        .into_iter()
        .find(|l| l.contains("request_id=trace-me-43") && l.contains("answered"))
        .expect("an answer line");
    assert!(line.contains("route=/v1/jobs/{id}"), "{line}");
    assert!(!line.contains(&id.to_string()), "{line}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    fetchml_tests::next_ws_json(ws).await
}

/// A WebSocket subscribed to the live events of job `id`.
async fn watch_job(app: &TestApp, id: &str) -> Ws {
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    let sub = json!({"op": "subscribe", "id": "j", "stream": "events", "target": {"job": id}, "from": "live"});
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    ws
}

/// The next NDJSON line of a logs answer (`buf` keeps what follows it).
async fn next_line(r: &mut reqwest::Response, buf: &mut Vec<u8>) -> Option<Value> {
    loop {
        if let Some(n) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=n).collect();
            return Some(serde_json::from_slice(&line).unwrap());
        }
        buf.extend_from_slice(&r.chunk().await.unwrap()?);
    }
}

#[tokio::test]
async fn a_slow_answer_gets_504_request_timeout_while_streams_outlive_the_deadline() {
    // Well above what an ordinary request takes, well below the 5 s that
    // `after_seq` waits for the read models (and above the body deadline).
    // No projector: `after_seq` of a stored write waits its whole 5 s.
    let app = spawn_app_with(|s| {
        s.api.request_timeout_ms = 2000;
        s.api.body_timeout_ms = 1000;
        s.api.embedded_projector = false;
    })
    .await;
    let _worker = spawn_worker(&app.settings);
    let (status, job) = app.submit(json!({"command": ["sh", "-c", "while :; do echo tick; sleep 0.05; done"]})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    app.until_state(&id, "running").await;

    let mut logs = app.http.get(app.url(&format!("/v1/jobs/{id}/logs?follow=true"))).send().await.unwrap();
    assert_eq!(logs.status(), 200);
    let mut buf = Vec::new();
    assert_eq!(next_line(&mut logs, &mut buf).await.expect("a first line")["line"], "tick");
    let mut ws = watch_job(&app, &id).await;

    let slow = app.http.get(app.url(&format!("/v1/jobs?after_seq={}", job["seq"]))).send().await.unwrap();
    assert_eq!(slow.status(), 504);
    assert!(slow.headers().contains_key("x-request-id"));
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    let deadline_passed = chrono::Utc::now();
    // The metrics are outside the deadline: its 504 is counted, by route and code.
    let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("fetchml_http_errors_total{")
            && l.contains(r#"route="/v1/jobs""#)
            && l.contains(r#"code="request_timeout""#)),
        "{text}"
    );

    // Both streams opened before the slow request, so their deadline (had
    // they one) passed before its own: they still deliver what comes after.
    loop {
        let line = next_line(&mut logs, &mut buf).await.expect("the log stream was cut");
        let at: chrono::DateTime<chrono::Utc> = line["at"].as_str().unwrap().parse().unwrap();
        if at > deadline_passed {
            break;
        }
    }
    let (status, _) = app.post(&format!("/v1/jobs/{id}/cancel")).await;
    assert_eq!(status, 202);
    loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "message" && m["data"]["type"] == "job_cancelled" {
            break;
        }
        assert_ne!(m["type"], "error", "{m}");
    }
    // The follower ends on its own once the job has ended: a whole body.
    while next_line(&mut logs, &mut buf).await.is_some() {}
}

#[tokio::test]
async fn cors_preflights_are_answered_only_for_configured_origins() {
    let preflight = |app: &TestApp, origin: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, app.url("/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
    };
    let off = spawn_app().await;
    let r = preflight(&off, "http://127.0.0.1:3000").send().await.unwrap();
    assert_eq!(r.status(), 405, "CORS is off by default");
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = off.http.get(off.url("/v1/jobs")).header("origin", "http://127.0.0.1:3000").send().await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let on = spawn_app_with(|s| s.api.cors_allowed_origins = vec!["http://127.0.0.1:3000".into()]).await;
    let r = preflight(&on, "http://127.0.0.1:3000").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "http://127.0.0.1:3000");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    assert!(!h.contains_key("access-control-allow-credentials"));

    let r = preflight(&on, "http://evil.example").send().await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"), "an unlisted origin is not allowed");

    // Actual requests: the origin is allowed and may read the request id.
    let r = on.http.get(on.url("/v1/jobs")).header("origin", "http://127.0.0.1:3000").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "http://127.0.0.1:3000");
    assert!(r.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
}

#[tokio::test]
async fn large_json_answers_are_gzipped_when_accepted_and_log_streams_never_are() {
    let app = spawn_app().await;
    let mut last = 0;
    for _ in 0..8 {
        let (status, b) = app.submit(json!({"executor": "noop", "command": [], "tags": {"team": "hygiene"}})).await;
        assert_eq!(status, 202);
        last = b["seq"].as_u64().unwrap();
    }
    let list = app.url(&format!("/v1/jobs?after_seq={last}"));
    let plain = app.http.get(&list).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(!plain.headers().contains_key("content-encoding"), "not asked for");
    let plain: Value = plain.json().await.unwrap();
    assert_eq!(plain["items"].as_array().unwrap().len(), 8);
    assert!(plain.to_string().len() > 1024, "the test needs a large answer");

    let zipped = app.http.get(&list).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), plain);

    // Small answers are not worth it.
    let small = app.http.get(app.url("/v1/auth/whoami")).header("accept-encoding", "gzip").send().await.unwrap();
    assert!(!small.headers().contains_key("content-encoding"));

    // The NDJSON log stream is never compressed (lines must flow as written).
    let id = plain["items"][0]["id"].as_str().unwrap();
    let logs = app.http.get(app.url(&format!("/v1/jobs/{id}/logs"))).header("accept-encoding", "gzip").send().await;
    let logs = logs.unwrap();
    assert_eq!(logs.status(), 200);
    assert_eq!(logs.headers()["content-type"], "application/x-ndjson");
    assert!(!logs.headers().contains_key("content-encoding"));
}

/// A `fetchml worker` whose log lines go to a file, killed on drop.
struct LoggingWorker {
    child: Child,
    log: tempfile::NamedTempFile,
    _job_root: tempfile::TempDir,
}

impl LoggingWorker {
    fn spawn(app: &TestApp) -> Self {
        let job_root = tempfile::tempdir().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(fetchml_binary())
            .arg("worker")
            .env("FETCHML_NATS__URL", &app.settings.nats.url)
            .env("FETCHML_NATS__NAMESPACE", &app.settings.nats.namespace)
            .env("FETCHML_WORKER__JOB_ROOT", job_root.path())
            .env("FETCHML_WORKER__LEASE_SECS", "3")
            .env("FETCHML_NATS__PROGRESS_MAX_BYTES", fetchml_tests::TEST_PROGRESS_BYTES.to_string())
            .env("RUST_LOG", "info")
            .env_remove("FETCHML_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        LoggingWorker { child, log, _job_root: job_root }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.path()).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

impl Drop for LoggingWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("the worker's log:\n{}", self.lines().join("\n"));
        }
    }
}

#[tokio::test]
async fn the_submit_s_request_id_is_the_correlation_id_of_the_job_s_events_and_log_lines() {
    let (api_logs, _guard) = Captured::start();
    let app = spawn_app().await;
    let worker = LoggingWorker::spawn(&app);
    let request_id = uuid::Uuid::new_v4().to_string();
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .header("x-request-id", &request_id)
        .json(&json!({"command": ["echo", "traced"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(request_id_of(&r), request_id);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.until_terminal(&id).await["state"], "succeeded");

    // Every event of the job, the worker's included, carries it.
    let (_, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    let items = events["items"].as_array().unwrap();
    let types: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["job_queued", "job_started", "job_succeeded"]);
    for e in items {
        assert_eq!(e["correlation_id"], request_id.as_str(), "{e}");
    }

    // The scheduler's line (in this process) and the worker's (another).
    let tagged = |l: &String| l.contains(&format!("correlation={request_id}")) && l.contains(&format!("job={id}"));
    assert!(api_logs.lines().iter().any(|l| tagged(l) && l.contains("assigned")), "{:#?}", api_logs.lines());
    eventually(Duration::from_secs(30), || async {
        let lines = worker.lines();
        (lines.iter().any(|l| tagged(l) && l.contains("started"))
            && lines.iter().any(|l| tagged(l) && l.contains("finished")))
        .then_some(())
    })
    .await;

    // A request id the api made itself, or one that is not a UUID, works too.
    let r = app.http.post(app.url("/v1/jobs")).json(&json!({"executor": "noop", "command": []})).send().await.unwrap();
    let made = request_id_of(&r);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (_, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(events["items"][0]["correlation_id"], made.as_str());
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .header("x-request-id", "not-a-uuid")
        .json(&json!({"executor": "noop", "command": []}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (_, events) = app.get(&format!("/v1/jobs/{id}/events")).await;
    let expected = fetchml_api::http::correlation_of("not-a-uuid").to_string();
    assert_eq!(events["items"][0]["correlation_id"], expected.as_str());
    assert!(
        api_logs.lines().iter().any(|l| l.contains("request_id=not-a-uuid") && l.contains(&expected)),
        "the span shows both"
    );
}
