//! The read-model rows, derived from the domain's own fold, and what Postgres
//! cannot hold.
//!
//! One home for a job's state in the read models: a job row is the domain's
//! [`Job`], folded by [`fetchml_events::job::evolve`] (the fold that
//! `GET /v1/jobs/{id}` answers from), plus what only the read model keeps:
//! when the job was created, started, finished and last changed, and the last
//! sequence folded into it. The live projector (`apply.rs`) folds each batch
//! into the rows it loads from Postgres; the rebuild (`bulk.rs`) folds the
//! whole log in memory; both go through [`JobRow::fold`] and [`fold_metrics`]
//! here, so a list and a job read, or a live model and a rebuild, cannot
//! disagree about a job.
//!
//! No event the log can hold stops the projector. What Postgres would refuse
//! is decided here, before any SQL, the same way for both paths:
//! - **NUL** (`\u0000`) anywhere in an event: `text` and `jsonb` cannot hold
//!   it, so events are decoded from [`storable_payload`], which writes it as
//!   U+FFFD, the Unicode replacement character (the log keeps the original).
//! - **A metric key too large for the `experiment_metrics` index** (experiment,
//!   owner and metric name together over [`MAX_METRIC_KEY_BYTES`]): that
//!   metric is not summarised per experiment (the job row keeps it); a
//!   [`Fault`] names the event.
//! - **An event that cannot be decoded** (not an envelope, a newer schema, a
//!   job event without a job id): skipped; a [`Fault`] names it.
//!
//! Faults are rows of `projection_faults`, written in the same transaction as
//! the checkpoint, logged at ERROR, and counted by `/readyz`.

use chrono::{DateTime, Utc};
use fetchml_events::envelope::peek;
use fetchml_events::job::{FailureClass, Job, JobEvent, JobSpec, JobStatus, Metrics, evolve};
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{AggregateKind, Envelope, UserName, WorkerId};
use fetchml_eventstore::StoredEvent;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// Longest (experiment, owner, metric) key summarised in `experiment_metrics`,
/// in bytes. A btree index entry holds at most about 2700 bytes (a third of a
/// page), less after headers, and Postgres may or may not compress a long key
/// first, so whether it fits depends on its content: a fixed bound here makes
/// the outcome the same for every run, live or rebuilt.
pub const MAX_METRIC_KEY_BYTES: usize = 2000;

/// Fault codes (the `code` column of `projection_faults`).
pub mod code {
    /// The event's bytes are not an event this build can read.
    pub const UNDECODABLE: &str = "undecodable_event";
    /// A metric's (experiment, owner, name) is too large for the index.
    pub const METRIC_KEY_TOO_LARGE: &str = "metric_key_too_large";
    /// Postgres refused the event's rows for a reason not foreseen here.
    pub const REFUSED: &str = "refused_by_postgres";
}

/// An event (or part of one) the read models could not store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub seq: i64,
    /// The read model that misses it: `jobs` (the whole event) or `experiment_metrics`.
    pub model: String,
    pub code: String,
    pub message: String,
}

impl Fault {
    pub(crate) fn new(seq: u64, model: &str, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Fault { seq: seq as i64, model: model.into(), code: code.into(), message: storable_str(&message).into_owned() }
    }

    /// Logs the fault (once, where it is first recorded).
    pub(crate) fn log(&self) {
        tracing::error!(
            seq = self.seq,
            model = %self.model,
            code = %self.code,
            message = %self.message,
            "projection fault: event not stored in the read model (see projection_faults)"
        );
    }
}

