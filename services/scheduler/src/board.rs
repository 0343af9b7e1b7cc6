//! The scheduler's picture of the world, and its decisions. Pure: events and
//! worker announcements go in, assignments and explanations come out; no I/O,
//! so every rule here is unit-tested and every scheduler instance that has
//! read the same log holds the same board.
//!
//! **What it holds.** Every unfinished job (waiting, assigned, running) with
//! what a start needs; the live workers with their capacity (slots, GPU ids,
//! CPUs, memory); paused pools and drained workers; each user's usage.
//!
//! **The order.** Within a pool, a waiting job's *effective priority* is its
//! priority plus one for every `aging_secs` it has waited (so nothing starves).
//! Higher effective priority first; then, with fair share on, the user (and
//! group) whose usage is lowest relative to their share; then the oldest.
//! Usage is slot-seconds decayed with a half-life, plus what is running now
//! (its elapsed slot-seconds, and a token [`HELD`] per slot held, so that of
//! two users with no past, the one holding fewer slots goes first).
//!
//! **Fit.** A job fits a worker when the worker serves its pool and labels,
//! is alive, not draining, and has a free slot and enough free GPUs, CPUs and
//! memory for what the job's `resources` ask. The board hands out exactly
//! which GPU ids; the worker gives the process those and no others.
//!
//! **Offers are few at a time.** A job offered to a worker is decided, so a
//! worker holds at most `max_unstarted_per_worker` offers it has not started;
//! its other free slots wait for the next pass, when what was queued meanwhile
//! competes for them too. Offering every free slot at once made a user who
//! queued behind a backlog wait for a whole round of offers (four 32-slot
//! workers: 128) before fair share could act.

use chrono::{DateTime, Utc};
use fetchml_api_types::{PoolSummary as PoolView, Scheduling as Explanation};
use fetchml_events::job::{Job, JobEvent, JobStatus, Placement, evolve};
use fetchml_events::pool::PoolEvent;
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{JobId, WorkerId};
use fetchml_runtime::settings::SchedulingSettings;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// How deep a queue is searched for a job that fits, when its oldest does
/// not (backfill), per decision.
const BACKFILL_DEPTH: usize = 64;

/// The usage a held slot counts for before any time has passed: enough to
/// order two users who have used nothing, too small to outweigh real use.
const HELD: f64 = 0.001;

/// What a live worker offers, from its registry entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub pool: String,
    pub labels: Vec<String>,
    pub slots: usize,
    pub gpus: Vec<String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub host: String,
}

#[derive(Clone, Debug)]
struct WorkerState {
    capacity: Capacity,
    /// When its registry entry was last refreshed.
    seen_at: DateTime<Utc>,
    /// Jobs assigned to it or running on it, with what they hold.
    holding: HashMap<JobId, Placement>,
}

impl WorkerState {
    fn free_gpus(&self) -> Vec<&String> {
        let used: HashSet<&String> = self.holding.values().flat_map(|p| p.gpus.iter()).collect();
        self.capacity.gpus.iter().filter(|g| !used.contains(g)).collect()
    }
    fn free_cpus(&self) -> i64 {
        self.capacity.cpus as i64 - self.holding.values().map(|p| p.cpus as i64).sum::<i64>()
    }
    fn free_memory(&self) -> i64 {
        self.capacity.memory_mb as i64 - self.holding.values().map(|p| p.memory_mb as i64).sum::<i64>()
    }
    fn free_slots(&self) -> usize {
        self.capacity.slots.saturating_sub(self.holding.len())
    }
}

#[derive(Clone, Debug)]
enum Phase {
    Waiting,
    /// Handed to `worker`; back to waiting if not started by `until`.
    Assigned {
        worker: WorkerId,
        until: DateTime<Utc>,
    },
    Running {
        worker: WorkerId,
        placement: Placement,
        since: DateTime<Utc>,
    },
}

/// One unfinished job.
#[derive(Clone, Debug)]
struct Tracked {
    subject: String,
    state: Job,
    owner: Arc<str>,
    last_seq: u64,
    last_hash: String,
    /// The request behind the event that made it wait.
    correlation: uuid::Uuid,
    /// Since when it could run (its last queueing, or the end of its backoff).
    ready_at: DateTime<Utc>,
    phase: Phase,
}

/// Decayed slot-seconds of one user.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    value: f64,
    at: Option<DateTime<Utc>>,
}

impl Usage {
    fn decayed(&self, now: DateTime<Utc>, half_life: f64) -> f64 {
        match self.at {
            Some(at) => self.value * 0.5f64.powf(((now - at).num_milliseconds().max(0) as f64 / 1000.0) / half_life),
            None => 0.0,
        }
    }
    fn add(&mut self, amount: f64, now: DateTime<Utc>, half_life: f64) {
        self.value = self.decayed(now, half_life) + amount;
        self.at = Some(now);
    }
}

/// A decision: start `job` on `worker` with `placement`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub worker: WorkerId,
    pub assignment: fetchml_events::dispatch::Assignment,
}

/// Something the leader must tell a worker or record, from an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    /// Stop `attempt` of `job` on `worker` (cancelled while running).
    Stop {
        worker: WorkerId,
        job: JobId,
        attempt: u32,
    },
    Drain {
        worker: WorkerId,
    },
}

/// A running attempt whose worker is gone: the leader records it as lost.
#[derive(Clone, Debug, PartialEq)]
pub struct Lost {
    pub job: JobId,
    pub subject: String,
    pub attempt: u32,
    pub worker: WorkerId,
    pub correlation: uuid::Uuid,
}

/// One pool's waiting jobs: per (priority, owner), oldest first.
type PoolQueues = BTreeMap<(u8, Arc<str>), VecDeque<JobId>>;

pub struct Board {
    settings: SchedulingSettings,
    jobs: HashMap<JobId, Tracked>,
    /// The jobs assigned or running: the few that time, usage and lost
    /// workers concern, so that no decision walks the whole backlog.
    active: HashSet<JobId>,
    /// Waiting jobs ready now, per pool, per (priority, owner), oldest first.
    queues: BTreeMap<String, PoolQueues>,
    /// Waiting jobs in backoff, by the time they become ready.
    delayed: BTreeSet<(DateTime<Utc>, JobId)>,
    workers: HashMap<WorkerId, WorkerState>,
    /// Workers whose registry entry was deleted (a clean stop), and when the
    /// board heard of it: a poll of the registry that listed them before the
    /// delete must not bring them back (see [`Board::worker_polled`]).
    stopped: HashMap<WorkerId, DateTime<Utc>>,
    drained: HashSet<WorkerId>,
    paused: HashSet<String>,
    usage: HashMap<Arc<str>, Usage>,
    owners: HashSet<Arc<str>>,
    /// The highest log sequence applied.
    pub seen: u64,
    /// Workers not heard of for this long are gone.
    worker_ttl: chrono::Duration,
}

