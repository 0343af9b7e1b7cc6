//! The web dashboard in a real browser: Debian's Chromium driven by
//! playwright-core (`tests/browser/dashboard.mjs`), against the real api
//! (serving the built `web/app/dist`), a worker, NATS and Postgres. The Rust
//! side sets the scene and checks the outcome through the api; the script
//! drives the page and checks what it shows. Screenshots of each page go to
//! `target/browser-screenshots/<test>/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

use fetchml_tests::app::{
    ApiProcess, TestApp, client_with_key, key_of, processes_with, spawn_api_process, spawn_app_with, spawn_worker,
    spawn_worker_with, unique_sleep,
};
use fetchml_tests::repo_root;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

fn web_app() -> PathBuf {
    repo_root().join("web/app")
}

fn dist() -> PathBuf {
    let dist = web_app().join("dist");
    assert!(
        dist.join("index.html").exists(),
        "{} is missing: ./deploy/test builds it (npm ci && npm run build in web/app)",
        dist.display()
    );
    dist
}

fn chromium() -> String {
    let path = std::env::var("FETCHML_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: ./deploy/test installs Debian's chromium package"
    );
    path
}

async fn dashboard_app() -> TestApp {
    let dist = dist();
    spawn_app_with(|s| s.api.ui_dir = dist).await
}

/// An api the script can drive: in this process, or a `fetchml api` process.
trait Served {
    fn addr(&self) -> std::net::SocketAddr;
}
impl Served for TestApp {
    fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}
