//! The reconciler: compares the log's view of every unfinished job with the
//! work queue and re-dispatches what is missing. It never decides anything a
//! job's own history would not allow: a ticket only invites a worker to try,
//! and `Start` is fenced by the attempt number.
//!
//! **Consistent views.** The job index, the work queue and the worker registry
//! are read at different instants, and a job can start, finish and have its
//! ticket acknowledged in between: read naively, a job that has just finished
//! looks ticketless. So a pass reads the live workers and the tickets first,
//! and then re-reads each ticketless job from the log itself (its own subject:
//! one direct get): only a job whose log still ends where the index saw it is
//! acted on, and only on the log's state. A job that moved on is left to the
//! dispatcher, which follows every event.
//!
//! **After a start** the index replays the log, and until it has caught up it
//! shows jobs in states they have long left; a pass refuses to run on it
//! ([`ReconcileError::IndexBehind`]), and [`run_reconciler`] waits for it.

use crate::publish_ticket;
use async_nats::jetstream;
use fetchml_events::dispatch::DispatchTicket;
use fetchml_events::job::JobStatus;
use fetchml_eventstore::{EventStore, IndexedJob, JobIndex, StoreError, list_workers, open_registry};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub checked: usize,
    /// Waiting jobs that had no ticket and got one.
    pub redispatched: usize,
    /// Running jobs with neither ticket nor live worker, handed to a new worker.
    pub taken_over: usize,
    /// Ticketless in the index's view, but the log had moved on (started,
    /// finished, cancelled): left alone.
    pub moved_on: usize,
}

/// Why a pass did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The job index is still replaying the log after a start.
    #[error("the job index has not caught up with the log yet")]
    IndexBehind,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The index's candidates: waiting or running jobs whose last event is older
/// than the grace.
fn candidates(index: &JobIndex, grace: Duration) -> Vec<IndexedJob> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    index.select(|j| (j.state.status.is_waiting() || j.state.status == JobStatus::Running) && j.updated_at <= cutoff)
}

/// One pass over the index. Jobs whose last event is younger than `grace` are
/// left alone (the dispatcher is probably still on them).
pub async fn reconcile_once(
    store: &EventStore,
    index: &JobIndex,
    grace: Duration,
) -> Result<ReconcileReport, ReconcileError> {
    if !index.caught_up() {
        return Err(ReconcileError::IndexBehind);
    }
    if candidates(index, grace).is_empty() {
        return Ok(ReconcileReport::default());
    }
    let js = store.jetstream();
    let subjects = store.subjects();
    let dispatch = js.get_stream(subjects.dispatch_stream()).await.map_err(StoreError::unavailable_from)?;
    // Every entry counts as alive, draining workers included: they still run
    // (and renew) the jobs they hold.
    let live: HashSet<String> =
        list_workers(&open_registry(js, subjects).await?).await?.into_iter().map(|w| w.id).collect();
    // Which jobs have a ticket: one listing of the queue's subjects (the last
    // token is the job id), instead of a wildcard lookup per job, which would
    // make the server search its subject index once per waiting job.
    let ticketed = ticketed_jobs(&dispatch, &subjects.all_dispatch()).await?;
    // The candidates again, now that the tickets are known (see the header).
    let candidates = candidates(index, grace);
    let mut report = ReconcileReport { checked: candidates.len(), ..Default::default() };
    for job in candidates {
        if ticketed.contains(&job.id.to_string()) {
            continue;
        }
        let running = job.state.status == JobStatus::Running;
        if running && job.state.worker.is_some_and(|w| live.contains(&w.to_string())) {
            continue; // its worker is alive; the ticket is with it or it will finish
        }
        // The log, read after the tickets: has the job moved on since the
        // index saw it (its ticket then acknowledged by a worker)?
        let loaded = store.load_job_at(job.id, &job.subject).await?;
        if loaded.last_seq() != job.last_seq {
            report.moved_on += 1;
            continue;
        }
        let Some(state) = loaded.state else { continue };
        let ticket = DispatchTicket {
            job_id: job.id,
            job_subject: job.subject.clone(),
            cause_seq: job.last_seq,
            not_before: state.not_before,
            takeover: running,
        };
        let msg_id = format!("reconcile-{}-{}", job.id, job.last_seq);
        publish_ticket(js, subjects, &state.spec, &ticket, &msg_id).await?;
        if running {
            tracing::warn!(job = %job.id, "running job without ticket or live worker; handing it over");
            report.taken_over += 1;
        } else {
            tracing::warn!(job = %job.id, "waiting job had no ticket; re-dispatched");
            report.redispatched += 1;
        }
    }
    Ok(report)
}

/// The job ids that have at least one ticket in DISPATCH.
async fn ticketed_jobs(dispatch: &jetstream::stream::Stream, filter: &str) -> Result<HashSet<String>, StoreError> {
    use futures::StreamExt;
    let mut subjects = dispatch.info_with_subjects(filter).await.map_err(StoreError::unavailable_from)?;
    let mut out = HashSet::new();
    while let Some(s) = subjects.next().await {
        let (subject, count) = s.map_err(StoreError::unavailable_from)?;
        if count > 0
            && let Some(job) = subject.rsplit('.').next()
        {
            out.insert(job.to_owned());
        }
    }
    Ok(out)
}

/// Runs a pass every `every` until `stop`.
pub async fn run_reconciler(
    store: EventStore,
    index: JobIndex,
    every: Duration,
    grace: Duration,
    stop: CancellationToken,
) {
    // The first pass waits for the index to have replayed the log.
    tokio::select! {
        _ = stop.cancelled() => return,
        ok = index.wait_caught_up() => if !ok { return },
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match reconcile_once(&store, &index, grace).await {
            Ok(r) if r.redispatched + r.taken_over > 0 => tracing::info!(?r, "reconciled"),
            Ok(_) => {}
            Err(ReconcileError::IndexBehind) => tracing::debug!("job index behind; pass skipped"),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
        }
    }
}
