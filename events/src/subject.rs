//! Stream and subject names. Every name carries the namespace prefix, so tests and
//! tenants share one server without seeing each other.
//!
//! Job events live on `<ns>.ev.job.<owner>.<pool>.<job_id>`: one subject per job
//! (the unit of optimistic concurrency, `Nats-Expected-Last-Subject-Sequence`),
//! with the owner and pool in front so that the server itself filters "my jobs"
//! (`<ns>.ev.job.alice.>`), "one pool" (`<ns>.ev.job.*.gpu.>`), "one job"
//! (`<ns>.ev.job.*.*.<id>`) and "one event family" (`<ns>.ev.job.>` versus
//! `<ns>.ev.worker.>`). Owner and pool never change after a job is queued, so a
//! job's subject is fixed for its life.

use crate::ids::{JobId, Namespace, PoolName, UserName, WorkerId};

/// The names of one namespace's streams and subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subjects {
    ns: Namespace,
}

impl Subjects {
    pub fn new(ns: Namespace) -> Self {
        Self { ns }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// The event log: system of record and audit trail.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.ns)
    }
    /// Logs, metrics and percent-done of running jobs: high volume, bounded.
    pub fn progress_stream(&self) -> String {
        format!("{}_PROGRESS", self.ns)
    }
    /// All event subjects of the namespace.
    pub fn all_events(&self) -> String {
        format!("{}.ev.>", self.ns)
    }
    /// All job events.
    pub fn all_job_events(&self) -> String {
        format!("{}.ev.job.>", self.ns)
    }
    /// The subject of one job's events.
    pub fn job(&self, owner: &UserName, pool: &PoolName, id: JobId) -> String {
        format!("{}.ev.job.{owner}.{pool}.{id}", self.ns)
    }
    /// Every job event of one owner's jobs (`<ns>.ev.job.<owner>.>`).
    pub fn job_events_of_owner(&self, owner: &UserName) -> String {
        format!("{}.ev.job.{owner}.>", self.ns)
    }
    /// Every job event in one pool, of one owner's jobs or (`None`) everyone's.
    pub fn job_events_in_pool(&self, owner: Option<&UserName>, pool: &PoolName) -> String {
        match owner {
            Some(o) => format!("{}.ev.job.{o}.{pool}.*", self.ns),
            None => format!("{}.ev.job.*.{pool}.*", self.ns),
        }
    }
    /// A filter matching one job's subject when its owner and pool are unknown.
    pub fn job_by_id(&self, id: JobId) -> String {
        format!("{}.ev.job.*.*.{id}", self.ns)
    }
    /// Every user event (logins, refusals), and the prefix of their subjects.
    pub fn all_user_events(&self) -> String {
        format!("{}.ev.user.>", self.ns)
    }
    pub fn user_prefix(&self) -> String {
        format!("{}.ev.user.", self.ns)
    }
    /// Authentication and authorization facts about one user (or `_unknown`).
    pub fn user(&self, token: &str) -> String {
        format!("{}.ev.user.{token}", self.ns)
    }
    /// The key-value bucket of session tokens (stored hashed).
    pub fn sessions_bucket(&self) -> String {
        format!("{}_sessions", self.ns)
    }

    /// The audit trail's signed checkpoints (one subject: its last sequence is
    /// the optimistic-concurrency point of the checkpoint writers).
    pub fn audit_checkpoint(&self) -> String {
        format!("{}.ev.audit.checkpoint", self.ns)
    }

    /// The events of one worker (registration, stop).
    pub fn worker(&self, id: WorkerId) -> String {
        format!("{}.ev.worker.{id}", self.ns)
    }

