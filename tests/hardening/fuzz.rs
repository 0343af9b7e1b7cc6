//! Property tests against the live api: random job specs and random query
//! strings, hostile characters included. Whatever the api accepts must be
//! projected, listed for every role, read back and streamed without error;
//! whatever it refuses must be a 4xx with a stable code, never a 5xx.
//!
//! Inputs are generated with proptest's strategies and run against one api (a
//! fresh app per case would spend the test's time starting apps); a failure
//! prints the input that caused it.

use fetchml_tests::app::{TestApp, key_of, spawn_app};
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Characters that broke something somewhere, or could: NUL and other
/// controls, combining marks (normalization), bidi overrides, subject tokens
/// (`.`, `*`, `>`), percent signs, quotes, astral characters.
fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => proptest::char::range('0', '9'),
        3 => prop::sample::select(vec![
            '\0', '\u{1}', '\u{1b}', '\n', '\t', '\u{7f}', '\u{85}', '\u{301}', '\u{308}', '\u{202e}', '\u{2066}',
            '.', '*', '>', '%', '"', '\\', '/', '_', '-', '+', '=', '&', '#', ' ', 'é', 'ß', '中', '😀', '\u{fffd}',
        ]),
    ]
}

/// Mostly plain words (so that many specs pass and reach the projector),
/// often hostile text.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::collection::vec(proptest::char::range('a', 'z'), 1..max.max(2)).prop_map(String::from_iter),
        1 => prop::collection::vec(hostile_char(), 0..max).prop_map(String::from_iter),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0i64..20).prop_map(Value::from),
        1 => (-5i64..0).prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(1u64 << 40)),
        1 => Just(json!(1.5)),
        1 => text(4).prop_map(Value::from),
    ]
}

fn spec() -> impl Strategy<Value = Value> {
    let executor = prop::sample::select(vec!["process", "noop", "sleep", "fail", "podman", "bogus"]);
    let command = prop_oneof![
        8 => prop::collection::vec(text(8), 0..4).prop_map(|v| json!(v)),
        1 => Just(json!("not an array")),
    ];
    (
        command,
        prop_oneof![3 => Just(Some("noop")), 1 => proptest::option::weighted(0.3, executor)],
        proptest::option::weighted(0.3, text(12)),
        proptest::option::weighted(0.3, prop::collection::vec(text(6), 0..3)),
        proptest::option::weighted(0.3, number()),
        proptest::option::weighted(0.3, text(16)),
        proptest::option::weighted(0.3, prop::collection::btree_map(text(6), text(10), 0..3)),
        proptest::option::weighted(0.3, prop::collection::btree_map(text(6), text(6), 0..2)),
        proptest::option::weighted(0.3, text(10)),
        proptest::option::weighted(0.3, number()),
        proptest::option::weighted(0.3, (number(), number(), number(), number())),
        proptest::option::weighted(0.3, number()),
    )
        .prop_map(
            |(command, executor, pool, labels, priority, experiment, tags, env, workdir, timeout, retry, gpus)| {
                let mut s = Map::new();
                s.insert("command".into(), command);
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        s.insert(k.into(), v);
                    }
                };
                put("executor", executor.map(Value::from));
                put("pool", pool.map(Value::from));
                put("labels", labels.map(|l| json!(l)));
                put("priority", priority);
                put("experiment", experiment.map(Value::from));
                put("tags", tags.map(|t| json!(t)));
                put("env", env.map(|e| json!(e)));
                put("working_dir", workdir.map(Value::from));
                put("timeout_secs", timeout);
                put(
                "retry",
                retry.map(|(a, b, c, d)| {
                    json!({"max_attempts": a, "backoff_initial_ms": b, "backoff_max_ms": c, "jitter_percent": d})
                }),
            );
                put("resources", gpus.map(|g| json!({"gpus": g})));
                Value::Object(s)
            },
        )
}

