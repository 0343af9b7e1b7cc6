//! Reads of the read models. Each role reads its own table: an analyst's query
//! can only ever touch `analyst_jobs`, which has no command line, environment,
//! owner or reason column, so no query bug can leak them.

use crate::ProjectionError;
use chrono::{DateTime, Utc};
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

/// One page of jobs and the cursor of its last item (when more may follow).
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
    if let Some(s) = &f.state {
        q.push(" AND state = ").push_bind(s.clone());
    }
    if let Some(o) = &f.owner {
        q.push(" AND owner = ").push_bind(o.clone());
    }
    if let Some(p) = &f.pool {
        q.push(" AND pool = ").push_bind(p.clone());
    }
    if let Some(e) = &f.experiment {
        q.push(" AND experiment = ").push_bind(e.clone());
    }
    if let Some((k, v)) = &f.tag {
        q.push(" AND tags ->> ").push_bind(k.clone()).push(" = ").push_bind(v.clone());
    }
    if let Some(t) = f.created_after {
        q.push(" AND created_at >= ").push_bind(t);
    }
    if let Some(t) = f.created_before {
        q.push(" AND created_at < ").push_bind(t);
    }
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

const FULL_COLS: &str = "id, created_at, json_build_object(
    'id', id, 'state', state, 'attempt', attempt, 'exit_code', exit_code, 'failure_class', failure_class,
    'reason', reason, 'owner', owner, 'pool', pool, 'priority', priority, 'labels', labels,
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