    /// The events of one pool (paused, resumed).
    pub fn pool(&self, pool: &PoolName) -> String {
        format!("{}.ev.pool.{pool}", self.ns)
    }
    /// What the scheduler sends one worker (assignments, stops, drain).
    pub fn scheduler_to_worker(&self, id: WorkerId) -> String {
        crate::dispatch::worker_subject(&self.ns, id)
    }
    /// Questions to the scheduler (request/reply): why a job waits, pools.
    pub fn scheduler_query(&self) -> String {
        format!("{}.sched.query", self.ns)
    }
    /// The key-value bucket holding the scheduler's leadership lease.
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.ns)
    }

    /// The key-value bucket of live workers.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.ns)
    }

    /// All progress subjects.
    pub fn all_progress(&self) -> String {
        format!("{}.progress.>", self.ns)
    }
    /// Progress of one job: `kind` is `log`, `metric` or `percent`.
    pub fn progress(&self, owner: &UserName, id: JobId, kind: &str) -> String {
        format!("{}.progress.{owner}.{id}.{kind}", self.ns)
    }
    /// Progress of one `kind` of one owner's jobs or (`None`) everyone's.
    pub fn progress_of_kind(&self, owner: Option<&UserName>, kind: &str) -> String {
        match owner {
            Some(o) => format!("{}.progress.{o}.*.{kind}", self.ns),
            None => format!("{}.progress.*.*.{kind}", self.ns),
        }
    }
    /// Every progress message of one job.
    pub fn job_progress(&self, id: JobId) -> String {
        format!("{}.progress.*.{id}.*", self.ns)
    }
}

/// The label key of a job that needs no labels. Every worker serves it.
pub const NO_LABELS: &str = "_";

/// Why a label cannot be part of a label set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("labels are 1-64 letters, digits, '_' or '-', starting with a letter or digit (got {0:?})")]
pub struct InvalidLabel(pub String);

/// The one rule for labels, for jobs and workers alike. A label set becomes one
/// token of a dispatch subject ([`label_key`]): labels joined by `+`, or
/// [`NO_LABELS`] for none. So a label must be a subject token without `+`, and
/// must not start with `_` or `-`: otherwise the label `_` would be the same
/// key as "no labels", and a job needing it would run on any worker.
pub fn check_label(label: &str) -> Result<(), InvalidLabel> {
    let ok = label.len() <= 64
        && label.starts_with(|c: char| c.is_ascii_alphanumeric())
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(InvalidLabel(label.to_owned())) }
}

/// The token naming a set of labels in dispatch subjects: the sorted, distinct
/// labels joined by `+`, or [`NO_LABELS`] for none. Distinct sets of labels
/// that pass [`check_label`] get distinct keys.
pub fn label_key<S: AsRef<str>>(labels: &[S]) -> String {
    let mut v: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() { NO_LABELS.to_owned() } else { v.join("+") }
}

/// Every label set a worker offering `labels` can serve (all subsets), as
/// label keys. Bounded: specs allow at most 8 labels, workers at most 6.
pub fn served_label_keys<S: AsRef<str>>(labels: &[S]) -> Vec<String> {
    let mut v: Vec<&str> = labels.iter().map(AsRef::as_ref).collect();
    v.sort_unstable();
    v.dedup();
    let n = v.len().min(6);
    (0u32..(1 << n))
        .map(|mask| {
            let subset: Vec<&str> = (0..n).filter(|i| mask & (1 << i) != 0).map(|i| v[i]).collect();
            label_key(&subset)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_keys_are_canonical_and_workers_serve_every_subset() {
        assert_eq!(super::label_key::<&str>(&[]), "_");
        assert_eq!(super::label_key(&["gpu", "a100", "gpu"]), "a100+gpu");
        let mut served = super::served_label_keys(&["gpu", "a100"]);
        served.sort();
        assert_eq!(served, ["_", "a100", "a100+gpu", "gpu"]);
    }

    use super::*;

    #[test]
    fn no_label_can_collide_with_the_key_of_no_labels() {
        for bad in ["_", "_gpu", "-", "-x", "", "a+b", "a.b", "a*", ">", "gpu ", &"x".repeat(65)] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        for good in ["gpu", "a100", "x_y", "x-y", "9", &"x".repeat(64)] {
            assert!(check_label(good).is_ok(), "{good:?}");
            assert_ne!(label_key(&[good]), NO_LABELS);
        }
    }

    #[test]
    fn job_subject_is_matched_by_the_id_filter() {
        let s = Subjects::new(Namespace::parse("t1").unwrap());
        let id = JobId::new();
        let subj = s.job(&UserName::parse("alice").unwrap(), &PoolName::parse("gpu").unwrap(), id);
        let filter = s.job_by_id(id);
        let (a, b): (Vec<_>, Vec<_>) = (subj.split('.').collect(), filter.split('.').collect());
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| *y == "*" || x == y));
    }
}
