//! `GET /v1/audit`: the whole log as an auditor reads it, every family of
//! events (jobs, users: logins and refusals; workers; audit checkpoints).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Most entries one page of `GET /v1/audit` holds, and how many by default.
pub const MAX_AUDIT_LIMIT: usize = 500;
pub const DEFAULT_AUDIT_LIMIT: usize = 100;

/// Whether the request an event records was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Accepted,
    /// `authentication_failed` and `access_denied`.
    Refused,
}

/// The order of `GET /v1/audit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditOrder {
    #[default]
    Newest,
    Oldest,
}

/// `GET /v1/audit`: filters, order and page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The event family: `job`, `user`, `worker`, `pool` or `audit`.
    #[param(example = "user")]
    pub family: Option<String>,
    /// Who caused it: a user name, a worker id or a system component.
    pub actor: Option<String>,
    /// One aggregate: a job id, a user name or a worker id.
    pub aggregate: Option<String>,
    /// One event type, e.g. `access_denied`.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "access_denied")]
    pub kind: Option<String>,
    #[param(inline)]
    pub outcome: Option<AuditOutcome>,
    /// RFC 3339; inclusive.
    pub since: Option<DateTime<Utc>>,
    /// RFC 3339; exclusive.
    pub until: Option<DateTime<Utc>>,
    /// `newest` (default) or `oldest` first.
    #[param(inline)]
    pub order: Option<AuditOrder>,
    /// 1-500, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The previous page's `next`: a stream sequence to continue from
    /// (below it for `newest`, above it for `oldest`).
    pub cursor: Option<u64>,
}

/// One event of the log, with what an auditor filters on pulled out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Who caused it (`{"kind": "user", "name": ...}`, `worker`, `system`).
    pub actor: Value,
    pub aggregate_id: String,
    pub correlation_id: String,
    /// `job`, `user`, `worker`, `pool` or `audit`: the family of its subject.
    pub family: String,
    pub hash: String,
    pub occurred_at: DateTime<Utc>,
    pub outcome: AuditOutcome,
    /// The event's own fields, as stored.
    pub payload: Value,
    /// The stream sequence: its position in the log.
    pub seq: u64,
    /// The client address, for the events of requests (logins, refusals).
    pub source: Option<String>,
    #[serde(rename = "type")]
    #[schema(example = "user_authenticated")]
    pub kind: String,
}

/// A page of `GET /v1/audit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; `null` when the log holds no more
    /// in this direction. A page may hold fewer than `limit` entries and still
    /// have a `next`: one request reads a bounded stretch of the log.
    pub next: Option<u64>,
    /// The last sequence of the log when the page was read.
    pub head: u64,
}
