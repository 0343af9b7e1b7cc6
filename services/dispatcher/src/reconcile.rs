//! The reconciler: compares the log's view of every unfinished job with the
//! work queue and re-dispatches what is missing. It never decides anything a
//! job's own history would not allow: a ticket only invites a worker to try,
//! and `Start` is fenced by the attempt number.

use crate::publish_ticket;
use async_nats::jetstream;
use fetchml_events::dispatch::DispatchTicket;
use fetchml_events::job::JobStatus;
use fetchml_eventstore::{EventStore, JobIndex, StoreError, list_workers, open_registry};
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
}

/// One pass over the index. Jobs whose last event is younger than `grace` are
/// left alone (the dispatcher is probably still on them).
pub async fn reconcile_once(
    store: &EventStore,
    index: &JobIndex,
    grace: Duration,
) -> Result<ReconcileReport, StoreError> {
    let js = store.jetstream();
    let subjects = store.subjects();
    let dispatch = js.get_stream(subjects.dispatch_stream()).await.map_err(StoreError::unavailable_from)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
    let candidates = index
        .select(|j| (j.state.status.is_waiting() || j.state.status == JobStatus::Running) && j.updated_at <= cutoff);
    let mut report = ReconcileReport { checked: candidates.len(), ..Default::default() };
    if candidates.is_empty() {
        return Ok(report);
    }
    let live: HashSet<String> = match open_registry(js, subjects).await {
        Ok(kv) => list_workers(&kv).await?.into_iter().map(|w| w.id).collect(),
        Err(e) => return Err(e),
    };
    // Which jobs have a ticket: one listing of the queue's subjects (the last
    // token is the job id), instead of a wildcard lookup per job, which would
    // make the server search its subject index once per waiting job.
    let ticketed = ticketed_jobs(&dispatch, &subjects.all_dispatch()).await?;
    for job in candidates {
        if ticketed.contains(&job.id.to_string()) {
            continue;
        }
        let running = job.state.status == JobStatus::Running;
        if running && job.state.worker.is_some_and(|w| live.contains(&w.to_string())) {
            continue; // its worker is alive; the ticket is with it or it will finish
        }
        let ticket = DispatchTicket {
            job_id: job.id,
            job_subject: job.subject.clone(),
            cause_seq: job.last_seq,
            not_before: job.state.not_before,
            takeover: running,
        };
        let msg_id = format!("reconcile-{}-{}", job.id, job.last_seq);
        publish_ticket(js, subjects, &job.state.spec, &ticket, &msg_id).await?;
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
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed"),
        }
    }
}
