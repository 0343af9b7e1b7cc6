//! Answers. Fields are declared in alphabetical order and `None` is sent as
//! `null` (not left out), as the api has always answered.

use crate::ErrorDetail;
use chrono::{DateTime, Utc};
use fetchml_events::ids::PoolName;
use fetchml_events::job::{FailureClass, JobSpec, JobStatus, Metric, Resources};
use fetchml_events::{JobId, UserName, WorkerId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

/// 202 to `POST /v1/jobs`: `job_queued` is stored in the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    /// `true`: an `Idempotency-Key` named a job already queued by the same
    /// request; nothing new was stored.
    pub duplicate: bool,
    pub id: JobId,
    /// The event's sequence in the log (pass it as `after_seq`).
    pub seq: u64,
}

/// 200 to `POST /v1/jobs?dry_run=true`: the spec is valid; this is the job
/// it would queue (normalized, defaults filled in). Nothing was stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Always `true`: nothing was queued.
    pub dry_run: bool,
    pub spec: JobSpec,
}

/// One job of a batch: stored, or (NATS failed mid-batch) not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Stored(Submitted),
    Failed(BatchFailure),
}

/// A job of a batch that could not be stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchFailure {
    pub error: ErrorDetail,
    pub id: JobId,
}

/// The answer to `POST /v1/jobs/batch`: one item per spec, in request order;
/// `error` (the first failure's) only when some could not be stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BatchAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    pub jobs: Vec<BatchItem>,
}

/// 202 to a command on a job (cancel, retry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommandAccepted {
    /// The event's sequence in the log.
    pub seq: u64,
}

/// `POST /v1/auth/login`: a session token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoginAnswer {
    pub expires_at: DateTime<Utc>,
    pub role: String,
    /// `fms_...`: send it as `Authorization: Bearer <token>`.
    pub token: String,
    pub user: UserName,
}

/// `GET /v1/auth/whoami`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    pub groups: BTreeSet<String>,
    pub permissions: BTreeSet<String>,
    pub role: String,
    pub user: UserName,
}

/// `GET /v1/jobs/{id}` for a caller who sees the job in full: folded from the
/// job's own events (strongly consistent).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// The current (or last) attempt; 0 before the first start.
    pub attempt: u32,
    /// Attempts started since the job was last queued (the retry budget).
    pub attempts_in_run: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub failure_class: Option<FailureClass>,
    pub finished_at: Option<DateTime<Utc>>,
    pub id: JobId,
    pub metrics: BTreeMap<String, Metric>,
    /// When the next attempt may start (`retry_scheduled`).
    pub not_before: Option<DateTime<Utc>>,
    pub owner: UserName,
    pub reason: Option<String>,
    /// The sequence of the job's last event.
    pub seq: u64,
    pub signal: Option<i32>,
    pub spec: JobSpec,
    pub started_at: Option<DateTime<Utc>>,
    pub state: JobStatus,
    /// Number of events folded.
    pub version: u64,
    pub worker: Option<WorkerId>,
    /// For an unfinished job: where the scheduler has it and, while it
    /// waits, its position and why (priority, share, usage, fit). Absent
    /// when no scheduler answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<crate::Scheduling>,
}

/// `GET /v1/jobs/{id}` for a caller with `jobs:read:summary` only: no command
/// line, environment, working directory, owner, tags or reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub attempt: u32,
    pub created_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub experiment: Option<String>,
    pub failure_class: Option<FailureClass>,
    pub finished_at: Option<DateTime<Utc>>,
    pub id: JobId,
    pub labels: Vec<String>,
    pub metrics: BTreeMap<String, Metric>,
    pub pool: PoolName,
    pub priority: u8,
    pub resources: Resources,
    pub seq: u64,
    pub signal: Option<i32>,
    pub started_at: Option<DateTime<Utc>>,
    pub state: JobStatus,
    pub version: u64,
}

/// `GET /v1/jobs/{id}`: in full, or the summary (by the caller's permissions).
/// A summary has no `spec`, a full view has no top-level `pool`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum JobAnswer {
    Full(Box<JobView>),
    Summary(Box<JobSummary>),
}

/// One job of a list, from the caller's read model. The summary model (for
/// `jobs:read:summary`) has no `owner`, `reason`, `tags`, `not_before` or
/// `worker`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobRow {
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub exit_code: Option<i32>,
    pub experiment: Option<String>,
    pub failure_class: Option<FailureClass>,
    pub finished_at: Option<DateTime<Utc>>,
    pub id: JobId,
    pub labels: Vec<String>,
    pub metrics: BTreeMap<String, Metric>,
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub owner: Option<String>,
    pub pool: String,
    pub priority: i32,
    #[serde(default)]
    pub reason: Option<String>,
    pub seq: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub state: JobStatus,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub worker: Option<String>,
}

/// `GET /v1/jobs`: one page from the caller's read model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    /// Rows as the read model holds them.
    #[schema(value_type = Vec<JobRow>)]
    pub items: Vec<Value>,
    /// The `cursor` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next: Option<String>,
}

/// `GET /v1/jobs/counts`: the caller's jobs (in their read model) by state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    /// Every job state (`queued`, `running`, ...), 0 included.
    #[schema(example = json!({"queued": 3, "running": 1, "retry_scheduled": 0, "succeeded": 40, "failed": 2, "cancelled": 0, "timed_out": 0, "dead_lettered": 1}))]
    pub by_state: BTreeMap<String, u64>,
    pub total: u64,
}

