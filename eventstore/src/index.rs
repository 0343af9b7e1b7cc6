//! An in-memory index of the jobs that are not finished, folded from the event
//! log as it grows.
//!
//! The reconciler uses it to find jobs that wait without a ticket (or run on a
//! worker that is gone), and the api to find a live job's subject. It is a
//! derived view: rebuilt from sequence 1 at every start, ordered (one ordered
//! consumer), and `wait_for(seq)` lets a reader wait until it has seen a given
//! write. A job's state leaves it when the job finishes, so that part follows
//! the backlog; of every job ever it keeps only where its events are and its
//! experiment (a few dozen bytes, against ~2 KiB for the full state before).
//! The rare event for a job whose state it let go (a finished job queued
//! again) is folded onto the job's history read back from the log.
//!
//! **Caught up.** Right after a start the index is replaying the log and holds
//! a past that never was all at once: a job whose `job_started` it has folded
//! but whose `job_succeeded` it has not yet read looks running. Whoever decides
//! something from the index (the reconciler, experiment subscriptions) must
//! wait for [`JobIndex::caught_up`]: set once every job event stored when the
//! index started has been folded (the ordered consumer reports nothing pending
//! behind an event, or the log held no job event at all), and never unset.

use crate::StoreError;
use crate::store::EventStore;
use crate::tap::LogSource;
use async_nats::jetstream::stream::DirectGetErrorKind;
use chrono::{DateTime, Utc};
use fetchml_events::JobId;
use fetchml_events::job::{Job, JobEvent, evolve, fold};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One job as the index knows it.
#[derive(Clone, Debug)]
pub struct IndexedJob {
    pub id: JobId,
    pub subject: String,
    pub state: Job,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: u64,
}

#[derive(Default)]
struct Inner {
    /// Unfinished jobs.
    jobs: HashMap<JobId, IndexedJob>,
    /// Every job, finished or not, in a few dozen bytes: where its events are
    /// (a load by id alone is a wildcard the server answers by scanning, ~10 ms
    /// at 100 000 jobs) and its experiment (stream filters need it for replays).
    known: HashMap<JobId, Known>,
    /// Subject prefixes and experiment names, shared between jobs.
    names: HashSet<Arc<str>>,
}

struct Known {
    /// The job's subject without its last token (`<ns>.ev.job.<owner>.<pool>`).
    prefix: Arc<str>,
    experiment: Option<Arc<str>>,
}

impl Inner {
    fn intern(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = name.into();
                self.names.insert(n.clone());
                n
            }
        }
    }

    fn note(&mut self, id: JobId, subject: &str, experiment: Option<&str>) {
        let Some((prefix, _)) = subject.rsplit_once('.') else { return };
        let prefix = self.intern(prefix);
        let experiment = experiment.map(|e| self.intern(e));
        self.known.insert(id, Known { prefix, experiment });
    }
}

#[derive(Clone)]
pub struct JobIndex {
    inner: Arc<RwLock<Inner>>,
    seen: watch::Receiver<u64>,
    caught_up: watch::Receiver<bool>,
}

/// Whether the log holds any job event (if not, an empty index is complete).
async fn any_job_event(store: &EventStore) -> Result<bool, StoreError> {
    let stream = store
        .jetstream()
        .get_stream_no_info(store.subjects().events_stream())
        .await
        .map_err(StoreError::unavailable)?;
    match stream.direct_get_first_for_subject(store.subjects().all_job_events()).await {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
        Err(e) => Err(StoreError::unavailable(e)),
    }
}

/// A job's state and creation time from its events before `seq`, read from
/// the log (for a job the index let go of when it finished).
async fn history_before(store: &EventStore, id: JobId, subject: &str, seq: u64) -> Option<(Job, DateTime<Utc>)> {
    let loaded = match store.load_job_at(id, subject).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "job index cannot read a finished job's history");
            return None;
        }
    };
    let before: Vec<_> = loaded.history.iter().take_while(|(s, _)| *s < seq).collect();
    let created_at = before.first()?.1.occurred_at;
    fold(before.iter().map(|(_, e)| &e.payload)).map(|state| (state, created_at))
}

impl JobIndex {
    /// Starts following the log from the beginning; returns at once.
    pub fn spawn(store: EventStore, stop: CancellationToken) -> Self {
        Self::spawn_on(LogSource::Direct(Box::new(store.clone())), store, stop)
    }