/// A percent-encoded query string over the list parameters (and a few the
/// api does not know), with hostile values.
fn query(head: u64) -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "state",
        "owner",
        "pool",
        "experiment",
        "tag",
        "created_after",
        "created_before",
        "sort",
        "limit",
        "cursor",
        "after_seq",
        "as_of_seq",
        "as_of",
        "bogus",
    ]);
    let value = prop_oneof![
        4 => text(10),
        3 => prop::sample::select(vec!["queued", "running", "-created_at", "created_at", "2026-01-01T00:00:00Z", "a=b", "=", "%00"]).prop_map(String::from),
        3 => (text(4), text(4)).prop_map(|(k, v)| format!("{k}={v}")),
        1 => (0..=head).prop_map(|n| n.to_string()),
        1 => Just(u64::MAX.to_string()),
    ];
    prop::collection::vec((key, value), 0..4).prop_map(move |pairs| {
        pairs
            .into_iter()
            // A wait for a write that will never come is a 503 after 5 s by
            // design; keep `after_seq` within what exists.
            .filter(|(k, v)| *k != "after_seq" || v.parse::<u64>().is_ok_and(|n| n <= head))
            .map(|(k, v)| format!("{k}={}", encode(&v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Refused: a 4xx with `{"error": {"code": "snake_case", "message"}}`.
fn assert_refused_properly(what: &str, status: u16, body: &Value) {
    assert!((400..500).contains(&status), "{what}: expected a 4xx, got {status}: {body}");
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{what}: no error code in {body}"));
    assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{what}: code {code:?}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

async fn get(app: &TestApp, user: &str, path: &str) -> (u16, Value) {
    let r = app.as_user(user).get(app.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn any_spec_the_api_accepts_is_projected_listed_read_and_streamed_and_any_it_refuses_is_a_4xx() {
    let app = spawn_app().await;
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    let strategy = spec();
    let mut accepted: Vec<(String, u64)> = Vec::new();
    let tries = 200;
    for _ in 0..tries {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        let (status, body) = app.submit(spec.clone()).await;
        if status == 202 {
            accepted.push((body["id"].as_str().unwrap().to_owned(), body["seq"].as_u64().unwrap()));
        } else {
            assert_refused_properly(&format!("POST /v1/jobs {spec}"), status, &body);
        }
    }
    assert!(accepted.len() >= 10, "the generator should produce valid specs too: {} of {tries}", accepted.len());
    let last = accepted.iter().map(|a| a.1).max().unwrap();
    let ids: BTreeSet<String> = accepted.iter().map(|a| a.0.clone()).collect();

    // Projected and listed for every role that reads jobs.
    for user in ["alice", "ana", "root"] {
        let (status, list) = get(&app, user, &format!("/v1/jobs?after_seq={last}&limit=500")).await;
        assert_eq!(status, 200, "{user}: {list}");
        let listed: BTreeSet<String> =
            list["items"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
        assert!(ids.is_subset(&listed), "{user}: missing {:?}", ids.difference(&listed).collect::<Vec<_>>());
        let (status, exps) = get(&app, user, "/v1/experiments").await;
        assert_eq!(status, 200, "{user}: {exps}");
    }
    // Read back one by one.
    for id in &ids {
        let (status, job) = get(&app, "alice", &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        let (status, events) = get(&app, "alice", &format!("/v1/jobs/{id}/events")).await;
        assert_eq!(status, 200, "{events}");
    }
    // Streamed: a replay of alice's events carries every accepted job.
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let sub = json!({"op": "subscribe", "id": "all", "stream": "events", "target": "all", "from": "beginning"});
    ws.send(Message::Text(sub.to_string().into())).await.unwrap();
    let mut streamed = BTreeSet::new();
    while !ids.is_subset(&streamed) {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a frame within 30 s");
        let Some(Ok(Message::Text(t))) = frame else { continue };
        let m: Value = serde_json::from_str(&t).unwrap();
        assert_ne!(m["type"], "error", "{m}");
        if m["type"] == "message" {
            streamed.insert(m["data"]["aggregate_id"].as_str().unwrap_or_default().to_owned());
        }
    }
}

#[tokio::test]
async fn any_query_string_is_answered_with_a_page_or_a_4xx_for_every_role() {
    let app = spawn_app().await;
    // Something to list: a job with a tag and an experiment.
    let (status, queued) = app
        .submit(
            json!({"command": ["true"], "executor": "noop", "pool": "nobody", "experiment": "e", "tags": {"a": "b"}}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let head = queued["seq"].as_u64().unwrap();
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    let queries = query(head);
    let names = text(8);
    for _ in 0..100 {
        let q = queries.new_tree(&mut runner).unwrap().current();
        let name = encode(&names.new_tree(&mut runner).unwrap().current());
        let id = queued["id"].as_str().unwrap();
        for user in ["alice", "ana", "root"] {
            for path in [
                format!("/v1/jobs?{q}"),
                format!("/v1/experiments?{q}"),
                format!("/v1/experiments/{name}?{q}"),
                format!("/v1/workers?{q}"),
                format!("/v1/jobs/{id}/logs?{q}"),
            ] {
                let (status, body) = get(&app, user, &path).await;
                if status != 200 {
                    assert_refused_properly(&format!("{user} GET {path}"), status, &body);
                }
            }
        }
    }
}