impl Board {
    pub fn new(settings: SchedulingSettings, worker_ttl: std::time::Duration) -> Self {
        Self {
            settings,
            jobs: HashMap::new(),
            active: HashSet::new(),
            queues: BTreeMap::new(),
            delayed: BTreeSet::new(),
            workers: HashMap::new(),
            stopped: HashMap::new(),
            drained: HashSet::new(),
            paused: HashSet::new(),
            usage: HashMap::new(),
            owners: HashSet::new(),
            seen: 0,
            worker_ttl: chrono::Duration::from_std(worker_ttl).unwrap_or(chrono::Duration::seconds(15)),
        }
    }

    fn owner(&mut self, name: &str) -> Arc<str> {
        match self.owners.get(name) {
            Some(o) => o.clone(),
            None => {
                let o: Arc<str> = name.into();
                self.owners.insert(o.clone());
                o
            }
        }
    }

    fn half_life(&self) -> f64 {
        self.settings.usage_half_life_secs as f64
    }

    /// Number of unfinished jobs the board holds.
    pub fn unfinished(&self) -> usize {
        self.jobs.len()
    }

    /// Number of jobs assigned to a worker or running.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Folds one job event. Returns what the leader must tell a worker.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_job(
        &mut self,
        seq: u64,
        id: JobId,
        subject: &str,
        hash: &str,
        correlation: uuid::Uuid,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) -> Option<Notice> {
        // A job's events come in log order: one at or before the last folded
        // is the same event again (the api handed it over, then the log
        // delivered it). Checked here, under the board's lock, so a hand-off
        // racing the delivery cannot fold it twice.
        if self.jobs.get(&id).is_some_and(|t| t.last_seq >= seq) {
            return None;
        }
        self.seen = self.seen.max(seq);
        let prev = self.jobs.remove(&id);
        self.active.remove(&id);
        if prev.is_none() && !matches!(event, JobEvent::JobQueued { .. } | JobEvent::JobRequeued { .. }) {
            // A job the board let go of (finished) moving again can only be
            // a requeue; anything else about it is history we do not need.
            return None;
        }
        let mut notice = None;
        // The attempt that was holding a worker ends with any event but a start.
        if let Some(p) = &prev {
            // Only a waiting job is in a queue (an assigned one left it when
            // it was offered): the search is skipped on the hot path.
            if matches!(p.phase, Phase::Waiting) {
                self.unqueue(id, p);
            }
            match &p.phase {
                Phase::Running { worker, placement, since } => {
                    let slot_secs = (at - *since).num_milliseconds().max(0) as f64 / 1000.0 * weight(placement);
                    let hl = self.half_life();
                    self.usage.entry(p.owner.clone()).or_default().add(slot_secs, at, hl);
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.holding.remove(&id);
                    }
                    if matches!(event, JobEvent::JobCancelled { .. }) {
                        notice = Some(Notice::Stop { worker: *worker, job: id, attempt: p.state.attempt });
                    }
                }
                Phase::Assigned { worker, .. } => {
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.holding.remove(&id);
                    }
                }
                Phase::Waiting => {}
            }
        }
        let old_state = match &prev {
            Some(p) => Some(p.state.clone()),
            // A requeue of a job the board let go: its state is not here, and
            // not needed beyond the spec, which the requeue does not carry.
            None if matches!(event, JobEvent::JobRequeued { .. }) => return self.note_unknown_requeue(id),
            None => None,
        };
        let Some(state) = evolve(old_state, event) else { return notice };
        if state.status.is_terminal() {
            return notice;
        }
        let owner = self.owner(state.owner.as_str());
        let ready_at = match event {
            JobEvent::JobQueued { .. } | JobEvent::JobRequeued { .. } => at,
            JobEvent::JobRetryScheduled { not_before, .. } => (*not_before).max(at),
            _ => prev.as_ref().map(|p| p.ready_at).unwrap_or(at),
        };
        let correlation = match event {
            JobEvent::JobStarted { .. } => prev.as_ref().map(|p| p.correlation).unwrap_or(correlation),
            _ => correlation,
        };
        let phase = match event {
            JobEvent::JobStarted { worker, placement, .. } => {
                if let Some(w) = self.workers.get_mut(worker) {
                    w.holding.insert(id, placement.clone());
                }
                Phase::Running { worker: *worker, placement: placement.clone(), since: at }
            }
            _ if state.status == JobStatus::Running => match prev.as_ref().map(|p| p.phase.clone()) {
                Some(ph @ Phase::Running { .. }) => ph,
                _ => Phase::Waiting,
            },
            _ => Phase::Waiting,
        };
        let tracked = Tracked {
            subject: subject.to_owned(),
            state,
            owner,
            last_seq: seq,
            last_hash: hash.to_owned(),
            correlation,
            ready_at,
            phase,
        };
        if matches!(tracked.phase, Phase::Waiting) {
            self.enqueue(id, &tracked);
        } else {
            self.active.insert(id);
        }
        self.jobs.insert(id, tracked);
        notice
    }

    fn note_unknown_requeue(&mut self, id: JobId) -> Option<Notice> {
        // The caller restores a finished job before its requeue (see
        // `knows`); reaching here means its history could not be read.
        tracing::warn!(job = %id, "requeue of a job whose history the scheduler could not read; ignored");
        None
    }

    /// Whether the board holds `job` (unfinished, or restored).
    pub fn knows(&self, job: JobId) -> bool {
        self.jobs.contains_key(&job)
    }

    /// Puts back a finished job the board let go of, as its history says it
    /// was before `seq` (read from the log by the caller), so that a requeue
    /// at `seq` finds its spec. Not queued: the requeue queues it.
    pub fn restore(&mut self, id: JobId, subject: &str, state: Job, last_seq: u64, last_hash: &str) {
        let owner = self.owner(state.owner.as_str());
        let t = Tracked {
            subject: subject.to_owned(),
            state,
            owner,
            last_seq,
            last_hash: last_hash.to_owned(),
            correlation: uuid::Uuid::nil(),
            ready_at: Utc::now(),
            phase: Phase::Waiting,
        };
        self.jobs.insert(id, t);
    }

    fn enqueue(&mut self, id: JobId, t: &Tracked) {
        match t.state.not_before {
            Some(nb) if nb > t.ready_at || nb > Utc::now() => {
                self.delayed.insert((nb, id));
            }
            _ => {
                let pool = t.state.spec.pool.to_string();
                self.queues
                    .entry(pool)
                    .or_default()
                    .entry((t.state.spec.priority, t.owner.clone()))
                    .or_default()
                    .push_back(id);
            }
        }
    }

    fn unqueue(&mut self, id: JobId, t: &Tracked) {
        if let Some(nb) = t.state.not_before {
            self.delayed.remove(&(nb, id));
        }
        self.dequeue(id, t.state.spec.pool.as_str(), (t.state.spec.priority, t.owner.clone()));
    }

    fn dequeue(&mut self, id: JobId, pool: &str, key: (u8, Arc<str>)) {
        let Some(pq) = self.queues.get_mut(pool) else { return };
        let Some(q) = pq.get_mut(&key) else { return };
        if let Some(pos) = q.iter().position(|j| *j == id) {
            q.remove(pos);
        }
        if q.is_empty() {
            pq.remove(&key);
        }
    }

    pub fn apply_pool(&mut self, seq: u64, event: &PoolEvent) {
        self.seen = self.seen.max(seq);
        match event {
            PoolEvent::PoolPaused { pool, .. } => {
                self.paused.insert(pool.clone());
            }
            PoolEvent::PoolResumed { pool } => {
                self.paused.remove(pool);
            }
        }
    }

    pub fn apply_worker(&mut self, seq: u64, worker: WorkerId, event: &WorkerEvent) -> Option<Notice> {
        self.seen = self.seen.max(seq);
        match event {
            WorkerEvent::WorkerDrainRequested { .. } => {
                self.drained.insert(worker);
                Some(Notice::Drain { worker })
            }
            _ => None,
        }
    }

    /// Any other event (users, audit): only its position matters.
    pub fn saw(&mut self, seq: u64) {
        self.seen = self.seen.max(seq);
    }

    /// A registry entry was written (or rewritten) for `worker`, at `now`,
    /// as the registry's watch delivers it: in the registry's order, so it is
    /// newer than any delete the watch gave before.
    pub fn worker_seen(&mut self, worker: WorkerId, capacity: Capacity, draining: bool, now: DateTime<Utc>) {
        self.stopped.remove(&worker);
        self.worker_entry(worker, capacity, draining, now);
    }

    /// A registry entry for `worker`, last refreshed at `refreshed`, as a
    /// poll of the registry read it back. A poll is a snapshot that may have
    /// been taken before a delete the watch has since delivered: a worker
    /// that stopped cleanly is not brought back by it (each worker process
    /// has an id of its own, so a stopped one never writes again).
    pub fn worker_polled(&mut self, worker: WorkerId, capacity: Capacity, draining: bool, refreshed: DateTime<Utc>) {
        if !self.stopped.contains_key(&worker) {
            self.worker_entry(worker, capacity, draining, refreshed);
        }
    }

    fn worker_entry(&mut self, worker: WorkerId, capacity: Capacity, draining: bool, now: DateTime<Utc>) {
        if draining {
            self.drained.insert(worker);
        }
        match self.workers.get_mut(&worker) {
            Some(w) => {
                w.capacity = capacity;
                // A poll may bring an older refresh than the watch did.
                w.seen_at = w.seen_at.max(now);
            }
            None => {
                // Jobs the log says run on it hold its capacity.
                let holding = self
                    .jobs
                    .iter()
                    .filter_map(|(id, t)| match &t.phase {
                        Phase::Running { worker: w, placement, .. } if *w == worker => Some((*id, placement.clone())),
                        _ => None,
                    })
                    .collect();
                self.workers.insert(worker, WorkerState { capacity, seen_at: now, holding });
            }
        }
    }

    /// How long a worker not heard of is still live: the registry's TTL.
    pub fn set_worker_ttl(&mut self, ttl: std::time::Duration) {
        self.worker_ttl = chrono::Duration::from_std(ttl).unwrap_or(self.worker_ttl);
    }

    /// The worker's registry entry was deleted (a clean stop), as the
    /// registry's watch delivered it at `now`.
    pub fn worker_stopped(&mut self, worker: WorkerId, now: DateTime<Utc>) {
        self.worker_gone(worker);
        self.stopped.insert(worker, now);
    }

    /// The worker is gone: stopped, or not heard of within the TTL.
    pub fn worker_gone(&mut self, worker: WorkerId) {
        self.workers.remove(&worker);
        // Every worker process has an id of its own: a stopped one never
        // comes back, and one that only seemed gone says again that it
        // drains in its entry.
        self.drained.remove(&worker);
    }

    /// Time passes (see [`Board::advance`]). Returns the running attempts
    /// whose worker is gone, for the leader to record as lost.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Lost> {
        self.advance(now);
        self.orphans()
    }

    /// Time passes: backoffs end, assignments not started go back to the
    /// queue, workers not heard of are gone. Every board does this, leading
    /// or not: any scheduler may answer a query.
    pub fn advance(&mut self, now: DateTime<Utc>) {
        while let Some(&(nb, id)) = self.delayed.first() {
            if nb > now {
                break;
            }
            self.delayed.remove(&(nb, id));
            if let Some(t) = self.jobs.get(&id) {
                let (pool, key) = (t.state.spec.pool.to_string(), (t.state.spec.priority, t.owner.clone()));
                self.queues.entry(pool).or_default().entry(key).or_default().push_back(id);
            }
        }
        let expired: Vec<(JobId, WorkerId)> = self
            .active
            .iter()
            .filter_map(|id| match self.jobs.get(id)?.phase {
                Phase::Assigned { worker, until } if until <= now => Some((*id, worker)),
                _ => None,
            })
            .collect();
        for (id, worker) in expired {
            tracing::info!(job = %id, worker = %worker, "assignment not started in time; back in the queue");
            if let Some(w) = self.workers.get_mut(&worker) {
                w.holding.remove(&id);
            }
            self.active.remove(&id);
            if let Some(mut t) = self.jobs.remove(&id) {
                t.phase = Phase::Waiting;
                self.enqueue(id, &t);
                self.jobs.insert(id, t);
            }
        }
        let ttl = self.worker_ttl;
        let dead: Vec<WorkerId> =
            self.workers.iter().filter(|(_, w)| now - w.seen_at > ttl).map(|(id, _)| *id).collect();
        for w in dead {
            tracing::warn!(worker = %w, "worker not heard of within its registry TTL; gone");
            self.worker_gone(w);
        }
        // A poll older than a TTL is long answered: what it could bring back
        // has expired from the registry anyway.
        self.stopped.retain(|_, at| now - *at <= ttl);
    }

    /// Running attempts whose worker is not live.
    pub fn orphans(&self) -> Vec<Lost> {
        self.active
            .iter()
            .filter_map(|id| Some((id, self.jobs.get(id)?)))
            .filter_map(|(id, t)| match &t.phase {
                Phase::Running { worker, .. } if !self.workers.contains_key(worker) => Some(Lost {
                    job: *id,
                    subject: t.subject.clone(),
                    attempt: t.state.attempt,
                    worker: *worker,
                    correlation: t.correlation,
                }),
                _ => None,
            })
            .collect()
    }

    fn effective_priority(&self, t: &Tracked, now: DateTime<Utc>) -> u32 {
        let waited = (now - t.ready_at).num_seconds().max(0) as u64;
        t.state.spec.priority as u32 + (waited / self.settings.aging_secs.max(1)) as u32
    }

    /// The fair-share key of an owner: (group's usage per share, own usage
    /// per share); lower goes first. Users outside any group are their own.
    fn share_key(&self, owner: &str, usage: &HashMap<Arc<str>, f64>) -> (f64, f64) {
        let own_share = self.settings.share_of(owner) as f64;
        let own = usage.get(owner).copied().unwrap_or(0.0) / own_share;
        match self.settings.group_of(owner).and_then(|g| self.settings.groups.get(g).map(|s| (g, s))) {
            Some((_, group)) => {
                let total: f64 =
                    group.members.iter().map(|m| usage.get(m.as_str()).copied().unwrap_or(0.0)).sum::<f64>();
                (total / group.share.max(1) as f64, own)
            }
            None => (own, own),
        }
    }

    /// Every owner's usage now, in one pass over the past and what runs.
    fn usage_table(&self, now: DateTime<Utc>) -> HashMap<Arc<str>, f64> {
        let hl = self.half_life();
        let mut out: HashMap<Arc<str>, f64> = self.usage.iter().map(|(o, u)| (o.clone(), u.decayed(now, hl))).collect();
        for t in self.active.iter().filter_map(|id| self.jobs.get(id)) {
            let held = match &t.phase {
                Phase::Running { placement, since, .. } => {
                    weight(placement) * (HELD + (now - *since).num_milliseconds().max(0) as f64 / 1000.0)
                }
                Phase::Assigned { .. } => HELD,
                Phase::Waiting => 0.0,
            };
            *out.entry(t.owner.clone()).or_default() += held;
        }
        out
    }

    /// What `job` would hold on `w`, if it fits there now.
    fn fit_now(&self, t: &Tracked, w: &WorkerState) -> Option<Placement> {
        let r = &t.state.spec.resources;
        if w.free_slots() == 0 || !fits_ever(t, &w.capacity) {
            return None;
        }
        // Each check walks what the worker holds: only the ones the job needs.
        let gpus: Vec<String> = if r.gpus == 0 {
            Vec::new()
        } else {
            let free = w.free_gpus();
            if (free.len() as u32) < r.gpus {
                return None;
            }
            free.into_iter().take(r.gpus as usize).cloned().collect()
        };
        let cpus = r.cpus.unwrap_or(0);
        let mem = r.memory_mb.unwrap_or(0);
        if (cpus > 0 && w.free_cpus() < cpus as i64) || (mem > 0 && w.free_memory() < mem as i64) {
            return None;
        }
        Some(Placement { host: w.capacity.host.clone(), gpus, cpus, memory_mb: mem })
    }

    /// The next assignments: for every worker with room, the best job that
    /// fits it, one at a time round the workers, until nothing more fits.
    pub fn plan(&mut self, now: DateTime<Utc>, assignment_timeout: chrono::Duration) -> Vec<Decision> {
        let mut out = Vec::new();
        let mut usage = self.usage_table(now);
        let mut workers: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(id, w)| {
                w.free_slots() > 0 && !self.drained.contains(id) && !self.paused.contains(&w.capacity.pool)
            })
            .map(|(id, _)| *id)
            .collect();
        workers.sort();
        let cap = self.offer_limit();
        // Offers each worker has not started yet: counted once, then kept.
        let mut unstarted: HashMap<WorkerId, usize> =
            workers.iter().map(|wid| (*wid, self.unstarted_on(wid))).collect();
        let mut nothing_fits: HashSet<WorkerId> = HashSet::new();
        loop {
            let mut progress = false;
            // A full worker is not looked at again in this pass: with a deep
            // backlog, asking it for its best job would walk every queue's
            // backfill window for nothing.
            // Nor is one that nothing fits: within a pass its room only shrinks
            // and the queues only lose jobs.
            // Nor is one holding as many unstarted offers as it may. A worker
            // gets at most one offer per round, so these checks hold for the
            // whole round.
            workers.retain(|wid| {
                self.workers.get(wid).is_some_and(|w| w.free_slots() > 0)
                    && !nothing_fits.contains(wid)
                    && unstarted.get(wid).copied().unwrap_or(0) < cap
            });
            for wid in &workers {
                let Some(w) = self.workers.get(wid) else { continue };
                let Some((job, placement)) = self.best_for(w, now, &usage) else {
                    nothing_fits.insert(*wid);
                    continue;
                };
                let Some(t) = self.jobs.get_mut(&job) else { continue };
                t.phase = Phase::Assigned { worker: *wid, until: now + assignment_timeout };
                self.active.insert(job);
                let assignment = fetchml_events::dispatch::Assignment {
                    job_id: job,
                    subject: t.subject.clone(),
                    attempt: t.state.attempt + 1,
                    state: t.state.clone(),
                    expected_seq: t.last_seq,
                    prev_hash: t.last_hash.clone(),
                    correlation_id: t.correlation,
                    placement: placement.clone(),
                    ready_at: t.ready_at,
                };
                let owner = t.owner.clone();
                let (pool, key) = (t.state.spec.pool.to_string(), (t.state.spec.priority, t.owner.clone()));
                self.dequeue(job, &pool, key);
                if let Some(w) = self.workers.get_mut(wid) {
                    w.holding.insert(job, placement.clone());
                }
                *usage.entry(owner).or_default() += HELD * weight(&placement);
                *unstarted.entry(*wid).or_default() += 1;
                out.push(Decision { worker: *wid, assignment });
                progress = true;
            }
            if !progress {
                break;
            }
        }
        out
    }

    /// Offers a worker may hold unstarted (`0` in the settings: no limit).
    fn offer_limit(&self) -> usize {
        match self.settings.max_unstarted_per_worker {
            0 => usize::MAX,
            n => n,
        }
    }

    /// How many of the jobs a worker holds were offered and not started yet.
    fn unstarted_on(&self, wid: &WorkerId) -> usize {
        let Some(w) = self.workers.get(wid) else { return 0 };
        w.holding
            .keys()
            .filter(|id| self.jobs.get(id).is_some_and(|t| matches!(t.phase, Phase::Assigned { .. })))
            .count()
    }

    /// The best waiting job for worker `w`, in the board's order.
    fn best_for(
        &self,
        w: &WorkerState,
        now: DateTime<Utc>,
        usage: &HashMap<Arc<str>, f64>,
    ) -> Option<(JobId, Placement)> {
        let pq = self.queues.get(&w.capacity.pool)?;
        let mut best: Option<(OrderKey, JobId, Placement)> = None;
        for ((_, owner), q) in pq {
            // The oldest job of this (priority, owner) that fits this worker.
            for id in q.iter().take(BACKFILL_DEPTH) {
                let Some(t) = self.jobs.get(id) else { continue };
                let Some(placement) = self.fit_now(t, w) else { continue };
                let key = self.order_key(t, owner, now, usage);
                if best.as_ref().is_none_or(|(b, _, _)| key < *b) {
                    best = Some((key, *id, placement));
                }
                break;
            }
        }
        best.map(|(_, id, p)| (id, p))
    }

    fn order_key(&self, t: &Tracked, owner: &str, now: DateTime<Utc>, usage: &HashMap<Arc<str>, f64>) -> OrderKey {
        let prio = self.effective_priority(t, now);
        let share = if self.settings.fair_share { self.share_key(owner, usage) } else { (0.0, 0.0) };
        OrderKey { neg_priority: -(prio as i64), group: share.0, own: share.1, ready_at: t.ready_at }
    }

    /// Why `job` waits, or where it is; `None` if the board does not hold it
    /// (finished, or never seen).
    pub fn explain(&self, job: JobId, now: DateTime<Utc>) -> Option<Explanation> {
        let t = self.jobs.get(&job)?;
        let usage = self.usage_table(now);
        let owner = &*t.owner;
        let share = self.settings.share_of(owner);
        let my_usage = usage.get(owner).copied().unwrap_or(0.0);
        let pool = t.state.spec.pool.to_string();
        let paused = self.paused.contains(&pool);
        let in_pool: Vec<(&WorkerId, &WorkerState)> =
            self.workers.iter().filter(|(_, w)| w.capacity.pool == pool).collect();
        let fits = in_pool.iter().any(|(_, w)| fits_ever(t, &w.capacity));
        let mut e = Explanation {
            phase: "waiting".into(),
            position: None,
            priority: t.state.spec.priority,
            effective_priority: self.effective_priority(t, now),
            share,
            usage: my_usage,
            normalized_usage: my_usage / share as f64,
            fits,
            paused,
            reason: String::new(),
            not_before: t.state.not_before.filter(|nb| *nb > now),
            worker: None,
        };
        match &t.phase {
            Phase::Running { worker, .. } => {
                e.phase = "running".into();
                e.worker = Some(worker.to_string());
                e.reason = format!("running on worker {worker}");
            }
            Phase::Assigned { worker, .. } => {
                e.phase = "assigned".into();
                e.worker = Some(worker.to_string());
                e.reason = format!("assigned to worker {worker}, starting");
            }
            Phase::Waiting => {
                let mine = self.order_key(t, owner, now, &usage);
                let ahead = self
                    .jobs
                    .iter()
                    .filter(|(id, o)| {
                        **id != job
                            && matches!(o.phase, Phase::Waiting)
                            && o.state.spec.pool == t.state.spec.pool
                            && o.state.not_before.is_none_or(|nb| nb <= now)
                            && self.order_key(o, &o.owner, now, &usage) < mine
                    })
                    .count();
                e.position = Some(ahead + 1);
                e.reason = if in_pool.is_empty() {
                    format!("no live worker serves pool {pool}")
                } else if !fits {
                    unfit_reason(t, &in_pool.iter().map(|(_, w)| *w).collect::<Vec<_>>())
                } else if paused {
                    format!("pool {pool} is paused")
                } else if let Some(nb) = e.not_before {
                    format!("retry backoff until {nb}")
                } else if ahead == 0 {
                    self.why_the_next_waits(t, &in_pool)
                } else {
                    format!(
                        "{ahead} job(s) ahead in pool {pool}: higher (aged) priority, a lower usage per share than {owner}'s {:.1}, or older",
                        my_usage / share as f64
                    )
                };
            }
        }
        Some(e)
    }

    /// Why the first job in its pool's order has not been offered yet,
    /// though its pool has live workers that could hold it.
    fn why_the_next_waits(&self, t: &Tracked, in_pool: &[(&WorkerId, &WorkerState)]) -> String {
        let pool = t.state.spec.pool.as_str();
        let able: Vec<&(&WorkerId, &WorkerState)> =
            in_pool.iter().filter(|(id, w)| !self.drained.contains(*id) && fits_ever(t, &w.capacity)).collect();
        if able.is_empty() {
            return format!("every worker of pool {pool} that could run it is draining");
        }
        let cap = self.offer_limit();
        let mut with_room = able.iter().filter(|(_, w)| self.fit_now(t, w).is_some()).peekable();
        if with_room.peek().is_some() && with_room.all(|(id, _)| self.unstarted_on(id) >= cap) {
            return format!(
                "next to start: the workers with room for it each hold {cap} offers not started yet \
                 (scheduling.max_unstarted_per_worker); it is offered as they start them"
            );
        }
        "next to start when a fitting slot is free".into()
    }

    /// Every pool with waiting jobs or workers.
    pub fn pools(&self, now: DateTime<Utc>) -> Vec<PoolView> {
        let mut views: BTreeMap<String, PoolView> = BTreeMap::new();
        for p in &self.paused {
            pool_view(&mut views, &self.paused, p);
        }
        for t in self.jobs.values() {
            let v = pool_view(&mut views, &self.paused, t.state.spec.pool.as_str());
            match t.phase {
                Phase::Waiting => {
                    v.waiting += 1;
                    *v.waiting_by_priority.entry(t.state.spec.priority).or_default() += 1;
                    let ready = t.state.not_before.map_or(t.ready_at, |nb| nb.max(t.ready_at));
                    let waited = (now - ready).num_milliseconds().max(0) as f64 / 1000.0;
                    v.oldest_wait_secs = Some(v.oldest_wait_secs.map_or(waited, |o: f64| o.max(waited)));
                }
                Phase::Assigned { .. } => v.assigned += 1,
                Phase::Running { .. } => v.running += 1,
            }
        }
        for (id, w) in &self.workers {
            let draining = self.drained.contains(id);
            let v = pool_view(&mut views, &self.paused, &w.capacity.pool);
            v.workers += 1;
            if draining {
                v.draining_workers += 1;
            } else {
                v.free_slots += w.free_slots();
                v.free_gpus += w.free_gpus().len();
            }
            v.gpus += w.capacity.gpus.len();
        }
        views.into_values().collect()
    }
}

