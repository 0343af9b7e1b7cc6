//! Folding events into the read models, a batch at a time.
//!
//! A batch is applied with a few multi-row statements instead of several per
//! event: the rows of the jobs the batch touches are loaded (one query; a new
//! job has none yet), each event is folded into its job's row in memory by the
//! one fold the rebuild also uses (`fold.rs`, on top of the domain's
//! `evolve`), and the final rows go back to the one `jobs` table (each role
//! reads it through its own view) in two statements (`UNNEST` of one array
//! per column): an upsert of the rows the batch creates, an update of what
//! changed in the others.
//!
//! Every upsert is guarded by the row's `last_seq`, and the fold skips events
//! already folded, so applying an event twice changes nothing (the
//! checkpoint is in the same transaction anyway).
//!
//! Table names are unqualified: a rebuild points `search_path` at a shadow
//! schema and the same code fills fresh tables.

use crate::ProjectionError;
use crate::fold::{self, Decoded, Fault, JobRow, MetricKey, MetricRow, array, enum_str};
use crate::usage::{OpenAttempt, UsageFold, UsageRow};
use chrono::{DateTime, Utc};
use fetchml_events::Envelope;
use fetchml_events::job::{JobEvent, JobSpec, Metrics};
use fetchml_events::worker::WorkerEvent;
use fetchml_eventstore::StoredEvent;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

fn db(e: sqlx::Error) -> ProjectionError {
    ProjectionError::Postgres(e)
}

/// A job event of the batch, decoded once.
struct JobEv {
    seq: i64,
    id: Uuid,
    env: Arc<Envelope<JobEvent>>,
}

/// Applies `batch` (in log order) on `conn`, which should be in a transaction.
/// Returns the faults found (events or parts the read models cannot hold),
/// for the caller to record with the checkpoint. `skip`: sequences recorded
/// as faults before (a rebuild skips what the live projector could not store).
pub async fn apply_batch(
    conn: &mut PgConnection,
    batch: &[StoredEvent],
    skip: &HashSet<i64>,
) -> Result<Vec<Fault>, ProjectionError> {
    let mut faults = Vec::new();
    let mut jobs = Vec::with_capacity(batch.len());
    for ev in batch {
        if skip.contains(&(ev.seq as i64)) {
            continue;
        }
        match fold::decode_stored(ev) {
            Decoded::Job(id, env) => jobs.push(JobEv { seq: ev.seq as i64, id, env }),
            // Workers are few and touch only their own table: one by one.
            Decoded::Worker(env) => apply_worker(conn, ev.seq, &env).await?,
            Decoded::Skip => {}
            Decoded::Fault(f) => faults.push(f),
        }
    }
    if jobs.is_empty() {
        return Ok(faults);
    }
    // Every job of the batch is looked up, even one whose first event here
    // is `job_queued`: that event can come a second time (a rebuild swapped
    // in tables that already hold it, while this projector was behind), and
    // then the row exists. Folding onto it skips what it holds, and
    // `job_counts`, which has no `last_seq` of its own to guard it, counts
    // the job once.
    let mut seen = HashSet::with_capacity(jobs.len());
    let existing: Vec<Uuid> = jobs.iter().filter(|j| seen.insert(j.id)).map(|j| j.id).collect();
    let mut rows = load_rows(conn, &existing).await?;
    // Rows read from the table exist: they take an UPDATE of what can
    // change. The others take the full upsert. Their state as stored is
    // what `job_counts` counts them under now.
    let stored: HashMap<Uuid, &'static str> =
        rows.iter().filter_map(|(id, r)| Some((*id, r.as_ref()?.job.status.as_str()))).collect();
    let mut usage = UsageFold { open: load_open(conn, &existing).await?, ..UsageFold::default() };
    // The jobs whose rows changed, in the order first changed.
    let mut changed: Vec<Uuid> = Vec::new();
    let mut in_changed: HashSet<Uuid> = HashSet::new();
    let mut metrics: BTreeMap<MetricKey, MetricRow> = BTreeMap::new();
    for j in &jobs {
        let row = rows.entry(j.id).or_insert(None);
        let was = row.as_ref().map(|r| r.last_seq);
        let before = row.as_ref().map(|r| r.job.status);
        if JobRow::fold(row, j.seq, j.env.occurred_at, &j.env.payload)
            && let Some(r) = row.as_ref()
        {
            fold::fold_metrics(&mut metrics, &mut faults, j.id, r, j.seq, j.env.occurred_at, &j.env.payload);
            usage.fold(&mut faults, j.id, before, &r.job, j.seq, j.env.occurred_at, &j.env.payload);
        }
        if row.as_ref().map(|r| r.last_seq) != was && in_changed.insert(j.id) {
            changed.push(j.id);
        }
    }
    let (mut updated, mut inserted) = (Vec::new(), Vec::new());
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for id in &changed {
        if let Some(r) = rows.get(id).and_then(Option::as_ref) {
            let now = r.job.status.as_str();
            match stored.get(id) {
                Some(was) => {
                    updated.push((*id, r));
                    if *was != now {
                        *counts.entry(was).or_default() -= 1;
                        *counts.entry(now).or_default() += 1;
                    }
                }
                None => {
                    inserted.push((*id, r));
                    *counts.entry(now).or_default() += 1;
                }
            }
        }
    }
    upsert_jobs(conn, &inserted).await?;
    update_jobs(conn, &updated).await?;
    count_states(conn, counts).await?;
    upsert_metrics(conn, metrics).await?;
    write_usage(conn, usage).await?;
    Ok(faults)
}