/// One job of `GET /v1/jobs?as_of_seq=` (or `as_of=`), folded from the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AsOfJob {
    pub attempt: u32,
    pub created_at: DateTime<Utc>,
    pub exit_code: Option<i32>,
    pub experiment: Option<String>,
    pub failure_class: Option<FailureClass>,
    pub id: JobId,
    pub metrics: BTreeMap<String, Metric>,
    /// Absent for callers who see summaries only (as are `reason` and `tags`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserName>,
    pub pool: PoolName,
    pub priority: u8,
    /// For full readers: the reason, or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Option<String>>,
    pub seq: u64,
    pub state: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// `GET /v1/jobs?as_of_seq=N` (or `as_of=TIME`): the list as it was then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AsOfPage {
    /// The last sequence folded.
    pub as_of_seq: u64,
    pub items: Vec<AsOfJob>,
    /// Jobs matching the filters (`items` holds at most `limit` of them).
    pub total: u64,
}

/// `GET /v1/jobs`: a page, or with `as_of_seq`/`as_of` the list of then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum JobsAnswer {
    Page(JobPage),
    AsOf(AsOfPage),
}

/// One stored event of a job, as in the log, with its stream sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredEvent {
    pub actor: Value,
    pub aggregate_id: String,
    pub aggregate_kind: String,
    pub aggregate_version: u64,
    pub causation_id: String,
    pub correlation_id: String,
    pub event_id: String,
    /// SHA-256 of the canonical JSON of the envelope without `hash`.
    pub hash: String,
    pub occurred_at: DateTime<Utc>,
    /// The event's own fields (by `type`).
    pub payload: Value,
    /// The hash of the job's previous event (empty for the first).
    pub prev_hash: String,
    pub schema_version: u32,
    pub seq: u64,
    #[serde(rename = "type")]
    #[schema(example = "job_queued")]
    pub kind: String,
}

/// `GET /v1/jobs/{id}/events`: the job's events in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    #[schema(value_type = Vec<StoredEvent>)]
    pub items: Vec<Value>,
}

/// One line of `GET /v1/jobs/{id}/logs` (NDJSON: one object per line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub attempt: u32,
    pub job_id: JobId,
    pub line: String,
    /// The PROGRESS stream's sequence (resume with `from_seq` = this + 1).
    pub seq: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
}

/// The last, lowest and highest value of one metric in an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSummary {
    pub last: f64,
    pub max: f64,
    pub min: f64,
}

/// Jobs of one experiment (in the caller's read model), counted by state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Experiment {
    pub cancelled: i64,
    /// Failed, timed out or dead-lettered.
    pub failed: i64,
    pub jobs: i64,
    pub metrics: BTreeMap<String, MetricSummary>,
    pub name: String,
    pub running: i64,
    pub succeeded: i64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Queued or waiting for a retry.
    pub waiting: i64,
}

/// `GET /v1/experiments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExperimentList {
    #[schema(value_type = Vec<Experiment>)]
    pub items: Vec<Value>,
}

/// A worker: live (from the registry) or, with `history=true`, as recorded.
/// Live entries carry `running`, `draining` and `seen_at`; recorded ones
/// `state` and `stopped_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    pub concurrency: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<bool>,
    pub host: String,
    pub id: String,
    pub labels: Vec<String>,
    pub pid: u32,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    /// Recorded workers: `running` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
}

/// `GET /v1/workers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    #[schema(value_type = Vec<Worker>)]
    pub items: Vec<Value>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// The event log's last sequence.
    pub last_seq: u64,
    #[schema(example = "connected")]
    pub nats: String,
    /// Events the read models could not store (`null`: unknown).
    pub projection_faults: Option<u64>,
    /// `up` or `unavailable` (Postgres; does not decide readiness): the
    /// writer's database, where the projector stores the read models.
    pub read_models: String,
    /// `up` or `unavailable`: the read replica the queries read
    /// (`postgres.read_url`); `null` when the queries read the writer's.
    #[serde(default)]
    pub read_replica: Option<String>,
    #[schema(example = "ready")]
    pub status: String,
}

/// A dimension `GET /v1/usage` sums by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageDimension {
    User,
    /// The user's group in the scheduling settings (`null`: in none).
    Group,
    Pool,
    Day,
}

impl UsageDimension {
    pub const ALL: [UsageDimension; 4] =
        [UsageDimension::User, UsageDimension::Group, UsageDimension::Pool, UsageDimension::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            UsageDimension::User => "user",
            UsageDimension::Group => "group",
            UsageDimension::Pool => "pool",
            UsageDimension::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Resources held by ended attempts: an attempt runs from `job_started` to
/// the event that ends it, holding one job slot and the GPUs, CPUs and memory
/// of its placement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageFigures {
    /// Attempts that started in the period (and have ended).
    pub attempts: u64,
    pub cpu_seconds: f64,
    pub gpu_seconds: f64,
    pub memory_mb_seconds: u64,
    /// Seconds of job slots held (wall-clock time of the attempts).
    pub slot_seconds: f64,
}

/// One row of `GET /v1/usage`: the figures of one combination of the
/// dimensions asked for; a dimension not asked for is `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub attempts: u64,
    pub cpu_seconds: f64,
    /// UTC day, `YYYY-MM-DD`.
    pub day: Option<chrono::NaiveDate>,
    pub gpu_seconds: f64,
    /// With `group_by=group`, `null` is the users in no group.
    pub group: Option<String>,
    pub memory_mb_seconds: u64,
    pub pool: Option<String>,
    pub slot_seconds: f64,
    pub user: Option<String>,
}

/// `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub group_by: Vec<UsageDimension>,
    pub rows: Vec<UsageRow>,
    pub since: chrono::NaiveDate,
    /// The sum of every row.
    pub total: UsageFigures,
    pub until: chrono::NaiveDate,
}
