//! Query strings. Each route's parameters are one struct; a parameter the route
//! does not know is refused (`unknown_parameter`), a value that does not parse
//! or is given twice is `invalid_parameter`. Checks that need more than a type
//! (ranges, `key=value`, the caller's role) are made by the api.

use chrono::{DateTime, Utc};
use fetchml_events::job::JobStatus;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Most items one page of `GET /v1/jobs` holds, and how many by default.
pub const MAX_LIST_LIMIT: usize = 500;
pub const DEFAULT_LIST_LIMIT: usize = 50;

/// The order of `GET /v1/jobs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum SortOrder {
    /// Newest first.
    #[default]
    #[serde(rename = "-created_at")]
    NewestFirst,
    #[serde(rename = "created_at")]
    OldestFirst,
}

/// `GET /v1/jobs`: filters, order, page, and the point in time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this state.
    pub state: Option<JobStatus>,
    /// Only this user's jobs (not for roles that see no owners: 403).
    pub owner: Option<String>,
    pub pool: Option<String>,
    pub experiment: Option<String>,
    /// `key=value`: jobs with this tag.
    #[param(example = "team=vision")]
    pub tag: Option<String>,
    /// RFC 3339; inclusive.
    pub created_after: Option<DateTime<Utc>>,
    /// RFC 3339; exclusive.
    pub created_before: Option<DateTime<Utc>>,
    #[param(inline)]
    pub sort: Option<SortOrder>,
    /// 1-500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// The previous page's `next` (keyset pagination).
    pub cursor: Option<String>,
    /// Wait (at most 5 s) until the list includes the write that answered
    /// `seq: N`; 503 `not_caught_up` otherwise.
    pub after_seq: Option<u64>,
    /// The list as it was at this sequence of the log, rebuilt from the log.
    pub as_of_seq: Option<u64>,
    /// The list as it was at this time (RFC 3339), rebuilt from the log.
    pub as_of: Option<DateTime<Utc>>,
}

/// `GET /v1/jobs/counts`: the list's filters, without state, order or page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CountJobsQuery {
    /// Only this user's jobs (not for roles that see no owners: 403).
    pub owner: Option<String>,
    pub pool: Option<String>,
    pub experiment: Option<String>,
    /// `key=value`: jobs with this tag.
    #[param(example = "team=vision")]
    pub tag: Option<String>,
    /// RFC 3339; inclusive.
    pub created_after: Option<DateTime<Utc>>,
    /// RFC 3339; exclusive.
    pub created_before: Option<DateTime<Utc>>,
    /// Wait (at most 5 s) until the counts include the write that answered
    /// `seq: N`; 503 `not_caught_up` otherwise.
    pub after_seq: Option<u64>,
}

/// The read-your-writes parameter of the reads served by the read models
/// (`GET /v1/experiments`, `GET /v1/experiments/{name}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Wait (at most 5 s) until the read models include the write that
    /// answered `seq: N`; 503 `not_caught_up` otherwise.
    pub after_seq: Option<u64>,
}

/// `GET /v1/workers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkersQuery {
    /// `true`: every worker ever started (from the read model) instead of the
    /// live ones.
    pub history: Option<bool>,
}

/// `GET /v1/jobs/{id}/logs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `true`: stay open and stream new lines until the job ends.
    pub follow: Option<bool>,
    /// The first stream sequence wanted (resume with the last seen + 1).
    pub from_seq: Option<u64>,
}

/// `POST /v1/jobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// `true`: validate and normalize the spec as a submit would, and answer
    /// 200 with it; nothing is stored and no job is queued.
    pub dry_run: Option<bool>,
}

/// `GET /v1/usage`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First day (UTC, `YYYY-MM-DD`), inclusive; default 29 days before `until`.
    pub since: Option<chrono::NaiveDate>,
    /// Last day (UTC, `YYYY-MM-DD`), inclusive; default today.
    pub until: Option<chrono::NaiveDate>,
    /// Comma-separated dimensions to sum by, any of `user`, `group`, `pool`,
    /// `day` (default `day`; empty: one total). `user` and `group` need
    /// `usage:read` or `usage:read:all` (analysts see no owners: 403).
    #[param(example = "user,pool")]
    pub group_by: Option<String>,
    /// Wait (at most 5 s) until the figures include the write that answered
    /// `seq: N`; 503 `not_caught_up` otherwise.
    pub after_seq: Option<u64>,
}
