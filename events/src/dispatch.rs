//! The work-queue message. DISPATCH is an index derived from the event log: a
//! ticket only says "this job wants a worker"; the job's own history decides
//! whether a worker may really start it (so a stale or repeated ticket is
//! harmless: the aggregate fences it out).

use crate::ids::JobId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchTicket {
    pub job_id: JobId,
    /// The job's event subject, so the worker loads it without a lookup.
    pub job_subject: String,
    /// The stream sequence of the event that asked for this dispatch.
    pub cause_seq: u64,
    /// The attempt may not start before this time (retry backoff).
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// Set by the reconciler for a running job whose worker is gone and whose
    /// ticket was lost: the receiving worker treats the attempt's lease as expired.
    #[serde(default)]
    pub takeover: bool,
}

impl DispatchTicket {
    /// `Nats-Msg-Id` of the ticket: one per causing event, so a dispatcher that
    /// crashed after publishing and before acknowledging does not queue twice.
    pub fn msg_id(&self) -> String {
        format!("dispatch-{}-{}", self.job_id, self.cause_seq)
    }
}
