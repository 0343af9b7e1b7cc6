//! The Worker aggregate: a worker's start and stop, for the audit trail. Which
//! workers are alive right now is in a key-value bucket with a TTL (not here:
//! liveness is not a fact worth keeping forever).

use crate::envelope::{AggregateKind, DomainEvent, EnvelopeError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerEvent {
    WorkerStarted {
        pool: String,
        labels: Vec<String>,
        concurrency: usize,
        host: String,
        pid: u32,
    },
    WorkerStopped {
        reason: String,
    },
    /// An admin asked the worker to drain: it finishes what runs and is given
    /// nothing new.
    WorkerDrainRequested {
        reason: String,
    },
}

impl DomainEvent for WorkerEvent {
    const KIND: AggregateKind = AggregateKind::Worker;

    fn event_type(&self) -> &'static str {
        match self {
            WorkerEvent::WorkerStarted { .. } => "worker_started",
            WorkerEvent::WorkerStopped { .. } => "worker_stopped",
            WorkerEvent::WorkerDrainRequested { .. } => "worker_drain_requested",
        }
    }

    fn schema_version(_event_type: &str) -> u32 {
        1
    }

    fn upcast(event_type: &str, version: u32, payload: Value) -> Result<Value, EnvelopeError> {
        if version == 1 {
            Ok(payload)
        } else {
            Err(EnvelopeError::Upcast { event_type: event_type.into(), version, reason: "unknown version".into() })
        }
    }
}
