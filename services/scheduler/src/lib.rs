//! The scheduler: follows the log, keeps every waiting job, every live
//! worker's free capacity and every user's usage in memory ([`board`]), and
//! assigns jobs to workers that have room, one core NATS message each.
//!
//! **Why this shape** (issue 16; BENCHMARKS.md has the counts). The first
//! design derived a work queue (DISPATCH) from the log: a dispatcher followed
//! the log and published a ticket per waiting job; every worker of the pool
//! was woken by each ticket and pulled; the winner read the job's history,
//! appended its start and acknowledged the ticket when done, renewing it as a
//! lease meanwhile. About 33 broker messages per no-op job with four workers.
//! Here the log is the only queue: the scheduler already knows from the log
//! which jobs wait and which worker holds what, so it sends one worker one
//! message carrying everything the start needs (the job's state, its last
//! sequence and hash), and the worker appends `job_started` expecting that
//! sequence. No ticket stream, no wake-ups, no history read, no acks.
//!
//! **Safety does not rest on the scheduler.** An assignment is an invitation.
//! The start is fenced by the job's last sequence: two workers invited to the
//! same job (two schedulers that both think they lead, or a re-assignment
//! after a timeout) race for one append, and one wins. A job whose
//! `job_queued` is in the log is on every scheduler's board after a restart
//! (rebuilt from the log), and a lost assignment goes back to the queue after
//! `assignment_timeout_ms`. So: an acknowledged job is run even if any
//! process dies at any instant.
//!
//! **Leases.** A running attempt's lease is its worker's registry entry (a
//! key-value entry with a TTL that the worker refreshes). When it expires,
//! the leading scheduler records the attempt as lost (`infrastructure`, so
//! the job's retry policy decides), fenced by the attempt number: a worker
//! that only seemed dead and reports late is refused by the aggregate.
//!
//! **The api's hand-off.** An api that has just stored a `job_queued` hands
//! it to its own scheduler ([`SchedulerHandle::queued_here`]), which folds
//! and plans it at once instead of when the log's delivery reaches it
//! through the api's tap. It is taken only when the board has folded every
//! event before it, so the board still sees the log strictly in order (the
//! board skips the delivery that follows, as it skips any job event at or
//! before the job's last folded one); when it has not (a busy log),
//! the delivery schedules the job as before. Measured (BENCHMARKS.md,
//! eleventh session): queue-to-start at 50 jobs/s 0.1-0.2 ms lower at the
//! p50; at 500 jobs/s, where the board is behind half the time, no change.
//!
//! **Leadership.** Any number of schedulers run (one embedded in each api by
//! default); they all fold the log, and the one holding a key in a key-value
//! bucket with a TTL decides. A new leader has the same board already.

pub mod board;
mod leader;

use async_nats::jetstream::kv;
use board::{Board, Capacity, Lost, Notice};
use bytes::Bytes;
use chrono::Utc;
use fetchml_api_types::{PoolSummary as PoolView, Scheduling as Explanation};
use fetchml_events::dispatch::WorkerMessage;
use fetchml_events::envelope::AggregateKind;
use fetchml_events::job::{FailureClass, JobCommand, JobEvent, Metrics, Outcome, fold};
use fetchml_events::pool::PoolEvent;
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{Actor, Envelope, JobId, WorkerId};
use fetchml_eventstore::retry::Backoff;
use fetchml_eventstore::{
    CommandContext, EventStore, ExecuteError, LoadedJob, LogSource, StoreError, StoredEvent, WorkerRecord,
    ensure_registry,
};
use fetchml_runtime::settings::SchedulingSettings;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("scheduler query: {0}")]
    Query(String),
}

/// How often the board is looked at without any event (backoffs ending,
/// assignments timing out, workers expiring).
const TICK: Duration = Duration::from_millis(200);

/// What another process may ask a scheduler (request/reply on
/// `<ns>.sched.query`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    Explain(JobId),
    Pools,
    Stats,
}

