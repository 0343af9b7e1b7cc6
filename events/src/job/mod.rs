//! The Job aggregate: commands, events, state, and the pure `decide`/`evolve`.
//!
//! ```text
//!                 job_queued                job_started(n)
//!   (none) ───────────────▶ queued ─────────────────────────▶ running
//!                             ▲  ▲                              │
//!           job_requeued      │  │ job_started(n+1)             │ job_succeeded ──▶ succeeded
//!   (manual retry of failed,  │  │                              │ job_retry_scheduled ──▶ retry_scheduled ─┘
//!    timed_out, dead_lettered,│  └──── retry_scheduled ◀────────┤ job_failed ──▶ failed
//!    cancelled)               │                                 │ job_timed_out ──▶ timed_out
//!                             │                                 │ job_dead_lettered ──▶ dead_lettered
//!   queued | retry_scheduled | running ── job_cancelled ──▶ cancelled
//! ```
//!
//! Fencing: every attempt has a number. `Start` must name the next attempt and
//! `Finish` the current one, so a late report from an older attempt (a worker
//! that lost its lease) is rejected, and between two queueings a job has exactly
//! one terminal event. Each command yields exactly one event, so a decision is
//! stored atomically.

mod secret;
mod spec;

pub use secret::{CredentialRules, DEFAULT_NAME_PATTERNS, DEFAULT_VALUE_PREFIXES};
pub use spec::{ExecutorKind, JobSpec, Resources, RetryPolicy, SpecError, default_pool, default_priority};
// The text limits, for the filters that select by these fields.
pub use spec::{MAX_EXPERIMENT_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS};

use crate::envelope::{AggregateKind, DomainEvent, EnvelopeError};
use crate::ids::{UserName, WorkerId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The last value of one metric a job reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Metric {
    pub value: f64,
    #[serde(default)]
    pub step: Option<u64>,
}

pub type Metrics = BTreeMap<String, Metric>;

/// Where an attempt runs and what it holds there: the worker's host, the GPU
/// devices it was given (exactly these are visible to the process), and the
/// CPUs and memory reserved for it. Usage accounting and the scheduler's
/// rebuild read it back from `job_started`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// GPU device ids (as `CUDA_VISIBLE_DEVICES` names them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self == &Placement::default()
    }
}

/// A request to change a job.
// Commands and events are built once per request and serialised; boxing the
// spec would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum JobCommand {
    Queue {
        owner: UserName,
        spec: JobSpec,
    },
    /// A worker claims attempt `attempt` (must be the next one) at time `at`,
    /// on the host and devices `placement` names.
    Start {
        attempt: u32,
        worker: WorkerId,
        at: DateTime<Utc>,
        placement: Placement,
    },
    /// The attempt `attempt` ended (reported by its worker, or by another worker
    /// that found its lease expired). `jitter_permille` (0..=1000) is the random
    /// draw for the retry delay; the caller brings randomness so this stays pure.
    Finish {
        attempt: u32,
        outcome: Outcome,
        metrics: Metrics,
        at: DateTime<Utc>,
        jitter_permille: u16,
    },
    Cancel {
        reason: String,
    },
    /// Queue a finished (not succeeded) job again as a new attempt.
    Retry {
        reason: String,
    },
}

/// How an attempt ended, as the executor saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed { exit_code: Option<i32>, signal: Option<i32>, class: FailureClass, reason: String },
}

/// Why an attempt failed; retry policies choose by class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    JobQueued {
        owner: UserName,
        spec: JobSpec,
    },
    JobStarted {
        attempt: u32,
        worker: WorkerId,
        /// Where the attempt runs and what it holds (empty in events written
        /// before placements were recorded).
        #[serde(default, skip_serializing_if = "Placement::is_empty")]
        placement: Placement,
    },
    JobSucceeded {
        attempt: u32,
        exit_code: i32,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metrics: Metrics,
    },
    /// Attempt `attempt` failed and attempt `attempt + 1` may start at `not_before`.
    JobRetryScheduled {
        attempt: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        class: FailureClass,
        reason: String,
        not_before: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metrics: Metrics,
    },
    JobFailed {
        attempt: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        class: FailureClass,
        reason: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metrics: Metrics,
    },
    JobTimedOut {
        attempt: u32,
        reason: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metrics: Metrics,
    },
    /// Retries exhausted.
    JobDeadLettered {
        attempt: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        class: FailureClass,
        reason: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metrics: Metrics,
    },
    JobCancelled {
        reason: String,
    },
    /// A finished job was queued again (manual retry); attempts count anew.
    JobRequeued {
        reason: String,
    },
}

