//! The rebuild's fast path: fold the whole log in memory, then write the final
//! rows with `COPY`, instead of several statements per event. The rows are
//! exactly those the incremental projector (`apply.rs`) produces: both fold
//! with `fold.rs` (the domain's `evolve`), decode with its NUL rule and find
//! the same faults; the test that kills the projector and compares checksums
//! with a rebuild holds both to that.

use crate::ProjectionError;
use crate::fold::{self, Decoded, Fault, JobRow, MetricKey, MetricRow, array, enum_str};
use crate::usage::UsageFold;
use chrono::{DateTime, Utc};
use fetchml_events::Envelope;
use fetchml_events::job::JobEvent;
use fetchml_events::worker::WorkerEvent;
use fetchml_eventstore::{EventStore, StartAt};
use futures::StreamExt;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

struct WorkerRow {
    pool: String,
    labels: Vec<String>,
    concurrency: usize,
    host: String,
    pid: u32,
    stopped_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    last_seq: u64,
}

#[derive(Default)]
pub struct Folded {
    jobs: HashMap<Uuid, JobRow>,
    order: Vec<Uuid>,
    metrics: BTreeMap<MetricKey, MetricRow>,
    workers: BTreeMap<String, WorkerRow>,
    usage: UsageFold,
    faults: Vec<Fault>,
    /// Events the live projector could not store: skipped here too.
    skip: HashSet<i64>,
    pub last_seq: u64,
}

/// Postgres text timestamps round to the microsecond, binary ones (sqlx)
/// truncate: write them truncated so both paths agree.
fn ts(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    // By hand: strftime re-parses its format for every value, and a rebuild
    // writes a few million of these (it was a tenth of a rebuild's CPU).
    fn digits(out: &mut String, v: u32, width: usize) {
        let mut buf = [b'0'; 10];
        let mut v = v;
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend(buf[..width].iter().map(|&b| b as char));
    }
    let mut s = String::with_capacity(29);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
    }
    digits(&mut s, year as u32, 4);
    s.push('-');
    digits(&mut s, t.month(), 2);
    s.push('-');
    digits(&mut s, t.day(), 2);
    s.push(' ');
    digits(&mut s, t.hour(), 2);
    s.push(':');
    digits(&mut s, t.minute(), 2);
    s.push(':');
    // chrono marks a leap second (never read from the system clock) with
    // nanosecond >= 1e9: fold it into second 59.
    digits(&mut s, t.second(), 2);
    s.push('.');
    digits(&mut s, t.nanosecond() % 1_000_000_000 / 1000, 6);
    s.push_str("+00");
    s
}

