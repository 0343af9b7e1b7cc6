//! `GET /metrics` on the api and on a worker's own listener, read with a
//! strict Prometheus text-format parser (below): a job run on a real worker
//! process moves the counters and the histograms, labels are route templates
//! and never ids, and the gauges derived from state (queue, jobs per state,
//! projection lag) answer.
//!
//! The api's numbers are the test process's (one recorder per process, shared
//! by the apps of parallel tests), so they are compared before and after;
//! the worker is a process of its own, so its numbers are absolute. Only the
//! first test here scrapes an api: the state gauges are set by the scrape.

use fetchml_tests::app::{key_of, spawn_app, spawn_app_with, spawn_worker_with};
use fetchml_tests::{eventually, free_port};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn a_job_run_moves_the_counters_and_histograms_of_the_api_and_the_worker() {
    let app = spawn_app().await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _worker = spawn_worker_with(&app.settings, &[], &[("FETCHML_WORKER__METRICS_LISTEN", &listen)]);
    let before = scrape(&app.url("/metrics")).await;

    let (status, body) = app.submit(json!({"command": ["echo", "hi"]})).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let job = app.until_terminal(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // A refused submit, a refused credential, a job no worker can take, and
    // a stream connection.
    let (status, _) = app.submit(json!({"command": []})).await;
    assert_eq!(status, 422);
    let r = fetchml_tests::app::client_with_key("fml_00000000_nope").get(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let (status, _) = app.submit(json!({"command": ["echo"], "pool": "nowhere", "priority": 7})).await;
    assert_eq!(status, 202);
    let mut req = format!("ws://{}/v1/stream", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", key_of("alice")).parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    let (text, after) = eventually(Duration::from_secs(30), || async {
        let text = scrape_text(&app.url("/metrics")).await;
        let m = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let projected = m.get("fetchml_projection_lag_events", &[("projection", "jobs")]) == Some(0.0);
        let counted = m.get("fetchml_jobs", &[("state", "succeeded")]).is_some_and(|n| n >= 1.0);
        (projected && counted).then_some((text, m))
    })
    .await;
    drop(ws);

    let moved = |name: &str, labels: &[(&str, &str)]| {
        let (b, a) = (before.sum(name, labels), after.sum(name, labels));
        assert!(a > b, "{name}{labels:?} did not move: {b} → {a}");
    };
    moved("fetchml_jobs_accepted_total", &[]);
    moved("fetchml_job_submissions_refused_total", &[("code", "command_empty")]);
    moved("fetchml_http_requests_total", &[("method", "POST"), ("route", "/v1/jobs"), ("status", "202")]);
    moved("fetchml_http_errors_total", &[("route", "/v1/jobs"), ("code", "command_empty")]);
    moved("fetchml_http_request_duration_seconds_count", &[("method", "GET"), ("route", "/v1/jobs/{id}")]);
    moved("fetchml_http_request_duration_seconds_bucket", &[("route", "/v1/jobs/{id}"), ("le", "+Inf")]);
    moved("fetchml_auth_failures_total", &[]);
    moved("fetchml_stream_connections_opened_total", &[]);
    assert_eq!(after.types["fetchml_http_request_duration_seconds"], "histogram");
    assert_eq!(after.types["fetchml_jobs_accepted_total"], "counter");
    // Route templates, never the raw path: the job's id is no label value.
    assert!(!text.contains(&id), "a job id leaked into the metrics:\n{text}");
    // The job no worker serves waits in its queue.
    let depth = after.get("fetchml_queue_depth", &[("pool", "nowhere"), ("priority", "7")]);
    assert_eq!(depth, Some(1.0), "{text}");
    assert!(after.get("fetchml_queue_oldest_wait_seconds", &[("pool", "nowhere"), ("priority", "7")]).unwrap() >= 0.0);
    assert!(after.get("fetchml_projection_lag_seconds", &[("projection", "jobs")]).is_some());

    // The worker's own listener: its attempt, its queue wait and run time.
    let worker = scrape(&format!("http://{listen}/metrics")).await;
    assert_eq!(worker.get("fetchml_job_attempts_total", &[("outcome", "succeeded")]), Some(1.0));
    assert_eq!(worker.types["fetchml_job_queue_wait_seconds"], "histogram");
    assert_eq!(worker.sum("fetchml_job_queue_wait_seconds_count", &[("pool", "default"), ("priority", "5")]), 1.0);
    assert_eq!(worker.sum("fetchml_job_run_seconds_count", &[("pool", "default"), ("outcome", "succeeded")]), 1.0);
    assert!(worker.sum("fetchml_job_run_seconds_sum", &[]) > 0.0);
    assert_eq!(worker.get("fetchml_worker_running_jobs", &[]), Some(0.0));
    // Shown from 0, so that a first reconnect is a visible increase.
    assert_eq!(worker.get("fetchml_nats_reconnects_total", &[]), Some(0.0));
}

#[tokio::test]
async fn a_nats_restart_is_counted_as_a_reconnect_by_the_api_and_the_worker() {
    let mut nats = fetchml_tests::NatsProcess::start();
    let url = nats.url();
    let app = spawn_app_with(|s| s.nats.url = url).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let _worker = spawn_worker_with(&app.settings, &[], &[("FETCHML_WORKER__METRICS_LISTEN", &listen)]);
    let worker_url = format!("http://{listen}/metrics");
    // The worker serves metrics from `run` on, after it has connected.
    assert_eq!(scrape(&worker_url).await.get("fetchml_nats_reconnects_total", &[]), Some(0.0));
    let before = scrape(&app.url("/metrics")).await.sum("fetchml_nats_reconnects_total", &[]);

    nats.restart();

    eventually(Duration::from_secs(30), || async {
        let w = scrape(&worker_url).await;
        (w.get("fetchml_nats_reconnects_total", &[]) >= Some(1.0)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), || async {
        let a = scrape(&app.url("/metrics")).await;
        (a.sum("fetchml_nats_reconnects_total", &[]) > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_can_be_turned_off_on_the_api() {
    let app = spawn_app_with(|s| s.api.metrics = false).await;
    let r = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");
}

#[tokio::test]
async fn the_metrics_need_no_credentials_and_say_their_format() {
    let app = spawn_app().await;
    let r = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&r.text().await.unwrap()).unwrap();
}

/// The worker's listener may not be up yet: retried until it answers.
async fn scrape_text(url: &str) -> String {
    eventually(Duration::from_secs(30), || async {
        let r = reqwest::get(url).await.ok()?;
        (r.status() == 200).then_some(())?;
        r.text().await.ok()
    })
    .await
}

async fn scrape(url: &str) -> Exposition {
    let text = scrape_text(url).await;
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

// A strict reader of the Prometheus text format (0.0.4): every line is a
// `# HELP`, a `# TYPE` or a sample; names and label names are checked, label
// values unescaped, a sample's family must be typed before it, no series
// appears twice, and each histogram has cumulative buckets ending in `+Inf`
// equal to its `_count`, and a `_sum`.

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The one series named `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// The sum over the series named `name` that carry at least `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
            .map(|s| s.value)
            .sum()
    }
}

fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_name(name).map_err(|e| at(&e))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at("unknown type"));
                    }
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("family typed twice"));
                    }
                }
                (Some("HELP"), Some(name), _) => check_name(name).map_err(|e| at(&e))?,
                _ => {} // other comments are allowed
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|e| at(&e))?;
        let family = family_of(&sample.name, &out.types).ok_or_else(|| at("sample of an untyped family"))?;
        if out.types[&family] == "counter" && !sample.name.ends_with("_total") {
            return Err(at("a counter's name must end in _total"));
        }
        if !seen.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(at("series repeated"));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !ok {
        return Err(format!("bad metric name {name:?}"));
    }
    Ok(())
}

