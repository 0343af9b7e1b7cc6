//! An in-memory index of every job, folded from the event log as it grows.
//!
//! The reconciler uses it to find jobs that wait without a ticket, and the api
//! to list jobs until the Postgres read models take over (identity/read-model
//! issue). It is a derived view: rebuilt from sequence 1 at every start,
//! ordered (one ordered consumer), and `wait_for(seq)` lets a reader wait until
//! it has seen a given write.

use crate::store::{EventStore, StartAt};
use chrono::{DateTime, Utc};
use fetchml_events::JobId;
use fetchml_events::job::{Job, JobEvent, evolve};
use futures::StreamExt;
use std::collections::HashMap;
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
    jobs: HashMap<JobId, IndexedJob>,
}

#[derive(Clone)]
pub struct JobIndex {
    inner: Arc<RwLock<Inner>>,
    seen: watch::Receiver<u64>,
}

impl JobIndex {
    /// Starts following the log from the beginning; returns at once.
    pub fn spawn(store: EventStore, stop: CancellationToken) -> Self {
        let inner = Arc::new(RwLock::new(Inner::default()));
        let (tx, seen) = watch::channel(0u64);
        let writer = inner.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut next = 1u64;
            while !stop.is_cancelled() {
                let filter = store.subjects().all_job_events();
                let mut events = match store.read(&filter, StartAt::Sequence(next)).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "job index cannot read the log; retrying");
                        tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                loop {
                    let item = tokio::select! { _ = stop.cancelled() => return, i = events.next() => i };
                    let Some(Ok(ev)) = item else { break };
                    backoff = Duration::from_millis(100);
                    next = ev.seq + 1;
                    if let Ok(env) = ev.decode::<JobEvent>()
                        && let Ok(id) = env.aggregate_id.parse::<JobId>()
                    {
                        let mut g = writer.write().unwrap_or_else(|p| p.into_inner());
                        let prev = g.jobs.remove(&id);
                        let created_at = prev.as_ref().map(|p| p.created_at).unwrap_or(env.occurred_at);
                        if let Some(state) = evolve(prev.map(|p| p.state), &env.payload) {
                            g.jobs.insert(
                                id,
                                IndexedJob {
                                    id,
                                    subject: ev.subject.clone(),
                                    state,
                                    created_at,
                                    updated_at: env.occurred_at,
                                    last_seq: ev.seq,
                                },
                            );
                        }
                    }
                    let _ = tx.send(ev.seq);
                }
            }
        });
        Self { inner, seen }
    }

    /// The highest log sequence folded so far.
    pub fn seen(&self) -> u64 {
        *self.seen.borrow()
    }

    /// Waits until the index has folded `seq`, at most `within`.
    pub async fn wait_for(&self, seq: u64, within: Duration) -> bool {
        let mut rx = self.seen.clone();
        tokio::time::timeout(within, rx.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// A copy of the jobs that match `keep`.
    pub fn select(&self, keep: impl Fn(&IndexedJob) -> bool) -> Vec<IndexedJob> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.jobs.values().filter(|j| keep(j)).cloned().collect()
    }

    pub fn get(&self, id: JobId) -> Option<IndexedJob> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.jobs.get(&id).cloned()
    }
}