/// JSON text for a jsonb column (key order is Postgres's business).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// One COPY text field.
fn field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        // Nearly every value has nothing to escape: copy it whole.
        Some(s) if !s.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) => out.push_str(s),
        Some(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

fn row(out: &mut String, fields: &[Option<String>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        field(out, f.as_deref());
    }
    out.push('\n');
}

impl Folded {
    fn job_event(&mut self, seq: u64, id: Uuid, env: &Envelope<JobEvent>) {
        let at = env.occurred_at;
        let seq = seq as i64;
        let mut r = self.jobs.remove(&id);
        let new = r.is_none();
        let before = r.as_ref().map(|r| r.job.status);
        if JobRow::fold(&mut r, seq, at, &env.payload)
            && let Some(row) = r.as_ref()
        {
            fold::fold_metrics(&mut self.metrics, &mut self.faults, id, row, seq, at, &env.payload);
            self.usage.fold(&mut self.faults, id, before, &row.job, seq, at, &env.payload);
            // A closed attempt needs no entry (the live path's `None` means
            // "delete"): keep memory to the running ones.
            if self.usage.open.get(&id).is_some_and(Option::is_none) {
                self.usage.open.remove(&id);
            }
        }
        if let Some(row) = r {
            if new {
                self.order.push(id);
            }
            self.jobs.insert(id, row);
        }
    }

    fn worker_event(&mut self, seq: u64, env: Envelope<WorkerEvent>) {
        match env.payload {
            WorkerEvent::WorkerStarted { pool, labels, concurrency, host, pid } => {
                self.workers.entry(env.aggregate_id).or_insert(WorkerRow {
                    pool,
                    labels,
                    concurrency,
                    host,
                    pid,
                    stopped_at: None,
                    started_at: env.occurred_at,
                    last_seq: seq,
                });
            }
            WorkerEvent::WorkerDrainRequested { .. } => {}
            WorkerEvent::WorkerStopped { .. } => {
                if let Some(w) = self.workers.get_mut(&env.aggregate_id) {
                    w.stopped_at = Some(env.occurred_at);
                    w.last_seq = seq;
                }
            }
        }
    }
}

/// Events per range reader. Several ranges are read at once, each by its own
/// ordered consumer, and decoded on the runtime's threads; the fold takes
/// them in order. One ordered consumer delivers about 30 thousand events/s
/// here, which was the rebuild's limit (BENCHMARKS.md).
const RANGE: u64 = 25_000;
/// Ranges read at once: memory is about RANGE_READERS × RANGE × an event.
const RANGE_READERS: usize = 4;

/// Reads and decodes events `from..=to`.
async fn read_range(store: EventStore, from: u64, to: u64) -> Result<Vec<(u64, Decoded)>, ProjectionError> {
    let mut out = Vec::with_capacity((to - from + 1) as usize);
    let mut events = store.read(&store.subjects().all_events(), StartAt::Sequence(from)).await?;
    let user_prefix = store.subjects().user_prefix();
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if ev.seq > to {
            break;
        }
        let seq = ev.seq;
        // Audit events never reach the read models: skip them unparsed.
        let decoded = if ev.subject.starts_with(&user_prefix) { Decoded::Skip } else { fold::decode(seq, &ev.payload) };
        out.push((seq, decoded));
        // `pending == 0`: nothing further is stored (the range ran past the
        // last event matching the filter); don't wait for new ones.
        if seq >= to || ev.pending == Some(0) {
            break;
        }
    }
    Ok(out)
}

/// Folds events `1..=to` of the log, skipping the events of `carried` (faults
/// the live projector recorded) and keeping those faults.
pub async fn fold(store: &EventStore, to: u64, carried: Vec<Fault>) -> Result<Folded, ProjectionError> {
    let mut f = Folded { skip: carried.iter().map(|c| c.seq).collect(), faults: carried, ..Folded::default() };
    if to == 0 {
        return Ok(f);
    }
    let ranges = (0..to.div_ceil(RANGE)).map(|i| (i * RANGE + 1, ((i + 1) * RANGE).min(to)));
    let mut chunks = futures::stream::iter(ranges)
        .map(|(from, upto)| tokio::spawn(read_range(store.clone(), from, upto)))
        .buffered(RANGE_READERS);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ProjectionError::Rebuild(format!("range reader failed: {e}")))??;
        for (seq, d) in chunk {
            f.last_seq = seq;
            if f.skip.contains(&(seq as i64)) {
                continue;
            }
            match d {
                Decoded::Job(id, env) => f.job_event(seq, id, &env),
                Decoded::Worker(env) => f.worker_event(seq, *env),
                Decoded::Skip => {}
                Decoded::Fault(fault) => f.faults.push(fault),
            }
        }
    }
    Ok(f)
}

/// Runs one `COPY ... FROM STDIN` with `data` on a connection of its own, so
/// that the tables load in parallel.
async fn copy(pool: PgPool, statement: String, data: bytes::Bytes) -> Result<(), ProjectionError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    // Not back into the pool afterwards: a COPY that Postgres refused, or
    // that was dropped half-way (another table's COPY failed), leaves the
    // connection in a state the next user would trip over.
    conn.close_on_drop();
    let mut c = conn.copy_in_raw(&statement).await?;
    c.send(data).await?;
    c.finish().await?;
    Ok(())
}