/// Adds the batch's changes to `job_counts` (jobs per state), and drops the
/// states no job is in any more, so the table holds what a rebuild counts.
async fn count_states(conn: &mut PgConnection, counts: BTreeMap<&'static str, i64>) -> Result<(), ProjectionError> {
    let (states, deltas): (Vec<&str>, Vec<i64>) = counts.into_iter().filter(|(_, d)| *d != 0).unzip();
    if states.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO job_counts (state, n) SELECT * FROM UNNEST($1::text[], $2::int8[])
         ON CONFLICT (state) DO UPDATE SET n = job_counts.n + EXCLUDED.n",
    )
    .bind(&states)
    .bind(&deltas)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    if deltas.iter().any(|d| *d < 0) {
        sqlx::query("DELETE FROM job_counts WHERE n = 0").execute(&mut *conn).await.map_err(db)?;
    }
    Ok(())
}

/// The open attempts of `ids`, as stored.
async fn load_open(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Option<OpenAttempt>>, ProjectionError> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT job_id, attempt, owner, pool, started_at, gpus, cpus, memory_mb, last_seq
         FROM usage_open_attempts WHERE job_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in rows {
        let id: Uuid = r.try_get("job_id")?;
        let corrupt =
            || ProjectionError::Corrupt(format!("open attempt of job {id} does not hold what the projector writes"));
        out.insert(
            id,
            Some(OpenAttempt {
                attempt: u32::try_from(r.try_get::<i32, _>("attempt")?).map_err(|_| corrupt())?,
                owner: r.try_get("owner")?,
                pool: r.try_get("pool")?,
                started_at: r.try_get("started_at")?,
                gpus: u32::try_from(r.try_get::<i64, _>("gpus")?).map_err(|_| corrupt())?,
                cpus: u32::try_from(r.try_get::<i64, _>("cpus")?).map_err(|_| corrupt())?,
                memory_mb: u64::try_from(r.try_get::<i64, _>("memory_mb")?).map_err(|_| corrupt())?,
                last_seq: r.try_get("last_seq")?,
            }),
        );
    }
    Ok(out)
}

