//! The stateless worker. It pulls tickets for its pool and labels from DISPATCH,
//! highest priority first, claims the job's next attempt in the event log
//! (`job_started`, fenced by the attempt number), runs it, streams output and
//! progress to PROGRESS, and records how it ended. It keeps nothing of its own:
//! kill it at any moment and the log and the work queue still say everything.
//!
//! **Lease.** The ticket stays unacknowledged while the attempt runs, and the
//! worker renews it with in-progress acks every third of the lease. We chose this
//! over an ack-at-claim plus a KV lease because JetStream then does the expiry
//! and redelivery itself (no second source of truth to get wrong), and a live
//! worker renews for as long as the job runs, hours if need be. A worker that
//! dies stops renewing; the ticket is redelivered after one lease to another
//! worker, which records the lost attempt (`infrastructure` failure, so the
//! retry policy decides) and the job comes back as attempt n+1.
//!
//! **Fencing.** A worker that only *seems* dead (a partition) may come back: its
//! late `Finish` names an attempt that is no longer current and is rejected by
//! the aggregate, and it stops its process as soon as it sees any event on the
//! job it did not write.
//!
//! **Priorities and labels.** Each (pool, priority, label set) is one durable
//! queue. A worker serves every label set that is a subset of its labels, asks
//! the highest-priority non-empty queue first, and learns which queues have work
//! from a plain subscription on the pool's dispatch subjects (no polling while
//! idle, apart from a slow sweep that catches redeliveries).
//!
//! **Tracing.** Each ticket is handled in a span `handle` with `worker`, `job`
//! and `correlation`: the correlation id of the event that asked for this
//! attempt (normally the submit's, which is the api's request id). The
//! attempt's commands carry the same correlation id into the log, and the
//! tasks the attempt spawns (lease, watch, progress) stay in the span.
//!
//! **Draining.** On stop the worker takes no new tickets, lets its running
//! jobs finish (up to `drain_secs`), then hands the rest back. Throughout, it
//! keeps its registry entry fresh, marked `draining`: it still holds leases,
//! and a worker missing from the registry has its running jobs taken over.

pub mod executor;
mod metrics_listener;
mod progress;
pub mod secrets;
pub mod supervise;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use executor::{ExecIo, ExecRequest};
use fetchml_events::dispatch::DispatchTicket;
use fetchml_events::hash::GENESIS;
use fetchml_events::ids::PoolName;
use fetchml_events::job::{FailureClass, JobCommand, JobRejection, JobStatus, Metrics, Outcome};
use fetchml_events::subject::{check_label, served_label_keys};
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{Actor, JobId, WorkerId};
use fetchml_eventstore::{
    CommandContext, EventStore, ExecuteError, StoreError, WorkerRecord, ensure_registry, heartbeat_every, open_registry,
};
use fetchml_runtime::Settings;
use fetchml_runtime::settings::WorkerSettings;
use futures::StreamExt;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::field::Empty;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid worker settings: {0}")]
    Settings(String),
    #[error("dispatch consumer: {0}")]
    Consumer(String),
    #[error("cannot listen for metrics on {addr}: {source} (another worker there? set worker.metrics_listen)")]
    MetricsBind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
}

/// Longest a worker may advertise labels for (subsets grow as 2^n).
pub const MAX_WORKER_LABELS: usize = 6;

/// How often an idle worker sweeps all its queues (redeliveries and delayed
/// retries publish nothing it could be woken by).
const SWEEP: Duration = Duration::from_secs(1);

/// How long a pull on a queue that was just woken waits at the server for the
/// ticket. The wake-up is the ticket's own publish seen on a core subscription,
/// and it can arrive before the stream has stored the ticket: a no-wait pull at
/// that moment finds nothing, and the job then waited for the next wake-up or
/// the sweep (measured: queue-to-start p99 of ~21 ms at 50 jobs/s, the gap
/// between jobs). A pull that waits is answered as soon as the ticket is
/// stored. Bounded, because while it waits (another worker may have won the
/// ticket) this worker's other queues wait too.
const WOKEN_PULL_WAIT: Duration = Duration::from_millis(20);

