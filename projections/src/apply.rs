//! Folding one event into the read models. Every statement is guarded by the
//! row's `last_seq`, so applying an event twice changes nothing (replays after
//! a crash between commit and checkpoint are harmless, and the checkpoint is in
//! the same transaction anyway).
//!
//! Table names are unqualified: a rebuild points `search_path` at a shadow
//! schema and the same code fills fresh tables.

use crate::ProjectionError;
use chrono::{DateTime, Utc};
use fetchml_events::job::{JobEvent, Metrics};
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{AggregateKind, Envelope};
use fetchml_eventstore::StoredEvent;
use serde_json::{Value, json};
use sqlx::AssertSqlSafe;
use sqlx::PgConnection;
use uuid::Uuid;

/// The tables that hold the same full job rows.
const FULL: [&str; 2] = ["admin_jobs", "researcher_jobs"];

fn db(e: sqlx::Error) -> ProjectionError {
    ProjectionError::Postgres(e)
}

pub async fn apply(conn: &mut PgConnection, ev: &StoredEvent) -> Result<(), ProjectionError> {
    let raw: Envelope<Value> = match serde_json::from_slice(&ev.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(seq = ev.seq, error = %e, "event is not an envelope; skipped");
            return Ok(());
        }
    };
    match raw.aggregate_kind {
        AggregateKind::Job => {
            let env = match raw.into_typed::<JobEvent>() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(seq = ev.seq, error = %e, "undecodable job event; skipped");
                    return Ok(());
                }
            };
            apply_job(conn, ev.seq, &env).await
        }
        AggregateKind::Worker => {
            let env = match raw.into_typed::<WorkerEvent>() {
                Ok(e) => e,
                Err(_) => return Ok(()),
            };
            apply_worker(conn, ev.seq, &env).await
        }
        AggregateKind::User => Ok(()),
    }
}

