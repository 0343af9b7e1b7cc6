//! Reads of the read models. Each role reads its own view of the `jobs`
//! table: an analyst's query can only ever touch `analyst_jobs`, which has no
//! command line, environment, owner or reason column, so no query bug can
//! leak them.

use crate::ProjectionError;
use chrono::{DateTime, Utc};
use fetchml_events::job::{Job, MAX_EXPERIMENT_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS};
use fetchml_events::text::{TextError, TextKind};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

/// Which model a caller reads.
#[derive(Clone, Debug)]
pub enum Scope {
    /// `admin_jobs`: every job in full.
    All,
    /// `researcher_jobs` of these owners (the caller, and their groups').
    Owners(Vec<String>),
    /// `analyst_jobs`: summaries of every job.
    Summary,
}

impl Scope {
    /// Whether a job of `owner` is in this model.
    pub fn admits(&self, owner: &str) -> bool {
        match self {
            Scope::Owners(o) => o.iter().any(|x| x == owner),
            Scope::All | Scope::Summary => true,
        }
    }
}

/// The job list's filters, one type for every path that lists jobs: the SQL
/// of [`list_jobs`] is built from it ([`JobFilter::push_where`]) and the
/// as-of replay applies [`JobFilter::matches`], so the two cannot drift.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub owner: Option<String>,
    pub pool: Option<String>,
    pub experiment: Option<String>,
    pub tag: Option<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub ascending: bool,
    pub limit: usize,
    /// Keyset cursor: the (created_at, id) of the last item of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Longest owner or pool name a filter may give, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// Why a filter cannot be applied (the api answers 400 `invalid_parameter`,
/// naming `param`).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The value breaks the rules for free text (`fetchml_events::text`): no
    /// stored name can hold it, and Postgres could not compare it (NUL).
    #[error("{param}: {source}")]
    Text { param: &'static str, source: TextError },
    /// The caller's model does not hold what the filter selects by.
    #[error("{param}: {reason}")]
    NotInModel { param: &'static str, reason: &'static str },
}

impl FilterError {
    /// The query parameter at fault.
    pub fn param(&self) -> &'static str {
        match self {
            FilterError::Text { param, .. } | FilterError::NotInModel { param, .. } => param,
        }
    }
}

/// Checks one filter value by the rules names and tags were stored under.
pub fn check_value(param: &'static str, value: &str, max_chars: usize) -> Result<(), FilterError> {
    fetchml_events::text::check(value, TextKind::Line, max_chars).map_err(|source| FilterError::Text { param, source })
}

impl JobFilter {
    /// Checks the filter's values, and that `scope`'s model can select by them.
    pub fn check(&self, scope: &Scope) -> Result<(), FilterError> {
        if let Some(o) = &self.owner {
            check_value("owner", o, MAX_NAME_CHARS)?;
        }
        if let Some(p) = &self.pool {
            check_value("pool", p, MAX_NAME_CHARS)?;
        }
        if let Some(e) = &self.experiment {
            check_value("experiment", e, MAX_EXPERIMENT_CHARS)?;
        }
        if let Some((k, v)) = &self.tag {
            check_value("tag", k, MAX_TAG_KEY_CHARS)?;
            check_value("tag", v, MAX_TAG_VALUE_CHARS)?;
            // Analysts' summaries carry no tags (they are free text, like the
            // reason, and may say what a job does). A filter by tag is refused
            // rather than answered with nothing: an empty list would claim no
            // job has the tag, and answering by tag at all would let an analyst
            // probe tag values one request at a time.
            if matches!(scope, Scope::Summary) {
                return Err(FilterError::NotInModel {
                    param: "tag",
                    reason: "job summaries carry no tags; a tag filter needs jobs:read",
                });
            }
        }
        Ok(())
    }