pub struct Worker {
    store: EventStore,
    nats: async_nats::Client,
    settings: WorkerSettings,
    pool: PoolName,
    id: WorkerId,
    running: Arc<AtomicUsize>,
    /// Set once the worker stops taking jobs; shown in its registry entry.
    draining: AtomicBool,
    /// Wakes the heartbeat for an extra refresh (the start of a drain).
    refresh: Notify,
    /// How long a registry entry lives (used if this worker creates the bucket).
    registry_ttl: Duration,
    /// `GET /metrics`, when `worker.metrics_listen` is set; served while `run` runs.
    metrics: Option<tokio::net::TcpListener>,
    /// Where the secrets jobs name come from on this host.
    secrets: secrets::SecretSource,
}

/// One (priority, label set) queue, ordered so that higher priorities come first.
type QueueKey = (Reverse<u8>, String);

impl Worker {
    /// Connects to NATS (refusing a server that is too old) and opens the
    /// namespace's streams.
    pub async fn build(settings: &Settings) -> Result<Self, WorkerError> {
        let pool = PoolName::parse(&settings.worker.pool).map_err(|e| WorkerError::Settings(e.to_string()))?;
        if settings.worker.labels.len() > MAX_WORKER_LABELS {
            return Err(WorkerError::Settings(format!("at most {MAX_WORKER_LABELS} labels per worker")));
        }
        for l in &settings.worker.labels {
            // The same rule as a job's labels: a worker offering `_` would
            // otherwise be the same queue as "no labels".
            check_label(l).map_err(|e| WorkerError::Settings(format!("worker.labels: {e}")))?;
        }
        // Bound first, like the api: a taken port is reported before anything starts.
        let metrics = match settings.worker_metrics_listen().map_err(|e| WorkerError::Settings(e.to_string()))? {
            Some(addr) => {
                use fetchml_runtime::metrics as m;
                m::show_from_zero(&[m::NATS_RECONNECTS], &[m::WORKER_RUNNING]);
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|source| WorkerError::MetricsBind { addr, source })?,
                )
            }
            None => None,
        };
        let secrets = secrets::SecretSource::load(&settings.secrets)?;
        let nats =
            fetchml_eventstore::connect_secure(&settings.nats.url, "fetchml-worker", &settings.nats_security()).await?;
        let store = EventStore::open_as_client(
            nats.clone(),
            fetchml_events::subject::Subjects::new(settings.namespace()),
            &settings.stream_settings(),
        )
        .await?;
        Ok(Self {
            store,
            nats,
            settings: settings.worker.clone(),
            pool,
            id: WorkerId::new(),
            running: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            refresh: Notify::new(),
            registry_ttl: settings.worker_ttl(),
            metrics,
            secrets,
        })
    }

    /// Where this worker serves `GET /metrics`, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    async fn queues(&self) -> Result<BTreeMap<QueueKey, PullConsumer>, WorkerError> {
        let subjects = self.store.subjects();
        let stream = self
            .store
            .jetstream()
            .get_stream(subjects.dispatch_stream())
            .await
            .map_err(|e| WorkerError::Consumer(e.to_string()))?;
        let mut out = BTreeMap::new();
        for lk in served_label_keys(&self.settings.labels) {
            for prio in 1..=10u8 {
                let name = format!("q-{}-{prio}-{lk}", self.pool);
                let consumer = stream
                    .get_or_create_consumer(
                        &name,
                        pull::Config {
                            durable_name: Some(name.clone()),
                            filter_subject: subjects.dispatch_queue(&self.pool, prio, &lk),
                            deliver_policy: DeliverPolicy::All,
                            ack_policy: AckPolicy::Explicit,
                            ack_wait: Duration::from_secs(self.settings.lease_secs),
                            max_deliver: -1,
                            max_ack_pending: 100_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| WorkerError::Consumer(format!("{name}: {e}")))?;
                out.insert((Reverse(prio), lk.clone()), consumer);
            }
        }
        Ok(out)
    }

    /// Pulls and runs jobs until `stop` is cancelled, then lets running jobs
    /// finish for up to `drain_secs`, and hands the rest back.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), WorkerError> {
        // Metrics are served until the worker has stopped, drain included.
        let metrics_done = CancellationToken::new();
        let _stop_metrics = metrics_done.clone().drop_guard();
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(metrics_listener::serve(listener, metrics_done));
        }
        let queues = self.queues().await?;
        let served: BTreeSet<String> = served_label_keys(&self.settings.labels).into_iter().collect();
        let mut wake = self
            .nats
            .subscribe(self.store.subjects().dispatch_pool(&self.pool))
            .await
            .map_err(|e| WorkerError::Consumer(e.to_string()))?;
        let this = Arc::new(self);
        let head = this.announce_start().await?;
        // The heartbeat outlives `stop`: it ends after the drain (see the header).
        let alive = CancellationToken::new();
        let heartbeat = this.clone().heartbeat(alive.clone());

        let slots = Arc::new(Semaphore::new(this.settings.concurrency));
        let kill_all = CancellationToken::new();
        let mut running = JoinSet::new();
        // Every queue is hot at start: tickets may have waited for us.
        let mut hot: BTreeSet<QueueKey> = queues.keys().cloned().collect();
        // Hot because a ticket was just published to it (see WOKEN_PULL_WAIT).
        let mut woken: BTreeSet<QueueKey> = BTreeSet::new();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(worker = %this.id, pool = %this.pool, labels = ?this.settings.labels,
            concurrency = this.settings.concurrency, "worker running");
        'pull: loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'pull },
            };
            let msg = loop {
                // Highest priority first; a queue found empty cools down until
                // a wake-up or the next sweep says otherwise.
                let mut found = None;
                while let Some(key) = hot.first().cloned() {
                    let Some(consumer) = queues.get(&key) else {
                        hot.remove(&key);
                        continue;
                    };
                    let wait = woken.remove(&key).then_some(WOKEN_PULL_WAIT);
                    match fetch_one(consumer, wait).await {
                        Ok(Some(m)) => {
                            found = Some(m);
                            break;
                        }
                        Ok(None) => {
                            hot.remove(&key);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "fetch failed; backing off");
                            break;
                        }
                    }
                }
                if let Some(m) = found {
                    break m;
                }
                tokio::select! {
                    _ = stop.cancelled() => break 'pull,
                    w = wake.next() => {
                        if let Some(w) = w
                            && let Some(key) = queue_of(&w.subject, &served)
                        {
                            hot.insert(key.clone());
                            woken.insert(key);
                        }
                    }
                    _ = sweep.tick() => hot.extend(queues.keys().cloned()),
                }
            };
            let this2 = this.clone();
            let kill = kill_all.child_token();
            running.spawn(async move {
                this2.running.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(fetchml_runtime::metrics::WORKER_RUNNING).increment(1);
                this2.handle(msg, kill).await;
                metrics::gauge!(fetchml_runtime::metrics::WORKER_RUNNING).decrement(1);
                this2.running.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
        tracing::info!(running = running.len(), "stopping: no new jobs; waiting for running ones");
        this.draining.store(true, Ordering::Relaxed);
        this.refresh.notify_one();
        let drain = Duration::from_secs(this.settings.drain_secs);
        if tokio::time::timeout(drain, async { while running.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(running = running.len(), "drain deadline passed; handing the remaining jobs back");
            kill_all.cancel();
            while running.join_next().await.is_some() {}
        }
        // Stop refreshing before the entry is deleted, so no refresh lands after.
        alive.cancel();
        let _ = heartbeat.await;
        this.announce_stop(head).await;
        Ok(())
    }

    /// WorkerStarted in the log; returns the head (seq, hash) for WorkerStopped.
    async fn announce_start(&self) -> Result<(u64, String), WorkerError> {
        let event = WorkerEvent::WorkerStarted {
            pool: self.pool.to_string(),
            labels: self.settings.labels.clone(),
            concurrency: self.settings.concurrency,
            host: hostname(),
            pid: std::process::id(),
        };
        let ctx = CommandContext::new(Actor::Worker { id: self.id });
        let subject = self.store.subjects().worker(self.id);
        let (appended, hash) =
            self.store.append_event(&subject, &self.id.to_string(), 0, 1, GENESIS, event, &ctx).await?;
        Ok((appended.seq, hash))
    }

    async fn announce_stop(&self, (seq, hash): (u64, String)) {
        let ctx = CommandContext::new(Actor::Worker { id: self.id });
        let subject = self.store.subjects().worker(self.id);
        let event = WorkerEvent::WorkerStopped { reason: "shutdown".into() };
        if let Err(e) = self.store.append_event(&subject, &self.id.to_string(), seq, 2, &hash, event, &ctx).await {
            tracing::warn!(error = %e, "could not record worker_stopped");
        }
        if let Ok(kv) = open_registry(self.store.jetstream(), self.store.subjects()).await {
            let _ = kv.delete(self.id.to_string()).await;
        }
    }

    /// Keeps this worker's registry entry fresh, every third of the bucket's
    /// TTL, until `alive` is cancelled (after the drain).
    fn heartbeat(self: Arc<Self>, alive: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let started_at = chrono::Utc::now();
            let mut registry = None;
            let mut every = fetchml_eventstore::HEARTBEAT;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = alive.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = self.refresh.notified() => {}
                }
                if registry.is_none() {
                    match ensure_registry(self.store.jetstream(), self.store.subjects(), self.registry_ttl).await {
                        Ok(kv) => {
                            let paced = heartbeat_every(&kv).await;
                            if paced != every {
                                every = paced;
                                tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                            }
                            registry = Some(kv);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registry heartbeat failed");
                            continue;
                        }
                    }
                }
                let record = WorkerRecord {
                    id: self.id.to_string(),
                    pool: self.pool.to_string(),
                    labels: self.settings.labels.clone(),
                    concurrency: self.settings.concurrency,
                    running: self.running.load(Ordering::Relaxed),
                    draining: self.draining.load(Ordering::Relaxed),
                    host: hostname(),
                    pid: std::process::id(),
                    started_at,
                    seen_at: chrono::Utc::now(),
                };
                let Some(kv) = &registry else { continue };
                let result = match serde_json::to_vec(&record) {
                    Ok(body) => kv.put(self.id.to_string(), body.into()).await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "registry heartbeat failed");
                    // Opened again next time (the bucket may have been recreated).
                    registry = None;
                }
            }
        })
    }

    #[tracing::instrument(skip_all, fields(worker = %self.id, job = Empty, correlation = Empty))]
    async fn handle(&self, msg: jetstream::Message, kill: CancellationToken) {
        let ticket: DispatchTicket = match serde_json::from_slice(&msg.payload) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "malformed dispatch ticket; dropping it");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
        let job_id = ticket.job_id;
        let span = tracing::Span::current();
        span.record("job", tracing::field::display(job_id));
        let retry_later = |why: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(job = %job_id, error = %e, "{why}; retrying later");
        };
        let loaded = match self.store.load_job_at(job_id, &ticket.job_subject).await {
            Ok(l) => l,
            Err(e) => {
                retry_later("cannot load job", &e);
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        let Some(state) = loaded.state.clone() else {
            tracing::error!(job = %job_id, "ticket for a job with no history; dropping it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        // The request that asked for this attempt, for our commands and logs.
        let correlation = loaded.correlation_at(ticket.cause_seq).unwrap_or_else(uuid::Uuid::now_v7);
        span.record("correlation", tracing::field::display(correlation));
        let actor = Actor::Worker { id: self.id };
        if state.status == JobStatus::Running {
            if delivered > 1 || ticket.takeover {
                // The ticket came back: whoever ran this attempt stopped
                // renewing its lease. Record the loss; the retry policy decides.
                let outcome = Outcome::Failed {
                    exit_code: None,
                    signal: None,
                    class: FailureClass::Infrastructure,
                    reason: format!("worker lost: lease of attempt {} expired", state.attempt),
                };
                tracing::warn!(job = %job_id, attempt = state.attempt, "lease expired; recording the lost attempt");
                let ended = (outcome, Metrics::new());
                self.record_outcome(job_id, state.attempt, ended, &actor, correlation, Some(loaded)).await;
            }
            // Otherwise a duplicate ticket while the attempt runs elsewhere.
            let _ = msg.double_ack().await;
            return;
        }
        if state.status.is_terminal() {
            let _ = msg.double_ack().await;
            return;
        }
        if let Some(nb) = state.not_before {
            let wait = (nb - chrono::Utc::now()).to_std().unwrap_or_default();
            if !wait.is_zero() {
                let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
                return;
            }
        }
        let attempt = state.attempt + 1;
        let Some(subject) = loaded.subject.clone() else { return };
        // Watch the job's subject before claiming it, so that no event after
        // our start can slip by unseen (a core subscription: no server state).
        let watch_sub = match self.nats.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                retry_later("cannot watch job", &e);
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        let start = JobCommand::Start { attempt, worker: self.id, at: chrono::Utc::now() };
        let ctx = CommandContext::new(actor.clone()).correlated(correlation);
        let started = match self.store.execute_job_on(job_id, Some(loaded.clone()), start, &ctx).await {
            Ok(done) => done,
            Err(ExecuteError::Rejected(JobRejection::NotYet(nb))) => {
                let wait = (nb - chrono::Utc::now()).to_std().unwrap_or(Duration::from_millis(100));
                let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
                return;
            }
            Err(ExecuteError::Rejected(r)) => {
                tracing::info!(job = %job_id, reason = %r, "ticket not startable; acknowledging");
                let _ = msg.double_ack().await;
                return;
            }
            Err(ExecuteError::Store(e)) => {
                retry_later("cannot claim job", &e);
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        tracing::info!(job = %job_id, attempt, "started");
        record_queue_wait(&loaded, &state.spec);
        let mut current = loaded;
        for (seq, env) in started.appended {
            current = current.with(seq, env);
        }

        let fenced = CancellationToken::new();
        let cancel = kill.child_token();
        let lease = self.keep_lease(msg.clone(), subject.clone(), started.seq, fenced.clone(), cancel.clone());
        let watch = watch_job(watch_sub, job_id, ctx.command_id, fenced.clone(), cancel.clone());
        let (log_tx, log_rx) = mpsc::channel(1024);
        let forward = progress::forward(
            self.store.jetstream().clone(),
            self.store.subjects().clone(),
            state.owner.clone(),
            job_id,
            attempt,
            log_rx,
        );

        let ran_from = std::time::Instant::now();
        let mut outcome = match self.secrets.resolve(&state.spec.secrets) {
            Ok(secrets) => {
                let req = ExecRequest {
                    job_id,
                    attempt,
                    spec: state.spec.clone(),
                    job_root: self.settings.job_root.clone(),
                    kill_grace: Duration::from_secs(self.settings.kill_grace_secs),
                    secrets,
                };
                executor::for_spec(req.spec.executor).run(&req, ExecIo { logs: log_tx, cancel: cancel.clone() }).await
            }
            // Another host may provide it: an infrastructure failure, retried
            // where the job's policy says so.
            Err(name) => {
                drop(log_tx);
                Outcome::Failed {
                    exit_code: None,
                    signal: None,
                    class: FailureClass::Infrastructure,
                    reason: format!(
                        "secret {name} is not provided on worker host {} (secrets.file or its environment)",
                        hostname()
                    ),
                }
            }
        };
        let ran = ran_from.elapsed();
        let metrics = forward.await.unwrap_or_default();
        watch.abort();

        let ran_outcome = if fenced.is_cancelled() { "ended_elsewhere" } else { outcome_label(&outcome) };
        metrics::histogram!(fetchml_runtime::metrics::RUN_TIME, "pool" => self.pool.to_string(), "outcome" => ran_outcome)
            .record(ran.as_secs_f64());
        if fenced.is_cancelled() {
            // Someone else moved the job on (cancel, or a takeover after our
            // lease was thought lost): nothing of ours to record.
            tracing::info!(job = %job_id, attempt, "attempt ended by another party");
        } else {
            if kill.is_cancelled() {
                outcome = Outcome::Failed {
                    exit_code: None,
                    signal: None,
                    class: FailureClass::Infrastructure,
                    reason: "worker stopped before the job finished".into(),
                };
            }
            self.record_outcome(job_id, attempt, (outcome, metrics), &actor, correlation, Some(current)).await;
        }
        cancel.cancel();
        lease.abort();
        if let Err(e) = msg.double_ack().await {
            // The ticket comes back after the lease; the job has moved on by
            // then, so the next worker just acknowledges it.
            tracing::warn!(job = %job_id, error = %e, "ack of finished ticket failed");
        }
    }

    /// Renews the ticket's lease every third of it until `done`; at each
    /// renewal also checks that the job's subject has nothing newer than our
    /// start (a backstop for a watch message lost in a reconnect).
    fn keep_lease(
        &self,
        msg: jetstream::Message,
        subject: String,
        started_seq: u64,
        fenced: CancellationToken,
        done: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.settings.lease_secs) / 3;
        let store = self.store.clone();
        let renew = async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::warn!(error = %e, "lease renewal failed");
                        }
                        if let Ok(Some(last)) = store.last_on_subject(&subject).await
                            && last.seq > started_seq
                        {
                            tracing::info!(subject, seq = last.seq, "job changed under the running attempt; stopping it");
                            fenced.cancel();
                            done.cancel();
                            return;
                        }
                    }
                }
            }
        };
        // In the attempt's span: its lines name the job.
        tokio::spawn(renew.in_current_span())
    }

    /// Records how the attempt ended, retrying while NATS is unreachable. The
    /// command id stays the same across retries, so it is stored once.
    async fn record_outcome(
        &self,
        job: JobId,
        attempt: u32,
        (outcome, metrics): (Outcome, Metrics),
        actor: &Actor,
        correlation: uuid::Uuid,
        mut known: Option<fetchml_eventstore::LoadedJob>,
    ) {
        let ctx = CommandContext::new(actor.clone()).correlated(correlation);
        let jitter = jitter_permille();
        let mut backoff = Duration::from_millis(100);
        for _ in 0..120 {
            let cmd = JobCommand::Finish {
                attempt,
                outcome: outcome.clone(),
                metrics: metrics.clone(),
                at: ctx.now,
                jitter_permille: jitter,
            };
            match self.store.execute_job_on(job, known.take(), cmd, &ctx).await {
                Ok(done) => {
                    if !done.duplicate {
                        metrics::counter!(fetchml_runtime::metrics::ATTEMPTS, "outcome" => outcome_label(&outcome))
                            .increment(1);
                    }
                    let status = done.state.map(|s| s.status.as_str()).unwrap_or("?");
                    tracing::info!(job = %job, attempt, status, "finished");
                    return;
                }
                Err(ExecuteError::Rejected(r)) => {
                    tracing::info!(job = %job, attempt, reason = %r, "outcome not recorded (the job moved on)");
                    return;
                }
                Err(ExecuteError::Store(e)) => {
                    tracing::warn!(job = %job, error = %e, "cannot record outcome yet; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(job = %job, attempt, "gave up recording the outcome; the lease will expire and the job be retried");
    }
}

/// An attempt's outcome as a label: `succeeded` or the failure class.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed { class: FailureClass::Infrastructure, .. } => "infrastructure",
        Outcome::Failed { class: FailureClass::Code, .. } => "code",
        Outcome::Failed { class: FailureClass::Resource, .. } => "resource",
        Outcome::Failed { class: FailureClass::Unknown, .. } => "unknown",
    }
}

/// Queue-to-start of the attempt just started: from when the job could run
/// (its last event before the start: queued, requeued, or a retry scheduled,
/// counted from the end of its backoff) until now. The pool is this worker's
/// and the priority 1-10, so the labels stay few.
fn record_queue_wait(before_start: &fetchml_eventstore::LoadedJob, spec: &fetchml_events::job::JobSpec) {
    let Some((_, last)) = before_start.history.last() else { return };
    let ready =
        before_start.state.as_ref().and_then(|s| s.not_before).map_or(last.occurred_at, |nb| nb.max(last.occurred_at));
    let waited = (chrono::Utc::now() - ready).to_std().unwrap_or_default();
    metrics::histogram!(
        fetchml_runtime::metrics::QUEUE_WAIT,
        "pool" => spec.pool.to_string(),
        "priority" => spec.priority.to_string()
    )
    .record(waited.as_secs_f64());
}

/// One message from `consumer`: what is there now, or (with `wait`) the first
/// to arrive within it.
async fn fetch_one(consumer: &PullConsumer, wait: Option<Duration>) -> Result<Option<jetstream::Message>, String> {
    let mut batch = match wait {
        None => consumer.fetch().max_messages(1).messages().await,
        Some(w) => consumer.batch().max_messages(1).expires(w).messages().await,
    }
    .map_err(|e| e.to_string())?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(None),
    }
}

