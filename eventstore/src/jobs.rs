//! Running Job commands against the log: load the job's history, decide, seal
//! (hash-chained), append with the expected sequence, and on a concurrent
//! change reload and decide again.

use crate::error::StoreError;
use crate::store::{Appended, EventStore, StoredEvent};
use chrono::{DateTime, Utc};
use fetchml_events::envelope::DomainEvent;
use fetchml_events::hash::GENESIS;
use fetchml_events::job::{Job, JobCommand, JobEvent, JobRejection, evolve};
use fetchml_events::{Actor, CommandId, Envelope, JobId, NewEvent};
use uuid::Uuid;

/// Who asks, and which request this is.
#[derive(Clone, Debug)]
pub struct CommandContext {
    /// The id of this request; a retry of the same request carries the same id.
    pub command_id: CommandId,
    /// What set this command in motion (see [`crate::correlation`]).
    pub correlation_id: Uuid,
    pub actor: Actor,
    pub now: DateTime<Utc>,
}

impl CommandContext {
    /// A new command by `actor`, correlated with the current request scope
    /// ([`crate::correlation::scope`]) if there is one, else with itself.
    pub fn new(actor: Actor) -> Self {
        let command_id = CommandId::new();
        let correlation_id = crate::correlation::current().unwrap_or(*command_id.as_uuid());
        Self { command_id, correlation_id, actor, now: Utc::now() }
    }

    /// This command, correlated with `id` (a command that continues what
    /// another request started, such as a worker running a queued job).
    pub fn correlated(mut self, id: Uuid) -> Self {
        self.correlation_id = id;
        self
    }
}

/// A job's history as loaded from the log.
#[derive(Clone, Debug)]
pub struct LoadedJob {
    pub id: JobId,
    /// The job's subject; `None` if the job does not exist.
    pub subject: Option<String>,
    pub history: Vec<(u64, Envelope<JobEvent>)>,
    pub state: Option<Job>,
    /// For a job known from a snapshot rather than its full history (a
    /// scheduler's assignment): the sequence and hash of the last event the
    /// snapshot folded. `history` then holds only what came after.
    pub base: Option<(u64, String)>,
}

impl LoadedJob {
    /// The history of a job id nobody has used (a fresh UUIDv7): no events.
    pub fn new_job(id: JobId) -> Self {
        Self { id, subject: None, history: Vec::new(), state: None, base: None }
    }

    /// A job known from its folded `state` at sequence `seq` with hash `hash`
    /// (what a scheduler's assignment carries): a start can be decided and
    /// appended without reading the history.
    pub fn snapshot(id: JobId, subject: String, state: Job, seq: u64, hash: String) -> Self {
        Self { id, subject: Some(subject), history: Vec::new(), state: Some(state), base: Some((seq, hash)) }
    }

    /// This history with `event`, just appended at `seq`, folded in.
    pub fn with(mut self, seq: u64, event: Envelope<JobEvent>) -> Self {
        self.state = evolve(self.state.take(), &event.payload);
        self.history.push((seq, event));
        self
    }

    /// The correlation id of the event at `seq` (what a ticket names as its
    /// cause), else of the job's first event: the request that set the job,
    /// or this attempt of it, in motion. `None` for a job with no history.
    pub fn correlation_at(&self, seq: u64) -> Option<Uuid> {
        let cause = self.history.iter().find(|(s, _)| *s == seq).or(self.history.first());
        cause.map(|(_, e)| e.correlation_id)
    }

    /// The stream sequence of the job's last event, 0 if none.
    pub fn last_seq(&self) -> u64 {
        match (self.history.last(), &self.base) {
            (Some((s, _)), _) => *s,
            (None, Some((s, _))) => *s,
            (None, None) => 0,
        }
    }
    fn last_hash(&self) -> &str {
        match (self.history.last(), &self.base) {
            (Some((_, e)), _) => e.hash.as_str(),
            (None, Some((_, h))) => h.as_str(),
            (None, None) => GENESIS,
        }
    }
    /// The aggregate version of the last event (events folded so far).
    fn version(&self) -> u64 {
        match &self.base {
            // The snapshot's state counted what it folded; `history` is after it.
            Some(_) => self.state.as_ref().map(|s| s.version).unwrap_or(0),
            None => self.history.len() as u64,
        }
    }
}