    /// Whether `job` (as the domain folds it), created at `created_at`,
    /// passes the filter. The cursor and the limit are not filters.
    pub fn matches(&self, job: &Job, created_at: DateTime<Utc>) -> bool {
        self.state.as_ref().is_none_or(|s| job.status.as_str() == s)
            && self.owner.as_ref().is_none_or(|o| job.owner.as_str() == o)
            && self.pool.as_ref().is_none_or(|p| job.spec.pool.as_str() == p)
            && self.experiment.as_ref().is_none_or(|e| job.spec.experiment.as_deref() == Some(e.as_str()))
            && self.tag.as_ref().is_none_or(|(k, v)| job.spec.tags.get(k) == Some(v))
            && self.created_after.is_none_or(|t| created_at >= t)
            && self.created_before.is_none_or(|t| created_at < t)
    }

    /// The same conditions as [`JobFilter::matches`], in SQL.
    fn push_where(&self, q: &mut QueryBuilder<Postgres>) {
        if let Some(s) = &self.state {
            q.push(" AND state = ").push_bind(s.clone());
        }
        if let Some(o) = &self.owner {
            q.push(" AND owner = ").push_bind(o.clone());
        }
        if let Some(p) = &self.pool {
            q.push(" AND pool = ").push_bind(p.clone());
        }
        if let Some(e) = &self.experiment {
            q.push(" AND experiment = ").push_bind(e.clone());
        }
        if let Some((k, v)) = &self.tag {
            q.push(" AND tags ->> ").push_bind(k.clone()).push(" = ").push_bind(v.clone());
        }
        if let Some(t) = self.created_after {
            q.push(" AND created_at >= ").push_bind(t);
        }
        if let Some(t) = self.created_before {
            q.push(" AND created_at < ").push_bind(t);
        }
    }
}

/// One page of jobs and the cursor of its last item (when more may follow).
/// The filter should have passed [`JobFilter::check`] for `scope`.
pub async fn list_jobs(
    pool: &PgPool,
    scope: &Scope,
    f: &JobFilter,
) -> Result<(Vec<Value>, Option<(DateTime<Utc>, Uuid)>), ProjectionError> {
    let (table, cols) = match scope {
        Scope::All => ("admin_jobs", FULL_COLS),
        Scope::Owners(_) => ("researcher_jobs", FULL_COLS),
        Scope::Summary => ("analyst_jobs", SUMMARY_COLS),
    };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!("SELECT {cols} FROM {table} WHERE true"));
    if let Scope::Owners(owners) = scope {
        q.push(" AND owner = ANY(").push_bind(owners.clone()).push(")");
    }
    f.push_where(&mut q);
    let (cmp, dir) = if f.ascending { (">", "ASC") } else { ("<", "DESC") };
    if let Some((t, id)) = f.after {
        q.push(format!(" AND (created_at, id) {cmp} (")).push_bind(t).push(", ").push_bind(id).push(")");
    }
    q.push(format!(" ORDER BY created_at {dir}, id {dir} LIMIT ")).push_bind((f.limit + 1) as i64);
    let rows = q.build().fetch_all(pool).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for r in rows.iter().take(f.limit) {
        keys.push((r.try_get::<DateTime<Utc>, _>("created_at")?, r.try_get::<Uuid, _>("id")?));
        items.push(r.try_get::<Value, _>("item")?);
    }
    let next = (rows.len() > f.limit).then(|| keys.last().copied()).flatten();
    Ok((items, next))
}

/// How many jobs of the filter (its `state`, order and page aside) are in
/// each state, in the caller's model.
pub async fn count_jobs(pool: &PgPool, scope: &Scope, f: &JobFilter) -> Result<Vec<(String, i64)>, ProjectionError> {
    // Every job, counted: the projector's running count, not a scan of them all.
    let unfiltered = f.owner.is_none()
        && f.pool.is_none()
        && f.experiment.is_none()
        && f.tag.is_none()
        && f.created_after.is_none()
        && f.created_before.is_none();
    if unfiltered && matches!(scope, Scope::All | Scope::Summary) {
        return jobs_by_state(pool).await;
    }
    let table = match scope {
        Scope::All => "admin_jobs",
        Scope::Owners(_) => "researcher_jobs",
        Scope::Summary => "analyst_jobs",
    };
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT state, count(*) AS n FROM {table} WHERE true"));
    if let Scope::Owners(owners) = scope {
        q.push(" AND owner = ANY(").push_bind(owners.clone()).push(")");
    }
    JobFilter { state: None, ..f.clone() }.push_where(&mut q);
    q.push(" GROUP BY state");
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?))).collect()
}

