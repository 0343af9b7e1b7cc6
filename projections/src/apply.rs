//! Folding events into the read models, a batch at a time.
//!
//! A batch is applied with a handful of multi-row statements instead of
//! several statements per event: each job's events are split into "layers"
//! (a job's first event in the batch is in layer 0, its second in layer 1,
//! ...), so within a layer every job appears at most once and rows of one kind
//! can go to Postgres together (`UNNEST` of one array per column), while each
//! job still sees its events in log order.
//!
//! Every statement is guarded by the row's `last_seq`, so applying an event
//! twice changes nothing (replays after a crash between commit and checkpoint
//! are harmless, and the checkpoint is in the same transaction anyway).
//!
//! Table names are unqualified: a rebuild points `search_path` at a shadow
//! schema and the same code fills fresh tables.

use crate::ProjectionError;
use crate::bulk::array;
use chrono::{DateTime, Utc};
use fetchml_events::envelope::peek;
use fetchml_events::job::{JobEvent, Metrics};
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{AggregateKind, Envelope};
use fetchml_eventstore::StoredEvent;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// The tables that hold the same full job rows.
const FULL: [&str; 2] = ["admin_jobs", "researcher_jobs"];

fn db(e: sqlx::Error) -> ProjectionError {
    ProjectionError::Postgres(e)
}

/// A job event of the batch, decoded once.
struct JobEv {
    seq: i64,
    id: Uuid,
    env: Envelope<JobEvent>,
}