/// Writes the batch's usage: the attempts it opened, those it closed, and
/// the closed ones' usage added to the daily rows (owner's and analysts').
async fn write_usage(conn: &mut PgConnection, u: UsageFold) -> Result<(), ProjectionError> {
    let closed: Vec<Uuid> = u.open.iter().filter(|(_, a)| a.is_none()).map(|(id, _)| *id).collect();
    if !closed.is_empty() {
        sqlx::query("DELETE FROM usage_open_attempts WHERE job_id = ANY($1)")
            .bind(&closed)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    let open: Vec<(&Uuid, &OpenAttempt)> = u.open.iter().filter_map(|(id, a)| a.as_ref().map(|a| (id, a))).collect();
    if !open.is_empty() {
        sqlx::query(
            "INSERT INTO usage_open_attempts AS t (job_id, attempt, owner, pool, started_at, gpus, cpus, memory_mb, last_seq)
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::timestamptz[], $6::int8[],
                $7::int8[], $8::int8[], $9::int8[])
             ON CONFLICT (job_id) DO UPDATE SET attempt = EXCLUDED.attempt, owner = EXCLUDED.owner,
                pool = EXCLUDED.pool, started_at = EXCLUDED.started_at, gpus = EXCLUDED.gpus,
                cpus = EXCLUDED.cpus, memory_mb = EXCLUDED.memory_mb, last_seq = EXCLUDED.last_seq
             WHERE t.last_seq < EXCLUDED.last_seq",
        )
        .bind(open.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.attempt as i32).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.owner.as_str()).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.pool.as_str()).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.started_at).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| i64::from(a.gpus)).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| i64::from(a.cpus)).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| i64::try_from(a.memory_mb).unwrap_or(i64::MAX)).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.last_seq).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    if u.daily.is_empty() {
        return Ok(());
    }
    let by_pool = UsageFold::by_pool(&u.daily);
    const SUMS: &str = "attempts = t.attempts + EXCLUDED.attempts, slot_us = t.slot_us + EXCLUDED.slot_us,
        gpu_us = t.gpu_us + EXCLUDED.gpu_us, cpu_us = t.cpu_us + EXCLUDED.cpu_us,
        memory_mb_s = t.memory_mb_s + EXCLUDED.memory_mb_s, last_seq = EXCLUDED.last_seq
        WHERE t.last_seq < EXCLUDED.last_seq";
    let rows: Vec<&UsageRow> = u.daily.values().collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO usage_daily AS t (owner, pool, day, attempts, slot_us, gpu_us, cpu_us, memory_mb_s, last_seq)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::int8[], $9::int8[])
         ON CONFLICT (owner, pool, day) DO UPDATE SET {SUMS}"
    )))
    .bind(u.daily.keys().map(|(o, _, _)| o.as_str()).collect::<Vec<_>>())
    .bind(u.daily.keys().map(|(_, p, _)| p.as_str()).collect::<Vec<_>>())
    .bind(u.daily.keys().map(|(_, _, d)| *d).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.slot_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.gpu_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cpu_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.memory_mb_s).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last_seq).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let rows: Vec<&UsageRow> = by_pool.values().collect();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO analyst_usage_daily AS t (pool, day, attempts, slot_us, gpu_us, cpu_us, memory_mb_s, last_seq)
         SELECT * FROM UNNEST($1::text[], $2::date[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::int8[])
         ON CONFLICT (pool, day) DO UPDATE SET {SUMS}"
    )))
    .bind(by_pool.keys().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
    .bind(by_pool.keys().map(|(_, d)| *d).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.slot_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.gpu_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.cpu_us).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.memory_mb_s).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.last_seq).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// The rows of `ids` as stored.
async fn load_rows(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, Option<JobRow>>, ProjectionError> {
    let mut out = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT id, owner, state, attempt, attempts_in_run, exit_code, signal, failure_class, reason, spec, metrics,
            worker, not_before, created_at, started_at, finished_at, updated_at, last_seq
         FROM jobs WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in rows {
        let id: Uuid = r.try_get("id")?;
        let row = JobRow::from_columns(
            r.try_get("owner")?,
            r.try_get::<String, _>("state")?.as_str(),
            r.try_get("attempt")?,
            r.try_get("attempts_in_run")?,
            r.try_get("exit_code")?,
            r.try_get("signal")?,
            r.try_get("failure_class")?,
            r.try_get("reason")?,
            r.try_get("spec")?,
            r.try_get("metrics")?,
            r.try_get("worker")?,
            r.try_get("not_before")?,
            [r.try_get("created_at")?, r.try_get("started_at")?, r.try_get("finished_at")?, r.try_get("updated_at")?],
            r.try_get("last_seq")?,
        )
        .ok_or_else(|| ProjectionError::Corrupt(format!("row of job {id} does not hold what the projector writes")))?;
        out.insert(id, Some(row));
    }
    Ok(out)
}

/// Column arrays of the job rows of a batch. The jsonb columns borrow what
/// they hold and are written by serde straight into the statement's
/// parameters: no `serde_json::Value` tree per row first.
#[derive(Default)]
struct Cols<'a> {
    id: Vec<Uuid>,
    owner: Vec<String>,
    state: Vec<&'static str>,
    attempt: Vec<i32>,
    attempts_in_run: Vec<i32>,
    exit_code: Vec<Option<i32>>,
    signal: Vec<Option<i32>>,
    class: Vec<Option<String>>,
    reason: Vec<Option<String>>,
    pool: Vec<String>,
    priority: Vec<i16>,
    labels: Vec<String>,
    experiment: Vec<Option<String>>,
    tags: Vec<Json<&'a BTreeMap<String, String>>>,
    command: Vec<Json<&'a Vec<String>>>,
    env: Vec<Json<&'a BTreeMap<String, String>>>,
    working_dir: Vec<Option<String>>,
    spec: Vec<Json<&'a JobSpec>>,
    metrics: Vec<Json<&'a Metrics>>,
    worker: Vec<Option<String>>,
    not_before: Vec<Option<DateTime<Utc>>>,
    created_at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    updated_at: Vec<DateTime<Utc>>,
    last_seq: Vec<i64>,
}