const FULL_COLS: &str = "id, created_at, json_build_object(
    'id', id, 'state', state, 'attempt', attempt, 'exit_code', exit_code, 'failure_class', failure_class,
    'reason', reason, 'not_before', not_before, 'owner', owner, 'pool', pool, 'priority', priority, 'labels', labels,
    'experiment', experiment, 'tags', tags, 'metrics', metrics, 'worker', worker,
    'created_at', created_at, 'started_at', started_at, 'finished_at', finished_at,
    'updated_at', updated_at, 'seq', last_seq)::jsonb AS item";

const SUMMARY_COLS: &str = "id, created_at, json_build_object(
    'id', id, 'state', state, 'attempt', attempt, 'exit_code', exit_code, 'failure_class', failure_class,
    'pool', pool, 'priority', priority, 'labels', labels, 'experiment', experiment, 'metrics', metrics,
    'created_at', created_at, 'started_at', started_at, 'finished_at', finished_at,
    'updated_at', updated_at, 'seq', last_seq)::jsonb AS item";

/// Experiments visible in `scope`: job counts by state, and per metric the last,
/// lowest and highest value.
pub async fn experiments(pool: &PgPool, scope: &Scope, name: Option<&str>) -> Result<Vec<Value>, ProjectionError> {
    let (table, owners) = match scope {
        Scope::All => ("admin_jobs", None),
        Scope::Owners(o) => ("researcher_jobs", Some(o.clone())),
        Scope::Summary => ("analyst_jobs", None),
    };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT experiment, count(*) AS jobs,
            count(*) FILTER (WHERE state IN ('queued', 'retry_scheduled')) AS waiting,
            count(*) FILTER (WHERE state = 'running') AS running,
            count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
            count(*) FILTER (WHERE state IN ('failed', 'timed_out', 'dead_lettered')) AS failed,
            count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
            max(updated_at) AS updated_at
         FROM {table} WHERE experiment IS NOT NULL"
    ));
    if let Some(o) = &owners {
        q.push(" AND owner = ANY(").push_bind(o.clone()).push(")");
    }
    if let Some(n) = name {
        q.push(" AND experiment = ").push_bind(n.to_owned());
    }
    q.push(" GROUP BY experiment ORDER BY experiment");
    let rows = q.build().fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let exp: String = r.try_get("experiment")?;
        let mut mq: QueryBuilder<Postgres> = QueryBuilder::new(
            "SELECT metric, (array_agg(last_value ORDER BY updated_at DESC))[1] AS last_value,
                min(min_value) AS min_value, max(max_value) AS max_value
             FROM experiment_metrics WHERE experiment = ",
        );
        mq.push_bind(exp.clone());
        if let Some(o) = &owners {
            mq.push(" AND owner = ANY(").push_bind(o.clone()).push(")");
        }
        mq.push(" GROUP BY metric ORDER BY metric");
        let mut metrics = serde_json::Map::new();
        for m in mq.build().fetch_all(pool).await? {
            metrics.insert(
                m.try_get::<String, _>("metric")?,
                json!({
                    "last": m.try_get::<f64, _>("last_value")?,
                    "min": m.try_get::<f64, _>("min_value")?,
                    "max": m.try_get::<f64, _>("max_value")?,
                }),
            );
        }
        out.push(json!({
            "name": exp,
            "jobs": r.try_get::<i64, _>("jobs")?,
            "waiting": r.try_get::<i64, _>("waiting")?,
            "running": r.try_get::<i64, _>("running")?,
            "succeeded": r.try_get::<i64, _>("succeeded")?,
            "failed": r.try_get::<i64, _>("failed")?,
            "cancelled": r.try_get::<i64, _>("cancelled")?,
            "updated_at": r.try_get::<Option<DateTime<Utc>>, _>("updated_at")?,
            "metrics": metrics,
        }));
    }
    Ok(out)
}