/// Applies `batch` (in log order) on `conn`, which should be in a transaction.
pub async fn apply_batch(conn: &mut PgConnection, batch: &[StoredEvent]) -> Result<(), ProjectionError> {
    let mut jobs = Vec::with_capacity(batch.len());
    for ev in batch {
        let Some(peeked) = peek(&ev.payload) else {
            tracing::error!(seq = ev.seq, "event is not an envelope; skipped");
            continue;
        };
        match peeked.aggregate_kind {
            AggregateKind::Job => match Envelope::<JobEvent>::decode(&ev.payload) {
                Ok(env) => match env.aggregate_id.parse::<Uuid>() {
                    Ok(id) => jobs.push(JobEv { seq: ev.seq as i64, id, env }),
                    Err(_) => tracing::error!(seq = ev.seq, "job event without a job id; skipped"),
                },
                Err(e) => tracing::error!(seq = ev.seq, error = %e, "undecodable job event; skipped"),
            },
            // Workers are few and touch only their own table: one by one.
            AggregateKind::Worker => {
                if let Ok(env) = Envelope::<WorkerEvent>::decode(&ev.payload) {
                    apply_worker(conn, ev.seq, &env).await?;
                }
            }
            AggregateKind::User => {}
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    timeline(conn, &jobs).await?;
    let mut depth: HashMap<Uuid, usize> = HashMap::with_capacity(jobs.len());
    let mut layers: Vec<Vec<&JobEv>> = Vec::new();
    for j in &jobs {
        let d = depth.entry(j.id).or_insert(0);
        if layers.len() <= *d {
            layers.push(Vec::new());
        }
        layers[*d].push(j);
        *d += 1;
    }
    for layer in layers {
        apply_layer(conn, &layer).await?;
    }
    Ok(())
}

async fn timeline(conn: &mut PgConnection, jobs: &[JobEv]) -> Result<(), ProjectionError> {
    let n = jobs.len();
    let (mut ids, mut seqs, mut types, mut attempts, mut actors, mut ats) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for j in jobs {
        ids.push(j.id);
        seqs.push(j.seq);
        types.push(j.env.event_type.as_str());
        attempts.push(attempt_of(&j.env.payload).map(|a| a as i32));
        actors.push(serde_json::to_value(&j.env.actor).unwrap_or(Value::Null));
        ats.push(j.env.occurred_at);
    }
    sqlx::query(
        "INSERT INTO job_timeline (job_id, seq, type, attempt, actor, occurred_at)
         SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::int4[], $5::jsonb[], $6::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(ids)
    .bind(seqs)
    .bind(types)
    .bind(attempts)
    .bind(actors)
    .bind(ats)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Column arrays of the queued jobs of a layer.
#[derive(Default)]
struct Queued {
    id: Vec<Uuid>,
    owner: Vec<String>,
    pool: Vec<String>,
    priority: Vec<i16>,
    labels: Vec<String>,
    experiment: Vec<Option<String>>,
    tags: Vec<Value>,
    command: Vec<Value>,
    env: Vec<Value>,
    working_dir: Vec<Option<String>>,
    spec: Vec<Value>,
    at: Vec<DateTime<Utc>>,
    seq: Vec<i64>,
}

#[derive(Default)]
struct Started {
    id: Vec<Uuid>,
    attempt: Vec<i32>,
    worker: Vec<String>,
    at: Vec<DateTime<Utc>>,
    seq: Vec<i64>,
}

/// The end of an attempt (succeeded, retry scheduled, failed, timed out,
/// dead-lettered, cancelled).
#[derive(Default)]
struct Ended {
    id: Vec<Uuid>,
    state: Vec<&'static str>,
    exit_code: Vec<Option<i32>>,
    signal: Vec<Option<i32>>,
    class: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    not_before: Vec<Option<DateTime<Utc>>>,
    metrics: Vec<Value>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    /// Cancel records a reason but keeps the last attempt's failure details.
    keep_failure: Vec<bool>,
    at: Vec<DateTime<Utc>>,
    seq: Vec<i64>,
}

/// One metric reported at the end of an attempt.
#[derive(Default)]
struct MetricValues {
    job: Vec<Uuid>,
    name: Vec<String>,
    value: Vec<f64>,
    step: Vec<Option<i64>>,
    at: Vec<DateTime<Utc>>,
    seq: Vec<i64>,
}

#[derive(Default)]
struct Requeued {
    id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    seq: Vec<i64>,
}

struct Ending<'a> {
    state: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    class: Option<String>,
    reason: Option<String>,
    not_before: Option<DateTime<Utc>>,
    keep_failure: bool,
    finished: bool,
    metrics: &'a Metrics,
}

impl Ended {
    fn push(&mut self, j: &JobEv, e: Ending<'_>, values: &mut MetricValues) {
        self.id.push(j.id);
        self.state.push(e.state);
        self.exit_code.push(e.exit_code);
        self.signal.push(e.signal);
        self.class.push(e.class);
        self.reason.push(e.reason);
        self.not_before.push(e.not_before);
        self.metrics.push(serde_json::to_value(e.metrics).unwrap_or(json!({})));
        self.finished_at.push(e.finished.then_some(j.env.occurred_at));
        self.keep_failure.push(e.keep_failure);
        self.at.push(j.env.occurred_at);
        self.seq.push(j.seq);
        for (name, m) in e.metrics {
            values.job.push(j.id);
            values.name.push(name.clone());
            values.value.push(m.value);
            values.step.push(m.step.map(|s| s as i64));
            values.at.push(j.env.occurred_at);
            values.seq.push(j.seq);
        }
    }
}

/// Applies one layer: every job at most once, so the order between rows of a
/// statement does not matter.
async fn apply_layer(conn: &mut PgConnection, layer: &[&JobEv]) -> Result<(), ProjectionError> {
    let (mut queued, mut started, mut ended, mut requeued, mut values) =
        (Queued::default(), Started::default(), Ended::default(), Requeued::default(), MetricValues::default());
    for &j in layer {
        let at = j.env.occurred_at;
        match &j.env.payload {
            JobEvent::JobQueued { owner, spec } => {
                queued.id.push(j.id);
                queued.owner.push(owner.as_str().to_owned());
                queued.pool.push(spec.pool.as_str().to_owned());
                queued.priority.push(i16::from(spec.priority));
                queued.labels.push(array(&spec.labels));
                queued.experiment.push(spec.experiment.clone());
                queued.tags.push(json!(spec.tags));
                queued.command.push(json!(spec.command));
                queued.env.push(json!(spec.env));
                queued.working_dir.push(spec.working_dir.clone());
                queued.spec.push(serde_json::to_value(spec).unwrap_or(Value::Null));
                queued.at.push(at);
                queued.seq.push(j.seq);
            }
            JobEvent::JobStarted { attempt, worker } => {
                started.id.push(j.id);
                started.attempt.push(*attempt as i32);
                started.worker.push(worker.to_string());
                started.at.push(at);
                started.seq.push(j.seq);
            }
            JobEvent::JobSucceeded { exit_code, metrics, .. } => {
                let e = Ending {
                    state: "succeeded",
                    exit_code: Some(*exit_code),
                    signal: None,
                    class: None,
                    reason: None,
                    not_before: None,
                    keep_failure: false,
                    finished: true,
                    metrics,
                };
                ended.push(j, e, &mut values);
            }
            JobEvent::JobRetryScheduled { exit_code, signal, class, reason, not_before, metrics, .. } => {
                let e = Ending {
                    state: "retry_scheduled",
                    exit_code: *exit_code,
                    signal: *signal,
                    class: Some(enum_str(class)),
                    reason: Some(reason.clone()),
                    not_before: Some(*not_before),
                    keep_failure: false,
                    finished: false,
                    metrics,
                };
                ended.push(j, e, &mut values);
            }
            JobEvent::JobFailed { exit_code, signal, class, reason, metrics, .. }
            | JobEvent::JobDeadLettered { exit_code, signal, class, reason, metrics, .. } => {
                let state =
                    if matches!(j.env.payload, JobEvent::JobFailed { .. }) { "failed" } else { "dead_lettered" };
                let e = Ending {
                    state,
                    exit_code: *exit_code,
                    signal: *signal,
                    class: Some(enum_str(class)),
                    reason: Some(reason.clone()),
                    not_before: None,
                    keep_failure: false,
                    finished: true,
                    metrics,
                };
                ended.push(j, e, &mut values);
            }
            JobEvent::JobTimedOut { reason, metrics, .. } => {
                let e = Ending {
                    state: "timed_out",
                    exit_code: None,
                    signal: None,
                    class: Some("resource".into()),
                    reason: Some(reason.clone()),
                    not_before: None,
                    keep_failure: false,
                    finished: true,
                    metrics,
                };
                ended.push(j, e, &mut values);
            }
            JobEvent::JobCancelled { reason } => {
                let none = Metrics::new();
                let e = Ending {
                    state: "cancelled",
                    exit_code: None,
                    signal: None,
                    class: None,
                    reason: Some(reason.clone()),
                    not_before: None,
                    keep_failure: true,
                    finished: true,
                    metrics: &none,
                };
                ended.push(j, e, &mut values);
            }
            JobEvent::JobRequeued { .. } => {
                requeued.id.push(j.id);
                requeued.at.push(at);
                requeued.seq.push(j.seq);
            }
        }
    }
    if !queued.id.is_empty() {
        insert_queued(conn, queued).await?;
    }
    if !started.id.is_empty() {
        update_started(conn, started).await?;
    }
    if !ended.id.is_empty() {
        update_ended(conn, ended).await?;
    }
    if !values.job.is_empty() {
        upsert_metrics(conn, values).await?;
    }
    if !requeued.id.is_empty() {
        update_requeued(conn, requeued).await?;
    }
    Ok(())
}

type Statement<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs each of `statements` with the same column arrays bound by `bind`: the
/// full tables and the analyst table take the same rows, each its own columns.
async fn run_each<'q>(
    conn: &mut PgConnection,
    statements: impl IntoIterator<Item = String>,
    bind: impl Fn(Statement<'q>) -> Statement<'q>,
) -> Result<(), ProjectionError> {
    for sql in statements {
        bind(sqlx::query(AssertSqlSafe(sql))).execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

async fn insert_queued(conn: &mut PgConnection, q: Queued) -> Result<(), ProjectionError> {
    const ROWS: &str =
        "FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::text[], $7::jsonb[],
            $8::jsonb[], $9::jsonb[], $10::text[], $11::jsonb[], $12::timestamptz[], $13::int8[])
        AS u(id, owner, pool, priority, labels, experiment, tags, command, env, working_dir, spec, at, seq)";
    let full = FULL.map(|table| {
        format!(
            "INSERT INTO {table} (id, owner, state, attempt, attempts_in_run, pool, priority, labels, experiment,
                tags, command, env, working_dir, spec, metrics, created_at, updated_at, last_seq)
             SELECT id, owner, 'queued', 0, 0, pool, priority, labels::text[], experiment,
                tags, command, env, working_dir, spec, '{{}}', at, at, seq
             {ROWS}
             ON CONFLICT DO NOTHING"
        )
    });
    let analyst = format!(
        "INSERT INTO analyst_jobs (id, state, attempt, pool, priority, labels, experiment, metrics, created_at, updated_at, last_seq)
         SELECT id, 'queued', 0, pool, priority, labels::text[], experiment, '{{}}', at, at, seq
         {ROWS}
         ON CONFLICT DO NOTHING"
    );
    run_each(conn, full.into_iter().chain([analyst]), |s| {
        s.bind(&q.id)
            .bind(&q.owner)
            .bind(&q.pool)
            .bind(&q.priority)
            .bind(&q.labels)
            .bind(&q.experiment)
            .bind(&q.tags)
            .bind(&q.command)
            .bind(&q.env)
            .bind(&q.working_dir)
            .bind(&q.spec)
            .bind(&q.at)
            .bind(&q.seq)
    })
    .await
}

async fn update_started(conn: &mut PgConnection, s: Started) -> Result<(), ProjectionError> {
    const ROWS: &str = "FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::int8[]) AS u(id, attempt, worker, at, seq)
        WHERE t.id = u.id AND t.last_seq < u.seq";
    let full = FULL.map(|table| {
        format!(
            "UPDATE {table} t SET state = 'running', attempt = u.attempt, attempts_in_run = t.attempts_in_run + 1,
                worker = u.worker, started_at = u.at, not_before = NULL, updated_at = u.at, last_seq = u.seq
             {ROWS}"
        )
    });
    let analyst = format!(
        "UPDATE analyst_jobs t SET state = 'running', attempt = u.attempt, started_at = u.at, updated_at = u.at, last_seq = u.seq
         {ROWS}"
    );
    run_each(conn, full.into_iter().chain([analyst]), |q| {
        q.bind(&s.id).bind(&s.attempt).bind(&s.worker).bind(&s.at).bind(&s.seq)
    })
    .await
}

async fn update_ended(conn: &mut PgConnection, e: Ended) -> Result<(), ProjectionError> {
    const ROWS: &str =
        "FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::text[], $6::text[], $7::timestamptz[],
            $8::jsonb[], $9::timestamptz[], $10::bool[], $11::timestamptz[], $12::int8[])
        AS u(id, state, exit_code, signal, class, reason, not_before, metrics, finished_at, keep, at, seq)
        WHERE t.id = u.id AND t.last_seq < u.seq";
    let full = FULL.map(|table| {
        format!(
            "UPDATE {table} t SET state = u.state,
                exit_code = CASE WHEN u.keep THEN t.exit_code ELSE u.exit_code END,
                signal = CASE WHEN u.keep THEN t.signal ELSE u.signal END,
                failure_class = CASE WHEN u.keep THEN t.failure_class ELSE u.class END,
                reason = u.reason, not_before = u.not_before, metrics = t.metrics || u.metrics,
                finished_at = u.finished_at, updated_at = u.at, last_seq = u.seq
             {ROWS}"
        )
    });
    let analyst = format!(
        "UPDATE analyst_jobs t SET state = u.state,
            exit_code = CASE WHEN u.keep THEN t.exit_code ELSE u.exit_code END,
            failure_class = CASE WHEN u.keep THEN t.failure_class ELSE u.class END,
            metrics = t.metrics || u.metrics, finished_at = u.finished_at, updated_at = u.at, last_seq = u.seq
         {ROWS}"
    );
    run_each(conn, full.into_iter().chain([analyst]), |q| {
        q.bind(&e.id)
            .bind(&e.state)
            .bind(&e.exit_code)
            .bind(&e.signal)
            .bind(&e.class)
            .bind(&e.reason)
            .bind(&e.not_before)
            .bind(&e.metrics)
            .bind(&e.finished_at)
            .bind(&e.keep_failure)
            .bind(&e.at)
            .bind(&e.seq)
    })
    .await
}

/// Several jobs of a layer may report the same metric of one experiment; one
/// statement may not touch a row twice, so the layer's values are folded per
/// (experiment, owner, metric) first: the latest value wins, min and max span
/// them all (what applying them one by one in log order gives).
async fn upsert_metrics(conn: &mut PgConnection, v: MetricValues) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO experiment_metrics (experiment, owner, metric, last_value, last_step, last_job, min_value, max_value, updated_at, last_seq)
         SELECT DISTINCT ON (j.experiment, j.owner, u.metric)
                j.experiment, j.owner, u.metric, u.value, u.step, u.job,
                min(u.value) OVER w, max(u.value) OVER w, u.at, u.seq
         FROM UNNEST($1::uuid[], $2::text[], $3::float8[], $4::int8[], $5::timestamptz[], $6::int8[]) AS u(job, metric, value, step, at, seq)
         JOIN admin_jobs j ON j.id = u.job
         WHERE j.experiment IS NOT NULL
         WINDOW w AS (PARTITION BY j.experiment, j.owner, u.metric)
         ORDER BY j.experiment, j.owner, u.metric, u.seq DESC
         ON CONFLICT (experiment, owner, metric) DO UPDATE SET
            last_value = EXCLUDED.last_value, last_step = EXCLUDED.last_step, last_job = EXCLUDED.last_job,
            min_value = LEAST(experiment_metrics.min_value, EXCLUDED.min_value),
            max_value = GREATEST(experiment_metrics.max_value, EXCLUDED.max_value),
            updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
         WHERE experiment_metrics.last_seq < EXCLUDED.last_seq",
    )
    .bind(v.job)
    .bind(v.name)
    .bind(v.value)
    .bind(v.step)
    .bind(v.at)
    .bind(v.seq)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

async fn update_requeued(conn: &mut PgConnection, r: Requeued) -> Result<(), ProjectionError> {
    const ROWS: &str = "FROM UNNEST($1::uuid[], $2::timestamptz[], $3::int8[]) AS u(id, at, seq)
        WHERE t.id = u.id AND t.last_seq < u.seq";
    let full = FULL.map(|table| {
        format!(
            "UPDATE {table} t SET state = 'queued', attempts_in_run = 0, exit_code = NULL, signal = NULL,
                failure_class = NULL, reason = NULL, not_before = NULL, finished_at = NULL,
                updated_at = u.at, last_seq = u.seq
             {ROWS}"
        )
    });
    let analyst = format!(
        "UPDATE analyst_jobs t SET state = 'queued', exit_code = NULL, failure_class = NULL, finished_at = NULL,
            updated_at = u.at, last_seq = u.seq
         {ROWS}"
    );
    run_each(conn, full.into_iter().chain([analyst]), |q| q.bind(&r.id).bind(&r.at).bind(&r.seq)).await
}

pub(crate) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub(crate) fn attempt_of(e: &JobEvent) -> Option<u32> {
    match e {
        JobEvent::JobStarted { attempt, .. }
        | JobEvent::JobSucceeded { attempt, .. }
        | JobEvent::JobRetryScheduled { attempt, .. }
        | JobEvent::JobFailed { attempt, .. }
        | JobEvent::JobTimedOut { attempt, .. }
        | JobEvent::JobDeadLettered { attempt, .. } => Some(*attempt),
        _ => None,
    }
}

async fn apply_worker(conn: &mut PgConnection, seq: u64, env: &Envelope<WorkerEvent>) -> Result<(), ProjectionError> {
    let seq = seq as i64;
    match &env.payload {
        WorkerEvent::WorkerStarted { pool, labels, concurrency, host, pid } => {
            sqlx::query(
                "INSERT INTO workers (id, pool, labels, concurrency, host, pid, state, started_at, last_seq)
                 VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(&env.aggregate_id)
            .bind(pool)
            .bind(labels)
            .bind(*concurrency as i32)
            .bind(host)
            .bind(*pid as i32)
            .bind(env.occurred_at)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        WorkerEvent::WorkerStopped { .. } => {
            sqlx::query(
                "UPDATE workers SET state = 'stopped', stopped_at = $2, last_seq = $3 WHERE id = $1 AND last_seq < $3",
            )
            .bind(&env.aggregate_id)
            .bind(env.occurred_at)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
    }
    Ok(())
}
