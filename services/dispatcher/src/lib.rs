//! The dispatcher: follows job events on EVENTS with a durable consumer and
//! publishes a ticket to DISPATCH for every job that needs a worker.
//!
//! Crash safety: the EVENTS message is acknowledged only after DISPATCH has
//! acknowledged the ticket. A dispatcher killed in between sees the event again
//! and republishes; the ticket's `Nats-Msg-Id` (job id + causing sequence)
//! makes the repeat a no-op within the duplicate window, and beyond it the
//! worker's `Start` is fenced by the job's own history. So once `job_queued` is
//! in the log, the job reaches the work queue even if any process dies at any
//! instant. Any number of dispatchers may run: they share the durable consumer.
//!
//! Each job's dispatch runs in a span `dispatch` with `job` and `correlation`
//! (the causing event's `correlation_id`: the request that set it in motion),
//! so its log lines can be found by the api's request id.
//!
//! The work queue is an index derived from the log, and [`reconcile_once`]
//! rebuilds what is missing from it: a waiting job with no ticket gets one, and
//! a running job whose worker is gone and whose ticket was lost gets a takeover
//! ticket.

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    message::PublishMessage,
};
use bytes::Bytes;
use fetchml_events::JobId;
use fetchml_events::dispatch::DispatchTicket;
use fetchml_events::job::{JobEvent, JobSpec};
use fetchml_events::subject::{Subjects, label_key};
use fetchml_eventstore::{EventStore, StoreError, StoredEvent};
use futures::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod reconcile;
pub use reconcile::{ReconcileError, ReconcileReport, reconcile_once, run_reconciler};

/// The durable consumer's name (per namespace: the streams are per namespace).
pub const CONSUMER: &str = "dispatcher";

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dispatcher consumer: {0}")]
    Consumer(String),
}

/// Runs until `stop` is cancelled. Transient NATS errors are retried with
/// backoff; the loop only returns on shutdown or a setup error.
pub async fn run(store: EventStore, stop: CancellationToken) -> Result<(), DispatchError> {
    let js = store.jetstream().clone();
    let subjects = store.subjects().clone();
    let stream = js.get_stream(subjects.events_stream()).await.map_err(|e| DispatchError::Consumer(e.to_string()))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                description: Some("EVENTS → DISPATCH".into()),
                filter_subject: subjects.all_job_events(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| DispatchError::Consumer(e.to_string()))?;
    tracing::info!(stream = %subjects.events_stream(), "dispatcher running");
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull from EVENTS; retrying");
                tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                n = messages.next() => n,
            };
            let Some(first) = next else { break };
            // Take whatever else is already here, so that tickets are published
            // pipelined (in order) and their acks awaited together.
            let mut batch = vec![first];
            while batch.len() < 256 {
                match futures::FutureExt::now_or_never(messages.next()) {
                    Some(Some(m)) => batch.push(m),
                    _ => break,
                }
            }
            let mut ok_msgs = Vec::with_capacity(batch.len());
            let mut failed = false;
            for m in batch {
                match m {
                    Ok(m) => ok_msgs.push(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "pull failed; resubscribing");
                        failed = true;
                    }
                }
            }
            backoff = Duration::from_millis(100);
            match dispatch_batch(&js, &store, &ok_msgs).await {
                Ok(()) => {
                    for m in &ok_msgs {
                        if let Err(e) = m.ack().await {
                            // Redelivered later; the ticket id makes that harmless.
                            tracing::warn!(error = %e, "ack to EVENTS failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch failed; the batch will be redelivered");
                    for m in &ok_msgs {
                        let _ = m.ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500)))).await;
                    }
                }
            }
            if failed {
                break;
            }
        }
    }
    Ok(())
}

