//! The stateless worker. It announces what it offers (slots, GPU ids, CPUs,
//! memory) in the worker registry, takes the assignments the scheduler sends
//! to its own subject, claims each job's next attempt in the event log
//! (`job_started`, appended expecting the job's last sequence: fenced), runs
//! it with exactly the GPUs it was given, streams output and progress to
//! PROGRESS, and records how it ended. It keeps nothing of its own: kill it at
//! any moment and the log still says everything.
//!
//! **Lease.** A running attempt's lease is this worker's registry entry, which
//! it refreshes every third of the entry's TTL for as long as it holds jobs.
//! A worker that dies stops refreshing; the leading scheduler then records
//! the lost attempt (`infrastructure`, so the retry policy decides) and the
//! job comes back as attempt n+1 (see `fetchml-scheduler`).
//!
//! **Fencing.** A worker that only *seems* dead (a partition) may come back:
//! its late `Finish` names an attempt that is no longer current and is
//! rejected by the aggregate. It stops its process when the scheduler says so
//! (a cancel) or, if that message was lost, when its own check of the job's
//! subject (every third of `lease_secs`) finds an event it did not write.
//!
//! **Tracing.** Each assignment is handled in a span `handle` with `worker`,
//! `job` and `correlation`: the correlation id of the event that asked for
//! this attempt (normally the submit's, which is the api's request id).
//!
//! **Draining.** On stop, or when an admin drains it, the worker takes no new
//! assignments. On stop it lets its running jobs finish (up to `drain_secs`),
//! then hands the rest back. Throughout, it keeps its registry entry fresh,
//! marked `draining`: it still holds the attempts it runs.

pub mod executor;
mod host;
mod metrics_listener;
mod progress;
pub mod secrets;
pub mod supervise;

use executor::{ExecIo, ExecRequest};
use fetchml_events::dispatch::{Assignment, WorkerMessage};
use fetchml_events::hash::GENESIS;
use fetchml_events::ids::PoolName;
use fetchml_events::job::{FailureClass, JobCommand, JobStatus, Metrics, Outcome, Placement};
use fetchml_events::subject::check_label;
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{Actor, JobId, WorkerId};
use fetchml_eventstore::{
    CommandContext, EventStore, ExecuteError, LoadedJob, StoreError, WorkerRecord, ensure_registry, heartbeat_every,
    open_registry,
};
use fetchml_runtime::Settings;
use fetchml_runtime::settings::WorkerSettings;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

/// Longest a worker may advertise labels for.
pub const MAX_WORKER_LABELS: usize = 6;

/// What this worker gives jobs, and what it has given out.
#[derive(Debug)]
struct Capacity {
    slots: usize,
    gpus: Vec<String>,
    cpus: u32,
    memory_mb: u64,
    /// Attempts running here: each job's attempt, with what it was given.
    held: HashMap<JobId, (u32, Placement)>,
}

impl Capacity {
    /// Takes what `a` was given, if it is free here. The scheduler checks the
    /// same (slots, GPU ids, CPUs and memory); this guards against two
    /// schedulers both believing they lead.
    fn take(&mut self, a: &Assignment) -> Result<(), String> {
        if self.held.contains_key(&a.job_id) {
            return Err("the job already runs here".into());
        }
        if self.held.len() >= self.slots {
            return Err(format!("all {} slots are taken", self.slots));
        }
        let used: HashSet<&String> = self.held.values().flat_map(|(_, p)| &p.gpus).collect();
        for g in &a.placement.gpus {
            if !self.gpus.contains(g) {
                return Err(format!("GPU {g} is not one of this worker's"));
            }
            if used.contains(g) {
                return Err(format!("GPU {g} is in use"));
            }
        }
        let cpus: u64 = self.held.values().map(|(_, p)| u64::from(p.cpus)).sum();
        if cpus + u64::from(a.placement.cpus) > u64::from(self.cpus) {
            return Err(format!(
                "{} CPU(s) asked, {} of {} free",
                a.placement.cpus,
                u64::from(self.cpus).saturating_sub(cpus),
                self.cpus
            ));
        }
        let memory_mb: u64 = self.held.values().map(|(_, p)| p.memory_mb).sum();
        if memory_mb.saturating_add(a.placement.memory_mb) > self.memory_mb {
            return Err(format!(
                "{} MB asked, {} of {} MB free",
                a.placement.memory_mb,
                self.memory_mb.saturating_sub(memory_mb),
                self.memory_mb
            ));
        }
        self.held.insert(a.job_id, (a.attempt, a.placement.clone()));
        Ok(())
    }