impl Served for ApiProcess {
    fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

/// What the measurements run against: the api in this test process (the
/// suite), or with `FETCHML_TEST_BIN_DIR=target/release` the release
/// `fetchml api` and `fetchml worker` (the figures in BENCHMARKS.md).
enum PerfApi {
    InProcess(TestApp),
    Process(ApiProcess),
}

impl PerfApi {
    async fn start() -> Self {
        match std::env::var_os("FETCHML_TEST_BIN_DIR") {
            Some(_) => PerfApi::Process(spawn_api_process(&dist()).await),
            None => PerfApi::InProcess(dashboard_app().await),
        }
    }
    fn settings(&self) -> &fetchml_runtime::Settings {
        match self {
            PerfApi::InProcess(a) => &a.settings,
            PerfApi::Process(a) => &a.settings,
        }
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
}

impl Served for PerfApi {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            PerfApi::InProcess(a) => a.addr,
            PerfApi::Process(a) => a.addr,
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs one scenario of the script; returns its `result` lines. Panics with
/// the script's output if it fails.
async fn scenario(app: &impl Served, name: &str, env: &[(&str, String)]) -> Vec<Value> {
    let keys: serde_json::Map<String, Value> =
        ["alice", "ana", "root"].iter().map(|u| (u.to_string(), Value::String(key_of(u)))).collect();
    let shots = repo_root().join("target/browser-screenshots").join(name);
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/browser/dashboard.mjs"))
        .arg(name)
        .env("FETCHML_BASE", format!("http://{}", app.addr()))
        .env("FETCHML_KEYS", Value::Object(keys).to_string())
        .env("FETCHML_SHOTS", &shots)
        .env("FETCHML_WEB_APP", web_app())
        .env("FETCHML_CHROMIUM", chromium())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(240), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("scenario {name} did not finish within 240 s"))
        .expect("node runs (./deploy/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scenario {name} failed:\n{stdout}\n{stderr}");
    stdout.lines().filter_map(|l| l.strip_prefix("result ")).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn each_role_signs_in_and_sees_what_it_may_and_a_bad_key_gets_a_clear_error() {
    let app = dashboard_app().await;
    let _worker = spawn_worker(&app.settings);
    // One job, so the pages have something to show.
    let (s, _) = app.submit(json!({"command": ["true"], "experiment": "browser-roles"})).await;
    assert_eq!(s, 202);
    let results = scenario(&app, "roles", &[]).await;
    let by_user = |u: &str| results.iter().find(|r| r["user"] == u).cloned().unwrap_or(Value::Null);
    // A researcher and an admin may cancel; an analyst is offered neither
    // cancel nor an owner filter.
    assert_eq!(by_user("alice")["hasCancel"], true);
    assert_eq!(by_user("root")["hasCancel"], true);
    assert_eq!(by_user("ana")["hasCancel"], false);
    assert_eq!(by_user("ana")["hasOwnerFilter"], false);
    assert_eq!(by_user("alice")["hasOwnerFilter"], true);
    let bad = results.iter().find_map(|r| r["badKeyError"].as_str()).unwrap_or("");
    assert!(bad.contains("not valid"), "the bad key's error says what is wrong: {bad:?}");
}

#[tokio::test]
async fn a_job_submitted_elsewhere_appears_live_with_its_logs_and_chart_and_ends_succeeded() {
    let app = dashboard_app().await;
    let _worker = spawn_worker(&app.settings);
    let results = scenario(&app, "live", &[]).await;
    let id = results.iter().find_map(|r| r["submitted"].as_str()).expect("the script submitted a job").to_owned();
    assert!(results.iter().any(|r| r["succeededInList"] == id.as_str()));
    let job = app.until_state(&id, "succeeded").await;
    assert_eq!(job["metrics"]["loss"]["step"], 10);
}

#[tokio::test]
async fn cancel_from_the_page_stops_a_running_job() {
    let app = dashboard_app().await;
    let _worker = spawn_worker(&app.settings);
    let marker = unique_sleep();
    let (s, b) = app.submit(json!({"command": ["sleep", marker]})).await;
    assert_eq!(s, 202);
    let id = b["id"].as_str().unwrap().to_owned();
    app.until_state(&id, "running").await;
    fetchml_tests::eventually(Duration::from_secs(30), || async {
        (!processes_with(&marker).is_empty()).then_some(())
    })
    .await;
    scenario(&app, "cancel", &[("FETCHML_JOB", id.clone())]).await;
    app.until_state(&id, "cancelled").await;
    // The process group got the signal: the sleep is gone.
    fetchml_tests::eventually(Duration::from_secs(30), || async { processes_with(&marker).is_empty().then_some(()) })
        .await;
    let types = app.event_types(&id).await;
    assert_eq!(types.last().map(String::as_str), Some("job_cancelled"));
}

#[tokio::test]
async fn an_analysts_page_holds_no_command_line_environment_or_owner() {
    let app = dashboard_app().await;
    let _worker = spawn_worker(&app.settings);
    let marker = format!("marker{}", uuid::Uuid::new_v4().simple());
    let (s, b) = app
        .submit(json!({
            "command": ["sh", "-c", format!("echo {marker}; echo '##fetchml {{\"metric\": \"acc\", \"value\": 0.9, \"step\": 1}}'")],
            "env": {"HIDDEN_NAME": "ENV_HIDDEN_VALUE"},
            "experiment": "browser-analyst",
            "tags": {"team": "vision"},
        }))
        .await;
    assert_eq!(s, 202);
    let id = b["id"].as_str().unwrap().to_owned();
    app.until_state(&id, "succeeded").await;
    let results = scenario(&app, "analyst", &[("FETCHML_JOB", id), ("FETCHML_MARKER", marker)]).await;
    let checked = results.iter().find_map(|r| r["checkedResponses"].as_u64()).unwrap_or(0);
    assert!(checked >= 3, "the script checked the api's answers to the page ({checked})");
}

#[tokio::test]
async fn the_history_scrubber_shows_a_job_only_from_the_point_it_was_queued() {
    let app = dashboard_app().await;
    let _worker = spawn_worker(&app.settings);
    // Something in the log before the job, so a point before it exists.
    let (s, first) = app.submit(json!({"command": ["true"]})).await;
    assert_eq!(s, 202);
    app.until_state(first["id"].as_str().unwrap(), "succeeded").await;
    let (s, b) = app.submit(json!({"command": ["true"], "experiment": "browser-history"})).await;
    assert_eq!(s, 202);
    let id = b["id"].as_str().unwrap().to_owned();
    let queued_at = b["seq"].as_u64().unwrap();
    app.until_state(&id, "succeeded").await;
    let last = app.get(&format!("/v1/jobs/{id}")).await.1["seq"].as_u64().unwrap();
    let results = scenario(
        &app,
        "history",
        &[
            ("FETCHML_JOB", id.clone()),
            ("FETCHML_SEQ_BEFORE", (queued_at - 1).to_string()),
            ("FETCHML_SEQ_AFTER", last.to_string()),
        ],
    )
    .await;
    let r = results.iter().find(|r| r.get("shownBefore").is_some()).expect("the script reported");
    assert_eq!(r["shownBefore"], false, "before it was queued the job is not in the list");
    assert_eq!(r["shownAfter"], true);
    let types: Vec<&str> = r["timelineTypes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(types.first(), Some(&"job_queued"));
    assert_eq!(types.last(), Some(&"job_succeeded"));
}

/// The audit page: an admin reads who did what, logins and refusals
/// included, and narrows it by actor and outcome; a researcher and an analyst
/// are not offered it.
#[tokio::test]
async fn an_admin_reads_the_trail_with_logins_and_refusals_and_other_roles_are_not_offered_it() {
    let app = dashboard_app().await;
    // A refusal in the log: an analyst may not submit.
    let r = app.as_user("ana").post(app.url("/v1/jobs")).json(&json!({"command": ["true"]})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (s, _) = app.submit(json!({"command": ["true"], "experiment": "browser-audit"})).await;
    assert_eq!(s, 202);
    let results = scenario(&app, "audit", &[("FETCHML_REFUSED_BY", "ana".into())]).await;
    for user in ["alice", "ana"] {
        let r = results.iter().find(|r| r["user"] == user).unwrap_or_else(|| panic!("{user} reported: {results:?}"));
        assert_eq!(r["auditNav"], false, "{user} has no Audit entry");
        assert_eq!(r["auditHeading"], "No such page", "{user}: /audit is no page");
        assert_eq!(r["askedTrail"], false, "{user}'s page never asked for the trail");
    }
    let admin = results.iter().find(|r| r.get("all").is_some()).expect("the admin's part reported");
    let rows = |k: &str| admin[k].as_array().cloned().unwrap_or_default();
    let has = |k: &str, ty: &str, actor: &str| rows(k).iter().any(|r| r["type"] == ty && r["actor"] == actor);
    assert!(has("all", "user_authenticated", "root"), "the admin's own login is listed: {admin}");
    assert!(has("all", "user_authenticated", "alice"), "another user's login is listed: {admin}");
    assert!(has("all", "access_denied", "ana"), "the analyst's refusal is listed: {admin}");
    assert!(rows("all").iter().any(|r| r["actor"] != "ana"), "before the filter others are listed too");
    assert!(has("byActor", "access_denied", "ana"));
    assert!(rows("byActor").iter().all(|r| r["actor"] == "ana"), "the actor filter narrows the list: {admin}");
    assert!(rows("byActor").len() < rows("all").len());
    assert!(rows("refused").iter().all(|r| r["outcome"] == "refused" && r["actor"] == "ana"), "{admin}");
    assert!(admin["emptyText"].as_str().unwrap_or("").contains("No entries match"), "{admin}");
}

#[tokio::test]
async fn the_api_serves_the_dashboard_with_its_cache_and_security_headers() {
    let app = dashboard_app().await;
    let anonymous = reqwest::Client::new();
    let page = anonymous.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["cache-control"], "no-cache");
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains(&format!("ws://{}", app.addr)), "the stream's origin is allowed: {csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("<style"), "no inline script or style");
    let asset = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("the page loads a script");
    assert!(asset.starts_with("/assets/"), "{asset}");
    let js = anonymous.get(app.url(asset)).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(js.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    // A client-side route gets the page; the api's own prefixes never do.
    let route = anonymous.get(app.url("/jobs/0198")).send().await.unwrap();
    assert_eq!(route.status(), 200);
    assert!(route.text().await.unwrap().contains("id=\"app\""));
    for path in ["/v1/nothing", "/docs/nothing", "/healthz/x", "/assets/missing-123.js"] {
        let r = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "route_not_found", "{path}");
    }
}

#[tokio::test]
async fn without_a_build_the_api_starts_and_says_the_dashboard_is_unavailable() {
    let app = spawn_app_with(|s| s.api.ui_dir = "/nonexistent/dist".into()).await;
    let r = reqwest::Client::new().get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "dashboard_unavailable");
    // The api itself works.
    let (s, _) = app.submit(json!({"command": ["true"]})).await;
    assert_eq!(s, 202);
}

/// The jobs page over a full read model and under a burst of job events: it
/// paints its rows and keeps rendering frames. In the suite with 1 000 jobs
/// and a 2 s burst (it asserts that the page works, never how fast: timing
/// goals belong to measurements); the figures in BENCHMARKS.md come from the
/// same test against a release build:
/// `FETCHML_TEST_BIN_DIR=$PWD/target/release FETCHML_PERF_JOBS=100000 FETCHML_PERF_SECONDS=10 ./deploy/test -p fetchml-tests --test browser -- --nocapture measure_the_jobs`.
#[tokio::test]
async fn measure_the_jobs_page_over_a_full_read_model() {
    let app = PerfApi::start().await;
    let jobs = env_number("FETCHML_PERF_JOBS", 1_000) as usize;
    let admin = client_with_key(&key_of("root"));
    let started = std::time::Instant::now();
    let mut last_seq = 0;
    for chunk in 0..jobs.div_ceil(1000) {
        let n = (jobs - chunk * 1000).min(1000);
        let specs: Vec<Value> =
            (0..n).map(|i| json!({"command": ["true"], "experiment": format!("perf-{}", i % 20)})).collect();
        let r = admin.post(app.url("/v1/jobs/batch")).json(&json!({"jobs": specs})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let b: Value = r.json().await.unwrap();
        last_seq = b["jobs"].as_array().unwrap().iter().filter_map(|j| j["seq"].as_u64()).max().unwrap_or(last_seq);
    }
    let submitted = started.elapsed();
    // The read model holds them all (after_seq waits at most 5 s per call).
    fetchml_tests::eventually(Duration::from_secs(900), || async {
        let r = admin.get(app.url(&format!("/v1/jobs?limit=1&after_seq={last_seq}"))).send().await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    println!("{jobs} jobs submitted in {submitted:?}, projected after {:?}", started.elapsed());
    let seconds = env_number("FETCHML_PERF_SECONDS", 2).to_string();
    let results = scenario(&app, "perf", &[("FETCHML_PERF_SECONDS", seconds)]).await;
    for r in &results {
        println!("{r}");
    }
    let out = repo_root().join("target/browser-screenshots/perf.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    // The page listed the jobs (each load's first rows were painted) and
    // rendered frames while the events came in.
    let paints = results.iter().find_map(|r| r["firstUsefulPaintMs"].as_array().cloned()).unwrap_or_default();
    assert!(!paints.is_empty() && paints.iter().all(|p| p.as_f64().is_some_and(|ms| ms > 0.0)), "{results:?}");
    let frames = results.iter().find_map(|r| r["frames"].as_u64()).unwrap_or(0);
    assert!(frames > 0, "no frames rendered under the burst: {results:?}");
    let shown = results.iter().find_map(|r| r["liveRowsShown"].as_u64()).unwrap_or(0);
    assert!(shown > 0, "the burst's jobs reached the page: {results:?}");
}

/// Waits for its go file, then writes `L<n> <ms since epoch>` lines at a
/// rate, one millisecond's worth at a time, up to `L<total-1>`.
const FAST_LOG: &str = r#"
import os, sys, time
go, rate, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.01)
burst = max(1, rate // 1000)
start, n = time.time(), 0
while n < total:
    wait = start + n / rate - time.time()
    if wait > 0:
        time.sleep(wait)
    ms = int(time.time() * 1000)
    sys.stdout.write("".join(f"L{n + i} {ms}\n" for i in range(min(burst, total - n))))
    sys.stdout.flush()
    n += burst
"#;

/// A job page following a log written at 5 000 lines/s: the newest line is
/// on screen (the view is bounded, it keeps up), and the lag from a line's
/// emission to its rendering is measured. In the suite for 2 s; the figures
/// in BENCHMARKS.md with `FETCHML_PERF_LOG_SECONDS=10` and a release build.
#[tokio::test]
async fn measure_a_job_page_following_a_fast_log() {
    let app = PerfApi::start().await;
    let rate = env_number("FETCHML_PERF_LOG_RATE", 5_000);
    let seconds = env_number("FETCHML_PERF_LOG_SECONDS", 2);
    let total = rate * seconds;
    let worker = spawn_worker_with(app.settings(), &["--pool", "logs"], &[]);
    // The job waits for the page to follow it (the browser script creates
    // the go file), then writes its lines.
    let go = worker.job_root.path().join("go");
    let args = [go.display().to_string(), rate.to_string(), total.to_string()];
    let admin = client_with_key(&key_of("root"));
    let r = admin
        .post(app.url("/v1/jobs"))
        .json(&json!({"command": ["python3", "-c", FAST_LOG, &args[0], &args[1], &args[2]], "pool": "logs", "experiment": "perf-log"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let results = scenario(
        &app,
        "logs",
        &[
            ("FETCHML_JOB", id.clone()),
            ("FETCHML_GO_FILE", go.display().to_string()),
            ("FETCHML_LOG_TOTAL", total.to_string()),
            ("FETCHML_LOG_RATE", rate.to_string()),
        ],
    )
    .await;
    for r in &results {
        println!("{r}");
    }
    let out = repo_root().join("target/browser-screenshots/perf-logs.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    let r = results.iter().find(|r| r.get("lastLine").is_some()).expect("the script reported");
    // The newest line emitted is the newest line on screen, and the view
    // renders a bounded number of lines whatever the log's length.
    assert_eq!(r["lastLine"].as_u64(), Some(total - 1), "{r}");
    assert_eq!(r["lastOnScreen"], true, "{r}");
    let dom = r["maxDomLines"].as_u64().unwrap();
    assert!(dom > 0 && dom <= 400, "the log view is bounded: {r}");
    assert!(r["samples"].as_u64().unwrap() > 0, "{r}");
    drop(worker);
}

/// `GET /v1/jobs/counts`, which the job list's counts by state come from:
/// each role counts what its model holds, with the list's filters.
#[tokio::test]
async fn counts_by_state_follow_the_callers_model_and_filters() {
    let app = dashboard_app().await;
    let mut last = 0;
    for (user, experiment) in [("alice", "c1"), ("alice", "c2"), ("bob", "c1")] {
        let r =
            app.as_user(user).post(app.url("/v1/jobs")).json(&json!({"command": ["true"], "experiment": experiment}));
        let b: Value = r.send().await.unwrap().json().await.unwrap();
        last = last.max(b["seq"].as_u64().unwrap());
    }
    let counts = |user: &'static str, query: String| {
        let c = app.as_user(user);
        let url = app.url(&format!("/v1/jobs/counts?after_seq={last}{query}"));
        async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // No worker runs: every job waits.
    let (s, alice) = counts("alice", String::new()).await;
    assert_eq!(s, 200, "{alice}");
    assert_eq!((alice["by_state"]["queued"].as_u64(), alice["total"].as_u64()), (Some(2), Some(2)));
    assert_eq!(alice["by_state"]["succeeded"], 0, "every state is named");
    let (_, root) = counts("root", String::new()).await;
    assert_eq!(root["total"], 3);
    let (_, ana) = counts("ana", "&experiment=c1".into()).await;
    assert_eq!(ana["total"], 2);
    let (_, root_c1) = counts("root", "&owner=bob".into()).await;
    assert_eq!(root_c1["total"], 1);
    // An analyst sees no owners, so may not count by one either.
    let (s, _) = counts("ana", "&owner=bob".into()).await;
    assert_eq!(s, 403);
    let (s, b) = counts("alice", "&state=queued".into()).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("unknown_parameter")));
}
