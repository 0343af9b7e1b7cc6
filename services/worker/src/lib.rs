//! The stateless worker. It pulls tickets from its pool's DISPATCH consumer,
//! claims the job's next attempt in the event log (`job_started`, fenced by the
//! attempt number), runs it, streams its output to PROGRESS, and records how it
//! ended. It keeps nothing of its own: kill it at any moment and the log and the
//! work queue still say everything.
//!
//! Lease: the ticket stays unacknowledged while the attempt runs, and the worker
//! renews it with in-progress acks every third of the lease. We chose this over
//! an ack-at-claim plus a KV lease because JetStream then does the expiry and
//! redelivery itself (no reconciler of our own to get wrong), and because a live
//! worker renews for as long as the job runs, hours if need be. A worker that
//! dies stops renewing, and the ticket is redelivered after one lease.

pub mod executor;

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use bytes::Bytes;
use executor::{ExecIo, ExecRequest, LogLine};
use fetchml_events::dispatch::DispatchTicket;
use fetchml_events::ids::PoolName;
use fetchml_events::job::{JobCommand, JobEvent, JobRejection, Outcome};
use fetchml_events::{Actor, JobId, UserName, WorkerId};
use fetchml_eventstore::{CommandContext, EventStore, ExecuteError, StartAt, StoreError};
use fetchml_runtime::Settings;
use fetchml_runtime::settings::WorkerSettings;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid worker settings: {0}")]
    Settings(String),
    #[error("dispatch consumer: {0}")]
    Consumer(String),
}

pub struct Worker {
    store: EventStore,
    settings: WorkerSettings,
    pool: PoolName,
    id: WorkerId,
}