    /// Frees what `attempt` of `job` holds. Only that attempt's: once it has
    /// recorded its end, the job's next attempt may already hold a slot here.
    fn release(&mut self, job: JobId, attempt: u32) {
        if self.held.get(&job).is_some_and(|(a, _)| *a == attempt) {
            self.held.remove(&job);
        }
    }
}

pub struct Worker {
    store: EventStore,
    nats: async_nats::Client,
    settings: WorkerSettings,
    pool: PoolName,
    id: WorkerId,
    capacity: Mutex<Capacity>,
    running: Arc<AtomicUsize>,
    /// Set once the worker takes no new jobs (stopping, or drained by an
    /// admin); shown in its registry entry.
    draining: AtomicBool,
    /// Wakes the heartbeat for an extra refresh (the start of a drain).
    refresh: Notify,
    /// How long a registry entry lives (used if this worker creates the bucket).
    registry_ttl: Duration,
    /// `GET /metrics`, when `worker.metrics_listen` is set; served while `run` runs.
    metrics: Option<tokio::net::TcpListener>,
    /// Where the secrets jobs name come from on this host.
    secrets: secrets::SecretSource,
    /// Running attempts, for the scheduler's stop messages.
    stops: Mutex<HashMap<JobId, Stoppable>>,
}

/// What a stop from the scheduler cancels: `fenced` says the job moved on
/// (nothing of ours to record), `process` stops what runs.
struct Stoppable {
    attempt: u32,
    fenced: CancellationToken,
    process: CancellationToken,
}