impl<'a> Cols<'a> {
    /// The columns a job's events after `job_queued` change: all that
    /// [`update_jobs`] writes, and part of what [`upsert_jobs`] does.
    fn push_changing(&mut self, id: Uuid, r: &'a JobRow) {
        let j = &r.job;
        self.id.push(id);
        self.state.push(j.status.as_str());
        self.attempt.push(j.attempt as i32);
        self.attempts_in_run.push(j.attempts_in_run as i32);
        self.exit_code.push(j.exit_code);
        self.signal.push(j.signal);
        self.class.push(j.failure_class.as_ref().map(enum_str));
        self.reason.push(j.reason.clone());
        self.metrics.push(Json(&j.metrics));
        self.worker.push(j.worker.map(|w| w.to_string()));
        self.not_before.push(j.not_before);
        self.started_at.push(r.started_at);
        self.finished_at.push(r.finished_at);
        self.updated_at.push(r.updated_at);
        self.last_seq.push(r.last_seq);
    }
}

/// Writes `rows` (each job once, none found in the table when the batch
/// looked: new ones) to `jobs`. The `ON CONFLICT` branch is a guard only:
/// under the projector's lock nothing else inserts job rows.
async fn upsert_jobs(conn: &mut PgConnection, rows: &[(Uuid, &JobRow)]) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut c = Cols::default();
    for (id, r) in rows {
        c.push_changing(*id, r);
        let j = &r.job;
        c.owner.push(j.owner.to_string());
        c.pool.push(j.spec.pool.to_string());
        c.priority.push(i16::from(j.spec.priority));
        c.labels.push(array(&j.spec.labels));
        c.experiment.push(j.spec.experiment.clone());
        c.tags.push(Json(&j.spec.tags));
        c.command.push(Json(&j.spec.command));
        c.env.push(Json(&j.spec.env));
        c.working_dir.push(j.spec.working_dir.clone());
        c.spec.push(Json(&j.spec));
        c.created_at.push(r.created_at);
    }
    const ROWS: &str = "FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::int4[],
            $7::int4[], $8::text[], $9::text[], $10::text[], $11::int2[], $12::text[], $13::text[], $14::jsonb[],
            $15::jsonb[], $16::jsonb[], $17::text[], $18::jsonb[], $19::jsonb[], $20::text[], $21::timestamptz[],
            $22::timestamptz[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[], $26::int8[])
        AS u(id, owner, state, attempt, attempts_in_run, exit_code, signal, failure_class, reason, pool, priority,
            labels, experiment, tags, command, env, working_dir, spec, metrics, worker, not_before, created_at,
            started_at, finished_at, updated_at, last_seq)";
    let sql = format!(
        "INSERT INTO jobs AS t (id, owner, state, attempt, attempts_in_run, exit_code, signal, failure_class,
            reason, pool, priority, labels, experiment, tags, command, env, working_dir, spec, metrics, worker,
            not_before, created_at, started_at, finished_at, updated_at, last_seq)
         SELECT id, owner, state, attempt, attempts_in_run, exit_code, signal, failure_class, reason, pool,
            priority, labels::text[], experiment, tags, command, env, working_dir, spec, metrics, worker,
            not_before, created_at, started_at, finished_at, updated_at, last_seq
         {ROWS}
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, attempt = EXCLUDED.attempt,
            attempts_in_run = EXCLUDED.attempts_in_run, exit_code = EXCLUDED.exit_code,
            signal = EXCLUDED.signal, failure_class = EXCLUDED.failure_class, reason = EXCLUDED.reason,
            metrics = EXCLUDED.metrics, worker = EXCLUDED.worker, not_before = EXCLUDED.not_before,
            started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
            updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
         WHERE t.last_seq < EXCLUDED.last_seq"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(&c.id)
        .bind(&c.owner)
        .bind(&c.state)
        .bind(&c.attempt)
        .bind(&c.attempts_in_run)
        .bind(&c.exit_code)
        .bind(&c.signal)
        .bind(&c.class)
        .bind(&c.reason)
        .bind(&c.pool)
        .bind(&c.priority)
        .bind(&c.labels)
        .bind(&c.experiment)
        .bind(&c.tags)
        .bind(&c.command)
        .bind(&c.env)
        .bind(&c.working_dir)
        .bind(&c.spec)
        .bind(&c.metrics)
        .bind(&c.worker)
        .bind(&c.not_before)
        .bind(&c.created_at)
        .bind(&c.started_at)
        .bind(&c.finished_at)
        .bind(&c.updated_at)
        .bind(&c.last_seq)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Writes the changed part of `rows` (each job once, each known to exist) to