/// `payload` with every JSON escape `\u0000` written as `\ufffd`. A raw NUL
/// byte cannot occur in valid JSON, so the escape is the only way one gets in.
pub fn storable_payload(payload: &[u8]) -> Cow<'_, [u8]> {
    const NUL: &[u8] = b"\\u0000";
    if !payload.windows(NUL.len()).any(|w| w == NUL) {
        return Cow::Borrowed(payload);
    }
    let mut out = Vec::with_capacity(payload.len());
    let mut i = 0;
    while i < payload.len() {
        if payload[i] == b'\\' {
            if payload[i..].starts_with(NUL) {
                out.extend_from_slice(b"\\ufffd");
                i += NUL.len();
            } else {
                // An escape pair as it is (`\\` must not start a match).
                out.extend_from_slice(&payload[i..(i + 2).min(payload.len())]);
                i += 2;
            }
        } else {
            out.push(payload[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// `s` with NUL written as U+FFFD (for text that does not come from an event).
pub fn storable_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') { Cow::Owned(s.replace('\0', "\u{FFFD}")) } else { Cow::Borrowed(s) }
}

/// One job's row in the read models (the `jobs` table; each role's view
/// shows its columns of it).
#[derive(Clone, Debug, PartialEq)]
pub struct JobRow {
    pub job: Job,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: i64,
}

impl JobRow {
    /// Folds event `seq` (at `at`) into `row` (`None`: the job has no row
    /// yet); whether the event changed the job. The job's state is the
    /// domain's `evolve`; only the timestamps are the read model's own. An
    /// event already folded (`seq <= last_seq`) changes nothing, and one the
    /// domain ignores (anything but a requeue after the end, or a second
    /// `job_queued`) moves only `last_seq`.
    pub fn fold(row: &mut Option<JobRow>, seq: i64, at: DateTime<Utc>, event: &JobEvent) -> bool {
        let Some(r) = row else {
            *row = evolve(None, event).map(|job| JobRow {
                job,
                created_at: at,
                started_at: None,
                finished_at: None,
                updated_at: at,
                last_seq: seq,
            });
            return row.is_some();
        };
        if seq <= r.last_seq {
            return false;
        }
        r.last_seq = seq;
        let ignored = matches!(event, JobEvent::JobQueued { .. })
            || (r.job.status.is_terminal() && !matches!(event, JobEvent::JobRequeued { .. }));
        if ignored {
            return false;
        }
        let Some(job) = evolve(Some(r.job.clone()), event) else { return false };
        r.job = job;
        r.updated_at = at;
        match event {
            JobEvent::JobStarted { .. } => r.started_at = Some(at),
            JobEvent::JobRetryScheduled { .. } | JobEvent::JobRequeued { .. } => r.finished_at = None,
            e if e.is_terminal() => r.finished_at = Some(at),
            _ => {}
        }
        true
    }

    /// The row as `jobs` stores it, read back: `None` if a column does
    /// not hold what the projector writes (then the row is not trusted).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_columns(
        owner: String,
        state: &str,
        attempt: i32,
        attempts_in_run: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        failure_class: Option<String>,
        reason: Option<String>,
        spec: serde_json::Value,
        metrics: serde_json::Value,
        worker: Option<String>,
        not_before: Option<DateTime<Utc>>,
        times: [Option<DateTime<Utc>>; 4],
        last_seq: i64,
    ) -> Option<JobRow> {
        let [created_at, started_at, finished_at, updated_at] = times;
        let failure_class = match failure_class {
            Some(c) => Some(serde_json::from_value::<FailureClass>(serde_json::Value::String(c)).ok()?),
            None => None,
        };
        let worker = match worker {
            Some(w) => Some(w.parse::<WorkerId>().ok()?),
            None => None,
        };
        let job = Job {
            owner: UserName::parse(owner).ok()?,
            spec: serde_json::from_value::<JobSpec>(spec).ok()?,
            status: JobStatus::parse(state)?,
            attempt: u32::try_from(attempt).ok()?,
            attempts_in_run: u32::try_from(attempts_in_run).ok()?,
            worker,
            exit_code,
            signal,
            failure_class,
            reason,
            not_before,
            metrics: serde_json::from_value::<Metrics>(metrics).ok()?,
            // Not a column: the read model does not count events per job.
            version: 0,
        };
        Some(JobRow { job, created_at: created_at?, started_at, finished_at, updated_at: updated_at?, last_seq })
    }
}

/// `(experiment, owner, metric)`.
pub type MetricKey = (String, String, String);

/// A metric of an experiment: the last value reported, and the range.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub last_value: f64,
    pub last_step: Option<u64>,
    pub last_job: Uuid,
    pub min: f64,
    pub max: f64,
    pub updated_at: DateTime<Utc>,
    pub last_seq: i64,
}

/// The metrics an event reports (the attempt's last values), if any.
pub fn metrics_of(e: &JobEvent) -> Option<&Metrics> {
    match e {
        JobEvent::JobSucceeded { metrics, .. }
        | JobEvent::JobRetryScheduled { metrics, .. }
        | JobEvent::JobFailed { metrics, .. }
        | JobEvent::JobTimedOut { metrics, .. }
        | JobEvent::JobDeadLettered { metrics, .. } => Some(metrics),
        _ => None,
    }
}

/// Folds the metrics event `seq` of job `id` (now `row`) reports into the
/// per-experiment summaries: the latest value wins, min and max span them
/// all. A key too large for the index is left out and recorded in `faults`.
/// Only for an event [`JobRow::fold`] took.
pub fn fold_metrics(
    out: &mut BTreeMap<MetricKey, MetricRow>,
    faults: &mut Vec<Fault>,
    id: Uuid,
    row: &JobRow,
    seq: i64,
    at: DateTime<Utc>,
    event: &JobEvent,
) {
    let (Some(metrics), Some(exp)) = (metrics_of(event), row.job.spec.experiment.as_ref()) else { return };
    let owner = row.job.owner.as_str();
    for (name, m) in metrics {
        if exp.len() + owner.len() + name.len() > MAX_METRIC_KEY_BYTES {
            faults.push(Fault::new(
                seq as u64,
                "experiment_metrics",
                code::METRIC_KEY_TOO_LARGE,
                format!(
                    "metric key of {} bytes (experiment, owner, metric name; at most {MAX_METRIC_KEY_BYTES}) not summarised",
                    exp.len() + owner.len() + name.len()
                ),
            ));
            continue;
        }
        let key = (exp.clone(), owner.to_owned(), name.clone());
        let e = out.entry(key).or_insert(MetricRow {
            last_value: m.value,
            last_step: m.step,
            last_job: id,
            min: m.value,
            max: m.value,
            updated_at: at,
            last_seq: seq,
        });
        e.last_value = m.value;
        e.last_step = m.step;
        e.last_job = id;
        e.min = e.min.min(m.value);
        e.max = e.max.max(m.value);
        e.updated_at = at;
        e.last_seq = seq;
    }
}

/// An event of the log as the read models see it.
pub enum Decoded {
    /// Shared: the api's log tap decodes a job event once for all its
    /// followers (the index, the scheduler and the projector).
    Job(Uuid, Arc<Envelope<JobEvent>>),
    Worker(Box<Envelope<WorkerEvent>>),
    /// An audit event (users): never in the read models.
    Skip,
    /// Not storable at all.
    Fault(Fault),
}

/// Decodes event `seq` from its stored bytes, NUL written as U+FFFD.
pub fn decode(seq: u64, payload: &[u8]) -> Decoded {
    let payload = storable_payload(payload);
    let undecodable = |what: String| Decoded::Fault(Fault::new(seq, "jobs", code::UNDECODABLE, what));
    match peek(&payload).map(|p| p.aggregate_kind) {
        Some(AggregateKind::Job) => match Envelope::<JobEvent>::decode(&payload) {
            Ok(env) => match env.aggregate_id.parse::<Uuid>() {
                Ok(id) => Decoded::Job(id, Arc::new(env)),
                Err(_) => undecodable("job event without a job id".into()),
            },
            Err(e) => undecodable(format!("undecodable job event: {e}")),
        },
        Some(AggregateKind::Worker) => match Envelope::<WorkerEvent>::decode(&payload) {
            Ok(env) => Decoded::Worker(Box::new(env)),
            Err(e) => undecodable(format!("undecodable worker event: {e}")),
        },
        // Users (logins, refusals) and the audit trail's checkpoints.
        Some(AggregateKind::User | AggregateKind::Audit | AggregateKind::Pool) => Decoded::Skip,
        None => undecodable("not an event envelope".into()),
    }
}

/// [`decode`] of a stored event, taking the event's own decoded job
/// envelope when it has one to give (no NUL to rewrite first).
pub fn decode_stored(ev: &StoredEvent) -> Decoded {
    if matches!(storable_payload(&ev.payload), Cow::Borrowed(_))
        && ev.kind() == Some(AggregateKind::Job)
        && let Ok(env) = ev.job_event()
        && let Ok(id) = env.aggregate_id.parse::<Uuid>()
    {
        return Decoded::Job(id, env);
    }
    decode(ev.seq, &ev.payload)
}

/// A serde enum as its string (`failure_class`).
pub(crate) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A text[] literal.
pub(crate) fn array(items: &[String]) -> String {
    let mut s = String::from("{");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('"');
        for c in it.chars() {
            if c == '"' || c == '\\' {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetchml_events::job::{FailureClass, fold as domain_fold};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn history() -> Vec<JobEvent> {
        vec![
            JobEvent::JobQueued { owner: UserName::parse("alice").unwrap(), spec: JobSpec::command(["true"]) },
            JobEvent::JobStarted { attempt: 1, worker: WorkerId::new(), placement: Default::default() },
            JobEvent::JobRetryScheduled {
                attempt: 1,
                exit_code: None,
                signal: Some(9),
                class: FailureClass::Infrastructure,
                reason: "lost".into(),
                not_before: at(3600),
                metrics: Metrics::new(),
            },
            JobEvent::JobCancelled { reason: "enough".into() },
        ]
    }

    #[test]
    fn a_row_holds_the_domain_state_of_its_job() {
        let events = history();
        let mut row = None;
        for (i, e) in events.iter().enumerate() {
            assert!(JobRow::fold(&mut row, i as i64 + 1, at(i as i64), e));
        }
        let row = row.unwrap();
        assert_eq!(row.job, domain_fold(&events).unwrap());
        assert_eq!(row.job.not_before, None, "a cancelled job waits for nothing");
        assert_eq!((row.started_at, row.finished_at, row.updated_at), (Some(at(1)), Some(at(3)), at(3)));
    }

    #[test]
    fn a_replayed_or_ignored_event_changes_nothing() {
        let events = history();
        let mut row = None;
        for (i, e) in events.iter().enumerate() {
            JobRow::fold(&mut row, i as i64 + 1, at(i as i64), e);
        }
        let before = row.clone();
        assert!(!JobRow::fold(&mut row, 2, at(99), &events[1]), "a replay");
        assert_eq!(row, before);
        // After the end, only a requeue counts: a late start is ignored.
        assert!(!JobRow::fold(&mut row, 9, at(99), &events[1]));
        let r = row.unwrap();
        assert_eq!((r.job.status, r.updated_at, r.last_seq), (JobStatus::Cancelled, at(3), 9));
    }

    fn stored(seq: u64, spec: JobSpec) -> StoredEvent {
        let env = Envelope::seal(
            fetchml_events::NewEvent {
                aggregate_id: uuid::Uuid::now_v7().to_string(),
                aggregate_version: 1,
                occurred_at: at(0),
                actor: fetchml_events::Actor::User { name: UserName::parse("alice").unwrap() },
                command_id: fetchml_events::CommandId::new(),
                correlation_id: Uuid::nil(),
                payload: JobEvent::JobQueued { owner: UserName::parse("alice").unwrap(), spec },
            },
            fetchml_events::hash::GENESIS,
        )
        .unwrap();
        StoredEvent::new(seq, "s".into(), env.to_bytes().unwrap().into(), None)
    }

    #[test]
    fn a_stored_job_event_is_decoded_once_for_every_follower_unless_it_holds_a_nul() {
        let ev = stored(1, JobSpec::command(["true"]));
        let Decoded::Job(_, env) = decode_stored(&ev) else { panic!("not a job event") };
        assert!(Arc::ptr_eq(&env, &ev.job_event().unwrap()), "the event's own decode is shared");
        // With a NUL, the projector decodes the rewritten bytes itself.
        let ev = stored(2, JobSpec::command(["echo", "a\0b"]));
        let Decoded::Job(_, env) = decode_stored(&ev) else { panic!("not a job event") };
        assert!(!Arc::ptr_eq(&env, &ev.job_event().unwrap()));
        let JobEvent::JobQueued { spec, .. } = &env.payload else { panic!("not queued") };
        assert_eq!(spec.command, vec!["echo".to_owned(), "a\u{FFFD}b".to_owned()]);
    }

    #[test]
    fn nul_escapes_become_replacement_characters_and_nothing_else_changes() {
        let p = br#"{"a":"x\u0000y","b":"\\u0000","c":"\\\u0000"}"#;
        let out = storable_payload(p);
        assert_eq!(&*out, br#"{"a":"x\ufffdy","b":"\\u0000","c":"\\\ufffd"}"#);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["a"], "x\u{FFFD}y");
        assert_eq!(v["b"], "\\u0000");
        assert!(matches!(storable_payload(br#"{"a":"plain"}"#), Cow::Borrowed(_)));
    }
}