/// Publishes the tickets a batch of events asks for, in order, pipelined.
async fn dispatch_batch(
    js: &jetstream::Context,
    store: &EventStore,
    msgs: &[jetstream::Message],
) -> Result<(), StoreError> {
    let mut acks = Vec::new();
    for msg in msgs {
        let seq = match msg.info() {
            Ok(i) => i.stream_sequence,
            Err(e) => {
                tracing::warn!(error = %e, "message without metadata; skipping");
                continue;
            }
        };
        let stored = StoredEvent { seq, subject: msg.subject.to_string(), payload: msg.payload.clone(), pending: None };
        if let Some((spec, ticket, correlation)) = ticket_for(store, &stored).await? {
            let span = tracing::info_span!("dispatch", job = %ticket.job_id, correlation = %correlation);
            let ack =
                send_ticket(js, store.subjects(), &spec, &ticket, &ticket.msg_id()).instrument(span.clone()).await?;
            span.in_scope(|| tracing::info!(seq, pool = %spec.pool, priority = spec.priority, "dispatched"));
            acks.push(ack);
        }
    }
    for ack in acks {
        ack.await.map_err(StoreError::unavailable_from)?;
    }
    Ok(())
}

/// The ticket `event` asks for, if any, with the event's correlation id.
async fn ticket_for(
    store: &EventStore,
    event: &StoredEvent,
) -> Result<Option<(JobSpec, DispatchTicket, uuid::Uuid)>, StoreError> {
    // Most job events (started, finished) ask for nothing: skip them before
    // building them. An unreadable type falls through to the full decode,
    // which says what is wrong.
    if let Some(p) = fetchml_events::envelope::peek(&event.payload)
        && !JobEvent::ASKS_FOR_WORKER.contains(&p.event_type.as_ref())
    {
        return Ok(None);
    }
    let envelope = match event.decode::<JobEvent>() {
        Ok(e) => e,
        Err(e) => {
            // A malformed event cannot become valid by retrying; it is in the
            // audit log for a human to see.
            tracing::error!(error = %e, seq = event.seq, "undecodable job event; not dispatched");
            return Ok(None);
        }
    };
    let job_id: JobId = envelope
        .aggregate_id
        .parse()
        .map_err(|e| StoreError::Invalid(format!("job id {:?}: {e}", envelope.aggregate_id)))?;
    let (spec, not_before) = match &envelope.payload {
        JobEvent::JobQueued { spec, .. } => (spec.clone(), None),
        JobEvent::JobRetryScheduled { .. } | JobEvent::JobRequeued { .. } => {
            let nb = match &envelope.payload {
                JobEvent::JobRetryScheduled { not_before, .. } => Some(*not_before),
                _ => None,
            };
            let loaded = store.load_job_at(job_id, &event.subject).await?;
            let last_seq = loaded.last_seq();
            let Some(job) = loaded.state else { return Ok(None) };
            // A later event already moved the job on (cancelled, started):
            // the ticket would only be acknowledged unused.
            if last_seq != event.seq && !job.status.is_waiting() {
                return Ok(None);
            }
            (job.spec, nb.or(job.not_before))
        }
        _ => return Ok(None),
    };
    let ticket = DispatchTicket {
        job_id,
        job_subject: event.subject.clone(),
        cause_seq: event.seq,
        not_before,
        takeover: false,
    };
    Ok(Some((spec, ticket, envelope.correlation_id)))
}

/// Sends `ticket` to the job's queue subject, deduplicated by `msg_id`; the
/// returned future resolves when JetStream has stored it.
async fn send_ticket(
    js: &jetstream::Context,
    subjects: &Subjects,
    spec: &JobSpec,
    ticket: &DispatchTicket,
    msg_id: &str,
) -> Result<jetstream::context::PublishAckFuture, StoreError> {
    let body = serde_json::to_vec(ticket).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let subject = subjects.dispatch(&spec.pool, spec.priority, &label_key(&spec.labels), ticket.job_id);
    js.send_publish(subject, PublishMessage::build().payload(Bytes::from(body)).message_id(msg_id))
        .await
        .map_err(StoreError::unavailable_from)
}

/// Stores `ticket` on the job's queue subject, deduplicated by `msg_id`.
pub async fn publish_ticket(
    js: &jetstream::Context,
    subjects: &Subjects,
    spec: &JobSpec,
    ticket: &DispatchTicket,
    msg_id: &str,
) -> Result<u64, StoreError> {
    let body = serde_json::to_vec(ticket).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let subject = subjects.dispatch(&spec.pool, spec.priority, &label_key(&spec.labels), ticket.job_id);
    let ack = js
        .send_publish(subject, PublishMessage::build().payload(Bytes::from(body)).message_id(msg_id))
        .await
        .map_err(StoreError::unavailable_from)?;
    Ok(ack.await.map_err(StoreError::unavailable_from)?.sequence)
}
