//! The Job aggregate: commands, events, state, and the pure `decide`/`evolve`.
//!
//! Lifecycle (this issue's slice; retries, timeouts and leases extend it):
//!
//! ```text
//!   (none) --job_queued--> queued --job_started(attempt n)--> running
//!   running --job_succeeded--> succeeded
//!   running --job_failed-----> failed
//!   queued|running --job_cancelled--> cancelled
//! ```
//!
//! Fencing: every attempt has a number. `Start` must name the next attempt and
//! `Finish` the current one, so a late report from an older attempt is rejected
//! and a job never gets two terminal events.

mod spec;

pub use spec::{ExecutorKind, JobSpec, SpecError, default_pool, default_priority};

use crate::envelope::{AggregateKind, DomainEvent, EnvelopeError};
use crate::ids::{UserName, WorkerId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to change a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobCommand {
    Queue { owner: UserName, spec: JobSpec },
    /// A worker claims attempt `attempt` (must be the next one).
    Start { attempt: u32, worker: WorkerId },
    /// The worker running `attempt` reports how it ended.
    Finish { attempt: u32, outcome: Outcome },
    Cancel { reason: String },
}

/// How an attempt ended, as the executor saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed {
        exit_code: Option<i32>,
        signal: Option<i32>,
        class: FailureClass,
        reason: String,
    },
}

/// Why an attempt failed; retry policies choose by class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Worker lost, killed by a signal, out of memory.
    Infrastructure,
    /// The program exited non-zero or could not be started.
    Code,
    /// The job ran out of time.
    Resource,
    Unknown,
}

/// A fact about a job. Internally tagged: `{"type": "job_started", ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    JobQueued { owner: UserName, spec: JobSpec },
    JobStarted { attempt: u32, worker: WorkerId },
    JobSucceeded { attempt: u32, exit_code: i32 },
    JobFailed {
        attempt: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        class: FailureClass,
        reason: String,
    },
    JobCancelled { reason: String },
}

impl DomainEvent for JobEvent {
    const KIND: AggregateKind = AggregateKind::Job;

    fn event_type(&self) -> &'static str {
        match self {
            JobEvent::JobQueued { .. } => "job_queued",
            JobEvent::JobStarted { .. } => "job_started",
            JobEvent::JobSucceeded { .. } => "job_succeeded",
            JobEvent::JobFailed { .. } => "job_failed",
            JobEvent::JobCancelled { .. } => "job_cancelled",
        }
    }

    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            // v2: spec.timeout (seconds) was renamed spec.timeout_secs.
            "job_queued" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, version: u32, mut payload: Value) -> Result<Value, EnvelopeError> {
        match (event_type, version) {
            ("job_queued", 1) => {
                let spec = payload.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| {
                    EnvelopeError::Upcast {
                        event_type: event_type.into(),
                        version,
                        reason: "payload has no spec object".into(),
                    }
                })?;
                if let Some(t) = spec.remove("timeout") {
                    spec.insert("timeout_secs".into(), t);
                }
                Ok(payload)
            }
            (_, v) if v == Self::schema_version(event_type) => Ok(payload),
            _ => Err(EnvelopeError::Upcast {
                event_type: event_type.into(),
                version,
                reason: "no upcaster for this version".into(),
            }),
        }
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    RetryScheduled,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    DeadLettered,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded
                | JobStatus::Failed
                | JobStatus::Cancelled
                | JobStatus::TimedOut
                | JobStatus::DeadLettered
        )
    }
}

/// The state folded from a job's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    pub owner: UserName,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// The current (or last) attempt; 0 before the first start.
    pub attempt: u32,
    pub worker: Option<WorkerId>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub failure_class: Option<FailureClass>,
    pub reason: Option<String>,
    /// Number of events folded (the aggregate version).
    pub version: u64,
}

/// Why a command was refused. Each variant maps to a stable code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobRejection {
    #[error("job already exists")]
    AlreadyExists,
    #[error("job not found")]
    NotFound,
    #[error("job is {0:?} and can no longer change")]
    AlreadyTerminal(JobStatus),
    #[error("job is {status:?}, not queued; attempt {attempt} cannot start")]
    NotStartable { status: JobStatus, attempt: u32 },
    #[error("attempt {got} is stale; the current attempt is {current}")]
    StaleAttempt { current: u32, got: u32 },
    #[error("job is {0:?}, not running")]
    NotRunning(JobStatus),
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] SpecError),
}

