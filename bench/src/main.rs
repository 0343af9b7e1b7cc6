//! `bench`: fetchml's figures next to the broker's own limit, measured in the
//! same run on the same machine (these machines are shared and noisy, so only
//! ratios within one run mean much).
//!
//! It starts its own nats-server (temp store), the `fetchml` api and workers as
//! separate processes (so their memory can be read), drives them over HTTP and
//! reads the results back from the event log. See BENCHMARKS.md for the command
//! and the latest results.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failing loudly is the point

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod http1;
mod scheduling;

// The load generator shares the machine with what it measures: the
// allocator the server uses keeps its own CPU share small too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "fetchml benchmarks, as ratios to the broker's limit in the same run")]
struct Args {
    /// Where the `fetchml` binary is (build with --release first).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The nats-server to start.
    #[arg(long, default_value = ".fetchml/nats/bin/nats-server")]
    nats_server: PathBuf,
    /// Write results as JSON here.
    #[arg(long, default_value = "bench-results.json")]
    out: PathBuf,
    /// Smaller counts, for a quick look.
    #[arg(long)]
    quick: bool,
    /// A PostgreSQL server (no database: the bench creates and drops its own).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// Events to rebuild the read models from (default 1,000,000; 100,000 with --quick).
    #[arg(long)]
    rebuild_events: Option<usize>,
    /// Run only these sections (the raw limit always runs: ratios need it):
    /// durability, submit, e2e, latency, backlog, fairshare, rebuild, projector, audit,
    /// streams, cancel, ryw. Repeatable.
    #[arg(long)]
    only: Vec<String>,
    /// Run against a 3-node loopback JetStream cluster with R3 streams (every
    /// stream the bench or fetchml makes), instead of one server.
    #[arg(long)]
    cluster: bool,
    /// How the streams section's clients take messages: `batch` (subscribe
    /// with `batch: true`: many messages a frame) or `single` (one frame a
    /// message, as clients written before batching do).
    #[arg(long, default_value = "batch", value_parser = ["batch", "single"])]
    stream_frames: String,
    /// Jobs per end-to-end phase (default 10,000; 2,000 with --quick). More
    /// makes a phase long enough to profile a process through.
    #[arg(long)]
    e2e_jobs: Option<usize>,
    /// The rate (jobs/s) the latency section's "80% of max" phases take 80%
    /// of; default: the end-to-end section's sustained single-submit rate in
    /// this run (800 jobs/s without it). Fixing it compares builds or settings
    /// at one offered load on a host whose speed drifts between runs.
    #[arg(long)]
    latency_max: Option<f64>,
    /// How long each queue-to-start phase offers its load, in seconds
    /// (default 10; 4 with --quick). A long phase shows what changes as the
    /// read models grow under a steady load.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Write each queue-to-start phase's jobs here, one CSV per phase
    /// (`q2s-<namespace>.csv`: queued at, in µs since the epoch, and
    /// queue-to-start in ms), to see when in a phase the slow starts fell.
    #[arg(long)]
    latency_dump: Option<PathBuf>,
    /// Time each hop of queue-to-start in the "80% of max" phases too. Off
    /// by default: the observer that times them is a load of its own there.
    #[arg(long)]
    hops_near_max: bool,
    /// GOGC for the nats-servers the bench starts: as deploy/lib.sh runs them
    /// (400, or `FETCHML_NATS_GOGC`); 100 for Go's default.
    #[arg(long, env = "FETCHML_NATS_GOGC", default_value_t = 400)]
    nats_gogc: u32,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
impl Proc {
    fn rss_kib(&self) -> u64 {
        rss_kib(self.0.id())
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The most resident memory the process has had (the kernel's high-water mark).
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// With `BENCH_PROCESS_LOGS=<dir>`, the api, scheduler and worker processes log
/// at `info` into files there (to find out why a figure is what it is);
/// otherwise they log warnings to nowhere.
fn process_log() -> Stdio {
    let Some(dir) = std::env::var_os("BENCH_PROCESS_LOGS") else { return Stdio::null() };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = Path::new(&dir).join(format!("process-{}.log", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::File::create(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

fn log_level() -> &'static str {
    if std::env::var_os("BENCH_PROCESS_LOGS").is_some() { "info" } else { "warn" }
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The fields after the command name (which may hold spaces), from field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // Linux reports in USER_HZ, 100 on every architecture we run on.
    ticks / 100.0
}

/// CPU time of every process named `comm` (PostgreSQL's backends, say).
fn cpu_secs_of_all(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .map(cpu_secs)
        .sum()
}

/// Where the CPU of a phase went, by process kind.
struct CpuSplit {
    api: f64,
    workers: f64,
    broker: f64,
    postgres: f64,
    bench: f64,
}

impl CpuSplit {
    fn now(api: &Proc, workers: &[Proc], env: &Env) -> Self {
        Self {
            api: cpu_secs(api.0.id()),
            workers: workers.iter().map(|w| cpu_secs(w.0.id())).sum(),
            broker: broker_cpu_secs(env),
            postgres: cpu_secs_of_all("postgres"),
            bench: cpu_secs(std::process::id()),
        }
    }

    /// Reports CPU microseconds per job spent in each kind since `before`.
    fn report(&self, before: &Self, jobs: usize, label: &str, r: &mut Report) {
        for (name, a, b) in [
            ("api", self.api, before.api),
            ("workers", self.workers, before.workers),
            ("nats-server", self.broker, before.broker),
            ("postgres", self.postgres, before.postgres),
            ("bench client", self.bench, before.bench),
        ] {
            r.add(&format!("  CPU per job, {label}: {name}"), (a - b) * 1e6 / jobs as f64, "µs", None);
        }
        let total = |c: &Self| c.api + c.workers + c.broker + c.postgres + c.bench;
        r.add(&format!("  CPU per job, {label}: all"), (total(self) - total(before)) * 1e6 / jobs as f64, "µs", None);
    }
}

/// The CPU seconds every nats-server of the bench has used.
fn broker_cpu_secs(env: &Env) -> f64 {
    env._nats.iter().map(|n| cpu_secs(n.0.id())).sum()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `process` listens on `port`. A process that exits first (a
/// setting it refuses, a port taken) is reported as such, not as a timeout.
async fn wait_port(port: u16, process: &mut Proc) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!(
                "the process meant to listen on {port} ended ({status}) first; \
                 BENCH_PROCESS_LOGS=<dir> keeps fetchml's logs"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {port}");
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Everything the run found, printed as a table and written as JSON.
#[derive(Default)]
struct Report {
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn add(&mut self, key: &str, value: f64, unit: &str, limit: Option<(&str, f64)>) {
        println!(
            "{key:<48} {value:>12.2} {unit:<8} {}",
            limit.map(|(n, l)| format!("{:>6.1}% of {n}", 100.0 * value / l)).unwrap_or_default()
        );
        self.json.insert(key.to_owned(), json!({"value": value, "unit": unit, "ratio_to": limit.map(|(n, l)| json!({"limit": n, "ratio": value / l}))}));
    }
}

struct Env {
    args: Args,
    /// The bench's Postgres server (databases are made per namespace).
    pg_server: String,
    /// The rebuild's database.
    pg_url: String,
    /// Databases to drop at the end.
    databases: std::sync::Mutex<Vec<String>>,
    /// A researcher's API key and the users file that holds it.
    key: String,
    users_file: tempfile::NamedTempFile,
    nats_url: String,
    /// Every server's client URL: workers are spread over them.
    node_urls: Vec<String>,
    next_node: std::sync::atomic::AtomicUsize,
    /// The brokers' monitoring endpoints (one per server).
    monitors: Vec<String>,
    /// Replicas of every stream made (1, or 3 with --cluster).
    replicas: usize,
    /// Keys of `scheduling::USERS` more researchers (only when a scheduling
    /// section runs: each key costs an argon2 hash).
    user_keys: Vec<String>,
    /// End to end with four workers on an empty queue, once measured.
    e2e_4: std::sync::OnceLock<f64>,
    _nats: Vec<Proc>,
    _store: tempfile::TempDir,
    client: async_nats::Client,
}

impl Env {
    fn fetchml(&self) -> PathBuf {
        self.args.bin_dir.join("fetchml")
    }

    /// A fresh database for namespace `ns` (read models are per namespace).
    async fn database(&self, ns: &str) -> String {
        use sqlx::Connection;
        let name = format!("fetchml_bench_{}_{ns}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", self.pg_server)).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await;
        self.databases.lock().unwrap().push(name.clone());
        format!("{}/{name}", self.pg_server)
    }

    /// An api process on a free port in namespace `ns`.
    async fn api(&self, ns: &str) -> (Proc, String) {
        self.api_with(ns, &[]).await
    }

    /// A `fetchml` process in namespace `ns` (its NATS server `nats_url`):
    /// what every process the bench starts shares. `nice` puts it at that
    /// CPU priority.
    fn command(&self, ns: &str, nats_url: &str, nice: Option<u8>) -> Command {
        let mut c = match nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &n.to_string()]).arg(self.fetchml());
                c
            }
            None => Command::new(self.fetchml()),
        };
        c.env("FETCHML_NATS__URL", nats_url)
            .env("FETCHML_NATS__NAMESPACE", ns)
            .env("FETCHML_NATS__REPLICAS", self.replicas.to_string())
            .env("RUST_LOG", log_level())
            .stdout(Stdio::null())
            .stderr(process_log());
        c
    }

    /// A standalone projector in namespace `ns`, at `nice` 10: the read
    /// models yield the CPU to the job path (the api runs without its own).
    async fn projector(&self, ns: &str) -> Proc {
        let mut c = self.command(ns, &self.nats_url, Some(10));
        c.arg("projector").env("FETCHML_POSTGRES__URL", self.database(ns).await);
        Proc(c.spawn().unwrap())
    }

    /// A standalone scheduler in namespace `ns`.
    fn scheduler(&self, ns: &str) -> Proc {
        Proc(self.command(ns, &self.nats_url, None).arg("scheduler").spawn().unwrap())
    }

    /// An api process with settings `extra` (environment variables) on top.
    async fn api_with(&self, ns: &str, extra: &[(&str, &str)]) -> (Proc, String) {
        let port = free_port();
        let child = self
            .command(ns, &self.nats_url, None)
            .args(["api", "--listen", &format!("127.0.0.1:{port}")])
            .envs(extra.iter().copied())
            .env("FETCHML_AUTH__USERS_FILE", self.users_file.path())
            .env("FETCHML_POSTGRES__URL", self.database(ns).await)
            .env("FETCHML_STREAMING__MAX_CONNECTIONS_PER_USER", "5000")
            // The streams section opens 1 000 WebSockets; the default (512)
            // leaves the rest waiting in the listen backlog.
            .env("FETCHML_API__MAX_CONNECTIONS", "5000")
            .spawn()
            .context("starting the api")
            .unwrap();
        let mut child = Proc(child);
        wait_port(port, &mut child).await;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..500 {
            if http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One authenticated request first: a serving api has its callers' keys
        // verified and cached, and a section should not time argon2 (about
        // a tenth of the api's CPU in a 2 000-job run started cold).
        let _ = http.get(format!("{url}/v1/auth/whoami")).bearer_auth(&self.key).send().await;
        (child, url)
    }

    fn worker(&self, ns: &str, concurrency: usize, job_root: &Path) -> Proc {
        // On a cluster, workers connect to the servers in turn, as on hosts of their own.
        let node = self.next_node.fetch_add(1, Ordering::Relaxed) % self.node_urls.len();
        let child = self
            .command(ns, &self.node_urls[node], None)
            .args(["worker", "--concurrency", &concurrency.to_string()])
            .env("FETCHML_WORKER__JOB_ROOT", job_root)
            .env("FETCHML_WORKER__KILL_GRACE_SECS", "1")
            .spawn()
            .unwrap();
        Proc(child)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.bin_dir.join("fetchml").exists() {
        bail!("{} missing: run `cargo build --release --bins` first", args.bin_dir.join("fetchml").display());
    }
    let store = tempfile::tempdir()?;
    let (nats, node_urls, monitors) = if args.cluster {
        start_cluster(&args.nats_server, args.nats_gogc, store.path()).await?
    } else {
        start_one(&args.nats_server, args.nats_gogc, store.path()).await?
    };
    let nats_url = node_urls[0].clone();
    let client = async_nats::connect(&nats_url).await?;
    let k = fetchml_identity::generate_key()?;
    let users_file = tempfile::NamedTempFile::new()?;
    let mut users = format!(
        "users:\n  - name: researcher1\n    role: researcher\n    keys: [{{id: \"{}\", hash: \"{}\"}}]\n",
        k.key_id, k.hash
    );
    let mut user_keys = Vec::new();
    if args.runs("backlog") || args.runs("fairshare") {
        for i in 0..scheduling::USERS {
            let uk = fetchml_identity::generate_key()?;
            users.push_str(&format!(
                "  - name: {}\n    role: researcher\n    keys: [{{id: \"{}\", hash: \"{}\"}}]\n",
                scheduling::user_name(i),
                uk.key_id,
                uk.hash
            ));
            user_keys.push(uk.key);
        }
    }
    std::fs::write(users_file.path(), users)?;
    let pg_server = args.pg.trim_end_matches('/').to_owned();
    let args_cluster = args.cluster;
    let mut env = Env {
        pg_server,
        pg_url: String::new(),
        databases: std::sync::Mutex::new(Vec::new()),
        args,
        key: k.key,
        users_file,
        nats_url,
        node_urls,
        next_node: std::sync::atomic::AtomicUsize::new(0),
        monitors,
        replicas: if args_cluster { 3 } else { 1 },
        user_keys,
        e2e_4: std::sync::OnceLock::new(),
        _nats: nats,
        _store: store,
        client,
    };
    env.pg_url = env.database("brebuild").await;
    // A section that panics (an assertion on what it reads back) still has
    // its databases dropped below, then the panic goes on. So does a run
    // stopped by SIGTERM or Ctrl-C: dropping the run kills the processes it
    // started (`Proc`), and the databases go below.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&env))) => r,
        _ = term.recv() => Ok(Err(anyhow::anyhow!("stopped by SIGTERM; its processes and databases are gone"))),
        _ = tokio::signal::ctrl_c() => Ok(Err(anyhow::anyhow!("stopped by Ctrl-C; its processes and databases are gone"))),
    };
    {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", env.pg_server)).await?;
        let dbs = env.databases.lock().unwrap().clone();
        for db in dbs {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
                .execute(&mut c)
                .await?;
        }
    }
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

type Servers = (Vec<Proc>, Vec<String>, Vec<String>);

/// One nats-server: its processes, client URLs and monitoring endpoints.
async fn start_one(bin: &Path, gogc: u32, store: &Path) -> anyhow::Result<Servers> {
    let port = free_port();
    // The monitoring port (on the same loopback host as the clients' port)
    // gives the broker's message counters: messages per job.
    let monitor_port = free_port();
    let mut nats = Proc(
        Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string(), "-js", "-sd"])
            .arg(store)
            .env("GOGC", gogc.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    wait_port(port, &mut nats).await;
    Ok((vec![nats], vec![format!("nats://127.0.0.1:{port}")], vec![format!("http://127.0.0.1:{monitor_port}")]))
}

/// Three nats-servers routed into one JetStream cluster on loopback ports
/// (the shape of deploy/cluster), returned once they agree on a meta leader.
async fn start_cluster(bin: &Path, gogc: u32, store: &Path) -> anyhow::Result<Servers> {
    let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
    let routes: Vec<String> = ports.iter().map(|(_, r, _)| format!("nats-route://127.0.0.1:{r}")).collect();
    let mut procs = Vec::new();
    for (i, (client, route, monitor)) in ports.iter().enumerate() {
        let conf = store.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: bench, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                store.join(format!("n{i}")),
                routes.join(", ")
            ),
        )?;
        procs.push(Proc(
            Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .env("GOGC", gogc.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        ));
    }
    let monitors: Vec<String> = ports.iter().map(|(_, _, m)| format!("http://127.0.0.1:{m}")).collect();
    for _ in 0..1500 {
        let mut leaders = Vec::new();
        for m in &monitors {
            let leader = match reqwest::get(format!("{m}/jsz")).await {
                Ok(r) => {
                    r.json::<Value>().await.ok().and_then(|v| v["meta_cluster"]["leader"].as_str().map(str::to_owned))
                }
                Err(_) => None,
            };
            leaders.push(leader.unwrap_or_default());
        }
        if !leaders[0].is_empty() && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok((procs, ports.iter().map(|(c, _, _)| format!("nats://127.0.0.1:{c}")).collect(), monitors));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the three nats-servers did not elect a meta leader within 30 s")
}

async fn run(env: &Env) -> anyhow::Result<()> {
    let mut r = Report::default();
    let quick = env.args.quick;
    println!(
        "machine: {} cores; nats-server {} (GOGC={}); {}",
        num_cpus(),
        env.client.server_info().version,
        env.args.nats_gogc,
        if env.replicas > 1 { "3-node loopback cluster, R3 streams" } else { "one server, R1 streams" }
    );
    println!("{:<48} {:>12} {:<8} ratio", "figure", "value", "unit");

    // ---- 1. The limit: raw JetStream with fetchml-sized messages.
    let (seq_rate, pipe_rate, consume_rate, broker_rate) =
        raw_jetstream(env, if quick { 20_000 } else { 100_000 }).await?;
    r.add("limit: raw publish, one at a time", seq_rate, "msg/s", None);
    r.add("limit: raw publish, pipelined", pipe_rate, "msg/s", None);
    r.add("limit: raw pull-consume with acks", consume_rate, "msg/s", None);
    r.add("limit: broker messages in+out, pipelined publish", broker_rate, "msg/s", None);
    // What one acknowledged write costs in time when the machine is not kept
    // busy: the unit of the queue-to-start path (see BENCHMARKS.md).
    let (paced_n, cpu_before) = (if quick { 1_000 } else { 5_000 }, broker_cpu_secs(env));
    let paced = raw_paced_publish(env, 500.0, paced_n).await?;
    r.add("limit: raw publish round trip at 500/s, p50", pct(&paced, 0.5), "ms", None);
    r.add("limit: raw publish round trip at 500/s, p99", pct(&paced, 0.99), "ms", None);
    // The broker's own cost of a message at a steady rate with nothing else
    // running (a publish and its ack are two): the reference for its CPU per
    // job at 500 jobs/s in the latency section.
    r.add(
        "limit: nats-server CPU per message in+out, raw publish at 500/s",
        (broker_cpu_secs(env) - cpu_before) * 1e6 / (2 * paced_n) as f64,
        "µs",
        None,
    );

    // The durability trade-off: the same raw figures against a server that
    // fsyncs before every acknowledgement.
    if env.args.runs("durability") {
        let (sync_seq, sync_pipe) = raw_sync_always(env, if quick { 5_000 } else { 20_000 }).await?;
        r.add(
            "durability: raw publish one at a time, sync_interval always",
            sync_seq,
            "msg/s",
            Some(("default sync, one at a time", seq_rate)),
        );
        r.add(
            "durability: raw publish pipelined, sync_interval always",
            sync_pipe,
            "msg/s",
            Some(("pipelined publish", pipe_rate)),
        );
    }

    // ---- 2. Submit throughput, 64 keep-alive clients, no workers.
    if env.args.runs("submit") {
        let (api, url) = env.api("bsubmit").await;
        let idle_api = api.rss_kib();
        let n_submit = if quick { 5_000 } else { 20_000 };
        let cpu_before = CpuSplit::now(&api, &[], env);
        let submit_rate = submit_many(&env.key, &url, n_submit, 64, json!({"executor": "noop", "command": []})).await;
        r.add("submit: POST /v1/jobs, 64 clients", submit_rate, "jobs/s", Some(("pipelined publish", pipe_rate)));
        // What a single submit costs each process, the api's scheduler and
        // projector included: steadier than the rate on a host whose speed
        // drifts, so builds of the HTTP path compare by it.
        until_projected(env, "bsubmit", &url).await?;
        CpuSplit::now(&api, &[], env).report(
            &cpu_before,
            n_submit,
            "single submits, no workers, read models included",
            &mut r,
        );
        r.add("memory: api RSS idle", idle_api as f64 / 1024.0, "MiB", None);
        r.add("memory: api RSS after submit load", api.rss_kib() as f64 / 1024.0, "MiB", None);
        drop(api);
        let (api, url) = env.api("bsubmitb").await;
        let before = env.broker_messages().await?;
        let batch_rate =
            submit_batches(&env.key, &url, n_submit * 2, 500, 4, json!({"executor": "noop", "command": []})).await?;
        let per_job = (env.broker_messages().await? - before).total() as f64 / (n_submit * 2) as f64;
        r.add(
            "submit: POST /v1/jobs/batch, 500 per request, 4 clients",
            batch_rate,
            "jobs/s",
            Some(("pipelined publish", pipe_rate)),
        );
        r.add("  broker messages in+out per batch-submitted job", per_job, "msg", None);
        r.add(
            "  broker-only bound, batch submit",
            broker_rate / per_job,
            "jobs/s",
            Some(("pipelined publish", pipe_rate)),
        );
        drop(api);
    }

    let root = tempfile::tempdir()?;
    let mut e2e_max: f64 = 0.0;
    // ---- 4. End to end, noop jobs, 1 and 4 worker processes; with 4, also
    // with the jobs submitted in batches (a sweep), which takes the HTTP
    // request per job out of the api's share.
    if env.args.runs("e2e") {
        for (workers, batched) in [(1usize, false), (4, false), (4, true)] {
            let ns = format!("be2e{workers}{}", if batched { "b" } else { "" });
            let what = format!("{workers} worker(s){}", if batched { ", batch submits" } else { "" });
            let (api, url) = env.api(&ns).await;
            let ws: Vec<Proc> = (0..workers).map(|_| env.worker(&ns, 32, root.path())).collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if workers == 1 {
                r.add("memory: worker RSS idle", ws[0].rss_kib() as f64 / 1024.0, "MiB", None);
            }
            let n = env.args.e2e_jobs.unwrap_or(if quick { 2_000 } else { 10_000 });
            let t0 = Instant::now();
            let peak = Arc::new(AtomicU64::new(0));
            let sampling = Arc::new(AtomicBool::new(true));
            // Projection lag: log head minus the read models' checkpoint, sampled.
            let lag_sampler = {
                let (sampling, client, ns) = (sampling.clone(), env.client.clone(), ns.clone());
                let pg = format!("{}/fetchml_bench_{}_{ns}", env.pg_server, std::process::id());
                tokio::spawn(async move {
                    let mut lags = Vec::new();
                    let Ok(pool) = sqlx::PgPool::connect(&pg).await else { return lags };
                    let js = jetstream::new(client);
                    while sampling.load(Ordering::Relaxed) {
                        if let Ok(subjects) = subjects_of(&ns)
                            && let Ok(mut s) = js.get_stream(subjects.events_stream()).await
                            && let Ok(info) = s.info().await
                        {
                            let head = info.state.last_sequence;
                            let cp: i64 =
                                sqlx::query_scalar("SELECT coalesce(max(last_seq), 0) FROM projection_checkpoints")
                                    .fetch_one(&pool)
                                    .await
                                    .unwrap_or(0);
                            lags.push(head.saturating_sub(cp.max(0) as u64) as f64);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    lags
                })
            };
            let sampler = {
                let (peak, sampling, pid) = (peak.clone(), sampling.clone(), ws[0].0.id());
                tokio::spawn(async move {
                    while sampling.load(Ordering::Relaxed) {
                        peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            let before = env.broker_messages().await?;
            let stored_before = stored_messages(&env.client, &ns).await?;
            let cpu_before = CpuSplit::now(&api, &ws, env);
            let noop = json!({"executor": "noop", "command": []});
            if batched {
                submit_batches(&env.key, &url, n, 500, 4, noop).await?;
            } else {
                submit_many(&env.key, &url, n, 64, noop).await;
            }
            let asked = scheduling::until_finished_down_to(env, &ns, 0).await?;
            let rate = n as f64 / t0.elapsed().as_secs_f64();
            let moved = env.broker_messages().await? - before;
            let stored = stored_messages(&env.client, &ns).await? - stored_before;
            // The read models lag the log (the projector batches, and yields
            // to nothing): the rate at which jobs are done *and* visible in
            // Postgres is what a sustained load can have, and what every
            // process spends per job is only complete then.
            until_projected(env, &ns, &url).await?;
            let projected = n as f64 / t0.elapsed().as_secs_f64();
            CpuSplit::now(&api, &ws, env).report(&cpu_before, n, &format!("{what}, read models included"), &mut r);
            sampling.store(false, Ordering::Relaxed);
            let _ = sampler.await;
            let mut lags = lag_sampler.await.unwrap_or_default();
            lags.sort_by(|a, b| a.total_cmp(b));
            r.add(&format!("projection lag p99 during end to end, {what}"), pct(&lags, 0.99), "events", None);
            r.add(
                &format!("end to end, read models caught up: noop jobs, {what}"),
                projected,
                "jobs/s",
                Some(("pipelined publish", pipe_rate)),
            );
            // The latency section submits one job a request, at a steady rate:
            // its "maximum" is the single-submit rate that includes the read
            // models (a burst's rate leaves their work for later, and 80% of
            // it, sustained, is more than the machine does).
            if !batched {
                e2e_max = e2e_max.max(projected);
                if workers == 4 {
                    let _ = env.e2e_4.set(rate);
                }
            }
            r.add(&format!("end to end: noop jobs, {what}"), rate, "jobs/s", Some(("pipelined publish", pipe_rate)));
            // What one job costs the broker, and what that allows at most if
            // the broker had the whole machine (see BENCHMARKS.md).
            // Less the bench's own questions to the scheduler (how many are left).
            let per_job = (moved.total() as f64 - 4.0 * asked as f64) / n as f64;
            r.add(&format!("  broker messages in+out per job, {what}"), per_job, "msg", None);
            r.add(&format!("  stored messages per job, {what}"), stored as f64 / n as f64, "msg", None);
            r.add(
                &format!("  broker-only bound, {what}"),
                broker_rate / per_job,
                "jobs/s",
                Some(("pipelined publish", pipe_rate)),
            );
            if workers == 1 {
                r.add(
                    "memory: worker RSS under load (peak)",
                    peak.load(Ordering::Relaxed) as f64 / 1024.0,
                    "MiB",
                    None,
                );
                r.add("memory: api RSS after end to end", api.rss_kib() as f64 / 1024.0, "MiB", None);
            }
            drop(ws);
            drop(api);
        }
    }

    // ---- 3. Queue-to-start latency at a steady rate (50/s, 500/s, 80% of max).
    if env.args.runs("latency") {
        // 50/s: the path itself, nearly without load; 500/s: the target.
        let e2e_max = env.args.latency_max.unwrap_or(e2e_max);
        let eighty = if e2e_max > 0.0 { e2e_max * 0.8 } else { 800.0 };
        // "projector apart": the same api without its projector, and the
        // projector as a process of its own at a lower CPU priority (what a
        // deployment that puts the read models on another host also gets).
        for (label, rate, apart) in [
            ("50/s", 50.0, false),
            ("500/s", 500.0, false),
            ("500/s, projector apart", 500.0, true),
            ("80% of max", eighty, false),
            ("80% of max, projector apart", eighty, true),
        ] {
            let ns = format!("blat{}{}", rate as u64, if apart { "p" } else { "" });
            let (api, url) = if apart {
                env.api_with(&ns, &[("FETCHML_API__EMBEDDED_PROJECTOR", "false")]).await
            } else {
                env.api(&ns).await
            };
            let _projector = if apart { Some(env.projector(&ns).await) } else { None };
            // The workers of the end-to-end maximum (4 × 32), so that "80% of
            // max" is 80% of what this fleet can do, not an overload.
            let ws: Vec<Proc> = (0..4).map(|_| env.worker(&ns, 32, root.path())).collect();
            tokio::time::sleep(Duration::from_millis(500)).await;
            let secs = env.args.latency_secs.unwrap_or(if quick { 4.0 } else { 10.0 });
            let hops = !label.starts_with("80%") || env.args.hops_near_max;
            let lat = queue_to_start(env, &ns, &url, rate, secs, hops, (&api, &ws)).await?;
            // What a job costs at a steady rate, against a burst's cost in the
            // e2e section: with less to batch, every process wakes more per
            // job (BENCHMARKS.md, fourteenth session). The projector's own
            // process is not counted, so only where it is inside the api.
            if !apart {
                let (before, after) = &lat.cpu;
                after.report(before, lat.total.len().max(1), &format!("at {label}"), &mut r);
            }
            r.add(&format!("queue-to-start: offered at {label}"), rate, "jobs/s", None);
            r.add(&format!("queue-to-start: started at {label}"), lat.started_per_sec, "jobs/s", None);
            r.add(&format!("queue-to-start p50 at {label}"), pct(&lat.total, 0.5), "ms", None);
            r.add(&format!("queue-to-start p99 at {label}"), pct(&lat.total, 0.99), "ms", None);
            r.add(&format!("queue-to-start p999 at {label}"), pct(&lat.total, 0.999), "ms", None);
            // Hops are timed only where the observer ran.
            for (hop, v) in [("append", &lat.append), ("assign", &lat.assign), ("claim", &lat.claim)] {
                if v.is_empty() {
                    continue;
                }
                r.add(&format!("  hop {hop} at {label}, p50"), pct(v, 0.5), "ms", None);
                r.add(&format!("  hop {hop} at {label}, p99"), pct(v, 0.99), "ms", None);
            }
            // Jobs the api handed straight to its own scheduler (the rest
            // waited for the log's delivery to reach it).
            if let Ok(s) = scheduling::stats(env, &ns).await {
                let handed = s["handoffs"].as_f64().unwrap_or(0.0);
                r.add(&format!("  handed to the scheduler at {label}"), 100.0 * handed / (rate * secs), "%", None);
            }
            drop(ws);
            drop(api);
        }
    }

    // ---- 4. The scheduler: a large backlog, and fair share between two users.
    if env.args.runs("backlog") {
        let (n, e2e_n) = if quick { (20_000, 2_000) } else { (100_000, 10_000) };
        scheduling::backlog(env, &mut r, n, e2e_n, root.path()).await?;
    }
    if env.args.runs("fairshare") {
        scheduling::fair_share(env, &mut r, 20_000, 100, root.path()).await?;
    }

    let n_events = env.args.rebuild_events.unwrap_or(if quick { 100_000 } else { 1_000_000 });
    // ---- 5. Projection: raw COPY (the limit) and a rebuild from sequence 1.
    if env.args.runs("rebuild") {
        let copy_rows = if quick { 100_000 } else { 500_000 };
        let copy_rate = raw_copy(&env.pg_url, copy_rows).await?;
        r.add("limit: raw Postgres COPY, job-sized rows", copy_rate, "rows/s", None);
        let (append_rate, read_rate, rebuild_rate) = rebuild_bench(env, n_events).await?;
        r.add(
            "setup: pipelined append of sealed events",
            append_rate,
            "events/s",
            Some(("pipelined publish", pipe_rate)),
        );
        r.add("limit: raw read of the log, 4 ordered readers", read_rate, "events/s", None);
        r.add(
            &format!("projection: rebuild of {n_events} events"),
            rebuild_rate,
            "events/s",
            Some(("raw COPY", copy_rate)),
        );
    }

    // ---- 5a. The live projector catching up on a log: the batches the read
    // models take while jobs run (the rebuild above folds everything first).
    if env.args.runs("projector") {
        let jobs = if quick { 5_000 } else { 20_000 };
        let p = projector_bench(env, jobs).await?;
        r.add(
            &format!("projection: live projector, {} events of {jobs} jobs", jobs * 3),
            p.events_per_sec,
            "events/s",
            None,
        );
        r.add("  CPU per job, live projector: projector", p.projector_us, "µs", None);
        r.add("  CPU per job, live projector: postgres", p.postgres_us, "µs", None);
    }

    // ---- 5b. The audit trail: verification of a clean log (with a signed
    // checkpoint every 1000 events) online and from an export, next to a raw
    // read of the same log by one ordered reader (verification is sequential)
    // and by four.
    if env.args.runs("audit") {
        audit_bench(env, &mut r, n_events).await?;
    }

    // ---- 6. Streams: fan-out latency, and replay speed to one client.
    if env.args.runs("streams") {
        let replay_n = if quick { 20_000 } else { 100_000 };
        if !env.args.runs("rebuild") {
            // The replay reads the rebuild's log; without that section, write one.
            seed_events(env, replay_n).await?;
        }
        let (api, url) = env.api("brebuild").await;
        let replay_rate = ws_replay(env, &url, replay_n.min(n_events)).await?;
        r.add(
            &format!("streams: replay of {} stored events to one client", replay_n.min(n_events)),
            replay_rate,
            "events/s",
            None,
        );
        drop(api);
        for subscribers in [100usize, 1000] {
            let ns = format!("bws{subscribers}");
            let (api, url) = env.api(&ns).await;
            let (p50, p99, delivered) = ws_fanout(env, &ns, &url, subscribers, 1000, if quick { 2 } else { 5 }).await?;
            println!(
                "  ({subscribers} subscribers, {} frames)",
                if env.args.stream_frames == "batch" { "batched" } else { "single-message" }
            );
            r.add(&format!("streams: {subscribers} subscribers x 1000 msg/s, latency p50"), p50, "ms", None);
            r.add(&format!("streams: {subscribers} subscribers x 1000 msg/s, latency p99"), p99, "ms", None);
            r.add(&format!("streams: {subscribers} subscribers x 1000 msg/s, delivered"), delivered * 100.0, "%", None);
            drop(api);
        }
    }

    // ---- 8. Cancel: request to process gone.
    if env.args.runs("cancel") {
        let ns = "bcancel";
        let (api, url) = env.api(ns).await;
        let _w = env.worker(ns, 4, root.path());
        let lat = cancel_latency(&env.key, &url, if quick { 10 } else { 40 }).await?;
        r.add("cancel: request to process gone p50", pct(&lat, 0.5), "ms", None);
        r.add("cancel: request to process gone p99", pct(&lat, 0.99), "ms", None);
        drop(api);
    }

    // ---- Read your write: a submit, then the job list with `after_seq`, as
    // `ml list --watch` reads after a change and the dashboard when a page
    // opens. The projector batches what arrives within its window; a read
    // waiting for its write should not wait that window out. Idle, and
    // beside a steady submit.
    if env.args.runs("ryw") {
        let ns = "bryw";
        let (api, url) = env.api(ns).await;
        let n = if quick { 50 } else { 200 };
        for (label, background) in [("idle", 0.0), ("beside 200 submits/s", 200.0)] {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let load = (background > 0.0).then(|| {
                let (key, url) = (env.key.clone(), url.clone());
                tokio::spawn(async move { steady_submits(&key, &url, background, stopped).await })
            });
            let lat = read_your_write(&env.key, &url, n).await?;
            let _ = stop.send(());
            if let Some(load) = load {
                load.await??;
            }
            r.add(&format!("read your write p50, {label}"), pct(&lat, 0.5), "ms", None);
            r.add(&format!("read your write p99, {label}"), pct(&lat, 0.99), "ms", None);
        }
        drop(api);
    }

    // The most any one server held at once over the whole run: what the
    // collector's setting (--nats-gogc) costs in memory.
    let nats_peak = env._nats.iter().map(|n| peak_rss_kib(n.0.id())).max().unwrap_or(0);
    r.add("memory: nats-server peak RSS over the run", nats_peak as f64 / 1024.0, "MiB", None);

    let out = json!({
        "date": chrono::Utc::now(),
        "cores": num_cpus(),
        "nats_server": env.client.server_info().version,
        "nats_gogc": env.args.nats_gogc,
        "quick": quick,
        "results": r.json,
    });
    std::fs::write(&env.args.out, serde_json::to_string_pretty(&out)?)?;
    println!("results written to {}", env.args.out.display());
    Ok(())
}

/// The broker's message counters (`/varz`).
#[derive(Clone, Copy)]
struct BrokerMessages {
    received: u64,
    sent: u64,
}

impl BrokerMessages {
    fn total(&self) -> u64 {
        self.received + self.sent
    }
}

impl std::ops::Sub for BrokerMessages {
    type Output = BrokerMessages;
    fn sub(self, o: Self) -> Self {
        BrokerMessages { received: self.received.saturating_sub(o.received), sent: self.sent.saturating_sub(o.sent) }
    }
}

impl Env {
    /// Summed over the servers: on a cluster this counts the replication
    /// between them too.
    async fn broker_messages(&self) -> anyhow::Result<BrokerMessages> {
        let mut total = BrokerMessages { received: 0, sent: 0 };
        for m in &self.monitors {
            let v: Value = reqwest::get(format!("{m}/varz")).await?.json().await?;
            let n = |k: &str| v[k].as_u64().ok_or_else(|| anyhow::anyhow!("varz has no {k}"));
            total.received += n("in_msgs")?;
            total.sent += n("out_msgs")?;
        }
        Ok(total)
    }
}

/// Messages ever stored in a namespace's streams (the last sequence counts,
/// not the size: PROGRESS drops old messages).
async fn stored_messages(client: &async_nats::Client, ns: &str) -> anyhow::Result<u64> {
    let js = jetstream::new(client.clone());
    let mut total = 0;
    let subjects = subjects_of(ns)?;
    for name in [subjects.events_stream(), subjects.progress_stream()] {
        if let Ok(mut s) = js.get_stream(name).await {
            total += s.info().await?.state.last_sequence;
        }
    }
    Ok(total)
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A payload the size of a typical fetchml event envelope.
fn event_sized_payload() -> Bytes {
    let v = json!({
        "event_id": uuid::Uuid::now_v7(), "type": "job_queued", "schema_version": 2, "aggregate_kind": "job",
        "aggregate_id": uuid::Uuid::now_v7(), "aggregate_version": 1, "occurred_at": chrono::Utc::now(),
        "actor": {"kind": "user", "name": "researcher1"}, "correlation_id": uuid::Uuid::now_v7(),
        "causation_id": uuid::Uuid::now_v7(),
        "payload": {"type": "job_queued", "owner": "researcher1", "spec": {"command": [], "env": {}, "executor": "noop",
            "experiment": null, "labels": [], "pool": "default", "priority": 5, "shell": false, "tags": {},
            "timeout_secs": null, "working_dir": null, "image": null,
            "resources": {"cpus": null, "memory_mb": null, "gpus": 0},
            "retry": {"max_attempts": 3, "backoff_initial_ms": 1000, "backoff_max_ms": 60000, "jitter_percent": 20, "retry_on": ["infrastructure"]}}},
        "prev_hash": "0".repeat(64), "hash": "f".repeat(64),
    });
    Bytes::from(v.to_string())
}

async fn raw_jetstream(env: &Env, n: usize) -> anyhow::Result<(f64, f64, f64, f64)> {
    let js = jetstream::new(env.client.clone());
    let s = js
        .create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            storage: stream::StorageType::File,
            num_replicas: env.replicas,
            ..Default::default()
        })
        .await?;
    let seq_rate = publish_one_at_a_time(&js, "raw.a", n / 10).await?;
    let before = env.broker_messages().await?;
    let t0 = Instant::now();
    let pipe_rate = publish_pipelined(&js, "raw.b", n).await?;
    let broker_rate = (env.broker_messages().await? - before).total() as f64 / t0.elapsed().as_secs_f64();

    let mut consumer: jetstream::consumer::PullConsumer = s
        .create_consumer(pull::Config {
            durable_name: Some("rawc".into()),
            filter_subject: "raw.b.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    // A replicated consumer answers pulls once its own group has a leader.
    for _ in 0..500 {
        if consumer.info().await.ok().and_then(|i| i.cluster.clone()).is_none_or(|c| c.leader.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let mut msgs = consumer.messages().await?;
    let mut got = 0;
    while got < n {
        let m = match msgs.next().await {
            Some(Ok(m)) => m,
            // The stream pulls again after a missed heartbeat: a stall, not
            // an end. Said, so a rate that holds one is not taken at face
            // value, and the rest of the run goes on (it aborted a run once).
            Some(Err(e)) if e.kind() == jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                eprintln!(
                    "warning: the raw pull-consume missed a heartbeat after {got} of {n} messages (a stall of 30 s); its rate includes it"
                );
                continue;
            }
            Some(Err(e)) => anyhow::bail!("raw pull-consume: {e}"),
            None => anyhow::bail!("raw pull-consume: the stream ended after {got} of {n} messages"),
        };
        m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        got += 1;
    }
    let consume_rate = n as f64 / t0.elapsed().as_secs_f64();
    js.delete_stream("RAW").await?;
    Ok((seq_rate, pipe_rate, consume_rate, broker_rate))
}

/// `n` fetchml-sized publishes under `prefix`, each acknowledged before the
/// next; returns messages/s.
async fn publish_one_at_a_time(js: &jetstream::Context, prefix: &str, n: usize) -> anyhow::Result<f64> {
    let payload = event_sized_payload();
    let t0 = Instant::now();
    for i in 0..n {
        js.publish(format!("{prefix}.{}", i % 1000), payload.clone()).await?.await?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `n` fetchml-sized publishes under `prefix`, 1024 awaiting acknowledgement
/// at once; returns messages/s.
async fn publish_pipelined(js: &jetstream::Context, prefix: &str, n: usize) -> anyhow::Result<f64> {
    let payload = event_sized_payload();
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for i in 0..n {
        inflight.push(std::future::IntoFuture::into_future(
            js.publish(format!("{prefix}.{}", i % 1000), payload.clone()).await?,
        ));
        if inflight.len() >= 1024 {
            inflight.next().await.unwrap()?;
        }
    }
    while let Some(a) = inflight.next().await {
        a?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Round trips (publish to acknowledgement) of `n` acknowledged publishes,
/// one every `1/rate` s; sorted, in ms.
async fn raw_paced_publish(env: &Env, rate: f64, n: usize) -> anyhow::Result<Vec<f64>> {
    let js = jetstream::new(env.client.clone());
    js.create_stream(stream::Config {
        name: "RAWPACED".into(),
        subjects: vec!["rawpaced.>".into()],
        num_replicas: env.replicas,
        ..Default::default()
    })
    .await?;
    let payload = event_sized_payload();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let t0 = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(t0 + interval * i as u32).await;
        let sent = Instant::now();
        js.publish(format!("rawpaced.{}", i % 1000), payload.clone()).await?.await?;
        out.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    js.delete_stream("RAWPACED").await?;
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

/// Submits `n` jobs through `POST /v1/jobs/batch`, `per_request` at a time from
/// `clients` concurrent clients; returns jobs/s.
///
/// On reqwest, not [`http1`]: its CPU is 3-6 µs a job here, and the lean
/// client made this phase slower (twenty-second session, BENCHMARKS.md). This
/// loop checks the status and never reads the answer, so reqwest cannot reuse
/// the connection and opens a new one per request: the next request is sent
/// while the api still writes the last answer.
async fn submit_batches(
    key: &str,
    url: &str,
    n: usize,
    per_request: usize,
    clients: usize,
    spec: Value,
) -> anyhow::Result<f64> {
    let http = client(key, clients);
    let body = Arc::new(json!({ "jobs": vec![spec; per_request] }));
    let next = Arc::new(AtomicU64::new(0));
    let requests = n.div_ceil(per_request);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, next, url, body) = (http.clone(), next.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < requests {
                let r = http.post(format!("{url}/v1/jobs/batch")).json(&*body).send().await?;
                if r.status() != 202 {
                    bail!("batch submit answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((requests * per_request) as f64 / t0.elapsed().as_secs_f64())
}

/// Waits until the read models include every event of namespace `ns`'s log:
/// the api's own read-your-writes wait (`after_seq`), asked again while it
/// answers 503 `not_caught_up`.
async fn until_projected(env: &Env, ns: &str, url: &str) -> anyhow::Result<()> {
    let js = jetstream::new(env.client.clone());
    let last = js.get_stream(subjects_of(ns)?.events_stream()).await?.get_info().await?.state.last_sequence;
    let http = client(&env.key, 1);
    let t0 = Instant::now();
    loop {
        let r = http.get(format!("{url}/v1/jobs/counts?after_seq={last}")).send().await?;
        if r.status().is_success() {
            return Ok(());
        }
        // Each 503 `not_caught_up` came after the api's own bounded wait: ask
        // again. Anything else (Postgres gone, say) ends the section.
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if !body.contains("not_caught_up") || t0.elapsed() > Duration::from_secs(300) {
            bail!("the read models did not reach sequence {last}: {status} {body}");
        }
    }
}

/// A client that sends `key` as a bearer token, keeping up to `pool`
/// connections alive.
fn client(key: &str, pool: usize) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder().default_headers(h).pool_max_idle_per_host(pool).build().unwrap()
}

/// Submits `n` jobs, one `POST /v1/jobs` each, from `clients` concurrent
/// keep-alive connections; returns jobs/s. Panics on any answer but 202.
async fn submit_many(key: &str, url: &str, n: usize, clients: usize, spec: Value) -> f64 {
    let body = Bytes::from(serde_json::to_vec(&spec).unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(http1::Connection::open(url, key).await.unwrap());
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut connection in connections {
        let (next, body) = (next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                let (status, answer) = connection.post_json("/v1/jobs", body.clone()).await.unwrap();
                assert_eq!(status.as_u16(), 202, "{}", String::from_utf8_lossy(&answer));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

/// The subject names of a bench namespace (bench namespaces are literals).
fn subjects_of(ns: &str) -> anyhow::Result<fetchml_events::subject::Subjects> {
    Ok(fetchml_events::subject::Subjects::new(fetchml_events::ids::Namespace::parse(ns)?))
}

/// Resolves when `n` events of `kind` have been stored in namespace `ns`.
fn count_events(
    client: &async_nats::Client,
    ns: &str,
    kind: &'static str,
    n: usize,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let client = client.clone();
    let subjects = subjects_of(ns);
    tokio::spawn(async move {
        let subjects = subjects?;
        let js = jetstream::new(client);
        let s = loop {
            if let Ok(s) = js.get_stream(subjects.events_stream()).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let c = s
            .create_consumer(pull::OrderedConfig { filter_subject: subjects.all_job_events(), ..Default::default() })
            .await?;
        let mut msgs = c.messages().await?;
        let needle = format!("\"type\":\"{kind}\"");
        let mut seen = 0;
        while seen < n {
            let m = msgs.next().await.unwrap()?;
            if memfind(&m.payload, needle.as_bytes()) {
                seen += 1;
            }
        }
        Ok(())
    })
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Queue-to-start latency, whole and by hop (milliseconds, each sorted).
struct StartLatency {
    total: Vec<f64>,
    /// `job_queued.occurred_at` until a plain subscriber sees the stored event.
    append: Vec<f64>,
    /// Event seen until the scheduler's assignment is seen.
    assign: Vec<f64>,
    /// Assignment seen until `job_started.occurred_at` (the worker's claim).
    claim: Vec<f64>,
    /// Every process's CPU from the first submit until every job finished
    /// (before and after), for its cost per job at this rate.
    cpu: (CpuSplit, CpuSplit),
    /// Jobs started a second, from the first `job_queued` to the last
    /// `job_started`: below the offered rate, the phase was an overload (its
    /// queue grew) and its latency says so.
    started_per_sec: f64,
}

/// Submits at `rate` jobs/s for `secs`, then reads every job's `job_queued`
/// and `job_started` times from the log: the latency is between the two
/// events' `occurred_at` (api clock and worker clock: the same machine).
///
/// With `hops`, a plain subscription on the job subjects and the scheduler's
/// assignments times each hop. That observer takes four more deliveries per
/// job from nats-server and scans each, on the same two cores as the system
/// it measures: near the maximum it is a load of its own, so the phases at
/// "80% of max" run without it (their total comes from the log either way).
async fn queue_to_start(
    env: &Env,
    ns: &str,
    url: &str,
    rate: f64,
    secs: f64,
    hops: bool,
    (api, workers): (&Proc, &[Proc]),
) -> anyhow::Result<StartLatency> {
    let client = &env.client;
    let n = (rate * secs) as usize;
    // Arrival times of each job's queued event and of its assignment.
    type Seen = HashMap<String, [Option<chrono::DateTime<chrono::Utc>>; 2]>;
    let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
    let observer = if !hops {
        None
    } else {
        let subjects = subjects_of(ns)?;
        let mut evs = client.subscribe(subjects.all_job_events()).await?;
        let mut tickets = client.subscribe(format!("{}.sched.worker.>", subjects.namespace())).await?;
        client.flush().await?;
        let seen = seen.clone();
        Some(tokio::spawn(async move {
            let needle = b"\"type\":\"job_queued\"";
            loop {
                let (m, slot) = tokio::select! {
                    Some(m) = evs.next() => (m, 0),
                    Some(m) = tickets.next() => (m, 1),
                    else => return,
                };
                let now = chrono::Utc::now();
                let job = if slot == 0 {
                    if !memfind(&m.payload, needle) {
                        continue;
                    }
                    m.subject.rsplit('.').next().unwrap_or_default().to_owned()
                } else {
                    // An assignment names its job in its body.
                    match serde_json::from_slice::<Value>(&m.payload) {
                        Ok(v) if v["kind"] == "assign" => v["job_id"].as_str().unwrap_or_default().to_owned(),
                        _ => continue,
                    }
                };
                seen.lock().unwrap().entry(job).or_default()[slot].get_or_insert(now);
            }
        }))
    };
    let http = self::client(&env.key, 64);
    let spec = json!({"executor": "noop", "command": []});
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu_before = CpuSplit::now(api, workers, env);
    let t0 = tokio::time::Instant::now();
    let mut tasks = FuturesUnordered::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + interval * i as u32).await;
        let (http, url, spec) = (http.clone(), url.to_owned(), spec.clone());
        tasks.push(tokio::spawn(async move {
            http.post(format!("{url}/v1/jobs")).json(&spec).send().await.map(|r| r.status())
        }));
        while let Some(Some(done)) = futures::FutureExt::now_or_never(tasks.next()) {
            done??;
        }
    }
    while let Some(done) = tasks.next().await {
        done??;
    }
    // Every submit was answered, so every `job_queued` is at or before the
    // log's last sequence now; no-op jobs have started once they finished.
    let js = jetstream::new(client.clone());
    let subjects = subjects_of(ns)?;
    let s = js.get_stream(subjects.events_stream()).await?;
    scheduling::until_all_finished_after(env, ns, s.get_info().await?.state.last_sequence).await?;
    // The phase's CPU ends here: reading the log back below is the bench's.
    let cpu = (cpu_before, CpuSplit::now(api, workers, env));
    if let Some(observer) = observer {
        observer.abort();
    }
    // Read both events of every job back.
    let last = s.get_info().await?.state.last_sequence;
    let c = s
        .create_consumer(pull::OrderedConfig { filter_subject: subjects.all_job_events(), ..Default::default() })
        .await?;
    let mut msgs = c.messages().await?;
    let mut queued: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let mut out = StartLatency {
        total: Vec::with_capacity(n),
        append: Vec::new(),
        assign: Vec::new(),
        claim: Vec::new(),
        started_per_sec: 0.0,
        cpu,
    };
    let (mut first_queued, mut last_started) = (None, None);
    // Kept only for `--latency-dump`: when each job was queued, beside its time.
    let mut dump: Option<Vec<(i64, f64)>> = env.args.latency_dump.as_ref().map(|_| Vec::with_capacity(n));
    loop {
        let m = msgs.next().await.unwrap()?;
        let seq = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        let v: Value = serde_json::from_slice(&m.payload)?;
        let at: chrono::DateTime<chrono::Utc> = v["occurred_at"].as_str().unwrap().parse()?;
        let id = v["aggregate_id"].as_str().unwrap().to_owned();
        match v["type"].as_str() {
            Some("job_queued") => {
                first_queued = Some(first_queued.map_or(at, |f: chrono::DateTime<chrono::Utc>| f.min(at)));
                queued.insert(id, at);
            }
            Some("job_started") => {
                last_started = last_started.max(Some(at));
                if let Some(q) = queued.get(&id) {
                    out.total.push(ms(at - *q));
                    if let Some(d) = dump.as_mut() {
                        d.push((q.timestamp_micros(), ms(at - *q)));
                    }
                    if let Some([Some(ev), Some(ticket)]) = seen.get(&id) {
                        out.append.push(ms(*ev - *q));
                        out.assign.push(ms(*ticket - *ev));
                        out.claim.push(ms(at - *ticket));
                    }
                }
            }
            _ => {}
        }
        if seq >= last {
            break;
        }
    }
    if let (Some(dir), Some(dump)) = (&env.args.latency_dump, dump) {
        let text: String = dump.iter().map(|(queued_us, ms)| format!("{queued_us},{ms}\n")).collect();
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("q2s-{ns}.csv")), text)?;
    }
    for v in [&mut out.total, &mut out.append, &mut out.assign, &mut out.claim] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    if let (Some(a), Some(b)) = (first_queued, last_started) {
        out.started_per_sec = out.total.len() as f64 / ((b - a).num_microseconds().unwrap_or(0).max(1) as f64 / 1e6);
    }
    Ok(out)
}

/// `n` times: a submit, then the job list read with `after_seq` set to the
/// submit's sequence; the time from the submit's answer to the list's (ms).
async fn read_your_write(key: &str, url: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let http = client(key, 1);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = http.post(format!("{url}/v1/jobs")).json(&json!({"executor": "noop", "command": []})).send().await?;
        anyhow::ensure!(r.status().as_u16() == 202, "submit: {}", r.status());
        let seq = r.json::<Value>().await?["seq"].as_u64().context("submit answered no seq")?;
        let t0 = Instant::now();
        let r = http.get(format!("{url}/v1/jobs?limit=1&after_seq={seq}")).send().await?;
        anyhow::ensure!(r.status().as_u16() == 200, "list after_seq={seq}: {}", r.status());
        r.bytes().await?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

/// Submits no-op jobs at `rate` a second until `stop`.
async fn steady_submits(
    key: &str,
    url: &str,
    rate: f64,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let http = client(key, 8);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                let (http, url) = (http.clone(), url.to_owned());
                pending.push(tokio::spawn(async move {
                    let r = http.post(format!("{url}/v1/jobs")).json(&json!({"executor": "noop", "command": []})).send();
                    let status = r.await?.status();
                    anyhow::ensure!(status.as_u16() == 202, "background submit: {status}");
                    anyhow::Ok(())
                }));
            }
            Some(done) = pending.next() => done??,
        }
    }
    while let Some(done) = pending.next().await {
        done??;
    }
    Ok(())
}

/// For `n` running `sleep` jobs: time from the cancel request to the moment
/// no process of the job is left.
async fn cancel_latency(key: &str, url: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let http = client(key, 1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let marker = format!("300.{}{}", std::process::id(), i);
        let r = http.post(format!("{url}/v1/jobs")).json(&json!({"command": ["sleep", marker]})).send().await?;
        let id = r.json::<Value>().await?["id"].as_str().unwrap().to_owned();
        // Wait until the process runs.
        let t_wait = Instant::now();
        while processes_with(&marker) == 0 {
            if t_wait.elapsed() > Duration::from_secs(20) {
                bail!("job {id} did not start");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let t0 = Instant::now();
        let r = http.post(format!("{url}/v1/jobs/{id}/cancel")).send().await?;
        assert_eq!(r.status().as_u16(), 202);
        while processes_with(&marker) > 0 {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("job {id} survived its cancel");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

fn processes_with(marker: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| memfind(&c, marker.as_bytes()))
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        })
        .count()
}

/// COPY of `n` rows shaped like `jobs` rows into a scratch table.
async fn raw_copy(pg_url: &str, n: usize) -> anyhow::Result<f64> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(pg_url).await?;
    sqlx::query(
        "CREATE TABLE bench_copy (id uuid, owner text, state text, attempt int, pool text, priority smallint,
            labels text[], experiment text, tags jsonb, command jsonb, env jsonb, spec jsonb, metrics jsonb,
            created_at timestamptz, updated_at timestamptz, last_seq bigint)",
    )
    .execute(&mut c)
    .await?;
    let now = chrono::Utc::now().to_rfc3339();
    let mut buf = String::with_capacity(n * 400);
    for i in 0..n {
        buf.push_str(&format!(
            "{}\tresearcher1\tsucceeded\t1\tdefault\t5\t{{}}\t\\N\t{{}}\t[\"python\",\"train.py\"]\t{{}}\t{{\"command\":[\"python\",\"train.py\"],\"pool\":\"default\",\"priority\":5}}\t{{}}\t{now}\t{now}\t{i}\n",
            uuid::Uuid::now_v7()
        ));
    }
    let t0 = Instant::now();
    let mut copy = c.copy_in_raw("COPY bench_copy FROM STDIN").await?;
    copy.send(buf.into_bytes()).await?;
    copy.finish().await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_copy").execute(&mut c).await?;
    Ok(rate)
}

/// Appends `n` sealed job events (queued, started, succeeded per job) to a
/// namespace, pipelined, then rebuilds the read models from sequence 1.
async fn rebuild_bench(env: &Env, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let (store, append_rate) = seed_events(env, n).await?;
    let read_rate = raw_read(env, &store.subjects().events_stream(), n as u64).await?;
    load_by_id(&store).await?;
    let pool = sqlx::PgPool::connect(&env.pg_url).await?;
    let t0 = Instant::now();
    let stats = fetchml_projections::rebuild_with_stats(&pool, &store).await?;
    let rebuild_rate = stats.seq as f64 / t0.elapsed().as_secs_f64();
    println!(
        "  (rebuild phases: read and fold {:.1} s, COPY {:.1} s of which indexing {:.1} s, swap {:.1} s)",
        stats.read.as_secs_f64(),
        stats.write.as_secs_f64(),
        stats.index.as_secs_f64(),
        stats.swap.as_secs_f64()
    );
    Ok((append_rate, read_rate, rebuild_rate))
}

struct ProjectorRun {
    events_per_sec: f64,
    projector_us: f64,
    postgres_us: f64,
}

/// A `fetchml projector` catching up on `jobs` no-op jobs' events, laid out
/// as a busy log holds them: each job started 500 jobs after it was queued
/// and ended 500 after that, so its three events fall in different batches
/// (as in end to end, where the projector lags by thousands of events).
async fn projector_bench(env: &Env, jobs: usize) -> anyhow::Result<ProjectorRun> {
    let ns = "bproject";
    let (store, _) = seed_events_in(env, ns, jobs * 3, None, 500).await?;
    let head = store.last_sequence().await?;
    let pool = sqlx::PgPool::connect(&env.database(ns).await).await?;
    // The projector creates its tables (a fraction of a second, counted): the
    // bench does not, so that an older `fetchml` (`--bin-dir`) meets only its
    // own migrations.
    let pg0 = cpu_secs_of_all("postgres");
    let t0 = Instant::now();
    let projector = env.projector(ns).await;
    // The checkpoint is another process's: polled, there is nothing to await.
    while fetchml_projections::checkpoint(&pool).await? < head {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("the projector did not reach sequence {head} within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let projector_cpu = cpu_secs(projector.0.id());
    let postgres_cpu = cpu_secs_of_all("postgres") - pg0;
    drop(projector);
    // How many row updates were heap-only (no index touched): Postgres
    // publishes a backend's counts when it ends, so ask until they show.
    let stats = "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
        WHERE relname = 'jobs' ORDER BY 1";
    for _ in 0..50 {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(stats).fetch_all(&pool).await?;
        if rows.iter().any(|(_, upd, _)| *upd > 0) {
            let hot: Vec<String> = rows
                .iter()
                .map(|(t, upd, hot)| format!("{t} {:.0}%", 100.0 * *hot as f64 / (*upd).max(1) as f64))
                .collect();
            println!("  (live projector: updates that were HOT: {})", hot.join(", "));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ProjectorRun {
        events_per_sec: head as f64 / secs,
        projector_us: projector_cpu * 1e6 / jobs as f64,
        postgres_us: postgres_cpu * 1e6 / jobs as f64,
    })
}

/// How long loading one job takes by its exact subject and by its id alone
/// (a wildcard over owner and pool), with the whole seeded log in the stream.
async fn load_by_id(store: &fetchml_eventstore::EventStore) -> anyhow::Result<()> {
    let js = store.jetstream();
    let s = js.get_stream(store.subjects().events_stream()).await?;
    let mut picked = Vec::new();
    for seq in [1u64, 3001, 30_001, 150_001, 290_001] {
        if let Ok(m) = s.get_raw_message(seq).await {
            picked.push(m.subject.to_string());
        }
    }
    for subject in picked {
        let id: fetchml_events::JobId = subject.rsplit('.').next().unwrap_or_default().parse()?;
        let t0 = Instant::now();
        store.load_job_at(id, &subject).await?;
        let exact = t0.elapsed();
        let t0 = Instant::now();
        store.load_job(id).await?;
        let wild = t0.elapsed();
        println!(
            "  (load of one job: exact subject {:.2} ms, by id {:.2} ms)",
            exact.as_secs_f64() * 1000.0,
            wild.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Reads messages `1..=n` of `stream` as the rebuild does (ordered consumers
/// over 25 000-message ranges, four at once) without decoding them: what the
/// broker can hand out. Returns messages/s.
async fn raw_read(env: &Env, stream: &str, n: u64) -> anyhow::Result<f64> {
    const RANGE: u64 = 25_000;
    let js = jetstream::new(env.client.clone());
    let s = js.get_stream(stream).await?;
    let t0 = Instant::now();
    let ranges = (0..n.div_ceil(RANGE)).map(|i| (i * RANGE + 1, ((i + 1) * RANGE).min(n)));
    let mut readers = futures::stream::iter(ranges)
        .map(|(from, to)| {
            let s = s.clone();
            tokio::spawn(async move {
                let c = s
                    .create_consumer(pull::OrderedConfig {
                        deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
                        ..Default::default()
                    })
                    .await?;
                let mut msgs = c.messages().await?;
                let mut got = 0u64;
                while let Some(m) = msgs.next().await {
                    let seq = m?.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                    got += 1;
                    if seq >= to {
                        break;
                    }
                }
                anyhow::Ok(got)
            })
        })
        .buffer_unordered(4);
    let mut total = 0;
    while let Some(got) = readers.next().await {
        total += got??;
    }
    anyhow::ensure!(total == n, "read {total} of {n} messages");
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// The audit figures (section 5b): `n` job events plus a signed checkpoint
/// every 1000, verified online, exported, and verified from the export.
async fn audit_bench(env: &Env, r: &mut Report, n: usize) -> anyhow::Result<()> {
    use fetchml_audit::online;
    let key = fetchml_audit::SigningKey::from_seed("bench", &[42; 32])?;
    let keys = fetchml_audit::Keyring::new(vec![key.public()]);
    let (store, _) = seed_events_in(env, "baudit", n, Some(&key), 0).await?;
    let total = store.last_sequence().await?;
    let t0 = Instant::now();
    raw_read_one(&store, total).await?;
    let raw_one = total as f64 / t0.elapsed().as_secs_f64();
    let raw_four = raw_read(env, &store.subjects().events_stream(), total).await?;
    r.add(&format!("limit: raw read of {total} events, 1 ordered reader"), raw_one, "events/s", None);
    r.add(&format!("limit: raw read of {total} events, 4 ordered readers"), raw_four, "events/s", None);

    let t0 = Instant::now();
    let verdict = online::verify_store(&store, keys.clone(), online::From::Start).await?;
    let online_rate = total as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(verdict.intact && verdict.verified_to_seq == total, "online verdict: {verdict}");
    r.add("audit: verify online from sequence 1", online_rate, "events/s", Some(("1 raw reader", raw_one)));

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export.jsonl");
    let t0 = Instant::now();
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut lines = online::export(&store, keys.keys().to_vec(), 1, None).await?;
        while let Some(chunk) = lines.next().await {
            out.write_all(&chunk?)?;
        }
        out.flush()?;
    }
    let export_rate = total as f64 / t0.elapsed().as_secs_f64();
    r.add("audit: export to a file", export_rate, "events/s", Some(("1 raw reader", raw_one)));
    r.add("  export size", std::fs::metadata(&file)?.len() as f64 / (1 << 20) as f64, "MiB", None);

    // The same export by `fetchml audit export` in its own process, to read its
    // peak memory: bounded (a small channel of 64 KiB chunks), whatever `n`.
    let cli_file = dir.path().join("cli-export.jsonl");
    let mut child = Command::new(env.fetchml())
        .args(["audit", "export", "--out"])
        .arg(&cli_file)
        .env("FETCHML_NATS__URL", &env.nats_url)
        .env("FETCHML_NATS__NAMESPACE", "baudit")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut peak = 0;
    while child.try_wait()?.is_none() {
        peak = peak.max(rss_kib(child.id()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(std::fs::metadata(&cli_file)?.len() > 0, "fetchml audit export wrote nothing");
    r.add("  fetchml audit export: peak RSS (sampled)", peak as f64 / 1024.0, "MiB", None);
    std::fs::remove_file(&cli_file)?;

    let t0 = Instant::now();
    let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
    let verdict = fetchml_audit::export::verify_export(input, keys)?;
    let offline_rate = total as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(verdict.intact && verdict.verified_to_seq == total, "offline verdict: {verdict}");
    r.add("audit: verify an export offline", offline_rate, "events/s", Some(("1 raw reader", raw_one)));
    Ok(())
}

/// Reads messages `1..=n` of the EVENTS stream with one ordered consumer, as
/// a verifier does, without decoding them.
async fn raw_read_one(store: &fetchml_eventstore::EventStore, n: u64) -> anyhow::Result<()> {
    let mut reader = store.read(&store.subjects().all_events(), fetchml_eventstore::StartAt::Beginning).await?;
    while let Some(ev) = reader.next().await {
        if ev?.seq >= n {
            return Ok(());
        }
    }
    bail!("the log ended early")
}

/// Appends `n` sealed events of three-event jobs to the `brebuild` namespace,
/// pipelined; returns the store and the append rate.
async fn seed_events(env: &Env, n: usize) -> anyhow::Result<(fetchml_eventstore::EventStore, f64)> {
    seed_events_in(env, "brebuild", n, None, 0).await
}

/// Which event (0 queued, 1 started, 2 succeeded) of which job comes next,
/// for `jobs` jobs: each job's three in a row (`window` 0), or each job
/// started `window` jobs after it was queued and ended `window` jobs later
/// still, as a busy log interleaves them.
fn event_order(jobs: usize, window: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(jobs * 3);
    for step in 0..jobs + 2 * window {
        for i in 0..3 {
            if let Some(k) = step.checked_sub(i * window).filter(|k| *k < jobs) {
                out.push((k, i));
            }
        }
    }
    out
}

/// As [`seed_events`] into namespace `ns`, in the order [`event_order`] gives
/// for `window`; with `checkpoints`, also a signed audit checkpoint after
/// every 1000 events (the bench owns the namespace and publishes in order on
/// one connection, so it knows each sequence).
async fn seed_events_in(
    env: &Env,
    ns: &str,
    n: usize,
    checkpoints: Option<&fetchml_audit::SigningKey>,
    window: usize,
) -> anyhow::Result<(fetchml_eventstore::EventStore, f64)> {
    use fetchml_events::job::{JobEvent, JobSpec, Metrics};
    use fetchml_events::{Actor, CommandId, Envelope, JobId, NewEvent, UserName, WorkerId};
    let namespace = fetchml_events::ids::Namespace::parse(ns)?;
    let subjects = fetchml_events::subject::Subjects::new(namespace);
    let mut chain = fetchml_audit::chain::Chain::new();
    let store = fetchml_eventstore::EventStore::open(
        env.client.clone(),
        subjects.clone(),
        &fetchml_eventstore::StreamSettings::default(),
    )
    .await?;
    let js = store.jetstream().clone();
    let owner = UserName::parse("researcher1")?;
    let worker = WorkerId::new();
    let mut spec = JobSpec::command(["python", "train.py"]);
    spec.experiment = Some("bench".into());
    let t0 = Instant::now();
    let mut inflight = FuturesUnordered::new();
    // Each job's id and the hash of its last event.
    let mut jobs: Vec<(JobId, String)> = Vec::new();
    for (written, (k, i)) in event_order(n.div_ceil(3), window).into_iter().filter(|(k, i)| k * 3 + i < n).enumerate() {
        if k == jobs.len() {
            jobs.push((JobId::new(), fetchml_events::hash::GENESIS.to_owned()));
        }
        let (id, prev) = &mut jobs[k];
        let subject = subjects.job(&owner, &spec.pool, *id);
        let payload = match i {
            0 => JobEvent::JobQueued { owner: owner.clone(), spec: spec.clone() },
            1 => JobEvent::JobStarted { attempt: 1, worker, placement: Default::default() },
            _ => JobEvent::JobSucceeded { attempt: 1, exit_code: 0, metrics: Metrics::new() },
        };
        let env = Envelope::seal(
            NewEvent {
                aggregate_id: id.to_string(),
                aggregate_version: i as u64 + 1,
                occurred_at: chrono::Utc::now(),
                actor: Actor::User { name: owner.clone() },
                command_id: CommandId::new(),
                correlation_id: uuid::Uuid::nil(),
                payload,
            },
            prev,
        )?;
        *prev = env.hash.clone();
        let bytes = env.to_bytes()?;
        chain.push(chain.seq() + 1, &bytes);
        // No expected-sequence header: the bench owns the subject.
        inflight.push(std::future::IntoFuture::into_future(js.publish(subject, Bytes::from(bytes)).await?));
        if inflight.len() >= 1024 {
            inflight.next().await.unwrap()?;
        }
        if let Some(key) = checkpoints
            && (written + 1) % 1000 == 0
        {
            let cp = key.checkpoint(ns, chain.seq(), &chain.head(), chrono::Utc::now())?.to_bytes()?;
            chain.push(chain.seq() + 1, &cp);
            inflight.push(std::future::IntoFuture::into_future(
                js.publish(subjects.audit_checkpoint(), Bytes::from(cp)).await?,
            ));
        }
    }
    while let Some(a) = inflight.next().await {
        a?;
    }
    Ok((store, n as f64 / t0.elapsed().as_secs_f64()))
}

async fn ws_connect(
    url: &str,
    key: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{}/v1/stream", url.replace("http://", "ws://")).into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// One client replays `n` stored events from the beginning.
async fn ws_replay(env: &Env, url: &str, n: usize) -> anyhow::Result<f64> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut sub = json!({"op": "subscribe", "id": "r", "stream": "events", "target": "all", "from": "beginning"});
    if env.args.stream_frames == "batch" {
        sub["batch"] = json!(true);
    }
    let mut ws = ws_connect(url, &env.key).await?;
    let t0 = Instant::now();
    ws.send(Message::Text(sub.to_string().into())).await?;
    let mut got = 0;
    while got < n {
        // Pings keep an empty replay open: give up on a silent one.
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await;
        match next {
            // Each item starts with its sequence (the api writes it so);
            // counted without parsing, as the fan-out's clients do.
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"messages""#) => {
                got += t.matches(r#"{"seq":"#).count()
            }
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"type\":\"message\"") => got += 1,
            Ok(Some(Ok(_))) => {}
            Err(_) => bail!("replay stalled after {got} of {n} events"),
            Ok(other) => bail!("replay ended early after {got}: {other:?}"),
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `subscribers` clients follow one job's progress live while `rate` messages
/// per second are published for `secs`; latency is publish → client receive.
async fn ws_fanout(
    env: &Env,
    ns: &str,
    url: &str,
    subscribers: usize,
    rate: usize,
    secs: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let http = client(&env.key, 1);
    let job: Value = http
        .post(format!("{url}/v1/jobs"))
        .json(&json!({"executor": "noop", "command": []}))
        .send()
        .await?
        .json()
        .await?;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let total = rate * secs as usize;
    let mut clients = Vec::new();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    // Set once every message is published: only then does a client's silence
    // end its run. (Before, a client gave up after 10 s without a message
    // while the later clients were still connecting: at 1 000 subscribers
    // about half had given up, with nothing, before the first publish.)
    let published_all = Arc::new(AtomicBool::new(false));
    let mut sub = json!({"op": "subscribe", "id": "p", "stream": "progress", "target": {"job": job_id}, "kinds": ["metric"], "from": "live"});
    if env.args.stream_frames == "batch" {
        // Only when asked: an api from before batching refuses the field.
        sub["batch"] = json!(true);
    }
    let connecting = Instant::now();
    for _ in 0..subscribers {
        let mut ws = ws_connect(url, &env.key).await?;
        let ready = ready.clone();
        let published_all = published_all.clone();
        let sub = sub.to_string();
        clients.push(tokio::spawn(async move {
            ws.send(Message::Text(sub.into())).await.ok();
            let mut lat = Vec::with_capacity(total);
            // How this client's run ended: the last message, `lagged`, or
            // anything else (a close, a silence of 10 s).
            let mut end = "other";
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let now = chrono::Utc::now();
                        // A thousand clients in this process read a million
                        // frames a second on the api's own two cores: each
                        // reads only the two fields it needs from a message,
                        // not a whole JSON tree (that parse alone took more
                        // CPU than the api's share of the run).
                        // (`messages` frames too: one `at` per message.)
                        if t.starts_with(r#"{"type":"message"#) {
                            for at in fields(&t, r#""at":""#) {
                                if let Ok(at) = at.parse::<chrono::DateTime<chrono::Utc>>() {
                                    lat.push((now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                                }
                            }
                            if t.contains(r#""value":-1.0"#) {
                                end = "last";
                                break;
                            }
                            continue;
                        }
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        if v["type"] == "subscribed" {
                            ready.add_permits(1);
                        } else if v["type"] == "lagged" {
                            end = "lagged";
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Err(_) if !published_all.load(Ordering::Acquire) => {}
                    _ => break,
                }
            }
            (lat, end)
        }));
    }
    let _ = ready.acquire_many(subscribers as u32).await?;
    let connected = connecting.elapsed().as_secs_f64();
    let js = jetstream::new(env.client.clone());
    let subject =
        subjects_of(ns)?.progress(&fetchml_events::UserName::parse("researcher1")?, job_id.parse()?, "metric");
    let t0 = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        let last = i + 1 == total;
        let body = json!({"job_id": job_id, "attempt": 1, "name": "m", "value": if last { -1.0 } else { i as f64 }, "at": chrono::Utc::now()});
        let _ = js.publish(subject.clone(), Bytes::from(body.to_string())).await?;
    }
    let published = t0.elapsed().as_secs_f64();
    published_all.store(true, Ordering::Release);
    let mut all = Vec::new();
    let mut per_client = Vec::new();
    let mut ends: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in clients {
        let (lat, end) = c.await?;
        per_client.push(lat.len() as f64);
        *ends.entry(end).or_default() += 1;
        all.extend(lat);
    }
    per_client.sort_by(|a, b| a.total_cmp(b));
    // Where the missing messages are: a few clients cut off, or every client short.
    println!(
        "  ({subscribers} subscribers connected and subscribed in {connected:.1} s; {total} published in {published:.1} s; messages per client min {} / p50 {} / max {}; clients ended by {ends:?})",
        pct(&per_client, 0.0),
        pct(&per_client, 0.5),
        pct(&per_client, 1.0),
    );
    all.sort_by(|a, b| a.total_cmp(b));
    let delivered = all.len() as f64 / (total * subscribers) as f64;
    Ok((pct(&all, 0.5), pct(&all, 0.99), delivered))
}

/// The string values after each `key` (which ends with its opening quote)
/// in a JSON text whose strings hold no escaped quotes.
fn fields<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.match_indices(key).filter_map(move |(i, _)| text[i + key.len()..].split('"').next())
}

/// Raw publishes against a second nats-server configured with
/// `jetstream { sync_interval: always }`.
async fn raw_sync_always(env: &Env, n: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let conf = dir.path().join("sync.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            dir.path().join("js")
        ),
    )?;
    let mut server = Proc(
        Command::new(&env.args.nats_server).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
    );
    wait_port(port, &mut server).await;
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "SYNC".into(),
        subjects: vec!["sync.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let seq_rate = publish_one_at_a_time(&js, "sync.a", (n / 10).max(100)).await?;
    Ok((seq_rate, publish_pipelined(&js, "sync.b", n).await?))
}

#[cfg(test)]
mod tests {
    use super::event_order;

    #[test]
    fn events_come_in_order_per_job_and_interleaved_by_the_window() {
        assert_eq!(event_order(2, 0), vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        let order = event_order(5, 2);
        assert_eq!(order.len(), 15);
        assert_eq!(&order[..4], &[(0, 0), (1, 0), (2, 0), (0, 1)]);
        // Each job's events keep their order, and every event comes once.
        for k in 0..5 {
            let mine: Vec<usize> = order.iter().filter(|(j, _)| *j == k).map(|(_, i)| *i).collect();
            assert_eq!(mine, vec![0, 1, 2]);
        }
    }
}
