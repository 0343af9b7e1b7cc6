#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! fetchml on a 3-node JetStream cluster (R3 streams and buckets) under the
//! loss of a node and a network partition. Real nats-servers (the pinned
//! release), a real api process and real worker processes; each test in its
//! own namespace, database and cluster.

use fetchml_runtime::Settings;
use fetchml_tests::app::{WorkerProcess, client_with_key, fetchml_binary, key_of, spawn_worker_with, users_file};
use fetchml_tests::cluster::{NatsCluster, move_stream_leader, stream_cluster};
use fetchml_tests::{TestDatabase, eventually, fresh_database, unique_namespace};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TERMINAL: [&str; 5] = ["job_succeeded", "job_failed", "job_timed_out", "job_dead_lettered", "job_cancelled"];

/// A `fetchml api` process on a free loopback port, killed on drop.
struct ApiProcess {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiProcess {
    async fn spawn(nats_url: &str, ns: &str, db: &TestDatabase, env: &[(&str, &str)]) -> Self {
        let port = fetchml_tests::free_port();
        let quiet = std::env::var("TEST_LOG").is_err();
        let mut cmd = Command::new(fetchml_binary());
        cmd.args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .env("FETCHML_NATS__URL", nats_url)
            .env("FETCHML_NATS__NAMESPACE", ns)
            .env("FETCHML_NATS__REPLICAS", "3")
            .env("FETCHML_NATS__PROGRESS_MAX_BYTES", fetchml_tests::TEST_PROGRESS_BYTES.to_string())
            .env("FETCHML_AUTH__USERS_FILE", users_file())
            .env("FETCHML_POSTGRES__URL", &db.url);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
            .spawn()
            .unwrap();
        let me = Self { child, url: format!("http://127.0.0.1:{port}"), http: client_with_key(&key_of("alice")) };
        eventually(Duration::from_secs(60), || async {
            let r = me.http.get(me.url("/readyz")).send().await.ok()?;
            (r.status().as_u16() == 200).then_some(())
        })
        .await;
        me
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        match self.http.get(self.url(path)).send().await {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// One attempt at `POST /v1/jobs`: the status (0 when the request did not
    /// complete) and the body.
    async fn submit_once(&self, spec: &Value, key: &str) -> (u16, Value) {
        let sent = self
            .http
            .post(self.url("/v1/jobs"))
            .header("Idempotency-Key", key)
            .timeout(Duration::from_secs(30))
            .json(spec)
            .send()
            .await;
        match sent {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    async fn until_terminal(&self, id: &str) -> Value {
        eventually(Duration::from_secs(120), || async {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            let terminal = ["succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];
            terminal.contains(&job["state"].as_str().unwrap_or("")).then_some(job)
        })
        .await
    }

    /// The job's event types in order; empty when the replica that answered
    /// knows no event of it yet (404 `job_not_found`, see [`check_invariants`]).
    async fn event_types(&self, id: &str) -> Vec<String> {
        let (s, events) = self.get(&format!("/v1/jobs/{id}/events")).await;
        if s == 404 && events["error"]["code"] == "job_not_found" {
            return Vec::new();
        }
        assert_eq!(s, 200, "{events}");
        events["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }
}

/// What a client saw while submitting under a fault.
#[derive(Default, Debug)]
struct SubmitTally {
    /// Acknowledged (202) job ids.
    ids: Vec<String>,
    /// 503 answers, each retried with the same key.
    unavailable: usize,
    /// Requests that did not complete (connection or timeout), retried too.
    transport: usize,
    /// Anything else: a failure.
    other: Vec<(u16, Value)>,
    /// From the first refused or incomplete request to the last one.
    unavailable_window: Option<(tokio::time::Instant, tokio::time::Instant)>,
}

impl SubmitTally {
    fn refused(&mut self) {
        let now = tokio::time::Instant::now();
        let first = self.unavailable_window.map_or(now, |(f, _)| f);
        self.unavailable_window = Some((first, now));
    }

    /// How long writes were refused, as the client saw it.
    fn unavailable_for(&self) -> Duration {
        self.unavailable_window.map_or(Duration::ZERO, |(f, l)| l - f)
    }
}

/// Submits `n` short sleep jobs one after another, each retried with its own
/// `Idempotency-Key` until it is acknowledged, counting what came back.
/// `acked` follows the number acknowledged, so a test can strike mid-load.
async fn submit_load(api: Arc<ApiProcess>, n: usize, acked: Arc<AtomicUsize>) -> SubmitTally {
    let mut t = SubmitTally::default();
    for i in 0..n {
        let key = uuid::Uuid::new_v4().to_string();
        let ms = 100 + (i % 4) * 150;
        let spec = json!({"executor": "sleep", "command": [ms.to_string()],
            "retry": {"backoff_initial_ms": 100, "max_attempts": 20}});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (status, body) = api.submit_once(&spec, &key).await;
            match status {
                202 => {
                    t.ids.push(body["id"].as_str().unwrap().to_owned());
                    acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                503 => {
                    t.unavailable += 1;
                    t.refused();
                }
                0 => {
                    t.transport += 1;
                    t.refused();
                }
                _ => {
                    t.other.push((status, body));
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "job {i} not acknowledged within 90 s: {t:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t
}

/// Every acknowledged job ran to success once: one terminal event, and every
/// start preceded by the end of the attempt before it (never two at once).
///
/// A job's history is read with direct gets, which any replica of EVENTS may
/// answer: one that is still catching up (a restarted or healed node) can
/// answer with an older history than the read model's. Such a read is retried
/// until the history shows the job's end, and counted: the returned number is
/// how many stale histories were seen.
async fn check_invariants(api: &ApiProcess, ids: &[String]) -> usize {
    let stale = std::cell::Cell::new(0);
    for id in ids {
        let job = api.until_terminal(id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let types = eventually(Duration::from_secs(30), || async {
            let types = api.event_types(id).await;
            if types.iter().any(|t| TERMINAL.contains(&t.as_str())) {
                Some(types)
            } else {
                stale.set(stale.get() + 1);
                None
            }
        })
        .await;
        let terminal = types.iter().filter(|t| TERMINAL.contains(&t.as_str())).count();
        assert_eq!(terminal, 1, "{id}: {types:?}");
        let mut running = false;
        for t in &types {
            match t.as_str() {
                "job_started" => {
                    assert!(!running, "{id}: two attempts at once: {types:?}");
                    running = true;
                }
                "job_retry_scheduled" | "job_succeeded" => running = false,
                _ => {}
            }
        }
    }
    stale.get()
}

/// A worker process connected to `nats_url`, returned once the api lists it
/// (its queues' consumers exist). Started one after the other: the first
/// creates the replicated consumers, which takes a few seconds on a cluster.
async fn worker_on(api: &ApiProcess, nats_url: &str, ns: &str) -> WorkerProcess {
    let mut s = Settings::default();
    s.nats.url = nats_url.to_owned();
    s.nats.namespace = ns.to_owned();
    s.nats.progress_max_bytes = fetchml_tests::TEST_PROGRESS_BYTES;
    let (_, before) = api.get("/v1/workers").await;
    let known = before["items"].as_array().map_or(0, Vec::len);
    let mut w = spawn_worker_with(&s, &[], &[("FETCHML_NATS__REPLICAS", "3"), ("FETCHML_WORKER__LEASE_SECS", "10")]);
    let pid = w.pid();
    eventually(Duration::from_secs(60), || {
        let alive = w.still_running();
        async move {
            assert!(alive, "worker {pid} on {nats_url} exited while starting (run with TEST_LOG=1 to see why)");
            let (_, list) = api.get("/v1/workers").await;
            (list["items"].as_array().map_or(0, Vec::len) > known).then_some(())
        }
    })
    .await;
    w
}

async fn jetstream_at(url: &str) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Waits until `node` holds every event of the stream (current, no lag),
/// moves the stream's leadership to it, so that a reader connected to it reads
/// its own copy, and runs `fetchml verify` against it. Returns the verified
/// last sequence.
async fn verify_from(cluster: &NatsCluster, node: &str, stream: &str, ns: &str) -> u64 {
    let js = jetstream_at(&cluster.node(node).url()).await;
    eventually(Duration::from_secs(60), || async {
        let c = stream_cluster(&js, stream).await?;
        let peer = c.replicas.iter().find(|p| p.name == node);
        let caught_up = c.leader.as_deref() == Some(node) || peer.is_some_and(|p| p.current && p.lag.unwrap_or(0) == 0);
        caught_up.then_some(())
    })
    .await;
    move_stream_leader(&js, stream, node).await;
    let last = js.get_stream(stream).await.unwrap().info().await.unwrap().state.last_sequence;
    let out = tokio::process::Command::new(fetchml_binary())
        .arg("verify")
        .env("FETCHML_NATS__URL", cluster.node(node).url())
        .env("FETCHML_NATS__NAMESPACE", ns)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let verified = said
        .strip_prefix("intact up to sequence ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        out.status.success() && verified == Some(last),
        "verify on {node} (last sequence {last}): {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last
}

/// Each test runs three nats-servers, an api and workers on a 2-core machine:
/// one cluster at a time, so that an election's timing is the cluster's and
/// not the other test's load.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn killing_the_events_leader_under_load_loses_no_job_and_the_restarted_node_catches_up_and_verifies() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = NatsCluster::start().await;
    let ns = unique_namespace().to_string();
    let db = fresh_database();
    let api = Arc::new(ApiProcess::spawn(&cluster.node("n1").url(), &ns, &db, &[]).await);
    let mut workers =
        [worker_on(&api, &cluster.node("n2").url(), &ns).await, worker_on(&api, &cluster.node("n3").url(), &ns).await];
    let events = format!("{ns}_EVENTS");
    let js = jetstream_at(&cluster.node("n1").url()).await;
    let c = stream_cluster(&js, &events).await.expect("EVENTS exists");
    assert_eq!(c.replicas.len(), 2, "EVENTS has three replicas: {c:?}");
    for bucket in [format!("KV_{ns}_sessions"), format!("KV_{ns}_workers")] {
        let c = eventually(Duration::from_secs(20), || stream_cluster(&js, &bucket)).await;
        assert_eq!(c.replicas.len(), 2, "{bucket} has three replicas: {c:?}");
    }

    // The leader to kill serves a worker too: the worker loses its server and
    // the log its leader at the same instant.
    move_stream_leader(&js, &events, "n2").await;
    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(submit_load(api.clone(), 60, acked.clone()));
    eventually(Duration::from_secs(60), || async { (acked.load(Ordering::Relaxed) >= 15).then_some(()) }).await;
    let leader = stream_cluster(&js, &events).await.unwrap().leader.unwrap();
    cluster.node_mut(&leader).kill9();
    let tally = load.await.unwrap();
    println!(
        "killed the EVENTS leader {leader} after {} acknowledged jobs: {} acknowledged in all, {} answers 503 and {} \
         incomplete requests during the election (writes refused for {:?}), each retried with its key",
        15,
        tally.ids.len(),
        tally.unavailable,
        tally.transport,
        tally.unavailable_for()
    );
    assert!(tally.other.is_empty(), "unexpected answers: {:?}", tally.other);
    assert_eq!(tally.ids.len(), 60);
    let stale = check_invariants(&api, &tally.ids).await;
    println!("stale job histories read during the check: {stale}");
    // The same processes carried on: none was restarted.
    let mut api = Arc::try_unwrap(api).ok().expect("the load is done");
    assert!(api.still_running(), "the api exited");
    for w in &mut workers {
        assert!(w.still_running(), "a worker exited");
    }

    cluster.restart(&leader);
    cluster.until_meta_leader().await;
    let last = verify_from(&cluster, &leader, &events, &ns).await;
    // The whole log: at least the queue, start and end of every job.
    assert!(last >= 3 * 60, "{leader} verified only up to {last}");
}

#[tokio::test]
async fn a_partitioned_node_refuses_writes_the_majority_goes_on_and_after_healing_everything_converges() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    if let Err(why) = fetchml_tests::cluster::can_make_netns() {
        panic!("this test makes network namespaces and veth pairs, which needs root and iproute2: {why}");
    }
    let cluster = NatsCluster::start_partitionable().await;
    let ns = unique_namespace().to_string();
    let db = fresh_database();
    let events = format!("{ns}_EVENTS");
    // The majority's api (with the projector and the dispatcher) on n1, the
    // workers on n1 and n2; a second api on n3, the node to be cut off, that
    // only takes commands (read models and dispatch stay with the first).
    let major = Arc::new(ApiProcess::spawn(&cluster.node("n1").url(), &ns, &db, &[]).await);
    let minor = ApiProcess::spawn(
        &cluster.node("n3").url(),
        &ns,
        &db,
        &[("FETCHML_API__EMBEDDED_PROJECTOR", "false"), ("FETCHML_API__EMBEDDED_SCHEDULER", "false")],
    )
    .await;
    let mut workers = [
        worker_on(&major, &cluster.node("n1").url(), &ns).await,
        worker_on(&major, &cluster.node("n2").url(), &ns).await,
    ];
    let spec = |side: &str| json!({"executor": "sleep", "command": ["50"], "tags": {"side": side}});
    let (s, before) = minor.submit_once(&spec("before"), &uuid::Uuid::new_v4().to_string()).await;
    assert_eq!(s, 202, "{before}");
    let mut ids = vec![before["id"].as_str().unwrap().to_owned()];

    // The cut-off node leads the log, so the majority must elect a new leader.
    let js = jetstream_at(&cluster.node("n1").url()).await;
    move_stream_leader(&js, &events, "n3").await;
    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(submit_load(major.clone(), 40, acked.clone()));
    eventually(Duration::from_secs(60), || async { (acked.load(Ordering::Relaxed) >= 10).then_some(()) }).await;

    cluster.partition();
    eventually(Duration::from_secs(30), || async {
        let cut = cluster.node("n3").routed_servers().await? == 0;
        let majority = cluster.node("n1").routed_servers().await? == 1;
        (cut && majority).then_some(())
    })
    .await;
    // The minority refuses writes: 503 with a stable code, every time.
    let mut refused_keys = Vec::new();
    for _ in 0..3 {
        let key = uuid::Uuid::new_v4().to_string();
        let (s, body) = minor.submit_once(&spec("minority"), &key).await;
        assert_eq!((s, body["error"]["code"].as_str()), (503, Some("event_store_unavailable")), "{body}");
        refused_keys.push(key);
    }
    // The majority goes on: the load that spanned the cut, then more while
    // the partition lasts.
    let mut tally = load.await.unwrap();
    let spanned = (tally.ids.len(), tally.unavailable, tally.transport, tally.unavailable_for());
    let during = submit_load(major.clone(), 20, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(cluster.node("n3").routed_servers().await, Some(0), "the partition healed by itself");
    println!(
        "partition: the majority acknowledged {} jobs across the cut ({} answers 503, {} incomplete requests while \
         it elected a new EVENTS leader, writes refused for {:?}) and {} more during the partition ({} answers 503); \
         the minority answered 503 event_store_unavailable {} times out of {}",
        spanned.0,
        spanned.1,
        spanned.2,
        spanned.3,
        during.ids.len(),
        during.unavailable,
        refused_keys.len(),
        refused_keys.len()
    );
    tally.ids.extend(during.ids);
    tally.other.extend(during.other);
    assert!(tally.other.is_empty(), "unexpected answers: {:?}", tally.other);
    assert_eq!(tally.ids.len(), 60);
    let leader = stream_cluster(&js, &events).await.unwrap().leader;
    assert!(leader.as_deref().is_some_and(|l| l != "n3"), "EVENTS led by {leader:?} during the partition");
    let stale = check_invariants(&major, &tally.ids).await;
    println!("stale job histories read during the partition: {stale}");
    ids.extend(tally.ids);

    cluster.heal();
    eventually(Duration::from_secs(60), || async { (cluster.node("n3").routed_servers().await? == 2).then_some(()) })
        .await;
    cluster.until_meta_leader().await;
    // The healed minority takes writes again.
    let key = uuid::Uuid::new_v4().to_string();
    let after = eventually(Duration::from_secs(60), || async {
        let (s, body) = minor.submit_once(&spec("after"), &key).await;
        (s == 202).then(|| body["id"].as_str().unwrap().to_owned())
    })
    .await;
    ids.push(after);
    let stale = check_invariants(&major, &ids).await;
    println!("stale job histories read after healing (served by the catching-up node): {stale}");
    // Nothing half-written: the refused submissions left no job anywhere.
    let (s, list) = major.get("/v1/jobs?tag=side=minority&limit=500").await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "a refused submission was stored: {list}");
    let mut major = Arc::try_unwrap(major).ok().expect("the load is done");
    assert!(major.still_running(), "the majority's api exited");
    for w in &mut workers {
        assert!(w.still_running(), "a worker exited");
    }
    // n3's copy converged: it leads the log again and the verifier passes on it.
    let last = verify_from(&cluster, "n3", &events, &ns).await;
    assert!(last as usize >= 3 * ids.len(), "n3 verified only up to {last}");
    drop(minor);
}