impl JobRejection {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            JobRejection::AlreadyExists => "job_exists",
            JobRejection::NotFound => "job_not_found",
            JobRejection::AlreadyTerminal(_) => "job_terminal",
            JobRejection::NotStartable { .. } => "job_not_startable",
            JobRejection::StaleAttempt { .. } => "stale_attempt",
            JobRejection::NotRunning(_) => "job_not_running",
            JobRejection::InvalidSpec(e) => e.code,
        }
    }
}

/// Decides what a command means given the current state. Pure.
pub fn decide(state: Option<&Job>, cmd: JobCommand) -> Result<Vec<JobEvent>, JobRejection> {
    match (state, cmd) {
        (None, JobCommand::Queue { owner, spec }) => {
            spec.validate()?;
            Ok(vec![JobEvent::JobQueued { owner, spec }])
        }
        (Some(_), JobCommand::Queue { .. }) => Err(JobRejection::AlreadyExists),
        (None, _) => Err(JobRejection::NotFound),
        (Some(job), _) if job.status.is_terminal() => Err(JobRejection::AlreadyTerminal(job.status)),
        (Some(job), JobCommand::Start { attempt, worker }) => {
            if job.status != JobStatus::Queued && job.status != JobStatus::RetryScheduled {
                return Err(JobRejection::NotStartable { status: job.status, attempt });
            }
            if attempt != job.attempt + 1 {
                return Err(JobRejection::StaleAttempt { current: job.attempt, got: attempt });
            }
            Ok(vec![JobEvent::JobStarted { attempt, worker }])
        }
        (Some(job), JobCommand::Finish { attempt, outcome }) => {
            if job.status != JobStatus::Running {
                return Err(JobRejection::NotRunning(job.status));
            }
            if attempt != job.attempt {
                return Err(JobRejection::StaleAttempt { current: job.attempt, got: attempt });
            }
            Ok(vec![match outcome {
                Outcome::Succeeded => JobEvent::JobSucceeded { attempt, exit_code: 0 },
                Outcome::Failed { exit_code, signal, class, reason } => {
                    JobEvent::JobFailed { attempt, exit_code, signal, class, reason }
                }
            }])
        }
        (Some(_), JobCommand::Cancel { reason }) => Ok(vec![JobEvent::JobCancelled { reason }]),
    }
}

/// Folds one event into the state. Events are facts: evolve never refuses one,
/// but an event that cannot apply (which `decide` never produces) leaves the
/// state as it was apart from the version.
pub fn evolve(state: Option<Job>, event: &JobEvent) -> Option<Job> {
    let mut job = match (state, event) {
        (None, JobEvent::JobQueued { owner, spec }) => {
            return Some(Job {
                owner: owner.clone(),
                spec: spec.clone(),
                status: JobStatus::Queued,
                attempt: 0,
                worker: None,
                exit_code: None,
                signal: None,
                failure_class: None,
                reason: None,
                version: 1,
            });
        }
        (None, _) => return None,
        (Some(job), _) => job,
    };
    job.version += 1;
    if job.status.is_terminal() {
        return Some(job);
    }
    match event {
        JobEvent::JobQueued { .. } => {}
        JobEvent::JobStarted { attempt, worker } => {
            job.status = JobStatus::Running;
            job.attempt = *attempt;
            job.worker = Some(*worker);
        }
        JobEvent::JobSucceeded { exit_code, .. } => {
            job.status = JobStatus::Succeeded;
            job.exit_code = Some(*exit_code);
        }
        JobEvent::JobFailed { exit_code, signal, class, reason, .. } => {
            job.status = JobStatus::Failed;
            job.exit_code = *exit_code;
            job.signal = *signal;
            job.failure_class = Some(*class);
            job.reason = Some(reason.clone());
        }
        JobEvent::JobCancelled { reason } => {
            job.status = JobStatus::Cancelled;
            job.reason = Some(reason.clone());
        }
    }
    Some(job)
}

/// Folds a whole history.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a JobEvent>) -> Option<Job> {
    events.into_iter().fold(None, evolve)
}
