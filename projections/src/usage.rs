//! Usage accounting: what each attempt held, for how long, per owner, pool
//! and UTC day.
//!
//! An attempt runs from its `job_started` to the event that ends it (success,
//! a scheduled retry, failure, timeout, dead letter, or a cancel while it
//! runs). While it runs it is an open attempt (`usage_open_attempts`, with
//! what its `job_started` placement says it holds); when it ends, its time is
//! split at UTC midnights and added to `usage_daily` (per owner) and
//! `analyst_usage_daily` (per pool, no owner column, for analysts).
//!
//! Both projector paths fold through [`UsageFold`], so a rebuild gives the
//! same rows. Sums are integers (microseconds; MB-seconds rounded down per
//! day part): integer addition does not depend on the order of a batch, as
//! floating-point sums would, and Postgres keeps timestamps to the
//! microsecond, so times are truncated to it before any arithmetic (an
//! attempt's start is read back from Postgres by the live path).
//!
//! Groups are a setting, not a fact of the log: rows stay per owner and the
//! api aggregates by group when asked, so a rebuild never depends on settings.

use crate::fold::Fault;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use fetchml_events::job::{JobEvent, JobStatus};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Fault code: an attempt claims to have run longer than
/// [`MAX_ATTEMPT_DAYS`] (a clock far off when it was recorded); not counted.
pub const ATTEMPT_TOO_LONG: &str = "usage_attempt_too_long";
/// The model named in such a fault.
pub const MODEL: &str = "usage_daily";
/// Longest attempt counted. Beyond it an attempt would write one row per day
/// (a timestamp of year 9999 would be millions): recorded as a fault instead.
pub const MAX_ATTEMPT_DAYS: i64 = 366;

/// A running attempt and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAttempt {
    pub attempt: u32,
    pub owner: String,
    pub pool: String,
    pub started_at: DateTime<Utc>,
    pub gpus: u32,
    pub cpus: u32,
    pub memory_mb: u64,
    pub last_seq: i64,
}

/// `(owner, pool, day)`.
pub type UsageKey = (String, String, NaiveDate);

/// Usage summed over attempt parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    /// Attempts that started on this day (and have ended).
    pub attempts: i64,
    pub slot_us: i64,
    pub gpu_us: i64,
    pub cpu_us: i64,
    pub memory_mb_s: i64,
    /// The last event that added to the row.
    pub last_seq: i64,
}

impl UsageRow {
    pub fn add(&mut self, o: &UsageRow) {
        self.attempts = self.attempts.saturating_add(o.attempts);
        self.slot_us = self.slot_us.saturating_add(o.slot_us);
        self.gpu_us = self.gpu_us.saturating_add(o.gpu_us);
        self.cpu_us = self.cpu_us.saturating_add(o.cpu_us);
        self.memory_mb_s = self.memory_mb_s.saturating_add(o.memory_mb_s);
        self.last_seq = self.last_seq.max(o.last_seq);
    }
}

/// `t` truncated to the microsecond, as Postgres stores it.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// One attempt's usage per UTC day, from `start` to `end` (an end before the
/// start, clocks of two hosts apart, counts as no time). The attempt counts
/// on the day it started.
pub fn split(a: &OpenAttempt, end: DateTime<Utc>, seq: i64) -> Vec<(NaiveDate, UsageRow)> {
    let start = micros(a.started_at);
    let end = micros(end).max(start);
    let mut out = Vec::new();
    let mut day = start.date_naive();
    let mut from = start;
    loop {
        let next = day.succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc());
        let to = match next {
            Some(n) if n < end => n,
            _ => end,
        };
        let us = (to - from).num_microseconds().unwrap_or(i64::MAX).max(0);
        let times = |n: u64| us.saturating_mul(i64::try_from(n).unwrap_or(i64::MAX));
        let mem = (i128::from(us) * i128::from(a.memory_mb) / 1_000_000).min(i128::from(i64::MAX)) as i64;
        out.push((
            day,
            UsageRow {
                attempts: i64::from(out.is_empty()),
                slot_us: us,
                gpu_us: times(u64::from(a.gpus)),
                cpu_us: times(u64::from(a.cpus)),
                memory_mb_s: mem,
                last_seq: seq,
            },
        ));
        match (next, day.succ_opt()) {
            (Some(n), Some(d)) if n < end => {
                from = n;
                day = d;
            }
            _ => return out,
        }
    }
}

/// The usage side of the fold, shared by both projector paths: the open
/// attempts of the jobs it has seen, and the usage the ended ones added.
#[derive(Default)]
pub struct UsageFold {
    /// Per job seen: its open attempt, or `None` (none, or just closed).
    pub open: HashMap<Uuid, Option<OpenAttempt>>,
    pub daily: BTreeMap<UsageKey, UsageRow>,
}