    /// [`JobIndex::spawn`], reading the log from `source` (a process's shared
    /// tap: one delivery for the index and the other followers).
    pub fn spawn_on(source: LogSource, store: EventStore, stop: CancellationToken) -> Self {
        // On a tap, ask now (before the tap starts), so the index shares its
        // delivery from the first event instead of catching up on its own.
        let mut first = match &source {
            LogSource::Tap(tap) => Some(tap.follow(1)),
            LogSource::Direct(_) => None,
        };
        let inner = Arc::new(RwLock::new(Inner::default()));
        let (tx, seen) = watch::channel(0u64);
        let (caught_tx, caught_up) = watch::channel(false);
        let writer = inner.clone();
        tokio::spawn(async move {
            let mut backoff = crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut next = 1u64;
            while !stop.is_cancelled() {
                if !*caught_tx.borrow() {
                    match any_job_event(&store).await {
                        Ok(true) => {}
                        Ok(false) => {
                            caught_tx.send_replace(true);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "job index cannot look at the log; retrying");
                            if !backoff.wait(&stop).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
                let filter = store.subjects().all_job_events();
                let feed = match first.take() {
                    Some(f) => Ok(f),
                    None => source.read(&filter, next).await,
                };
                let mut events = match feed {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "job index cannot read the log; retrying");
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                };
                loop {
                    let item = tokio::select! { _ = stop.cancelled() => return, i = events.next() => i };
                    let Some(Ok(ev)) = item else { break };
                    backoff.reset();
                    next = ev.seq + 1;
                    if let Ok(env) = ev.job_event()
                        && let Ok(id) = env.aggregate_id.parse::<JobId>()
                    {
                        // A job the index no longer holds (finished, then queued
                        // again): its history comes from the log, read before the
                        // lock is taken (the lock is not held across an await).
                        let unknown = !matches!(env.payload, JobEvent::JobQueued { .. })
                            && !writer.read().unwrap_or_else(|p| p.into_inner()).jobs.contains_key(&id);
                        let history =
                            if unknown { history_before(&store, id, &ev.subject, ev.seq).await } else { None };
                        let mut g = writer.write().unwrap_or_else(|p| p.into_inner());
                        if let JobEvent::JobQueued { spec, .. } = &env.payload {
                            g.note(id, &ev.subject, spec.experiment.as_deref());
                        }
                        let prev = g.jobs.remove(&id).map(|p| (p.state, p.created_at)).or(history);
                        let created_at = prev.as_ref().map(|p| p.1).unwrap_or(env.occurred_at);
                        if let Some(state) = evolve(prev.map(|p| p.0), &env.payload)
                            && !state.status.is_terminal()
                        {
                            let job = IndexedJob {
                                id,
                                subject: ev.subject.clone(),
                                state,
                                created_at,
                                updated_at: env.occurred_at,
                                last_seq: ev.seq,
                            };
                            g.jobs.insert(id, job);
                        }
                    }
                    // Nothing matching was pending behind this event when the
                    // server sent it: every job event stored before the index
                    // started (and some after) is folded. Set before `seen`
                    // moves, so a reader that waited for this event sees it.
                    if ev.pending == Some(0) && !*caught_tx.borrow() {
                        caught_tx.send_replace(true);
                        tracing::info!(seq = ev.seq, "job index caught up with the log");
                    }
                    let _ = tx.send(ev.seq);
                }
            }
        });
        Self { inner, seen, caught_up }
    }

    /// The highest log sequence folded so far.
    pub fn seen(&self) -> u64 {
        *self.seen.borrow()
    }

    /// Whether the index has folded every job event that was in the log when
    /// it started (see the module header). Decisions wait for this.
    pub fn caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits until [`JobIndex::caught_up`]; false if the index stopped first.
    pub async fn wait_caught_up(&self) -> bool {
        let mut rx = self.caught_up.clone();
        rx.wait_for(|c| *c).await.is_ok()
    }

    /// Waits until the index has folded `seq`, at most `within`.
    pub async fn wait_for(&self, seq: u64, within: Duration) -> bool {
        let mut rx = self.seen.clone();
        tokio::time::timeout(within, rx.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// A copy of the unfinished jobs that match `keep`.
    pub fn select(&self, keep: impl Fn(&IndexedJob) -> bool) -> Vec<IndexedJob> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.jobs.values().filter(|j| keep(j)).cloned().collect()
    }

    /// Visits every unfinished job under the read lock, cloning nothing (for
    /// summaries such as the queue gauges; keep `visit` short).
    pub fn for_each_unfinished(&self, mut visit: impl FnMut(&IndexedJob)) {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.jobs.values().for_each(&mut visit);
    }

    /// The experiment a job (finished or not) belongs to.
    pub fn experiment_of(&self, id: JobId) -> Option<Arc<str>> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.known.get(&id).and_then(|k| k.experiment.clone())
    }

    /// The subject of a job's events (finished or not), if the index has seen it.
    pub fn subject_of(&self, id: JobId) -> Option<String> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.known.get(&id).map(|k| format!("{}.{id}", k.prefix))
    }

    /// The job, if it is not finished.
    pub fn get(&self, id: JobId) -> Option<IndexedJob> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.jobs.get(&id).cloned()
    }
}
