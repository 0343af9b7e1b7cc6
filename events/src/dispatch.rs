//! What the scheduler tells a worker. Nothing here is a fact of record: an
//! assignment only invites a worker to start an attempt, and the job's own
//! history decides whether it may (the start is appended expecting the job's
//! last sequence, so of two workers handed the same job by two schedulers
//! that both believe they lead, one wins and the other is refused).
//!
//! An assignment carries everything the start needs (the job's folded state,
//! its last sequence and hash for the chain), so a worker starts a job
//! without reading its history: one append, not a read and an append.

use crate::ids::{JobId, WorkerId};
use crate::job::{Job, Placement};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub job_id: JobId,
    /// The job's event subject.
    pub subject: String,
    /// The attempt to start (the job's current attempt + 1).
    pub attempt: u32,
    /// The job as folded from its history up to `expected_seq`.
    pub state: Job,
    /// The stream sequence and hash of the job's last event: the start is
    /// appended expecting this sequence and linked to this hash.
    pub expected_seq: u64,
    pub prev_hash: String,
    /// The request that set this attempt in motion (normally the submit's).
    pub correlation_id: Uuid,
    /// What the worker gives the attempt: exactly these GPUs, and the CPUs and
    /// memory reserved for it.
    pub placement: Placement,
    /// Since when the job could run (queued, or its retry backoff ended):
    /// the worker measures queue-to-start from here.
    pub ready_at: chrono::DateTime<chrono::Utc>,
}

/// One message on a worker's own subject (`<ns>.sched.worker.<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum WorkerMessage {
    Assign(Assignment),
    /// The job was cancelled (or moved on) while this worker runs `attempt`:
    /// stop its process. A lost message is caught by the worker's own check
    /// of the job's subject, every third of the lease.
    Stop {
        job_id: JobId,
        attempt: u32,
    },
    /// Take nothing new (an admin's drain); the running jobs finish.
    Drain,
}

impl WorkerMessage {
    /// Decodes a message as `serde_json::from_slice` would, without serde's
    /// buffering of an internally tagged enum (which builds the whole
    /// assignment as an intermediate tree first: about a tenth of a worker's
    /// CPU per job). The tag is read first, then the variant from the bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(borrow)]
            kind: std::borrow::Cow<'a, str>,
        }
        let tag: Tag<'_> = serde_json::from_slice(bytes)?;
        match tag.kind.as_ref() {
            "assign" => Ok(Self::Assign(serde_json::from_slice(bytes)?)),
            _ => serde_json::from_slice(bytes),
        }
    }
}

/// The worker an assignment is for, and its subject, in one place.
pub fn worker_subject(ns: &crate::ids::Namespace, worker: WorkerId) -> String {
    format!("{ns}.sched.worker.{worker}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobEvent, JobSpec, evolve};

    fn assignment() -> Assignment {
        let owner = crate::ids::UserName::parse("alice").unwrap();
        let mut spec = JobSpec::command(["python", "train.py"]);
        spec.env.insert("SEED".into(), "1".into());
        let state = evolve(None, &JobEvent::JobQueued { owner, spec }).unwrap();
        Assignment {
            job_id: JobId::new(),
            subject: "ns.jobs.alice.default.x".into(),
            attempt: 1,
            state,
            expected_seq: 7,
            prev_hash: "ab".repeat(32),
            correlation_id: Uuid::now_v7(),
            placement: Placement { host: String::new(), gpus: vec!["0".into()], cpus: 2, memory_mb: 512 },
            ready_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn every_message_reads_back_as_the_derived_decoder_reads_it() {
        let messages = [
            WorkerMessage::Assign(assignment()),
            WorkerMessage::Stop { job_id: JobId::new(), attempt: 3 },
            WorkerMessage::Drain,
        ];
        for m in messages {
            let bytes = serde_json::to_vec(&m).unwrap();
            assert_eq!(WorkerMessage::from_slice(&bytes).unwrap(), m);
            assert_eq!(serde_json::from_slice::<WorkerMessage>(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn an_unknown_kind_or_a_broken_assignment_is_an_error() {
        assert!(WorkerMessage::from_slice(br#"{"kind":"launch"}"#).is_err());
        assert!(WorkerMessage::from_slice(br#"{"kind":"assign","job_id":"nope"}"#).is_err());
        assert!(WorkerMessage::from_slice(b"not json").is_err());
    }
}