/// Every worker ever started, newest first.
pub async fn worker_history(pool: &PgPool, limit: i64) -> Result<Vec<Value>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT json_build_object('id', id, 'pool', pool, 'labels', labels, 'concurrency', concurrency, 'host', host,
            'pid', pid, 'state', state, 'started_at', started_at, 'stopped_at', stopped_at)::jsonb AS item
         FROM workers ORDER BY started_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| r.try_get::<Value, _>("item").map_err(Into::into)).collect()
}

/// How many jobs are in each state, as the projector keeps it
/// (`job_counts`: a few rows, whatever the number of jobs). For the
/// `fetchml_jobs` gauge.
pub async fn jobs_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, ProjectionError> {
    Ok(sqlx::query_as("SELECT state, n FROM job_counts ORDER BY state").fetch_all(pool).await?)
}

/// Whose usage a caller reads, and from which table.
#[derive(Clone, Debug)]
pub enum UsageScope {
    /// `usage_daily`, every owner.
    All,
    /// `usage_daily` of one owner.
    Owner(String),
    /// `analyst_usage_daily`: per pool and day, no owner column at all.
    Summary,
}

/// Usage summed over the dimensions asked for (the others are `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSums {
    pub owner: Option<String>,
    pub pool: Option<String>,
    pub day: Option<chrono::NaiveDate>,
    pub attempts: i64,
    pub slot_us: i64,
    pub gpu_us: i64,
    pub cpu_us: i64,
    pub memory_mb_s: i64,
}

/// Usage of days `since..=until` in `scope`, summed per owner (if
/// `by_owner`; never for [`UsageScope::Summary`]), pool (if `by_pool`) and
/// day (if `by_day`), ordered by them.
pub async fn usage(
    pool: &PgPool,
    scope: &UsageScope,
    since: chrono::NaiveDate,
    until: chrono::NaiveDate,
    by_owner: bool,
    by_pool: bool,
    by_day: bool,
) -> Result<Vec<UsageSums>, ProjectionError> {
    let (table, has_owner) = match scope {
        UsageScope::All | UsageScope::Owner(_) => ("usage_daily", true),
        UsageScope::Summary => ("analyst_usage_daily", false),
    };
    let owner = if by_owner && has_owner { "owner" } else { "NULL::text" };
    let pool_col = if by_pool { "pool" } else { "NULL::text" };
    let day = if by_day { "day" } else { "NULL::date" };
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {owner} AS owner, {pool_col} AS pool, {day} AS day, sum(attempts)::int8 AS attempts,
            sum(slot_us)::int8 AS slot_us, sum(gpu_us)::int8 AS gpu_us, sum(cpu_us)::int8 AS cpu_us,
            sum(memory_mb_s)::int8 AS memory_mb_s
         FROM {table} WHERE day >= "
    ));
    q.push_bind(since).push(" AND day <= ").push_bind(until);
    if let UsageScope::Owner(o) = scope {
        q.push(" AND owner = ").push_bind(o.clone());
    }
    q.push(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(UsageSums {
                owner: r.try_get("owner")?,
                pool: r.try_get("pool")?,
                day: r.try_get("day")?,
                attempts: r.try_get("attempts")?,
                slot_us: r.try_get("slot_us")?,
                gpu_us: r.try_get("gpu_us")?,
                cpu_us: r.try_get("cpu_us")?,
                memory_mb_s: r.try_get("memory_mb_s")?,
            })
        })
        .collect()
}