/// What a scheduler has done, for the bench and for operators: how much it
/// holds and how long its decisions take (`Query::Stats`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub leading: bool,
    /// The highest log sequence folded into the board.
    pub seen: u64,
    /// Jobs not finished: waiting, assigned or running.
    pub unfinished: usize,
    /// Of those, assigned or running.
    pub active: usize,
    /// Planning passes that assigned at least one job, and their time.
    pub busy_passes: u64,
    pub busy_nanos: u64,
    /// Assignments made.
    pub decisions: u64,
    /// Passes that found nothing to assign (every event and tick plans).
    pub idle_passes: u64,
    pub idle_nanos: u64,
    /// The longest single pass.
    pub max_pass_nanos: u64,
    /// Jobs queued through this process that were folded and planned at
    /// once (`SchedulerHandle::queued_here`), and those left to the log's
    /// delivery because the board had not folded the events before them.
    #[serde(default)]
    pub handoffs: u64,
    #[serde(default)]
    pub handoffs_declined: u64,
}

/// A view of a running scheduler's board, for the api: what it explains, and
/// the hand-off of a job the api has just queued ([`SchedulerHandle::queued_here`]).
#[derive(Clone)]
pub struct SchedulerHandle {
    board: Arc<Mutex<Board>>,
    leading: Arc<AtomicBool>,
    /// The board has folded what the log held when the scheduler started.
    caught_up: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    outbox: Arc<Outbox>,
}

/// Where decisions go: one core NATS message to the chosen worker.
struct Outbox {
    client: async_nats::Client,
    subjects: fetchml_events::subject::Subjects,
    assignment_timeout: chrono::Duration,
}