fn pool_view<'a>(views: &'a mut BTreeMap<String, PoolView>, paused: &HashSet<String>, pool: &str) -> &'a mut PoolView {
    views.entry(pool.to_owned()).or_insert_with(|| PoolView {
        pool: pool.to_owned(),
        paused: paused.contains(pool),
        waiting_by_priority: BTreeMap::new(),
        waiting: 0,
        oldest_wait_secs: None,
        assigned: 0,
        running: 0,
        workers: 0,
        draining_workers: 0,
        free_slots: 0,
        gpus: 0,
        free_gpus: 0,
    })
}

/// The sort key of a waiting job: smaller starts first.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct OrderKey {
    neg_priority: i64,
    group: f64,
    own: f64,
    ready_at: DateTime<Utc>,
}

/// Slots an attempt weighs in usage: its GPUs if any, else one.
fn weight(p: &Placement) -> f64 {
    (p.gpus.len().max(1)) as f64
}

/// Whether a worker with `c` could ever hold the job (empty).
fn fits_ever(t: &Tracked, c: &Capacity) -> bool {
    let r = &t.state.spec.resources;
    t.state.spec.labels.iter().all(|l| c.labels.contains(l))
        && c.slots > 0
        && (c.gpus.len() as u32) >= r.gpus
        && r.cpus.is_none_or(|n| n <= c.cpus)
        && r.memory_mb.is_none_or(|m| m <= c.memory_mb)
}