/// The queue a dispatch subject `<ns>.dispatch.<pool>.<prio>.<labels>.<job>` belongs to.
fn queue_of(subject: &str, served: &BTreeSet<String>) -> Option<QueueKey> {
    let mut it = subject.rsplit('.');
    let _job = it.next()?;
    let lk = it.next()?;
    let prio: u8 = it.next()?.parse().ok()?;
    served.contains(lk).then(|| (Reverse(prio), lk.to_owned()))
}

/// Stops the attempt at the first event on the job's subject that is not our
/// own start: a cancel, or a takeover. Our own `Finish` comes after this watch
/// is gone.
fn watch_job(
    mut sub: async_nats::Subscriber,
    job: JobId,
    our_start: fetchml_events::CommandId,
    fenced: CancellationToken,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let watch = async move {
        let ours = our_start.to_string();
        while let Some(m) = sub.next().await {
            let mine = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| {
                    v.get("causation_id").and_then(|c| c.as_str()).map(|c| c.replace('-', "") == ours.replace('-', ""))
                })
                .unwrap_or(false);
            if !mine {
                tracing::info!(job = %job, "job changed under the running attempt; stopping it");
                fenced.cancel();
                cancel.cancel();
                return;
            }
        }
    };
    // In the attempt's span: its lines name the job.
    tokio::spawn(watch.in_current_span())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A random draw in 0..=1000 for retry jitter (uuid v4 bits; no extra crate).
fn jitter_permille() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 1001) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_subjects_map_to_served_queues_only() {
        let served: BTreeSet<String> = ["_".to_string(), "gpu".to_string()].into();
        assert_eq!(queue_of("ns.dispatch.default.7.gpu.abc", &served), Some((Reverse(7), "gpu".into())));
        assert_eq!(queue_of("ns.dispatch.default.7.a100+gpu.abc", &served), None);
        assert_eq!(queue_of("garbage", &served), None);
    }
}
