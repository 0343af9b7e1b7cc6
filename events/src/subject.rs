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
    /// The work queue, derived from the event log.
    pub fn dispatch_stream(&self) -> String {
        format!("{}_DISPATCH", self.ns)
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
    /// A filter matching one job's subject when its owner and pool are unknown.
    pub fn job_by_id(&self, id: JobId) -> String {
        format!("{}.ev.job.*.*.{id}", self.ns)
    }
    /// The events of one worker (registration, stop).
    pub fn worker(&self, id: WorkerId) -> String {
        format!("{}.ev.worker.{id}", self.ns)
    }

    /// All dispatch subjects.
    pub fn all_dispatch(&self) -> String {
        format!("{}.dispatch.>", self.ns)
    }
    /// Where a pool's work is queued, by priority so that consumers can prefer
    /// higher priorities.
    pub fn dispatch(&self, pool: &PoolName, priority: u8) -> String {
        format!("{}.dispatch.{pool}.{priority}", self.ns)
    }
    /// All of one pool's work.
    pub fn dispatch_pool(&self, pool: &PoolName) -> String {
        format!("{}.dispatch.{pool}.*", self.ns)
    }

    /// All progress subjects.
    pub fn all_progress(&self) -> String {
        format!("{}.progress.>", self.ns)
    }
    /// Progress of one job: `kind` is `log`, `metric` or `percent`.
    pub fn progress(&self, owner: &UserName, id: JobId, kind: &str) -> String {
        format!("{}.progress.{owner}.{id}.{kind}", self.ns)
    }
    /// Every progress message of one job.
    pub fn job_progress(&self, id: JobId) -> String {
        format!("{}.progress.*.{id}.*", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