impl UsageFold {
    /// Folds event `seq` of job `id`, which [`crate::fold::JobRow::fold`]
    /// took: the job was `before` and is now `job`. Opens an attempt on a
    /// start; closes it (adding its usage) when the job leaves `running`.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &mut self,
        faults: &mut Vec<Fault>,
        id: Uuid,
        before: Option<JobStatus>,
        job: &fetchml_events::job::Job,
        seq: i64,
        at: DateTime<Utc>,
        event: &JobEvent,
    ) {
        if let JobEvent::JobStarted { attempt, placement, .. } = event {
            let res = &job.spec.resources;
            // Older events carry no placement: what the spec asked for.
            let (gpus, cpus, memory_mb) = if placement.is_empty() {
                (res.gpus, res.cpus.unwrap_or(1), res.memory_mb.unwrap_or(0))
            } else {
                (u32::try_from(placement.gpus.len()).unwrap_or(u32::MAX), placement.cpus, placement.memory_mb)
            };
            self.open.insert(
                id,
                Some(OpenAttempt {
                    attempt: *attempt,
                    owner: job.owner.to_string(),
                    pool: job.spec.pool.to_string(),
                    started_at: micros(at),
                    gpus,
                    cpus,
                    memory_mb,
                    last_seq: seq,
                }),
            );
            return;
        }
        if before != Some(JobStatus::Running) || job.status == JobStatus::Running {
            return;
        }
        let Some(Some(a)) = self.open.insert(id, None) else { return };
        let end = micros(at);
        if end - a.started_at > TimeDelta::days(MAX_ATTEMPT_DAYS) {
            faults.push(Fault::new(
                seq as u64,
                MODEL,
                ATTEMPT_TOO_LONG,
                format!(
                    "attempt {} of job {id} ran from {} to {end}, more than {MAX_ATTEMPT_DAYS} days: not counted",
                    a.attempt, a.started_at
                ),
            ));
            return;
        }
        for (day, part) in split(&a, end, seq) {
            self.daily.entry((a.owner.clone(), a.pool.clone(), day)).or_default().add(&part);
        }
    }

    /// The per-pool rows analysts read (no owner), from [`UsageFold::daily`].
    pub fn by_pool(daily: &BTreeMap<UsageKey, UsageRow>) -> BTreeMap<(String, NaiveDate), UsageRow> {
        let mut out: BTreeMap<(String, NaiveDate), UsageRow> = BTreeMap::new();
        for ((_, pool, day), r) in daily {
            out.entry((pool.clone(), *day)).or_default().add(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn attempt(start: &str) -> OpenAttempt {
        OpenAttempt {
            attempt: 1,
            owner: "alice".into(),
            pool: "default".into(),
            started_at: t(start),
            gpus: 2,
            cpus: 4,
            memory_mb: 1500,
            last_seq: 1,
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn an_attempt_across_midnight_is_split_between_the_days() {
        let a = attempt("2026-11-29T23:59:30.250000Z");
        let parts = split(&a, t("2026-11-30T00:00:45.5Z"), 7);
        assert_eq!(parts.len(), 2);
        let (d1, p1) = parts[0];
        let (d2, p2) = parts[1];
        assert_eq!((d1, d2), (day("2026-11-29"), day("2026-11-30")));
        assert_eq!((p1.attempts, p2.attempts), (1, 0), "the attempt counts on the day it started");
        assert_eq!((p1.slot_us, p2.slot_us), (29_750_000, 45_500_000));
        assert_eq!((p1.gpu_us, p1.cpu_us), (59_500_000, 119_000_000));
        assert_eq!((p2.gpu_us, p2.cpu_us), (91_000_000, 182_000_000));
        // 29.75 s × 1500 MB, 45.5 s × 1500 MB.
        assert_eq!((p1.memory_mb_s, p2.memory_mb_s), (44_625, 68_250));
        assert!(parts.iter().all(|(_, p)| p.last_seq == 7));
    }

    #[test]
    fn a_multi_day_attempt_has_whole_days_in_between_and_ends_at_midnight_cleanly() {
        let a = attempt("2026-02-27T12:00:00Z");
        let parts = split(&a, t("2026-03-02T00:00:00Z"), 2);
        let days: Vec<_> = parts.iter().map(|(d, p)| (d.to_string(), p.slot_us / 1_000_000)).collect();
        assert_eq!(days, [("2026-02-27".into(), 43_200), ("2026-02-28".into(), 86_400), ("2026-03-01".into(), 86_400)]);
    }

    #[test]
    fn nanoseconds_are_truncated_and_a_backwards_clock_counts_no_time() {
        let a = attempt("2026-11-30T10:00:00.000000999Z");
        let parts = split(&a, t("2026-11-30T10:00:01.000001999Z"), 2);
        assert_eq!(parts[0].1.slot_us, 1_000_001);
        let parts = split(&a, t("2026-11-30T09:00:00Z"), 2);
        assert_eq!((parts.len(), parts[0].1.attempts, parts[0].1.slot_us), (1, 1, 0));
    }

    #[test]
    fn an_attempt_of_absurd_length_is_a_fault_not_a_million_rows() {
        use fetchml_events::job::{Job, JobSpec};
        let owner = fetchml_events::UserName::parse("alice").unwrap();
        let job = |status| Job {
            owner: owner.clone(),
            spec: JobSpec::command(["true"]),
            status,
            attempt: 1,
            attempts_in_run: 1,
            worker: None,
            exit_code: None,
            signal: None,
            failure_class: None,
            reason: None,
            not_before: None,
            metrics: Default::default(),
            version: 0,
        };
        let id = Uuid::new_v4();
        let mut f = UsageFold::default();
        let mut faults = Vec::new();
        let start =
            JobEvent::JobStarted { attempt: 1, worker: fetchml_events::WorkerId::new(), placement: Default::default() };
        f.fold(
            &mut faults,
            id,
            Some(JobStatus::Queued),
            &job(JobStatus::Running),
            1,
            t("2000-01-01T00:00:00Z"),
            &start,
        );
        let end = JobEvent::JobCancelled { reason: "x".into() };
        f.fold(
            &mut faults,
            id,
            Some(JobStatus::Running),
            &job(JobStatus::Cancelled),
            2,
            t("9999-01-01T00:00:00Z"),
            &end,
        );
        assert!(f.daily.is_empty());
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].code, ATTEMPT_TOO_LONG);
        assert_eq!(f.open.get(&id), Some(&None), "the attempt is closed all the same");
    }
}