impl Outbox {
    async fn send(&self, decisions: Vec<board::Decision>) {
        for d in decisions {
            let subject = self.subjects.scheduler_to_worker(d.worker);
            tracing::info!(job = %d.assignment.job_id, correlation = %d.assignment.correlation_id,
                worker = %d.worker, attempt = d.assignment.attempt, gpus = ?d.assignment.placement.gpus, "assigned");
            match serde_json::to_vec(&WorkerMessage::Assign(d.assignment)) {
                Ok(body) => {
                    if let Err(e) = self.client.publish(subject, Bytes::from(body)).await {
                        // The assignment times out and is made again.
                        tracing::warn!(error = %e, "cannot send an assignment");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode an assignment"),
            }
        }
    }
}

impl SchedulerHandle {
    /// The api's hand-off of a job it has just queued: its `job_queued`,
    /// stored at `seq` on `subject`. If the board has folded every event
    /// before `seq`, this event is exactly the one the log delivers to it
    /// next, so it is folded now and, on the leader, the job is planned at
    /// once: the start no longer waits for the log's delivery to reach the
    /// scheduler through the api's tap (a broker delivery and two task
    /// wake-ups). When the log delivers the event, the board has folded it
    /// and skips it (`Board::apply_job`). Otherwise (events before it not
    /// folded yet: a busy log) nothing happens here and the log's delivery
    /// schedules the job, as for a job queued by another api. Returns whether
    /// the hand-off was taken.
    pub async fn queued_here(&self, seq: u64, subject: &str, env: &Envelope<JobEvent>) -> bool {
        if !matches!(env.payload, JobEvent::JobQueued { .. })
            || !self.caught_up.load(Ordering::Acquire)
            || !self.leading.load(Ordering::Relaxed)
        {
            return false;
        }
        let Ok(id) = env.aggregate_id.parse::<JobId>() else { return false };
        let now = Utc::now();
        let pass = std::time::Instant::now();
        let decisions = {
            let mut b = self.board.lock().unwrap_or_else(|p| p.into_inner());
            if b.seen.checked_add(1) != Some(seq) {
                drop(b);
                self.stats.lock().unwrap_or_else(|p| p.into_inner()).handoffs_declined += 1;
                return false;
            }
            b.apply_job(seq, id, subject, &env.hash, env.correlation_id, env.occurred_at, &env.payload);
            b.plan(now, self.outbox.assignment_timeout)
        };
        count_pass(&self.stats, pass.elapsed(), decisions.len());
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).handoffs += 1;
        self.outbox.send(decisions).await;
        true
    }

    pub fn explain(&self, job: JobId) -> Option<Explanation> {
        self.board.lock().unwrap_or_else(|p| p.into_inner()).explain(job, Utc::now())
    }
    pub fn pools(&self) -> Vec<PoolView> {
        self.board.lock().unwrap_or_else(|p| p.into_inner()).pools(Utc::now())
    }
    pub fn stats(&self) -> Stats {
        let (seen, unfinished, active) = {
            let b = self.board.lock().unwrap_or_else(|p| p.into_inner());
            (b.seen, b.unfinished(), b.active())
        };
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.leading = self.leading.load(Ordering::Relaxed);
        s.seen = seen;
        s.unfinished = unfinished;
        s.active = active;
        s
    }
}

/// Asks whichever scheduler answers first (any of them: they all fold the
/// same log), for processes that run none themselves.
pub async fn ask(store: &EventStore, query: &Query) -> Result<serde_json::Value, SchedulerError> {
    let body = serde_json::to_vec(query).map_err(|e| SchedulerError::Query(e.to_string()))?;
    let reply = store
        .jetstream()
        .client()
        .request(store.subjects().scheduler_query(), body.into())
        .await
        .map_err(|e| SchedulerError::Query(e.to_string()))?;
    serde_json::from_slice(&reply.payload).map_err(|e| SchedulerError::Query(e.to_string()))
}

pub struct Scheduler {
    store: EventStore,
    worker_ttl: Duration,
    handle: SchedulerHandle,
    id: String,
}

impl Scheduler {
    pub fn new(store: EventStore, settings: SchedulingSettings, worker_ttl: Duration) -> Self {
        let board = Board::new(settings.clone(), worker_ttl);
        let outbox = Outbox {
            client: store.jetstream().client(),
            subjects: store.subjects().clone(),
            assignment_timeout: chrono::Duration::milliseconds(settings.assignment_timeout_ms as i64),
        };
        let handle = SchedulerHandle {
            board: Arc::new(Mutex::new(board)),
            leading: Arc::new(AtomicBool::new(false)),
            caught_up: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Mutex::new(Stats::default())),
            outbox: Arc::new(outbox),
        };
        Self { store, worker_ttl, handle, id: uuid::Uuid::now_v7().to_string() }
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Runs until `stop`, reading the log from `source` (the api's shared tap,
    /// or the store directly). Transient NATS errors are retried.
    /// On a tap, the scheduler's place is taken when this is called (before
    /// the tap starts), so it shares the tap's delivery from the first event.
    pub fn run(
        self,
        source: LogSource,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = Result<(), SchedulerError>> + Send {
        let first = match &source {
            LogSource::Tap(tap) => Some(tap.follow(1)),
            LogSource::Direct(_) => None,
        };
        self.run_from(source, first, stop)
    }

    async fn run_from(
        self,
        source: LogSource,
        mut first: Option<fetchml_eventstore::EventFeed>,
        stop: CancellationToken,
    ) -> Result<(), SchedulerError> {
        let js = self.store.jetstream().clone();
        let subjects = self.store.subjects().clone();
        let registry = loop {
            match ensure_registry(&js, &subjects, self.worker_ttl).await {
                Ok(kv) => break kv,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot open the worker registry; retrying");
                    tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                }
            }
        };
        // A worker is live while its entry is: the registry's own TTL, which
        // workers pace their refreshes by, not this process's setting (an
        // existing bucket keeps its TTL). Judged by a shorter one, live
        // workers would look dead between refreshes and their jobs be lost.
        let worker_ttl = fetchml_eventstore::entry_ttl(&registry).await.unwrap_or(self.worker_ttl);
        if worker_ttl != self.worker_ttl {
            tracing::warn!(registry = ?worker_ttl, configured = ?self.worker_ttl,
                "the worker registry's TTL differs from nats.worker_ttl_secs; judging workers by the registry's");
            self.board().set_worker_ttl(worker_ttl);
        }
        let leading = self.handle.leading.clone();
        tokio::spawn(leader::hold(
            js.clone(),
            subjects.clone(),
            self.id.clone(),
            self.worker_ttl,
            leading.clone(),
            stop.clone(),
        ));
        let client = js.client();
        let mut queries = client
            .queue_subscribe(subjects.scheduler_query(), "schedulers".into())
            .await
            .map_err(|e| SchedulerError::Query(e.to_string()))?;
        let started = Utc::now();
        // The board is complete once it has folded what the log held at start.
        let log_end = loop {
            match self.store.last_sequence().await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot read the log's end; retrying");
                    tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                }
            }
        };
        let timeout = self.handle.outbox.assignment_timeout;
        let ttl = chrono::Duration::from_std(worker_ttl).unwrap_or(chrono::Duration::seconds(15));
        let mut recording: HashSet<(JobId, u32)> = HashSet::new();
        let (lost_done_tx, mut lost_done) = tokio::sync::mpsc::unbounded_channel::<(JobId, u32)>();
        let mut next = 1u64;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch: Option<kv::Watch> = None;
        let mut watch_tried: Option<tokio::time::Instant> = None;
        let mut last_event = tokio::time::Instant::now();
        let mut announced = false;
        // The watch is the fast path; a poll of the registry backs it, so
        // that a watch that stalls (its stream's leader lost, say) never makes
        // live workers look dead.
        let (polled_tx, mut polled) = tokio::sync::mpsc::channel::<Vec<WorkerRecord>>(4);
        tokio::spawn(poll_registry(
            registry.clone(),
            (worker_ttl / 3).max(Duration::from_millis(500)),
            polled_tx,
            stop.clone(),
        ));
        tracing::info!(scheduler = %self.id, "scheduler running");
        'outer: while !stop.is_cancelled() {
            let feed = match first.take() {
                Some(f) => Ok(f),
                None => source.read(&subjects.all_events(), next).await,
            };
            let mut feed = match feed {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot read the log; retrying");
                    if !backoff.wait(&stop).await {
                        break;
                    }
                    continue;
                }
            };
            loop {
                // At most one attempt a second: a failing attempt waits for
                // its request timeout, and events must not wait behind it
                // (the poll keeps the workers known meanwhile).
                if watch.is_none() && watch_tried.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    watch_tried = Some(tokio::time::Instant::now());
                    match tokio::time::timeout(Duration::from_secs(1), registry.watch_all()).await {
                        Ok(Ok(w)) => watch = Some(w),
                        Ok(Err(e)) => tracing::warn!(error = %e, "scheduler cannot watch the worker registry"),
                        Err(_) => tracing::warn!("scheduler cannot watch the worker registry: no answer within 1 s"),
                    }
                }
                // A feed quiet for long while the log has grown is stuck
                // (its reader lost its stream's leader): read again from
                // where the board is, on a reader of its own if need be.
                if last_event.elapsed() >= fetchml_eventstore::STALL_CHECK {
                    last_event = tokio::time::Instant::now();
                    if let Ok(last) = self.store.last_sequence().await
                        && last >= next
                    {
                        tracing::warn!(next, last, "scheduler's log feed stalled; reading again");
                        continue 'outer;
                    }
                }
                let mut notices = Vec::new();
                tokio::select! {
                    _ = stop.cancelled() => break 'outer,
                    ev = feed.next() => {
                        let Some(Ok(first)) = ev else { continue 'outer };
                        backoff.reset();
                        last_event = tokio::time::Instant::now();
                        let mut batch = vec![first];
                        while batch.len() < 1024 {
                            match feed.next().now_or_never() {
                                Some(Some(Ok(e))) => batch.push(e),
                                _ => break,
                            }
                        }
                        for ev in batch {
                            next = ev.seq + 1;
                            if let Some(n) = self.apply(&ev, &stop).await {
                                notices.push(n);
                            }
                        }
                    }
                    entry = next_entry(&mut watch) => {
                        match entry {
                            Some(Ok(e)) => self.registry_entry(e),
                            // Made again (below): async-nats's watch must not
                            // be polled again once it has failed (it panics
                            // if its connection is gone).
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "worker registry watch failed; watching again");
                                watch = None;
                            }
                            None => watch = None,
                        }
                    }
                    // A pattern, not `if let` inside: a subscription that has
                    // ended must not make this select ready on every pass.
                    Some(msg) = queries.next() => self.answer(&client, msg).await,
                    Some(records) = polled.recv() => {
                        let now = Utc::now();
                        for rec in records {
                            // As of its last refresh: an entry not yet expired
                            // is no proof of life.
                            let at = rec.seen_at.min(now);
                            self.worker_record(rec, at, Seen::Polled);
                        }
                    }
                    done = lost_done.recv() => {
                        if let Some(key) = done { recording.remove(&key); }
                    }
                    _ = tick.tick() => {}
                }
                let caught_up = self.handle.board.lock().unwrap_or_else(|p| p.into_inner()).seen >= log_end;
                if caught_up && !announced {
                    announced = true;
                    self.handle.caught_up.store(true, Ordering::Release);
                    tracing::info!(seq = log_end, "scheduler caught up with the log");
                }
                if !caught_up {
                    continue;
                }
                if !leading.load(Ordering::Relaxed) {
                    // Time passes on every board, leading or not: any
                    // scheduler may answer a query (`explain`, `pools`), and
                    // must not count workers long gone or backoffs long over.
                    // Lost attempts are the leader's to record.
                    self.handle.board.lock().unwrap_or_else(|p| p.into_inner()).advance(Utc::now());
                    continue;
                }
                let now = Utc::now();
                let pass = std::time::Instant::now();
                let (decisions, lost) = {
                    let mut b = self.handle.board.lock().unwrap_or_else(|p| p.into_inner());
                    let lost = b.tick(now);
                    (b.plan(now, timeout), lost)
                };
                count_pass(&self.handle.stats, pass.elapsed(), decisions.len());
                self.handle.outbox.send(decisions).await;
                for n in notices {
                    let (worker, msg) = match n {
                        Notice::Stop { worker, job, attempt } => (worker, WorkerMessage::Stop { job_id: job, attempt }),
                        Notice::Drain { worker } => (worker, WorkerMessage::Drain),
                    };
                    if let Ok(body) = serde_json::to_vec(&msg) {
                        let _ = client.publish(subjects.scheduler_to_worker(worker), Bytes::from(body)).await;
                    }
                }
                // Workers not heard of since before this scheduler started may
                // simply not have been listed yet: wait one TTL before calling
                // their jobs lost.
                if now - started > ttl {
                    for l in lost {
                        if recording.insert((l.job, l.attempt)) {
                            let done = lost_done_tx.clone();
                            let store = self.store.clone();
                            tokio::spawn(async move {
                                let key = (l.job, l.attempt);
                                record_lost(&store, l).await;
                                let _ = done.send(key);
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Folds one event of the log into the board.
    async fn apply(&self, ev: &StoredEvent, stop: &CancellationToken) -> Option<Notice> {
        let kind = ev.kind();
        match kind {
            Some(AggregateKind::Job) => {
                let env = match ev.job_event() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(seq = ev.seq, error = %e, "undecodable job event; not scheduled");
                        self.board().saw(ev.seq);
                        return None;
                    }
                };
                let Ok(id) = env.aggregate_id.parse::<JobId>() else {
                    self.board().saw(ev.seq);
                    return None;
                };
                if matches!(env.payload, JobEvent::JobRequeued { .. }) && !self.board().knows(id) {
                    self.restore(id, ev, stop).await;
                }
                self.board().apply_job(
                    ev.seq,
                    id,
                    &ev.subject,
                    &env.hash,
                    env.correlation_id,
                    env.occurred_at,
                    &env.payload,
                )
            }
            Some(AggregateKind::Pool) => {
                match ev.decode::<PoolEvent>() {
                    Ok(env) => self.board().apply_pool(ev.seq, &env.payload),
                    Err(_) => self.board().saw(ev.seq),
                }
                None
            }
            Some(AggregateKind::Worker) => match ev.decode::<WorkerEvent>() {
                Ok(env) => match env.aggregate_id.parse::<WorkerId>() {
                    Ok(w) => self.board().apply_worker(ev.seq, w, &env.payload),
                    Err(_) => {
                        self.board().saw(ev.seq);
                        None
                    }
                },
                Err(_) => {
                    self.board().saw(ev.seq);
                    None
                }
            },
            _ => {
                self.board().saw(ev.seq);
                None
            }
        }
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.handle.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A finished job queued again: the board let it go, so its state comes
    /// from its history before this event. The read is retried while NATS
    /// cannot answer: the fold waits for it, as it would for the log itself,
    /// since a requeue folded without its job would never be scheduled.
    async fn restore(&self, id: JobId, ev: &StoredEvent, stop: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let loaded = loop {
            match self.store.load_job_at(id, &ev.subject).await {
                Ok(loaded) => break loaded,
                Err(e) if e.is_transient() && !stop.is_cancelled() => {
                    tracing::warn!(job = %id, error = %e, "cannot read a requeued job's history yet; retrying");
                    // Stopped, the next read's error is no longer retried.
                    backoff.wait(stop).await;
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot read a requeued job's history; it waits for a scheduler that can");
                    return;
                }
            }
        };
        let before: Vec<&(u64, Envelope<JobEvent>)> = loaded.history.iter().take_while(|(s, _)| *s < ev.seq).collect();
        let Some((last_seq, last)) = before.last() else { return };
        if let Some(state) = fold(before.iter().map(|(_, e)| &e.payload)) {
            self.board().restore(id, &ev.subject, state, *last_seq, &last.hash);
        }
    }

    fn registry_entry(&self, entry: kv::Entry) {
        let Ok(worker) = entry.key.parse::<WorkerId>() else { return };
        match entry.operation {
            kv::Operation::Put => {
                let Ok(rec) = serde_json::from_slice::<WorkerRecord>(&entry.value) else { return };
                self.worker_record(rec, Utc::now(), Seen::Watched);
            }
            kv::Operation::Delete | kv::Operation::Purge => self.board().worker_stopped(worker, Utc::now()),
        }
    }

    /// What a registry entry says a worker offers, as seen at `at`.
    fn worker_record(&self, rec: WorkerRecord, at: chrono::DateTime<Utc>, how: Seen) {
        let Ok(worker) = rec.id.parse::<WorkerId>() else { return };
        let capacity = Capacity {
            pool: rec.pool,
            labels: rec.labels,
            slots: rec.concurrency,
            gpus: rec.gpus,
            cpus: rec.cpus,
            memory_mb: rec.memory_mb,
            host: rec.host,
        };
        match how {
            Seen::Watched => self.board().worker_seen(worker, capacity, rec.draining, at),
            Seen::Polled => self.board().worker_polled(worker, capacity, rec.draining, at),
        }
    }

    async fn answer(&self, client: &async_nats::Client, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let body = match serde_json::from_slice::<Query>(&msg.payload) {
            Ok(Query::Explain(job)) => serde_json::to_vec(&self.handle.explain(job)),
            Ok(Query::Pools) => serde_json::to_vec(&self.handle.pools()),
            Ok(Query::Stats) => serde_json::to_vec(&self.handle.stats()),
            Err(e) => serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })),
        };
        if let Ok(body) = body {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

fn count_pass(stats: &Mutex<Stats>, took: Duration, decisions: usize) {
    let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
    if decisions > 0 {
        s.busy_passes += 1;
        s.busy_nanos += nanos;
        s.decisions += decisions as u64;
    } else {
        s.idle_passes += 1;
        s.idle_nanos += nanos;
    }
    s.max_pass_nanos = s.max_pass_nanos.max(nanos);
}

/// How a registry entry reached the scheduler: the watch delivers writes in
/// the registry's order, a poll is a snapshot that may predate a delete.
#[derive(Clone, Copy)]
enum Seen {
    Watched,
    Polled,
}

/// Lists the registry every `every` until `stop`, for the run loop.
async fn poll_registry(
    registry: kv::Store,
    every: Duration,
    out: tokio::sync::mpsc::Sender<Vec<WorkerRecord>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match fetchml_eventstore::list_workers(&registry).await {
            Ok(records) => {
                if out.send(records).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the worker registry; the watch goes on"),
        }
    }
}

async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Records a running attempt whose worker is gone as failed
/// (`infrastructure`); the job's retry policy decides what follows.
async fn record_lost(store: &EventStore, l: Lost) {
    let ctx = CommandContext::new(Actor::System { component: "scheduler".into() }).correlated(l.correlation);
    let cmd = JobCommand::Finish {
        attempt: l.attempt,
        outcome: Outcome::Failed {
            exit_code: None,
            signal: None,
            class: FailureClass::Infrastructure,
            reason: format!("worker lost: worker {} stopped renewing its registry entry", l.worker),
        },
        metrics: Metrics::new(),
        at: Utc::now(),
        jitter_permille: (uuid::Uuid::new_v4().as_u128() % 1001) as u16,
    };
    let known: Option<LoadedJob> = store.load_job_at(l.job, &l.subject).await.ok();
    match store.execute_job_on(l.job, known, cmd, &ctx).await {
        Ok(_) => tracing::warn!(job = %l.job, attempt = l.attempt, worker = %l.worker, "recorded a lost attempt"),
        Err(ExecuteError::Rejected(r)) => tracing::info!(job = %l.job, reason = %r, "lost attempt already moved on"),
        Err(ExecuteError::Store(e)) => tracing::warn!(job = %l.job, error = %e, "cannot record a lost attempt yet"),
    }
}