impl Worker {
    /// Connects to NATS (refusing a server that is too old) and opens the
    /// namespace's streams.
    pub async fn build(settings: &Settings) -> Result<Self, WorkerError> {
        let pool = PoolName::parse(&settings.worker.pool).map_err(|e| WorkerError::Settings(e.to_string()))?;
        if settings.worker.labels.len() > MAX_WORKER_LABELS {
            return Err(WorkerError::Settings(format!("at most {MAX_WORKER_LABELS} labels per worker")));
        }
        for l in &settings.worker.labels {
            check_label(l).map_err(|e| WorkerError::Settings(format!("worker.labels: {e}")))?;
        }
        if settings.worker.concurrency == 0 {
            return Err(WorkerError::Settings("worker.concurrency must be at least 1".into()));
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
        let capacity = host::capacity(&settings.worker).await;
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
            capacity: Mutex::new(Capacity {
                slots: settings.worker.concurrency,
                gpus: capacity.gpus,
                cpus: capacity.cpus,
                memory_mb: capacity.memory_mb,
                held: HashMap::new(),
            }),
            running: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
            refresh: Notify::new(),
            registry_ttl: settings.worker_ttl(),
            metrics,
            secrets,
            stops: Mutex::new(HashMap::new()),
        })
    }

    /// Where this worker serves `GET /metrics`, if it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Runs assignments until `stop` is cancelled, then lets running jobs
    /// finish for up to `drain_secs`, and hands the rest back.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), WorkerError> {
        // Metrics are served until the worker has stopped, drain included.
        let metrics_done = CancellationToken::new();
        let _stop_metrics = metrics_done.clone().drop_guard();
        if let Some(listener) = self.metrics.take() {
            tokio::spawn(metrics_listener::serve(listener, metrics_done));
        }
        // Listening before the registry entry exists: the scheduler assigns
        // only to workers it has seen there.
        let mut inbox = self
            .nats
            .subscribe(self.store.subjects().scheduler_to_worker(self.id))
            .await
            .map_err(|e| WorkerError::Consumer(e.to_string()))?;
        let this = Arc::new(self);
        let head = this.announce_start().await?;
        // The heartbeat outlives `stop`: it ends after the drain (see the header).
        let alive = CancellationToken::new();
        let heartbeat = this.clone().heartbeat(alive.clone());
        let kill_all = CancellationToken::new();
        let mut running = JoinSet::new();
        {
            let c = this.capacity.lock().unwrap_or_else(|p| p.into_inner());
            tracing::info!(worker = %this.id, pool = %this.pool, labels = ?this.settings.labels,
                slots = c.slots, gpus = ?c.gpus, cpus = c.cpus, memory_mb = c.memory_mb, "worker running");
        }
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = inbox.next() => match m { Some(m) => m, None => break },
                Some(_) = running.join_next(), if !running.is_empty() => continue,
            };
            let msg = match WorkerMessage::from_slice(&msg.payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "malformed message from the scheduler; ignored");
                    continue;
                }
            };
            match msg {
                WorkerMessage::Assign(a) => {
                    if this.draining.load(Ordering::Relaxed) {
                        tracing::info!(job = %a.job_id, "draining: assignment declined (it goes back to the queue)");
                        continue;
                    }
                    if let Err(why) = this.capacity.lock().unwrap_or_else(|p| p.into_inner()).take(&a) {
                        tracing::warn!(job = %a.job_id, why, "assignment declined (it goes back to the queue)");
                        continue;
                    }
                    let this2 = this.clone();
                    let kill = kill_all.child_token();
                    running.spawn(async move {
                        let (job, attempt) = (a.job_id, a.attempt);
                        this2.running.fetch_add(1, Ordering::Relaxed);
                        metrics::gauge!(fetchml_runtime::metrics::WORKER_RUNNING).increment(1);
                        // Boxed: the attempt's future is kilobytes (its
                        // appends' state), and a task copies its future
                        // whole when it is spawned and again as it ends; a
                        // box is written once. With four workers on no-op
                        // jobs, memmove was 14.5% of the workers' CPU before,
                        // 9.5% after (BENCHMARKS.md, sixteenth session).
                        Box::pin(this2.handle(a, kill)).await;
                        metrics::gauge!(fetchml_runtime::metrics::WORKER_RUNNING).decrement(1);
                        this2.running.fetch_sub(1, Ordering::Relaxed);
                        this2.capacity.lock().unwrap_or_else(|p| p.into_inner()).release(job, attempt);
                    });
                }
                WorkerMessage::Stop { job_id, attempt } => this.stop_attempt(job_id, attempt),
                WorkerMessage::Drain => {
                    if !this.draining.swap(true, Ordering::Relaxed) {
                        tracing::info!("drained by an admin: taking nothing new, running jobs finish");
                        this.refresh.notify_one();
                    }
                }
            }
        }
        tracing::info!(running = running.len(), "stopping: no new jobs; waiting for running ones");
        this.draining.store(true, Ordering::Relaxed);
        this.refresh.notify_one();
        let drain = Duration::from_secs(this.settings.drain_secs);
        // The inbox is still read while the running jobs finish: a cancel
        // stops its attempt now, not at the next lease check. (Assignments
        // need no answer: an offer not started times out at the scheduler.)
        let finish = async {
            loop {
                tokio::select! {
                    ended = running.join_next() => if ended.is_none() { break },
                    Some(m) = inbox.next() => {
                        if let Ok(WorkerMessage::Stop { job_id, attempt }) = WorkerMessage::from_slice(&m.payload) {
                            this.stop_attempt(job_id, attempt);
                        }
                    }
                }
            }
        };
        if tokio::time::timeout(drain, finish).await.is_err() {
            tracing::warn!(running = running.len(), "drain deadline passed; handing the remaining jobs back");
            kill_all.cancel();
            while running.join_next().await.is_some() {}
        }
        // Stop refreshing before the entry is deleted, so no refresh lands after.
        // Aborted, not awaited: a refresh in flight when the broker is down would
        // wait out its timeout first. One already sent reaches the server before
        // the delete does (one connection keeps its order).
        alive.cancel();
        heartbeat.abort();
        let _ = heartbeat.await;
        this.announce_stop(head).await;
        Ok(())
    }

    /// The scheduler says `job` moved on (cancelled, or recorded as lost):
    /// fence and stop its `attempt`, if that is what runs here.
    fn stop_attempt(&self, job: JobId, attempt: u32) {
        let stops = self.stops.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = stops.get(&job)
            && running.attempt == attempt
        {
            tracing::info!(job = %job, attempt, "the scheduler says the job moved on; stopping it");
            running.fenced.cancel();
            running.process.cancel();
        }
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
        // The worker's chain may have grown (an admin's drain): append after its head.
        let result =
            match self.store.append_event(&subject, &self.id.to_string(), seq, 2, &hash, event.clone(), &ctx).await {
                Err(StoreError::Conflict { .. }) => {
                    self.store.append_to_chain(&subject, &self.id.to_string(), event, &ctx).await.map(|_| ())
                }
                other => other.map(|_| ()),
            };
        if let Err(e) = result {
            // A broker that did not take the event will not take the registry's
            // delete either: each try would wait out its own timeout (three of
            // them, 15 s, when the broker is gone). The entry expires with the
            // bucket's TTL, as a killed worker's does.
            tracing::warn!(error = %e, "could not record worker_stopped; leaving the registry entry to expire");
            return;
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
                let (gpus, cpus, memory_mb) = {
                    let c = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
                    (c.gpus.clone(), c.cpus, c.memory_mb)
                };
                let record = WorkerRecord {
                    id: self.id.to_string(),
                    pool: self.pool.to_string(),
                    labels: self.settings.labels.clone(),
                    concurrency: self.settings.concurrency,
                    running: self.running.load(Ordering::Relaxed),
                    gpus,
                    cpus,
                    memory_mb,
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

    #[tracing::instrument(skip_all, fields(worker = %self.id, job = %a.job_id, correlation = %a.correlation_id))]
    async fn handle(&self, a: Assignment, kill: CancellationToken) {
        let job_id = a.job_id;
        let correlation = a.correlation_id;
        let actor = Actor::Worker { id: self.id };
        let attempt = a.attempt;
        let spec = a.state.spec.clone();
        let owner = a.state.owner.clone();
        let subject = a.subject.clone();
        let ready_at = a.ready_at;
        let known = LoadedJob::snapshot(job_id, a.subject, a.state, a.expected_seq, a.prev_hash);
        let mut placement = a.placement;
        placement.host = hostname();
        let gpus = placement.gpus.clone();
        let start = JobCommand::Start { attempt, worker: self.id, at: chrono::Utc::now(), placement };
        let ctx = CommandContext::new(actor.clone()).correlated(correlation);
        let Some((started, current)) = self.claim(known, &subject, start, &ctx, &kill).await else { return };
        tracing::info!(attempt, gpus = ?gpus, "started");
        record_queue_wait(ready_at, &spec);

        let fenced = CancellationToken::new();
        let cancel = kill.child_token();
        // A stop from the scheduler fences the attempt and stops the process
        // (both cancelled where the stop is read: no task per attempt waits
        // for it).
        let running = Stoppable { attempt, fenced: fenced.clone(), process: cancel.clone() };
        self.stops.lock().unwrap_or_else(|p| p.into_inner()).insert(job_id, running);
        let lease = self.check_lease(subject, started.seq, fenced.clone(), cancel.clone());
        let (log_tx, log_rx) = mpsc::channel(1024);
        let forward = progress::forward(
            self.store.jetstream().clone(),
            self.store.subjects().clone(),
            owner,
            job_id,
            attempt,
            log_rx,
        );

        let ran_from = std::time::Instant::now();
        let mut outcome = match self.secrets.resolve(&spec.secrets) {
            Ok(secrets) => {
                let req = ExecRequest {
                    job_id,
                    attempt,
                    spec: spec.clone(),
                    job_root: self.settings.job_root.clone(),
                    kill_grace: Duration::from_secs(self.settings.kill_grace_secs),
                    secrets,
                    gpus,
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
        self.stops.lock().unwrap_or_else(|p| p.into_inner()).remove(&job_id);

        // The process has ended: its slot and GPUs are free before the end
        // is recorded, so an assignment sent by a scheduler that saw that
        // record always finds them free here (else it is declined and waits
        // for the scheduler's assignment timeout).
        self.capacity.lock().unwrap_or_else(|p| p.into_inner()).release(job_id, attempt);
        let ran_outcome = if fenced.is_cancelled() { "ended_elsewhere" } else { outcome_label(&outcome) };
        metrics::histogram!(fetchml_runtime::metrics::RUN_TIME, "pool" => self.pool.to_string(), "outcome" => ran_outcome)
            .record(ran.as_secs_f64());
        if fenced.is_cancelled() {
            // Someone else moved the job on (cancel, or the attempt recorded
            // as lost): nothing of ours to record.
            tracing::info!(attempt, "attempt ended by another party");
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
    }

    /// Appends the attempt's `job_started`: the job as of that event, or
    /// `None` when this worker is not to run it (another worker won it, it was
    /// cancelled, or the worker is stopping).
    ///
    /// An append whose acknowledgement was lost (a timeout, a reconnect) may
    /// be stored all the same. Leaving it to the scheduler would leave a job
    /// that the log says runs here with no process, held until this worker
    /// stops: so the append is retried under the same command id, which finds
    /// the stored start (a duplicate, run like a fresh one) or decides again
    /// on the job as it now is.
    async fn claim(
        &self,
        known: LoadedJob,
        subject: &str,
        start: JobCommand,
        ctx: &CommandContext,
        kill: &CancellationToken,
    ) -> Option<(fetchml_eventstore::Executed, LoadedJob)> {
        let JobCommand::Start { attempt, .. } = start else { return None };
        let job_id = known.id;
        let mut base = Some(known);
        let mut backoff = fetchml_eventstore::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            // After a failure, the job as the log has it (the start may be there).
            let loaded = match base.take() {
                Some(l) => Ok(l),
                None => self.store.load_job_at(job_id, subject).await.map_err(ExecuteError::Store),
            };
            let tried = match loaded {
                Ok(l) => self.store.execute_job_on(job_id, Some(l.clone()), start.clone(), ctx).await.map(|d| (d, l)),
                Err(e) => Err(e),
            };
            match tried {
                Ok((done, loaded)) if done.duplicate => {
                    // Ours is stored; run it if the job has not moved on since.
                    let ours = done.state.as_ref().is_some_and(|j| {
                        j.status == JobStatus::Running && j.attempt == attempt && j.worker == Some(self.id)
                    });
                    if !ours {
                        tracing::info!("start stored, but the job has moved on; not run");
                        return None;
                    }
                    tracing::info!("start found stored after its acknowledgement was lost");
                    return Some((done, loaded));
                }
                Ok((mut done, loaded)) => {
                    let mut current = loaded;
                    for (seq, env) in std::mem::take(&mut done.appended) {
                        current = current.with(seq, env);
                    }
                    return Some((done, current));
                }
                Err(ExecuteError::Rejected(r)) => {
                    // Another worker won it, or it was cancelled meanwhile.
                    tracing::info!(reason = %r, "assignment not startable; dropped");
                    return None;
                }
                Err(ExecuteError::Store(e)) => {
                    // Only what may have stored the start is worth a retry.
                    let unknown = e.is_transient() || matches!(e, StoreError::Duplicate { .. });
                    if !unknown || kill.is_cancelled() {
                        // The scheduler's assignment times out and the job is
                        // offered again. Stopping, the registry entry goes
                        // too, and with it any attempt stored here (recorded
                        // as lost, retried).
                        tracing::warn!(error = %e, "cannot claim the job; leaving it to the scheduler");
                        return None;
                    }
                    tracing::warn!(error = %e, "cannot claim the job yet; retrying");
                    // Killed, the next error is not retried (above).
                    backoff.wait(kill).await;
                }
            }
        }
    }

    /// Every third of the lease, checks that the job's subject has nothing
    /// newer than our start: the backstop for a stop message that was lost.
    fn check_lease(
        &self,
        subject: String,
        started_seq: u64,
        fenced: CancellationToken,
        done: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.settings.lease_secs) / 3;
        let store = self.store.clone();
        let check = async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tick.tick() => {
                        // Boxed, as the attempt is (see `run`): the read is
                        // rare, this task is spawned for every attempt.
                        if let Ok(Some(last)) = Box::pin(store.last_on_subject(&subject)).await
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
        tokio::spawn(check.in_current_span())
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
/// (queued, requeued, or the end of a retry's backoff) until now. The pool
/// is this worker's and the priority 1-10, so the labels stay few.
fn record_queue_wait(ready_at: chrono::DateTime<chrono::Utc>, spec: &fetchml_events::job::JobSpec) {
    let waited = (chrono::Utc::now() - ready_at).to_std().unwrap_or_default();
    metrics::histogram!(
        fetchml_runtime::metrics::QUEUE_WAIT,
        "pool" => spec.pool.to_string(),
        "priority" => spec.priority.to_string()
    )
    .record(waited.as_secs_f64());
}

/// This host's name, read once (it was a file read per started job).
fn hostname() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
    .clone()
}

/// A random draw in 0..=1000 for retry jitter (uuid v4 bits; no extra crate).
fn jitter_permille() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 1001) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetchml_events::job::{JobEvent, JobSpec, evolve};

    fn assignment(job_id: JobId, attempt: u32, gpu: &str) -> Assignment {
        let owner = fetchml_events::ids::UserName::parse("alice").unwrap();
        let state = evolve(None, &JobEvent::JobQueued { owner, spec: JobSpec::command(["true"]) }).unwrap();
        Assignment {
            job_id,
            subject: "ns.ev.job.alice.default.x".into(),
            attempt,
            state,
            expected_seq: 1,
            prev_hash: "ab".repeat(32),
            correlation_id: uuid::Uuid::now_v7(),
            placement: Placement { host: String::new(), gpus: vec![gpu.into()], cpus: 0, memory_mb: 0 },
            ready_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn cpus_and_memory_beyond_what_is_free_are_declined() {
        let mut c = Capacity { slots: 4, gpus: vec![], cpus: 8, memory_mb: 1000, held: HashMap::new() };
        let with = |cpus: u32, memory_mb: u64| {
            let mut a = assignment(JobId::new(), 1, "0");
            a.placement = Placement { host: String::new(), gpus: vec![], cpus, memory_mb };
            a
        };
        c.take(&with(6, 600)).unwrap();
        assert!(c.take(&with(3, 100)).unwrap_err().contains("CPU"));
        assert!(c.take(&with(2, 500)).unwrap_err().contains("MB"));
        c.take(&with(2, 400)).unwrap();
        // A job that names none reserves none.
        c.take(&with(0, 0)).unwrap();
    }

    #[test]
    fn a_late_release_of_an_attempt_leaves_the_next_attempts_slot_and_gpu_held() {
        let mut c = Capacity { slots: 1, gpus: vec!["0".into()], cpus: 1, memory_mb: 1, held: HashMap::new() };
        let job = JobId::new();
        c.take(&assignment(job, 1, "0")).unwrap();
        // Attempt 1 ended and freed its slot; its retry comes back here at once.
        c.release(job, 1);
        c.take(&assignment(job, 2, "0")).unwrap();
        // Attempt 1's task ends only now.
        c.release(job, 1);
        assert!(c.take(&assignment(JobId::new(), 1, "0")).is_err(), "attempt 2's slot and GPU were given away");
        c.release(job, 2);
        assert!(c.held.is_empty());
    }
}