impl Worker {
    /// Connects to NATS (refusing a server that is too old) and opens the
    /// namespace's streams.
    pub async fn build(settings: &Settings) -> Result<Self, WorkerError> {
        let pool = PoolName::parse(&settings.worker.pool).map_err(|e| WorkerError::Settings(e.to_string()))?;
        let client = fetchml_eventstore::connect(&settings.nats.url, "fetchml-worker").await?;
        let store = EventStore::open(
            client,
            fetchml_events::subject::Subjects::new(settings.namespace()),
            &settings.stream_settings(),
        )
        .await?;
        Ok(Self { store, settings: settings.worker.clone(), pool, id: WorkerId::new() })
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    async fn consumer(&self) -> Result<PullConsumer, WorkerError> {
        let subjects = self.store.subjects();
        let stream = self
            .store
            .jetstream()
            .get_stream(subjects.dispatch_stream())
            .await
            .map_err(|e| WorkerError::Consumer(e.to_string()))?;
        let name = format!("worker-{}", self.pool);
        stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("workers of pool {}", self.pool)),
                    filter_subject: subjects.dispatch_pool(&self.pool),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(self.settings.lease_secs),
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| WorkerError::Consumer(e.to_string()))
    }

    /// Pulls and runs jobs until `stop` is cancelled, then lets running jobs
    /// finish for up to `drain_secs` before stopping them.
    pub async fn run(self, stop: CancellationToken) -> Result<(), WorkerError> {
        let consumer = self.consumer().await?;
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let kill_all = CancellationToken::new();
        let mut running = JoinSet::new();
        let this = Arc::new(self);
        tracing::info!(worker = %this.id, pool = %this.pool, concurrency = this.settings.concurrency, "worker running");
        let mut backoff = Duration::from_millis(100);
        'pull: loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'pull },
            };
            // Fetch only what we have room for, so no ticket waits in our buffer
            // while its lease runs out.
            let batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(5)).messages();
            let mut batch = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                b = batch => match b {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "fetch failed; retrying");
                        tokio::select! { _ = stop.cancelled() => break 'pull, _ = tokio::time::sleep(backoff) => {} }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let msg = tokio::select! {
                _ = stop.cancelled() => break 'pull,
                m = batch.next() => m,
            };
            match msg {
                Some(Ok(msg)) => {
                    backoff = Duration::from_millis(100);
                    let this = this.clone();
                    let kill = kill_all.child_token();
                    running.spawn(async move {
                        this.handle(msg, kill).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => tracing::debug!(error = %e, "fetch ended with a status"),
                None => {}
            }
            while running.try_join_next().is_some() {}
        }
        tracing::info!(running = running.len(), "stopping: no new jobs; waiting for running ones");
        let drain = Duration::from_secs(this.settings.drain_secs);
        if tokio::time::timeout(drain, async { while running.join_next().await.is_some() {} }).await.is_err() {
            tracing::warn!(running = running.len(), "drain deadline passed; stopping running jobs");
            kill_all.cancel();
            while running.join_next().await.is_some() {}
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(worker = %self.id))]
    async fn handle(&self, msg: jetstream::Message, kill: CancellationToken) {
        let ticket: DispatchTicket = match serde_json::from_slice(&msg.payload) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "malformed dispatch ticket; dropping it");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let job_id = ticket.job_id;
        let loaded = match self.store.load_job(job_id).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "cannot load job; retrying later");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        let Some(state) = loaded.state else {
            tracing::error!(job = %job_id, "ticket for a job with no history; dropping it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        let attempt = state.attempt + 1;
        let actor = Actor::Worker { id: self.id };
        let started = match self
            .store
            .execute_job(job_id, JobCommand::Start { attempt, worker: self.id }, &CommandContext::new(actor.clone()))
            .await
        {
            Ok(done) => done,
            Err(ExecuteError::Rejected(r)) => {
                // Terminal, cancelled, or another attempt holds it: this ticket
                // has nothing left to do.
                tracing::info!(job = %job_id, reason = %r, "ticket not startable; acknowledging");
                let _ = msg.double_ack().await;
                return;
            }
            Err(ExecuteError::Store(e)) => {
                tracing::warn!(job = %job_id, error = %e, "cannot claim job; retrying later");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        };
        tracing::info!(job = %job_id, attempt, "started");

        let cancel = kill.child_token();
        let lease = self.keep_lease(&msg, cancel.clone());
        let watch = self.watch_for_cancel(job_id, started.seq, cancel.clone());
        let (log_tx, log_rx) = mpsc::channel(1024);
        let forward = self.forward_logs(state.owner.clone(), job_id, attempt, log_rx);

        let req = ExecRequest {
            job_id,
            attempt,
            spec: state.spec.clone(),
            job_root: self.settings.job_root.clone(),
            kill_grace: Duration::from_secs(self.settings.kill_grace_secs),
        };
        let exec = executor::for_spec(req.spec.executor);
        let outcome = exec.run(&req, ExecIo { logs: log_tx, cancel: cancel.clone() }).await;
        let _ = forward.await;
        watch.abort();

        self.record_outcome(job_id, attempt, outcome, &actor).await;
        lease.abort();
        if let Err(e) = msg.double_ack().await {
            // The ticket comes back after the lease; the job is terminal by
            // then, so the next worker just acknowledges it.
            tracing::warn!(job = %job_id, error = %e, "ack of finished ticket failed");
        }
    }

    /// Renews the ticket's lease until the attempt ends.
    fn keep_lease(&self, msg: &jetstream::Message, done: CancellationToken) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.settings.lease_secs) / 3;
        let msg = msg.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::warn!(error = %e, "lease renewal failed");
                        }
                    }
                }
            }
        })
    }

    /// Cancels the attempt when the job's log records a cancel.
    fn watch_for_cancel(&self, job: JobId, after_seq: u64, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        tokio::spawn(async move {
            let filter = store.subjects().job_by_id(job);
            let Ok(mut events) = store.read(&filter, StartAt::Sequence(after_seq + 1)).await else {
                tracing::warn!(job = %job, "cannot watch job for cancel");
                return;
            };
            while let Some(Ok(ev)) = events.next().await {
                if let Ok(env) = ev.decode::<JobEvent>()
                    && matches!(env.payload, JobEvent::JobCancelled { .. })
                {
                    tracing::info!(job = %job, "cancel requested; stopping the attempt");
                    cancel.cancel();
                    return;
                }
            }
        })
    }

    /// Publishes output lines to PROGRESS, in order.
    fn forward_logs(
        &self,
        owner: UserName,
        job: JobId,
        attempt: u32,
        mut rx: mpsc::Receiver<LogLine>,
    ) -> tokio::task::JoinHandle<()> {
        let js = self.store.jetstream().clone();
        let subject = self.store.subjects().progress(&owner, job, "log");
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let body = serde_json::json!({
                    "job_id": job,
                    "attempt": attempt,
                    "stream": line.stream,
                    "line": line.line,
                    "at": chrono::Utc::now(),
                });
                let bytes = Bytes::from(body.to_string());
                match js.publish(subject.clone(), bytes).await {
                    Ok(ack) => {
                        if let Err(e) = ack.await {
                            tracing::debug!(error = %e, "log line not acknowledged");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "log line not published"),
                }
            }
        })
    }

    /// Records how the attempt ended, retrying while NATS is unreachable. The
    /// command id stays the same across retries, so it is stored once.
    async fn record_outcome(&self, job: JobId, attempt: u32, outcome: Outcome, actor: &Actor) {
        let ctx = CommandContext::new(actor.clone());
        let mut backoff = Duration::from_millis(100);
        for _ in 0..60 {
            match self.store.execute_job(job, JobCommand::Finish { attempt, outcome: outcome.clone() }, &ctx).await {
                Ok(_) => {
                    tracing::info!(job = %job, attempt, ?outcome, "finished");
                    return;
                }
                Err(ExecuteError::Rejected(JobRejection::AlreadyTerminal(status))) => {
                    tracing::info!(job = %job, ?status, "job ended elsewhere (e.g. cancelled); outcome not recorded");
                    return;
                }
                Err(ExecuteError::Rejected(r)) => {
                    tracing::warn!(job = %job, attempt, reason = %r, "outcome refused (fenced out)");
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
