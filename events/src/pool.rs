//! The Pool aggregate: an admin pausing and resuming a pool. A paused pool
//! keeps its queue; the scheduler starts nothing new in it until it resumes.
//! Recorded as events so that who paused what, and when, is in the audit
//! trail, and so that every scheduler (after a restart, or a new leader)
//! knows it from the log.

use crate::envelope::{AggregateKind, DomainEvent, EnvelopeError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PoolEvent {
    PoolPaused { pool: String, reason: String },
    PoolResumed { pool: String },
}

impl DomainEvent for PoolEvent {
    const KIND: AggregateKind = AggregateKind::Pool;

    fn event_type(&self) -> &'static str {
        match self {
            PoolEvent::PoolPaused { .. } => "pool_paused",
            PoolEvent::PoolResumed { .. } => "pool_resumed",
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