async fn apply_job(conn: &mut PgConnection, seq: u64, env: &Envelope<JobEvent>) -> Result<(), ProjectionError> {
    let id: Uuid = match env.aggregate_id.parse() {
        Ok(u) => u,
        Err(_) => return Ok(()),
    };
    let seq = seq as i64;
    let at = env.occurred_at;
    sqlx::query(
        "INSERT INTO job_timeline (job_id, seq, type, attempt, actor, occurred_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(seq)
    .bind(&env.event_type)
    .bind(attempt_of(&env.payload).map(|a| a as i32))
    .bind(serde_json::to_value(&env.actor).unwrap_or(Value::Null))
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(db)?;

    match &env.payload {
        JobEvent::JobQueued { owner, spec } => {
            let spec_json = serde_json::to_value(spec).unwrap_or(Value::Null);
            for table in FULL {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (id, owner, state, attempt, attempts_in_run, pool, priority, labels, experiment,
                        tags, command, env, working_dir, spec, metrics, created_at, updated_at, last_seq)
                     VALUES ($1, $2, 'queued', 0, 0, $3, $4, $5, $6, $7, $8, $9, $10, $11, '{{}}', $12, $12, $13)
                     ON CONFLICT DO NOTHING"
                )))
                .bind(id)
                .bind(owner.as_str())
                .bind(spec.pool.as_str())
                .bind(i16::from(spec.priority))
                .bind(&spec.labels)
                .bind(&spec.experiment)
                .bind(json!(spec.tags))
                .bind(json!(spec.command))
                .bind(json!(spec.env))
                .bind(&spec.working_dir)
                .bind(&spec_json)
                .bind(at)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            sqlx::query(
                "INSERT INTO analyst_jobs (id, state, attempt, pool, priority, labels, experiment, metrics, created_at, updated_at, last_seq)
                 VALUES ($1, 'queued', 0, $2, $3, $4, $5, '{}', $6, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(spec.pool.as_str())
            .bind(i16::from(spec.priority))
            .bind(&spec.labels)
            .bind(&spec.experiment)
            .bind(at)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::JobStarted { attempt, worker } => {
            for table in FULL {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {table} SET state = 'running', attempt = $2, attempts_in_run = attempts_in_run + 1,
                        worker = $3, started_at = $4, not_before = NULL, updated_at = $4, last_seq = $5
                     WHERE id = $1 AND last_seq < $5"
                )))
                .bind(id)
                .bind(*attempt as i32)
                .bind(worker.to_string())
                .bind(at)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            sqlx::query(
                "UPDATE analyst_jobs SET state = 'running', attempt = $2, started_at = $3, updated_at = $3, last_seq = $4
                 WHERE id = $1 AND last_seq < $4",
            )
            .bind(id)
            .bind(*attempt as i32)
            .bind(at)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
        JobEvent::JobSucceeded { exit_code, metrics, .. } => {
            let end = Ending { state: "succeeded", exit_code: Some(*exit_code), ..Ending::default() };
            end_attempt(conn, id, seq, at, &end, metrics, true).await?;
        }
        JobEvent::JobRetryScheduled { exit_code, signal, class, reason, not_before, metrics, .. } => {
            let end = Ending {
                state: "retry_scheduled",
                exit_code: *exit_code,
                signal: *signal,
                class: Some(enum_str(class)),
                reason: Some(reason.clone()),
                not_before: Some(*not_before),
                keep_failure: false,
            };
            end_attempt(conn, id, seq, at, &end, metrics, false).await?;
        }
        JobEvent::JobFailed { exit_code, signal, class, reason, metrics, .. }
        | JobEvent::JobDeadLettered { exit_code, signal, class, reason, metrics, .. } => {
            let state = if matches!(env.payload, JobEvent::JobFailed { .. }) { "failed" } else { "dead_lettered" };
            let end = Ending {
                state,
                exit_code: *exit_code,
                signal: *signal,
                class: Some(enum_str(class)),
                reason: Some(reason.clone()),
                not_before: None,
                keep_failure: false,
            };
            end_attempt(conn, id, seq, at, &end, metrics, true).await?;
        }
        JobEvent::JobTimedOut { reason, metrics, .. } => {
            let end = Ending { state: "timed_out", class: Some("resource".into()), reason: Some(reason.clone()), ..Ending::default() };
            end_attempt(conn, id, seq, at, &end, metrics, true).await?;
        }
        JobEvent::JobCancelled { reason } => {
            let end = Ending { state: "cancelled", reason: Some(reason.clone()), keep_failure: true, ..Ending::default() };
            end_attempt(conn, id, seq, at, &end, &Metrics::new(), true).await?;
        }
        JobEvent::JobRequeued { .. } => {
            for table in FULL {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE {table} SET state = 'queued', attempts_in_run = 0, exit_code = NULL, signal = NULL,
                        failure_class = NULL, reason = NULL, not_before = NULL, finished_at = NULL,
                        updated_at = $2, last_seq = $3
                     WHERE id = $1 AND last_seq < $3"
                )))
                .bind(id)
                .bind(at)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            }
            sqlx::query(
                "UPDATE analyst_jobs SET state = 'queued', exit_code = NULL, failure_class = NULL, finished_at = NULL,
                    updated_at = $2, last_seq = $3 WHERE id = $1 AND last_seq < $3",
            )
            .bind(id)
            .bind(at)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Ending {
    state: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    class: Option<String>,
    reason: Option<String>,
    not_before: Option<DateTime<Utc>>,
    /// Cancel records a reason but keeps the last attempt's failure details.
    keep_failure: bool,
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

async fn end_attempt(
    conn: &mut PgConnection,
    id: Uuid,
    seq: i64,
    at: DateTime<Utc>,
    end: &Ending,
    metrics: &Metrics,
    finished: bool,
) -> Result<(), ProjectionError> {
    let metrics_json = serde_json::to_value(metrics).unwrap_or(json!({}));
    let finished_at = finished.then_some(at);
    let failure_sql = if end.keep_failure {
        "reason = $6"
    } else {
        "exit_code = $3, signal = $4, failure_class = $5, reason = $6"
    };
    for table in FULL {
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {table} SET state = $2, {failure_sql}, not_before = $7, metrics = metrics || $8,
                finished_at = $9, updated_at = $10, last_seq = $11
             WHERE id = $1 AND last_seq < $11"
        )))
        .bind(id)
        .bind(end.state)
        .bind(end.exit_code)
        .bind(end.signal)
        .bind(&end.class)
        .bind(&end.reason)
        .bind(end.not_before)
        .bind(&metrics_json)
        .bind(finished_at)
        .bind(at)
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    let analyst_failure = if end.keep_failure { "" } else { "exit_code = $3, failure_class = $4," };
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE analyst_jobs SET state = $2, {analyst_failure} metrics = metrics || $5, finished_at = $6,
            updated_at = $7, last_seq = $8
         WHERE id = $1 AND last_seq < $8"
    )))
    .bind(id)
    .bind(end.state)
    .bind(end.exit_code)
    .bind(&end.class)
    .bind(&metrics_json)
    .bind(finished_at)
    .bind(at)
    .bind(seq)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    for (name, m) in metrics {
        sqlx::query(
            "INSERT INTO experiment_metrics (experiment, owner, metric, last_value, last_step, last_job, min_value, max_value, updated_at, last_seq)
             SELECT experiment, owner, $2, $3, $4, id, $3, $3, $5, $6 FROM admin_jobs WHERE id = $1 AND experiment IS NOT NULL
             ON CONFLICT (experiment, owner, metric) DO UPDATE SET
                last_value = EXCLUDED.last_value, last_step = EXCLUDED.last_step, last_job = EXCLUDED.last_job,
                min_value = LEAST(experiment_metrics.min_value, EXCLUDED.min_value),
                max_value = GREATEST(experiment_metrics.max_value, EXCLUDED.max_value),
                updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
             WHERE experiment_metrics.last_seq < EXCLUDED.last_seq",
        )
        .bind(id)
        .bind(name)
        .bind(m.value)
        .bind(m.step.map(|s| s as i64))
        .bind(at)
        .bind(seq)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
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