/// The family a sample belongs to: its own name, or a histogram's or
/// summary's name without `_bucket`, `_sum` or `_count`.
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_owned());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(types.get(base).map(String::as_str), Some("histogram" | "summary")).then(|| base.to_owned())
    })
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            match chars.peek() {
                Some((i, '}')) => {
                    end = *i;
                    break;
                }
                None => return Err("unclosed labels".into()),
                _ => {}
            }
            let start = chars.peek().map(|(i, _)| *i).unwrap_or(0);
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
            }
            let key = &body[start..key_end];
            let key_ok = !key.is_empty()
                && key
                    .chars()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
            if !key_ok {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some(c) => value.push(c),
                    None => return Err("unclosed label value".into()),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} repeated"));
            }
            if let Some((_, ',')) = chars.peek() {
                chars.next();
            }
        }
        rest = &body[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|e| format!("bad timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// Each histogram series: buckets cumulative in `le` order, `+Inf` present
/// and equal to `_count`, `_sum` present.
fn check_histograms(m: &Exposition) -> Result<(), String> {
    for (family, _) in m.types.iter().filter(|(_, k)| *k == "histogram") {
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in m.samples.iter().filter(|s| s.name == format!("{family}_bucket")) {
            let mut key = s.labels.clone();
            let le = key.remove("le").ok_or_else(|| format!("{family}: bucket without le"))?;
            let le =
                if le == "+Inf" { f64::INFINITY } else { le.parse().map_err(|_| format!("{family}: le {le:?}"))? };
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets not cumulative"));
            }
            let inf = buckets.last().filter(|b| b.0.is_infinite()).ok_or(format!("{family}{labels:?}: no +Inf"))?.1;
            let find = |suffix: &str| {
                m.samples.iter().find(|s| s.name == format!("{family}{suffix}") && s.labels == labels).map(|s| s.value)
            };
            if find("_count") != Some(inf) {
                return Err(format!("{family}{labels:?}: _count is not the +Inf bucket"));
            }
            find("_sum").ok_or(format!("{family}{labels:?}: no _sum"))?;
        }
    }
    Ok(())
}