/// Writes the folded rows into the tables of `schema`, each table by its own
/// connection at the same time.
pub async fn write(pool: &PgPool, schema: &str, mut f: Folded) -> Result<(), ProjectionError> {
    let mut full = String::new();
    for id in &f.order {
        let Some(r) = f.jobs.get(id) else { continue };
        let j = &r.job;
        let opt_ts = |t: Option<DateTime<Utc>>| t.map(ts);
        row(
            &mut full,
            &[
                Some(id.to_string()),
                Some(j.owner.to_string()),
                Some(j.status.as_str().to_owned()),
                Some(j.attempt.to_string()),
                Some(j.attempts_in_run.to_string()),
                j.exit_code.map(|c| c.to_string()),
                j.signal.map(|c| c.to_string()),
                j.failure_class.as_ref().map(enum_str),
                j.reason.clone(),
                Some(j.spec.pool.to_string()),
                Some(j.spec.priority.to_string()),
                Some(array(&j.spec.labels)),
                j.spec.experiment.clone(),
                Some(json_text(&j.spec.tags)),
                Some(json_text(&j.spec.command)),
                Some(json_text(&j.spec.env)),
                j.spec.working_dir.clone(),
                Some(json_text(&j.spec)),
                Some(serde_json::to_string(&j.metrics).unwrap_or_else(|_| "{}".into())),
                j.worker.map(|w| w.to_string()),
                opt_ts(j.not_before),
                Some(ts(r.created_at)),
                opt_ts(r.started_at),
                opt_ts(r.finished_at),
                Some(ts(r.updated_at)),
                Some(r.last_seq.to_string()),
            ],
        );
    }
    let cols = "(id, owner, state, attempt, attempts_in_run, exit_code, signal, failure_class, reason, pool, priority,
        labels, experiment, tags, command, env, working_dir, spec, metrics, worker, not_before, created_at,
        started_at, finished_at, updated_at, last_seq)";
    let mut copies = vec![copy(pool.clone(), format!("COPY {schema}.jobs {cols} FROM STDIN"), full.into())];
    // Jobs per state, as the live projector keeps them (`apply::count_states`).
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for r in f.jobs.values() {
        *counts.entry(r.job.status.as_str()).or_default() += 1;
    }
    let mut c = String::new();
    for (state, n) in counts {
        row(&mut c, &[Some(state.to_owned()), Some(n.to_string())]);
    }
    copies.push(copy(pool.clone(), format!("COPY {schema}.job_counts (state, n) FROM STDIN"), c.into()));
    let mut m = String::new();
    for ((exp, owner, metric), r) in &f.metrics {
        row(
            &mut m,
            &[
                Some(exp.clone()),
                Some(owner.clone()),
                Some(metric.clone()),
                Some(r.last_value.to_string()),
                r.last_step.map(|s| s.to_string()),
                Some(r.last_job.to_string()),
                Some(r.min.to_string()),
                Some(r.max.to_string()),
                Some(ts(r.updated_at)),
                Some(r.last_seq.to_string()),
            ],
        );
    }
    copies.push(copy(
        pool.clone(),
        format!(
            "COPY {schema}.experiment_metrics (experiment, owner, metric, last_value, last_step, last_job, min_value,
            max_value, updated_at, last_seq) FROM STDIN"
        ),
        m.into(),
    ));
    let mut w = String::new();
    for (id, r) in &f.workers {
        row(
            &mut w,
            &[
                Some(id.clone()),
                Some(r.pool.clone()),
                Some(array(&r.labels)),
                Some(r.concurrency.to_string()),
                Some(r.host.clone()),
                Some(r.pid.to_string()),
                Some(if r.stopped_at.is_some() { "stopped" } else { "running" }.to_owned()),
                Some(ts(r.started_at)),
                r.stopped_at.map(ts),
                Some(r.last_seq.to_string()),
            ],
        );
    }
    copies.push(copy(
        pool.clone(),
        format!("COPY {schema}.workers (id, pool, labels, concurrency, host, pid, state, started_at, stopped_at, last_seq) FROM STDIN"),
        w.into(),
    ));
    let mut open = String::new();
    let mut running: Vec<_> = f.usage.open.iter().filter_map(|(id, a)| a.as_ref().map(|a| (id, a))).collect();
    running.sort_by_key(|(id, _)| **id);
    for (id, a) in running {
        row(
            &mut open,
            &[
                Some(id.to_string()),
                Some(a.attempt.to_string()),
                Some(a.owner.clone()),
                Some(a.pool.clone()),
                Some(ts(a.started_at)),
                Some(a.gpus.to_string()),
                Some(a.cpus.to_string()),
                Some(i64::try_from(a.memory_mb).unwrap_or(i64::MAX).to_string()),
                Some(a.last_seq.to_string()),
            ],
        );
    }
    copies.push(copy(
        pool.clone(),
        format!(
            "COPY {schema}.usage_open_attempts (job_id, attempt, owner, pool, started_at, gpus, cpus, memory_mb, last_seq)
            FROM STDIN"
        ),
        open.into(),
    ));
    let sums = |r: &crate::usage::UsageRow| {
        [r.attempts, r.slot_us, r.gpu_us, r.cpu_us, r.memory_mb_s, r.last_seq].map(|v| Some(v.to_string()))
    };
    let mut daily = String::new();
    for ((owner, p, day), r) in &f.usage.daily {
        let mut fields = vec![Some(owner.clone()), Some(p.clone()), Some(day.to_string())];
        fields.extend(sums(r));
        row(&mut daily, &fields);
    }
    let mut by_pool = String::new();
    for ((p, day), r) in UsageFold::by_pool(&f.usage.daily) {
        let mut fields = vec![Some(p), Some(day.to_string())];
        fields.extend(sums(&r));
        row(&mut by_pool, &fields);
    }
    copies.push(copy(
        pool.clone(),
        format!(
            "COPY {schema}.usage_daily (owner, pool, day, attempts, slot_us, gpu_us, cpu_us, memory_mb_s, last_seq)
            FROM STDIN"
        ),
        daily.into(),
    ));
    copies.push(copy(
        pool.clone(),
        format!(
            "COPY {schema}.analyst_usage_daily (pool, day, attempts, slot_us, gpu_us, cpu_us, memory_mb_s, last_seq)
            FROM STDIN"
        ),
        by_pool.into(),
    ));
    let mut faults = String::new();
    f.faults.sort_by(|a, b| (a.seq, &a.model).cmp(&(b.seq, &b.model)));
    f.faults.dedup_by(|a, b| (a.seq, &a.model) == (b.seq, &b.model));
    for fault in &f.faults {
        row(
            &mut faults,
            &[
                Some(fault.seq.to_string()),
                Some(fault.model.clone()),
                Some(fault.code.clone()),
                Some(fault.message.clone()),
            ],
        );
    }
    copies.push(copy(
        pool.clone(),
        format!("COPY {schema}.projection_faults (seq, model, code, message) FROM STDIN"),
        faults.into(),
    ));
    // Every COPY ends before this returns, failed or not: a caller that falls
    // back to the slow path truncates the tables, and a COPY still running
    // then would commit its rows after the truncation.
    let results = futures::future::join_all(copies).await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    if f.last_seq > 0 {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.projection_checkpoints (name, last_seq, updated_at) VALUES ($1, $2, now())"
        )))
        .bind(crate::JOBS)
        .bind(f.last_seq as i64)
        .execute(pool)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_as_strftime_wrote_them() {
        let mut t = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        // Every field's range, and microsecond truncation (not rounding).
        for step_nanos in [1_i64, 999, 1_000_001, 59_999_999_999, 86_399_999_999_999, 2_629_746_000_000_123] {
            for _ in 0..400 {
                t += chrono::Duration::nanoseconds(step_nanos);
                assert_eq!(ts(t), t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
            }
        }
    }

    #[test]
    fn fields_are_escaped_only_when_needed() {
        let mut out = String::new();
        field(&mut out, Some("plain"));
        field(&mut out, Some("a\tb\\c\nd\re"));
        field(&mut out, None);
        assert_eq!(out, "plaina\\tb\\\\c\\nd\\re\\N");
    }
}