fn unfit_reason(t: &Tracked, workers: &[&WorkerState]) -> String {
    let r = &t.state.spec.resources;
    let pool = t.state.spec.pool.to_string();
    let max_gpus = workers.iter().map(|w| w.capacity.gpus.len()).max().unwrap_or(0);
    let max_cpus = workers.iter().map(|w| w.capacity.cpus).max().unwrap_or(0);
    let max_mem = workers.iter().map(|w| w.capacity.memory_mb).max().unwrap_or(0);
    if (max_gpus as u32) < r.gpus {
        return format!(
            "unschedulable: needs {} GPU(s); the largest live worker in pool {pool} has {max_gpus}",
            r.gpus
        );
    }
    if let Some(c) = r.cpus
        && c > max_cpus
    {
        return format!("unschedulable: needs {c} CPUs; the largest live worker in pool {pool} has {max_cpus}");
    }
    if let Some(m) = r.memory_mb
        && m > max_mem
    {
        return format!("unschedulable: needs {m} MB of memory; the largest live worker in pool {pool} has {max_mem}");
    }
    format!(
        "unschedulable: no live worker in pool {pool} offers the labels {:?} with enough resources",
        t.state.spec.labels
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fetchml_events::UserName;
    use fetchml_events::job::JobSpec;

    fn t0() -> DateTime<Utc> {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    struct Fixture {
        board: Board,
        seq: u64,
    }

    impl Fixture {
        fn new(settings: SchedulingSettings) -> Self {
            Self { board: Board::new(settings, std::time::Duration::from_secs(15)), seq: 0 }
        }

        fn event(&mut self, id: JobId, at: DateTime<Utc>, e: JobEvent) -> Option<Notice> {
            self.seq += 1;
            let subject = format!("t.ev.job.x.default.{id}");
            self.board.apply_job(self.seq, id, &subject, "h", uuid::Uuid::nil(), at, &e)
        }

        fn queue(&mut self, owner: &str, at: DateTime<Utc>, tune: impl FnOnce(&mut JobSpec)) -> JobId {
            let id = JobId::new();
            let mut spec = JobSpec::command(["true"]);
            tune(&mut spec);
            self.event(id, at, JobEvent::JobQueued { owner: UserName::parse(owner).unwrap(), spec });
            id
        }

        fn worker(&mut self, gpus: &[&str], slots: usize, at: DateTime<Utc>) -> WorkerId {
            let id = WorkerId::new();
            let capacity = Capacity {
                pool: "default".into(),
                slots,
                gpus: gpus.iter().map(|g| (*g).to_owned()).collect(),
                cpus: 8,
                memory_mb: 16_000,
                host: "h".into(),
                ..Default::default()
            };
            self.board.worker_seen(id, capacity, false, at);
            id
        }

        /// Plans at `at` and starts every decision as its worker would, pass
        /// after pass until nothing more is offered.
        fn start_all(&mut self, at: DateTime<Utc>) -> Vec<Decision> {
            let mut all = Vec::new();
            loop {
                let decisions = self.board.plan(at, secs(5));
                if decisions.is_empty() {
                    return all;
                }
                for d in &decisions {
                    let e = JobEvent::JobStarted {
                        attempt: d.assignment.attempt,
                        worker: d.worker,
                        placement: d.assignment.placement.clone(),
                    };
                    self.event(d.assignment.job_id, at, e);
                }
                all.extend(decisions);
            }
        }

        fn succeed(&mut self, id: JobId, at: DateTime<Utc>) {
            self.event(id, at, JobEvent::JobSucceeded { attempt: 1, exit_code: 0, metrics: Default::default() });
        }
    }

    #[test]
    fn gpus_are_given_out_one_job_each_and_taken_back_when_the_attempt_ends() {
        let mut f = Fixture::new(SchedulingSettings::default());
        f.worker(&["0", "1"], 8, t0());
        let jobs: Vec<JobId> = (0..3).map(|_| f.queue("alice", t0(), |s| s.resources.gpus = 1)).collect();
        let first = f.start_all(t0());
        assert_eq!(first.len(), 2, "two GPUs, two jobs");
        let mut given: Vec<String> = first.iter().flat_map(|d| d.assignment.placement.gpus.clone()).collect();
        given.sort();
        assert_eq!(given, ["0", "1"]);
        assert!(f.board.plan(t0(), secs(5)).is_empty(), "no GPU left");
        // The first job ends: its GPU goes to the third.
        let done = first[0].assignment.job_id;
        let freed = first[0].assignment.placement.gpus.clone();
        f.succeed(done, t0() + secs(1));
        let next = f.start_all(t0() + secs(1));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].assignment.placement.gpus, freed);
        assert!(jobs.contains(&next[0].assignment.job_id));
    }

    #[test]
    fn a_deep_backlog_of_many_users_fills_every_slot_evenly_and_backfills_past_a_job_that_does_not_fit() {
        let mut f = Fixture::new(SchedulingSettings::default());
        let users: Vec<String> = (0..50).map(|i| format!("user{i:02}")).collect();
        // A GPU job heads one user's queue; no worker has a GPU.
        f.queue("user00", t0(), |s| s.resources.gpus = 1);
        for _ in 0..100 {
            for u in &users {
                f.queue(u, t0(), |_| {});
            }
        }
        let workers: Vec<WorkerId> = (0..4).map(|_| f.worker(&[], 32, t0())).collect();
        let decisions = f.start_all(t0());
        assert_eq!(decisions.len(), 128, "every slot of every worker");
        for w in &workers {
            assert_eq!(decisions.iter().filter(|d| d.worker == *w).count(), 32);
        }
        let mut per_user: HashMap<String, usize> = HashMap::new();
        for d in &decisions {
            assert_eq!(d.assignment.state.spec.resources.gpus, 0, "the GPU job has nowhere to go");
            *per_user.entry(d.assignment.state.owner.to_string()).or_default() += 1;
        }
        assert_eq!(per_user.len(), 50, "everyone gets a slot");
        let (min, max) = (per_user.values().min().copied(), per_user.values().max().copied());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{per_user:?}");
        assert!(f.board.plan(t0(), secs(5)).is_empty(), "every worker is full");
    }

    #[test]
    fn a_worker_holds_few_unstarted_offers_so_a_late_user_is_offered_the_next_slot() {
        let mut f = Fixture::new(SchedulingSettings { max_unstarted_per_worker: 3, ..Default::default() });
        let alice: Vec<JobId> = (0..10).map(|_| f.queue("alice", t0(), |_| {})).collect();
        f.worker(&[], 32, t0());
        let first = f.board.plan(t0(), secs(5));
        let offered: Vec<JobId> = first.iter().map(|d| d.assignment.job_id).collect();
        assert_eq!(offered, alice[..3], "three offers, though 32 slots are free");
        assert!(f.board.plan(t0(), secs(5)).is_empty(), "none of them started yet");
        let bob = f.queue("bob", t0() + secs(1), |_| {});
        let started = &first[0].assignment;
        let e = JobEvent::JobStarted { attempt: 1, worker: first[0].worker, placement: started.placement.clone() };
        f.event(started.job_id, t0() + secs(1), e);
        let next = f.board.plan(t0() + secs(1), secs(5));
        assert_eq!(next.len(), 1, "one offer started, one more made");
        assert_eq!(next[0].assignment.job_id, bob, "bob has used nothing: he goes before alice's seven");
        let e = f.board.explain(alice[3], t0() + secs(1)).unwrap();
        assert_eq!(e.position, Some(1));
        assert!(e.reason.contains("max_unstarted_per_worker"), "{}", e.reason);

        // No limit: every free slot is offered at once, alice's backlog first.
        let mut g = Fixture::new(SchedulingSettings { max_unstarted_per_worker: 0, ..Default::default() });
        let queued: Vec<JobId> = (0..10).map(|_| g.queue("alice", t0(), |_| {})).collect();
        g.worker(&[], 32, t0());
        let all: Vec<JobId> = g.board.plan(t0(), secs(5)).iter().map(|d| d.assignment.job_id).collect();
        assert_eq!(all, queued);
    }

    #[test]
    fn an_event_folded_twice_changes_nothing_the_second_time() {
        let mut f = Fixture::new(SchedulingSettings::default());
        f.worker(&[], 4, t0());
        let id = JobId::new();
        let queued = JobEvent::JobQueued { owner: UserName::parse("alice").unwrap(), spec: JobSpec::command(["true"]) };
        let subject = format!("t.ev.job.x.default.{id}");
        f.board.apply_job(1, id, &subject, "h", uuid::Uuid::nil(), t0(), &queued);
        assert_eq!(f.board.plan(t0(), secs(5)).len(), 1);
        // The same `job_queued` again, as the log delivers it after the api's hand-off.
        f.board.apply_job(1, id, &subject, "h", uuid::Uuid::nil(), t0(), &queued);
        assert!(f.board.plan(t0(), secs(5)).is_empty(), "offered once, not again");
        assert_eq!(f.board.explain(id, t0()).unwrap().phase, "assigned");
    }

    #[test]
    fn a_job_no_worker_could_hold_is_explained_as_unschedulable() {
        let mut f = Fixture::new(SchedulingSettings::default());
        f.worker(&["0", "1"], 8, t0());
        let big = f.queue("alice", t0(), |s| s.resources.gpus = 3);
        assert!(f.start_all(t0()).is_empty());
        let e = f.board.explain(big, t0()).unwrap();
        assert!(!e.fits);
        assert!(e.reason.contains("unschedulable: needs 3 GPU(s)"), "{}", e.reason);
        let labelled = f.queue("alice", t0(), |s| s.labels = vec!["a100".into()]);
        let e = f.board.explain(labelled, t0()).unwrap();
        assert!(!e.fits && e.reason.contains("a100"), "{}", e.reason);
    }

    #[test]
    fn a_user_with_no_usage_goes_before_a_backlog_and_fifo_without_fair_share() {
        for fair in [true, false] {
            let mut f = Fixture::new(SchedulingSettings { fair_share: fair, ..Default::default() });
            let w = f.worker(&[], 1, t0());
            let alice: Vec<JobId> = (0..5).map(|_| f.queue("alice", t0(), |_| {})).collect();
            // Alice has run for a while: she has usage.
            let first = f.start_all(t0());
            assert_eq!(first[0].assignment.job_id, alice[0]);
            let bob = f.queue("bob", t0() + secs(1), |_| {});
            f.succeed(alice[0], t0() + secs(60));
            let next = f.start_all(t0() + secs(60));
            assert_eq!(next[0].worker, w);
            let expected = if fair { bob } else { alice[1] };
            assert_eq!(next[0].assignment.job_id, expected, "fair share {fair}");
        }
    }

    #[test]
    fn shares_weigh_usage_and_groups_are_compared_first() {
        let mut settings = SchedulingSettings::default();
        settings.user_shares.insert("alice".into(), 4);
        let f = Fixture::new(settings);
        let usage: HashMap<Arc<str>, f64> = [("alice".into(), 40.0), ("bob".into(), 20.0)].into_iter().collect();
        // Alice used twice as much, with four times the share: she goes first.
        assert!(f.board.share_key("alice", &usage) < f.board.share_key("bob", &usage));
        let mut settings = SchedulingSettings::default();
        settings.groups.insert("vision".into(), group(2, &["alice", "carol"]));
        let f = Fixture::new(settings);
        let usage: HashMap<Arc<str>, f64> =
            [("alice".into(), 10.0), ("carol".into(), 50.0), ("bob".into(), 20.0)].into_iter().collect();
        // vision used 60 on a share of 2 (30 per share), bob 20 on 1: bob first,
        // although alice alone used less than him.
        assert!(f.board.share_key("bob", &usage) < f.board.share_key("alice", &usage));
    }

    fn group(share: u32, members: &[&str]) -> fetchml_runtime::settings::GroupSettings {
        fetchml_runtime::settings::GroupSettings { share, members: members.iter().map(|m| (*m).to_owned()).collect() }
    }

    #[test]
    fn aging_lifts_a_long_waiting_low_priority_job_above_a_fresh_higher_one() {
        let mut f = Fixture::new(SchedulingSettings { aging_secs: 600, ..Default::default() });
        let old = f.queue("alice", t0(), |s| s.priority = 1);
        let fresh = f.queue("alice", t0() + secs(1800), |s| s.priority = 3);
        f.worker(&[], 1, t0() + secs(1801));
        // 1800 s of waiting at one level per 600 s: 1 + 3 = 4 > 3.
        let d = f.start_all(t0() + secs(1801));
        assert_eq!(d[0].assignment.job_id, old);
        assert_eq!(f.board.explain(fresh, t0() + secs(1801)).unwrap().position, Some(1));
    }

    #[test]
    fn a_paused_pool_and_a_drained_worker_are_given_nothing() {
        let mut f = Fixture::new(SchedulingSettings::default());
        let w = f.worker(&[], 2, t0());
        let id = f.queue("alice", t0(), |_| {});
        f.board.apply_pool(100, &PoolEvent::PoolPaused { pool: "default".into(), reason: "x".into() });
        assert!(f.start_all(t0()).is_empty());
        assert!(f.board.explain(id, t0()).unwrap().reason.contains("paused"));
        f.board.apply_pool(101, &PoolEvent::PoolResumed { pool: "default".into() });
        let notice = f.board.apply_worker(102, w, &WorkerEvent::WorkerDrainRequested { reason: "x".into() });
        assert_eq!(notice, Some(Notice::Drain { worker: w }));
        assert!(f.start_all(t0()).is_empty(), "the only worker is drained");
        assert!(f.board.explain(id, t0()).unwrap().reason.contains("draining"));
        let other = f.worker(&[], 2, t0());
        assert_eq!(f.start_all(t0())[0].worker, other);
    }

    #[test]
    fn a_worker_gone_leaves_nothing_on_the_board() {
        // Each worker process has an id of its own, so whatever a board keeps
        // about a gone one would only grow with every worker ever stopped.
        let mut f = Fixture::new(SchedulingSettings::default());
        let stopped = f.worker(&[], 1, t0());
        let silent = f.worker(&[], 1, t0());
        for w in [stopped, silent] {
            f.board.apply_worker(100, w, &WorkerEvent::WorkerDrainRequested { reason: "x".into() });
        }
        assert_eq!(f.board.drained.len(), 2);
        f.board.worker_gone(stopped);
        f.board.tick(t0() + secs(3600));
        assert!(f.board.workers.is_empty(), "{:?}", f.board.workers.keys());
        assert!(f.board.drained.is_empty(), "{:?}", f.board.drained);
    }

    #[test]
    fn a_poll_taken_before_a_clean_stop_does_not_bring_the_worker_back() {
        let mut f = Fixture::new(SchedulingSettings::default());
        let stopped = f.worker(&[], 1, t0());
        let capacity = f.board.workers[&stopped].capacity.clone();
        f.board.worker_stopped(stopped, t0() + secs(1));
        // The poll listed the registry before the delete; its answer comes after.
        f.board.worker_polled(stopped, capacity.clone(), false, t0());
        f.queue("alice", t0() + secs(1), |_| {});
        assert!(f.start_all(t0() + secs(1)).is_empty(), "a stopped worker was offered a job");
        // A write the watch delivers after a delete is newer than the delete.
        let rewritten = f.worker(&[], 1, t0());
        f.board.worker_stopped(rewritten, t0() + secs(1));
        f.board.worker_seen(rewritten, capacity.clone(), false, t0() + secs(2));
        assert!(f.board.workers.contains_key(&rewritten));
        assert!(!f.board.stopped.contains_key(&rewritten));
        // Once a TTL has passed nothing is kept about the stopped one.
        f.board.advance(t0() + secs(20));
        assert!(f.board.stopped.is_empty(), "{:?}", f.board.stopped);
        // A worker that only seemed gone (not heard of within the TTL) is
        // not remembered as stopped: a poll that lists it brings it back.
        let lapsed = f.worker(&[], 1, t0() + secs(20));
        f.board.worker_gone(lapsed);
        f.board.worker_polled(lapsed, capacity, false, t0() + secs(21));
        assert_eq!(f.start_all(t0() + secs(21)).len(), 1);
    }

    #[test]
    fn an_assignment_not_started_in_time_goes_back_and_a_silent_worker_loses_its_jobs() {
        let mut f = Fixture::new(SchedulingSettings::default());
        f.worker(&[], 1, t0());
        let id = f.queue("alice", t0(), |_| {});
        let offered = f.board.plan(t0(), secs(5));
        assert_eq!(offered.len(), 1);
        assert!(f.board.plan(t0(), secs(5)).is_empty(), "its only slot is promised");
        f.board.tick(t0() + secs(6));
        let again = f.board.plan(t0() + secs(6), secs(5));
        assert_eq!(again[0].assignment.job_id, id, "offered again after the timeout");
        // Started, then the worker goes quiet beyond the registry TTL.
        let e = JobEvent::JobStarted { attempt: 1, worker: again[0].worker, placement: Placement::default() };
        f.event(id, t0() + secs(6), e);
        assert!(f.board.tick(t0() + secs(10)).is_empty());
        let lost = f.board.tick(t0() + secs(30));
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].job, lost[0].attempt), (id, 1));
    }

    #[test]
    fn a_cancel_of_a_running_job_tells_its_worker_to_stop() {
        let mut f = Fixture::new(SchedulingSettings::default());
        let w = f.worker(&[], 1, t0());
        let id = f.queue("alice", t0(), |_| {});
        f.start_all(t0());
        let n = f.event(id, t0() + secs(1), JobEvent::JobCancelled { reason: "x".into() });
        assert_eq!(n, Some(Notice::Stop { worker: w, job: id, attempt: 1 }));
        assert_eq!(f.board.unfinished(), 0);
    }
}