impl JobEvent {
    /// The types after which a job waits for a worker: the dispatcher sends a
    /// ticket for these and for no other.
    pub const ASKS_FOR_WORKER: [&'static str; 3] = ["job_queued", "job_retry_scheduled", "job_requeued"];
}

impl DomainEvent for JobEvent {
    const KIND: AggregateKind = AggregateKind::Job;

    fn event_type(&self) -> &'static str {
        match self {
            JobEvent::JobQueued { .. } => "job_queued",
            JobEvent::JobStarted { .. } => "job_started",
            JobEvent::JobSucceeded { .. } => "job_succeeded",
            JobEvent::JobRetryScheduled { .. } => "job_retry_scheduled",
            JobEvent::JobFailed { .. } => "job_failed",
            JobEvent::JobTimedOut { .. } => "job_timed_out",
            JobEvent::JobDeadLettered { .. } => "job_dead_lettered",
            JobEvent::JobCancelled { .. } => "job_cancelled",
            JobEvent::JobRequeued { .. } => "job_requeued",
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
                let spec =
                    payload.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| EnvelopeError::Upcast {
                        event_type: event_type.into(),
                        version,
                        reason: "payload has no spec object".into(),
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

impl JobEvent {
    /// Whether this event ends the job (until a manual retry).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobEvent::JobSucceeded { .. }
                | JobEvent::JobFailed { .. }
                | JobEvent::JobTimedOut { .. }
                | JobEvent::JobDeadLettered { .. }
                | JobEvent::JobCancelled { .. }
        )
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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

    /// Waiting for a worker.
    pub fn is_waiting(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::RetryScheduled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::RetryScheduled => "retry_scheduled",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::DeadLettered => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::RetryScheduled,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::TimedOut,
            JobStatus::DeadLettered,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The state folded from a job's events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub owner: UserName,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// The current (or last) attempt; 0 before the first start.
    pub attempt: u32,
    /// Attempts started since the job was last queued (the retry budget).
    pub attempts_in_run: u32,
    pub worker: Option<WorkerId>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub failure_class: Option<FailureClass>,
    pub reason: Option<String>,
    /// When the next attempt may start (retry_scheduled).
    pub not_before: Option<DateTime<Utc>>,
    /// The last value of each metric the job reported.
    pub metrics: Metrics,
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
    #[error("job is {} and can no longer change", .0.as_str())]
    AlreadyTerminal(JobStatus),
    #[error("job is {}, not waiting for a worker; attempt {attempt} cannot start", status.as_str())]
    NotStartable { status: JobStatus, attempt: u32 },
    #[error("attempt {got} is stale; the current attempt is {current}")]
    StaleAttempt { current: u32, got: u32 },
    #[error("job is {}, not running", .0.as_str())]
    NotRunning(JobStatus),
    #[error("the next attempt may not start before {0}")]
    NotYet(DateTime<Utc>),
    #[error("job is {}; only failed, timed out, dead-lettered or cancelled jobs can be retried", .0.as_str())]
    NotRetryable(JobStatus),
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
            JobRejection::NotYet(_) => "retry_not_due",
            JobRejection::NotRetryable(_) => "job_not_retryable",
            JobRejection::InvalidSpec(e) => e.code,
        }
    }
}

/// Decides what a command means given the current state. Pure; always yields
/// exactly one event or a rejection.
pub fn decide(state: Option<&Job>, cmd: JobCommand) -> Result<Vec<JobEvent>, JobRejection> {
    let event = match (state, cmd) {
        (None, JobCommand::Queue { owner, spec }) => {
            spec.validate()?;
            JobEvent::JobQueued { owner, spec }
        }
        (Some(_), JobCommand::Queue { .. }) => return Err(JobRejection::AlreadyExists),
        (None, _) => return Err(JobRejection::NotFound),
        (Some(job), JobCommand::Retry { reason }) => {
            if !job.status.is_terminal() || job.status == JobStatus::Succeeded {
                return Err(JobRejection::NotRetryable(job.status));
            }
            JobEvent::JobRequeued { reason }
        }
        (Some(job), _) if job.status.is_terminal() => return Err(JobRejection::AlreadyTerminal(job.status)),
        (Some(job), JobCommand::Start { attempt, worker, at, placement }) => {
            if !job.status.is_waiting() {
                return Err(JobRejection::NotStartable { status: job.status, attempt });
            }
            if attempt != job.attempt + 1 {
                return Err(JobRejection::StaleAttempt { current: job.attempt, got: attempt });
            }
            if let Some(nb) = job.not_before
                && at < nb
            {
                return Err(JobRejection::NotYet(nb));
            }
            JobEvent::JobStarted { attempt, worker, placement }
        }
        (Some(job), JobCommand::Finish { attempt, outcome, metrics, at, jitter_permille }) => {
            if job.status != JobStatus::Running {
                return Err(JobRejection::NotRunning(job.status));
            }
            if attempt != job.attempt {
                return Err(JobRejection::StaleAttempt { current: job.attempt, got: attempt });
            }
            finish(job, attempt, outcome, metrics, at, jitter_permille)
        }
        (Some(_), JobCommand::Cancel { reason }) => JobEvent::JobCancelled { reason },
    };
    Ok(vec![event])
}

/// The retry policy's verdict on an ended attempt.
fn finish(job: &Job, attempt: u32, outcome: Outcome, metrics: Metrics, at: DateTime<Utc>, jitter: u16) -> JobEvent {
    let Outcome::Failed { exit_code, signal, class, reason } = outcome else {
        return JobEvent::JobSucceeded { attempt, exit_code: 0, metrics };
    };
    let policy = &job.spec.retry;
    let retryable = policy.retry_on.contains(&class);
    if retryable && job.attempts_in_run < policy.max_attempts {
        let delay =
            chrono::Duration::milliseconds(i64::try_from(policy.backoff_ms(attempt, jitter)).unwrap_or(i64::MAX));
        let not_before = at.checked_add_signed(delay).unwrap_or(at);
        JobEvent::JobRetryScheduled { attempt, exit_code, signal, class, reason, not_before, metrics }
    } else if retryable {
        JobEvent::JobDeadLettered { attempt, exit_code, signal, class, reason, metrics }
    } else if class == FailureClass::Resource {
        JobEvent::JobTimedOut { attempt, reason, metrics }
    } else {
        JobEvent::JobFailed { attempt, exit_code, signal, class, reason, metrics }
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
                attempts_in_run: 0,
                worker: None,
                exit_code: None,
                signal: None,
                failure_class: None,
                reason: None,
                not_before: None,
                metrics: Metrics::new(),
                version: 1,
            });
        }
        (None, _) => return None,
        (Some(job), _) => job,
    };
    job.version += 1;
    if job.status.is_terminal() && !matches!(event, JobEvent::JobRequeued { .. }) {
        return Some(job);
    }
    let failed = |job: &mut Job, status, exit_code: &Option<i32>, signal: &Option<i32>, class, reason: &str| {
        job.status = status;
        job.exit_code = *exit_code;
        job.signal = *signal;
        job.failure_class = Some(class);
        job.reason = Some(reason.to_owned());
    };
    match event {
        JobEvent::JobQueued { .. } => {}
        JobEvent::JobStarted { attempt, worker, .. } => {
            job.status = JobStatus::Running;
            job.attempt = *attempt;
            job.attempts_in_run += 1;
            job.worker = Some(*worker);
            job.not_before = None;
        }
        JobEvent::JobSucceeded { exit_code, metrics, .. } => {
            job.status = JobStatus::Succeeded;
            job.exit_code = Some(*exit_code);
            job.signal = None;
            job.failure_class = None;
            job.reason = None;
            job.metrics.extend(metrics.clone());
        }
        JobEvent::JobRetryScheduled { exit_code, signal, class, reason, not_before, metrics, .. } => {
            failed(&mut job, JobStatus::RetryScheduled, exit_code, signal, *class, reason);
            job.not_before = Some(*not_before);
            job.metrics.extend(metrics.clone());
        }
        JobEvent::JobFailed { exit_code, signal, class, reason, metrics, .. } => {
            failed(&mut job, JobStatus::Failed, exit_code, signal, *class, reason);
            job.metrics.extend(metrics.clone());
        }
        JobEvent::JobTimedOut { reason, metrics, .. } => {
            failed(&mut job, JobStatus::TimedOut, &None, &None, FailureClass::Resource, reason);
            job.metrics.extend(metrics.clone());
        }
        JobEvent::JobDeadLettered { exit_code, signal, class, reason, metrics, .. } => {
            failed(&mut job, JobStatus::DeadLettered, exit_code, signal, *class, reason);
            job.metrics.extend(metrics.clone());
        }
        JobEvent::JobCancelled { reason } => {
            job.status = JobStatus::Cancelled;
            job.reason = Some(reason.clone());
            // A cancelled job has no next attempt to wait for (a cancel of a
            // scheduled retry must not keep showing when it would have run).
            job.not_before = None;
        }
        JobEvent::JobRequeued { .. } => {
            job.status = JobStatus::Queued;
            job.attempts_in_run = 0;
            job.not_before = None;
            job.exit_code = None;
            job.signal = None;
            job.failure_class = None;
            job.reason = None;
        }
    }
    Some(job)
}

/// Folds a whole history.
pub fn fold<'a>(events: impl IntoIterator<Item = &'a JobEvent>) -> Option<Job> {
    events.into_iter().fold(None, evolve)
}