/// `jobs`. Most of a job's events land here (its start and its end): the
/// spec, tags, command and environment never change, and leaving them out
/// spares Postgres parsing them as jsonb again, and the ON CONFLICT path
/// (both were about a quarter of its CPU per job).
async fn update_jobs(conn: &mut PgConnection, rows: &[(Uuid, &JobRow)]) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut c = Cols::default();
    for (id, r) in rows {
        c.push_changing(*id, r);
    }
    // The same columns as the upsert's ON CONFLICT, under the same guard.
    const SQL: &str = "UPDATE jobs AS t SET state = u.state, attempt = u.attempt,
            attempts_in_run = u.attempts_in_run, exit_code = u.exit_code, signal = u.signal,
            failure_class = u.failure_class, reason = u.reason, metrics = u.metrics, worker = u.worker,
            not_before = u.not_before, started_at = u.started_at, finished_at = u.finished_at,
            updated_at = u.updated_at, last_seq = u.last_seq
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::int4[], $7::text[],
            $8::text[], $9::jsonb[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[],
            $14::timestamptz[], $15::int8[])
         AS u(id, state, attempt, attempts_in_run, exit_code, signal, failure_class, reason, metrics, worker,
            not_before, started_at, finished_at, updated_at, last_seq)
         WHERE t.id = u.id AND t.last_seq < u.last_seq";
    sqlx::query(SQL)
        .bind(&c.id)
        .bind(&c.state)
        .bind(&c.attempt)
        .bind(&c.attempts_in_run)
        .bind(&c.exit_code)
        .bind(&c.signal)
        .bind(&c.class)
        .bind(&c.reason)
        .bind(&c.metrics)
        .bind(&c.worker)
        .bind(&c.not_before)
        .bind(&c.started_at)
        .bind(&c.finished_at)
        .bind(&c.updated_at)
        .bind(&c.last_seq)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(())
}

/// Merges the batch's per-experiment summaries (already folded per key by
/// [`fold::fold_metrics`]) into `experiment_metrics`: the batch's last value
/// wins, min and max widen.
async fn upsert_metrics(conn: &mut PgConnection, m: BTreeMap<MetricKey, MetricRow>) -> Result<(), ProjectionError> {
    if m.is_empty() {
        return Ok(());
    }
    let n = m.len();
    let (mut exp, mut owner, mut metric) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut value, mut step, mut job) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut min, mut max, mut at, mut seq) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for ((e, o, name), r) in m {
        exp.push(e);
        owner.push(o);
        metric.push(name);
        value.push(r.last_value);
        step.push(r.last_step.map(|s| s as i64));
        job.push(r.last_job);
        min.push(r.min);
        max.push(r.max);
        at.push(r.updated_at);
        seq.push(r.last_seq);
    }
    sqlx::query(
        "INSERT INTO experiment_metrics AS t (experiment, owner, metric, last_value, last_step, last_job, min_value,
            max_value, updated_at, last_seq)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::float8[], $5::int8[], $6::uuid[],
            $7::float8[], $8::float8[], $9::timestamptz[], $10::int8[])
         ON CONFLICT (experiment, owner, metric) DO UPDATE SET
            last_value = EXCLUDED.last_value, last_step = EXCLUDED.last_step, last_job = EXCLUDED.last_job,
            min_value = LEAST(t.min_value, EXCLUDED.min_value),
            max_value = GREATEST(t.max_value, EXCLUDED.max_value),
            updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq
         WHERE t.last_seq < EXCLUDED.last_seq",
    )
    .bind(exp)
    .bind(owner)
    .bind(metric)
    .bind(value)
    .bind(step)
    .bind(job)
    .bind(min)
    .bind(max)
    .bind(at)
    .bind(seq)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
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
        // Draining is live state (the scheduler and the registry show it); the
        // read model keeps a worker's life, not its moods.
        WorkerEvent::WorkerDrainRequested { .. } => {}
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
