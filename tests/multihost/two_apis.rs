//! Two api processes sharing one NATS namespace and one database, as behind a
//! load balancer. One is killed with SIGKILL under a submit load: clients
//! retry against the other with the same idempotency keys and nothing is
//! lost or queued twice; a WebSocket client reconnects to the other and
//! resumes from its last sequence with no gap and no duplicate.

use fetchml_runtime::Settings;
use fetchml_tests::app::{client_with_key, fetchml_binary, key_of, spawn_worker, users_file};
use fetchml_tests::{NamespaceGuard, eventually, free_port, fresh_database, nats_url, unique_namespace};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const JOBS: usize = 80;
const CLIENTS: usize = 4;
/// A is killed once this many submits were acknowledged.
const KILL_AFTER: usize = 20;
const EXPERIMENT: &str = "two-apis";

/// A `fetchml api` process; killed on drop.
struct ApiProcess {
    child: tokio::process::Child,
    base: String,
}

async fn start_api(ns: &str, db_url: &str) -> ApiProcess {
    let port = free_port();
    let child = tokio::process::Command::new(fetchml_binary())
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env("FETCHML_NATS__URL", nats_url())
        .env("FETCHML_NATS__NAMESPACE", ns)
        .env("FETCHML_NATS__PROGRESS_MAX_BYTES", fetchml_tests::TEST_PROGRESS_BYTES.to_string())
        .env("FETCHML_AUTH__USERS_FILE", users_file())
        .env("FETCHML_POSTGRES__URL", db_url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(if std::env::var("TEST_LOG").is_ok() {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    ApiProcess { child, base }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket as alice on `base`, subscribed to the experiment's events from `from`.
async fn subscribe(base: &str, from: Value) -> Ws {
    let url = format!("{}/v1/stream", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["type"], "hello");
    let sub =
        json!({"op": "subscribe", "id": "e", "stream": "events", "target": {"experiment": EXPERIMENT}, "from": from});
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    assert_eq!(fetchml_tests::next_ws_json(&mut ws).await["type"], "subscribed");
    ws
}

/// What one client saw for one idempotency key.
#[derive(Debug)]
struct Submitted {
    id: String,
    /// Answered `duplicate: true`: an earlier try had been stored.
    duplicate: bool,
    /// Tries that failed (connection cut, 5xx) before the acknowledgement.
    failed_tries: usize,
}

#[tokio::test]
async fn clients_fail_over_to_a_second_api_without_losing_or_duplicating_anything() {
    let ns = unique_namespace().to_string();
    let _cleanup = NamespaceGuard { url: nats_url(), ns: ns.clone() };
    let db = fresh_database();
    let mut a = start_api(&ns, &db.url).await;
    let b = start_api(&ns, &db.url).await;
    let mut settings = Settings::default();
    settings.nats.url = nats_url();
    settings.nats.namespace = ns.clone();
    settings.nats.progress_max_bytes = fetchml_tests::TEST_PROGRESS_BYTES;
    let _worker = spawn_worker(&settings);

    // A WebSocket on A, reading until A dies.
    let mut ws_a = subscribe(&a.base, json!("beginning")).await;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(Ok(m)) = ws_a.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    seqs.push(v["seq"].as_u64().unwrap());
                }
            }
        }
        seqs
    });

    // Clients submit to A; a failed try (connection cut, 5xx) moves them to B
    // with the same key, as a client behind a load balancer would be moved.
    let acked = Arc::new(AtomicUsize::new(0));
    let (killed_tx, killed) = tokio::sync::watch::channel(false);
    let http = client_with_key(&key_of("alice"));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, acked, mut killed) = (http.clone(), acked.clone(), killed.clone());
        let (url_a, url_b) = (a.base.clone(), b.base.clone());
        clients.push(tokio::spawn(async move {
            let mut out = BTreeMap::new();
            for i in (c..JOBS).step_by(CLIENTS) {
                let key = format!("two-apis-{i}");
                let mut failed_tries = 0;
                let answer = loop {
                    assert!(failed_tries < 50, "{key}: no api acknowledged it");
                    let base = if *killed.borrow() { &url_b } else { &url_a };
                    let r = http
                        .post(format!("{base}/v1/jobs"))
                        .header("Idempotency-Key", &key)
                        .json(&json!({"executor": "noop", "command": [], "experiment": EXPERIMENT}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 202 => break r.json::<Value>().await.unwrap(),
                        Ok(r) if r.status().is_client_error() => panic!("{key}: {} {:?}", r.status(), r.text().await),
                        _ => {
                            failed_tries += 1;
                            // The client is moved to B once A is gone (as a
                            // health-checking load balancer would move it).
                            killed.wait_for(|k| *k).await.unwrap();
                        }
                    }
                };
                acked.fetch_add(1, Ordering::AcqRel);
                let id = answer["id"].as_str().unwrap().to_owned();
                out.insert(key, Submitted { id, duplicate: answer["duplicate"] == true, failed_tries });
            }
            out
        }));
    }
    eventually(Duration::from_secs(60), || async { (acked.load(Ordering::Acquire) >= KILL_AFTER).then_some(()) }).await;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    killed_tx.send(true).unwrap();
    let seen_on_a = reader.await.unwrap();
    let mut submitted = BTreeMap::new();
    for c in clients {
        submitted.extend(c.await.unwrap());
    }
    assert_eq!(submitted.len(), JOBS);
    let ids: BTreeSet<&str> = submitted.values().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), JOBS, "two keys named one job");
    let retried = submitted.values().filter(|s| s.failed_tries > 0).count();
    let duplicates = submitted.values().filter(|s| s.duplicate).count();
    eprintln!("{retried} submits retried on B after A was killed; {duplicates} of them had been stored by A");

    // A client unsure of every answer sends everything again to B: each key
    // names the job it named before and nothing new is queued.
    for (key, s) in &submitted {
        let r = http
            .post(format!("{}/v1/jobs", b.base))
            .header("Idempotency-Key", key)
            .json(&json!({"executor": "noop", "command": [], "experiment": EXPERIMENT}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], s.id.as_str());
        assert_eq!(v["duplicate"], true, "{key}: queued again");
    }

    // Every job runs to one end, with one job_queued and one terminal event.
    let mut expected = BTreeSet::new();
    for id in &ids {
        let job = eventually(Duration::from_secs(90), || async {
            let j: Value = http.get(format!("{}/v1/jobs/{id}", b.base)).send().await.ok()?.json().await.ok()?;
            (j["state"] == "succeeded").then_some(j)
        })
        .await;
        assert_eq!(job["attempt"], 1, "{job}");
        let events: Value =
            http.get(format!("{}/v1/jobs/{id}/events", b.base)).send().await.unwrap().json().await.unwrap();
        let items = events["items"].as_array().unwrap();
        let count = |t: &str| items.iter().filter(|e| e["type"] == t).count();
        assert_eq!(count("job_queued"), 1, "{id}: {events}");
        assert_eq!(count("job_succeeded"), 1, "{id}: {events}");
        expected.extend(items.iter().map(|e| e["seq"].as_u64().unwrap()));
    }
    // The read models (B's projector took over from A's) hold each job once.
    let head = http.get(format!("{}/readyz", b.base)).send().await.unwrap().json::<Value>().await.unwrap()["last_seq"]
        .as_u64()
        .unwrap();
    let list: Value = http
        .get(format!("{}/v1/jobs?experiment={EXPERIMENT}&limit=500&after_seq={head}", b.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), JOBS, "{list}");

    // The WebSocket resumes on B from the last sequence it saw on A.
    let from = seen_on_a.last().map_or(json!("beginning"), |s| json!({"seq": s + 1}));
    let mut ws_b = subscribe(&b.base, from).await;
    let last = *expected.last().unwrap();
    let mut seen = seen_on_a.clone();
    while seen.last().is_none_or(|s| *s < last) {
        let m = fetchml_tests::next_ws_json(&mut ws_b).await;
        assert_eq!(m["type"], "message", "{m}");
        seen.push(m["seq"].as_u64().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "a duplicate or out of order at the seam: {seen:?}");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), expected, "a gap: events seen on A then B");
    eprintln!("WebSocket: {} events on A, {} on B after the resume", seen_on_a.len(), seen.len() - seen_on_a.len());
}