/// What a successful command did.
#[derive(Clone, Debug)]
pub struct Executed {
    /// Sequence of the last event the command stored (or had stored, if this
    /// was a retry).
    pub seq: u64,
    /// The command had been stored before; nothing new was appended.
    pub duplicate: bool,
    pub state: Option<Job>,
    /// What this call appended, with sequences (empty for a duplicate).
    pub appended: Vec<(u64, Envelope<JobEvent>)>,
    /// The job's subject in the log.
    pub subject: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Rejected(#[from] JobRejection),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often a command is re-decided after losing a race before giving up.
const MAX_CONFLICT_RETRIES: usize = 8;

impl EventStore {
    /// Loads a job's history and folds it. Prefer [`EventStore::load_job_at`]
    /// when the subject is known: a filter with wildcards in front
    /// (`<ns>.ev.job.*.*.<id>`) makes the server search its subject index.
    pub async fn load_job(&self, id: JobId) -> Result<LoadedJob, StoreError> {
        self.load_job_from(id, &self.subjects().job_by_id(id)).await
    }

    /// Loads a job's history from its exact subject (a direct lookup).
    pub async fn load_job_at(&self, id: JobId, subject: &str) -> Result<LoadedJob, StoreError> {
        self.load_job_from(id, subject).await
    }

    async fn load_job_from(&self, id: JobId, filter: &str) -> Result<LoadedJob, StoreError> {
        let stored = self.load(filter).await?;
        let subject = stored.first().map(|e| e.subject.clone());
        let mut history = Vec::with_capacity(stored.len());
        let mut state = None;
        for ev in stored {
            let StoredEvent { seq, .. } = ev;
            let env = ev.decode::<JobEvent>()?;
            state = evolve(state, &env.payload);
            history.push((seq, env));
        }
        Ok(LoadedJob { id, subject, history, state, base: None })
    }

    /// Decides `cmd` against the job's current state and appends the result.
    #[tracing::instrument(skip_all, fields(job = %id, command = %ctx.command_id))]
    pub async fn execute_job(
        &self,
        id: JobId,
        cmd: JobCommand,
        ctx: &CommandContext,
    ) -> Result<Executed, ExecuteError> {
        self.execute_job_on(id, None, cmd, ctx).await
    }

    /// As [`EventStore::execute_job`], deciding first against `known` (a history
    /// the caller just loaded or built) instead of reading it again; a
    /// concurrent change is detected by the expected sequence as always, and
    /// then the job is reloaded. Saves the reads on the hot path (a new job, a
    /// worker's start and finish).
    pub async fn execute_job_on(
        &self,
        id: JobId,
        known: Option<LoadedJob>,
        cmd: JobCommand,
        ctx: &CommandContext,
    ) -> Result<Executed, ExecuteError> {
        let mut known = known;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let loaded = match known.take() {
                Some(l) => l,
                // Boxed: most callers know the job already, and the read's
                // future would otherwise be part of every call's.
                None => Box::pin(self.load_job(id)).await?,
            };
            // A retried request whose events are already stored gets the
            // original answer, however long ago it was first made.
            let cause = *ctx.command_id.as_uuid();
            if let Some((seq, _)) = loaded.history.iter().rev().find(|(_, e)| e.causation_id == cause) {
                // A job with history has a subject.
                let subject = loaded.subject.unwrap_or_default();
                return Ok(Executed { seq: *seq, duplicate: true, state: loaded.state, appended: Vec::new(), subject });
            }
            let subject = match (&loaded.subject, &cmd) {
                (Some(s), _) => s.clone(),
                (None, JobCommand::Queue { owner, spec }) => self.subjects().job(owner, &spec.pool, id),
                (None, _) => return Err(JobRejection::NotFound.into()),
            };
            let events = fetchml_events::job::decide(loaded.state.as_ref(), cmd.clone())?;
            match self.append_job_events(&loaded, &subject, events, ctx).await {
                Ok(done) => {
                    // Counted here, where every submit path ends, and only
                    // once stored and new (a duplicate returned above or
                    // with `duplicate` set is the same job again).
                    if matches!(cmd, JobCommand::Queue { .. }) && !done.duplicate {
                        metrics::counter!("fetchml_jobs_accepted_total").increment(1);
                    }
                    return Ok(done);
                }
                Err(StoreError::Conflict { .. }) if attempt < MAX_CONFLICT_RETRIES => {
                    tracing::debug!(attempt, "lost a race for the job; deciding again");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Seals `payload` as event `version` of `aggregate_id` (linked to
    /// `prev_hash`) and appends it to `subject` expecting `expected_last_seq`.
    /// For aggregates other than jobs, whose owners keep their own head.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_event<P: DomainEvent>(
        &self,
        subject: &str,
        aggregate_id: &str,
        expected_last_seq: u64,
        version: u64,
        prev_hash: &str,
        payload: P,
        ctx: &CommandContext,
    ) -> Result<(Appended, String), StoreError> {
        let (env, bytes) = seal(aggregate_id, version, prev_hash, payload, ctx)?;
        let appended = self.append(subject, expected_last_seq, &ctx.command_id.to_string(), bytes).await?;
        Ok((appended, env.hash))
    }

    /// Appends `payload` to the chain on `subject`, whose head this process
    /// does not track: reads the subject's last event for the link, and retries
    /// if another append wins. For audit facts (logins, denials) that never
    /// need a decision.
    pub async fn append_to_chain<P: DomainEvent + Clone>(
        &self,
        subject: &str,
        aggregate_id: &str,
        payload: P,
        ctx: &CommandContext,
    ) -> Result<Appended, StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let (seq, hash, version) = match self.last_on_subject(subject).await? {
                Some(last) => {
                    let v = last.json()?;
                    let hash = v["hash"].as_str().unwrap_or(GENESIS).to_owned();
                    (last.seq, hash, v["aggregate_version"].as_u64().unwrap_or(0))
                }
                None => (0, GENESIS.to_owned(), 0),
            };
            match self.append_event(subject, aggregate_id, seq, version + 1, &hash, payload.clone(), ctx).await {
                Ok((appended, _)) => return Ok(appended),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict { subject: subject.to_owned(), expected: 0 })
    }

    async fn append_job_events(
        &self,
        loaded: &LoadedJob,
        subject: &str,
        events: Vec<JobEvent>,
        ctx: &CommandContext,
    ) -> Result<Executed, StoreError> {
        let mut expected = loaded.last_seq();
        let mut prev_hash = loaded.last_hash().to_owned();
        let mut state = loaded.state.clone();
        let mut duplicate = true;
        let mut appended_events = Vec::new();
        let first_version = loaded.version() + 1;
        for (i, payload) in events.into_iter().enumerate() {
            let version = first_version + i as u64;
            state = evolve(state, &payload);
            let (env, bytes) = seal(&loaded.id.to_string(), version, &prev_hash, payload, ctx)?;
            // Nats-Msg-Id: the command id, plus the event's index when a command
            // yields several, so each event deduplicates on its own.
            let msg_id = if i == 0 { ctx.command_id.to_string() } else { format!("{}-{i}", ctx.command_id) };
            let appended = self.append(subject, expected, &msg_id, bytes).await?;
            duplicate &= appended.duplicate;
            expected = appended.seq;
            prev_hash = env.hash.clone();
            appended_events.push((appended.seq, env));
        }
        Ok(Executed { seq: expected, duplicate, state, appended: appended_events, subject: subject.to_owned() })
    }
}

/// Seals `payload` as event `version` of `aggregate_id`, linked to `prev_hash`;
/// returns the envelope and its stored bytes.
fn seal<P: DomainEvent>(
    aggregate_id: &str,
    version: u64,
    prev_hash: &str,
    payload: P,
    ctx: &CommandContext,
) -> Result<(Envelope<P>, Vec<u8>), StoreError> {
    let env = Envelope::seal(
        NewEvent {
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version: version,
            occurred_at: ctx.now,
            actor: ctx.actor.clone(),
            command_id: ctx.command_id,
            correlation_id: ctx.correlation_id,
            payload,
        },
        prev_hash,
    )
    .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let bytes = env.to_bytes().map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok((env, bytes))
}
