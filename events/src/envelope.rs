//! The envelope: the metadata every stored event carries around its payload.
//!
//! Stored form (JSON): `event_id` (UUIDv7), `type`, `schema_version`,
//! `aggregate_kind`, `aggregate_id`, `aggregate_version` (1 for an aggregate's
//! first event), `occurred_at`, `actor`, `correlation_id`, `causation_id` (the
//! command that caused it), `payload` (internally tagged by the same `type`),
//! `prev_hash` and `hash` (see [`crate::hash`]).

use crate::hash::hash_of;
use crate::ids::{CommandId, EventId, UserName, WorkerId};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Which kind of aggregate an event belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Job,
    Worker,
    User,
    /// Pools paused and resumed.
    Pool,
    /// The audit trail's own events (signed checkpoints, see `fetchml-audit`):
    /// not an envelope of this module beyond `type` and `aggregate_kind`, and
    /// never part of a read model.
    Audit,
}

/// Who caused an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    User {
        name: UserName,
    },
    Worker {
        id: WorkerId,
    },
    /// A fetchml component acting on its own (reconciler, timeout watcher).
    System {
        component: String,
    },
}

/// A payload type: one enum per aggregate, internally tagged by `type`.
pub trait DomainEvent: Serialize + DeserializeOwned {
    const KIND: AggregateKind;
    /// The stable `type` of this event (equal to the payload's tag).
    fn event_type(&self) -> &'static str;
    /// The schema version this code writes for `event_type`.
    fn schema_version(event_type: &str) -> u32;
    /// Brings a stored payload of an older `version` to the current shape.
    /// Upcasters are pure functions of JSON; stored bytes are never rewritten.
    fn upcast(event_type: &str, version: u32, payload: Value) -> Result<Value, EnvelopeError>;
}

/// A stored event: envelope plus typed payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub aggregate_kind: AggregateKind,
    pub aggregate_id: String,
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub payload: P,
    pub prev_hash: String,
    pub hash: String,
}

/// What a caller supplies to make an envelope; the rest is derived.
#[derive(Clone, Debug)]
pub struct NewEvent<P> {
    pub aggregate_id: String,
    pub aggregate_version: u64,
    pub occurred_at: DateTime<Utc>,
    pub actor: Actor,
    pub command_id: CommandId,
    pub correlation_id: Uuid,
    pub payload: P,
}

/// Why stored bytes could not become an event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("event is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event of type {event_type} has schema version {version}, newer than this build knows ({known})")]
    FromTheFuture { event_type: String, version: u32, known: u32 },
    #[error("cannot upcast {event_type} v{version}: {reason}")]
    Upcast { event_type: String, version: u32, reason: String },
    #[error("event belongs to aggregate kind {found:?}, expected {expected:?}")]
    WrongKind { found: AggregateKind, expected: AggregateKind },
}

/// What a stored event is, read without decoding the rest: a reader that acts
/// on a few kinds or types skips the others without building them.
#[derive(Debug, Deserialize)]
pub struct Peeked<'a> {
    #[serde(rename = "type", borrow)]
    pub event_type: std::borrow::Cow<'a, str>,
    pub aggregate_kind: AggregateKind,
}

/// See [`Peeked`]; `None` if the bytes are not an envelope.
pub fn peek(bytes: &[u8]) -> Option<Peeked<'_>> {
    serde_json::from_slice(bytes).ok()
}

impl<P: DomainEvent> Envelope<P> {
    /// Builds the envelope, linking it to its predecessor and hashing it.
    pub fn seal(new: NewEvent<P>, prev_hash: &str) -> Result<Self, EnvelopeError> {
        let event_type = new.payload.event_type();
        let mut env = Envelope {
            event_id: EventId::new(),
            event_type: event_type.to_owned(),
            schema_version: P::schema_version(event_type),
            aggregate_kind: P::KIND,
            aggregate_id: new.aggregate_id,
            aggregate_version: new.aggregate_version,
            occurred_at: new.occurred_at,
            actor: new.actor,
            correlation_id: new.correlation_id,
            causation_id: *new.command_id.as_uuid(),
            payload: new.payload,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        env.hash = hash_of(&env)?;
        Ok(env)
    }

    /// The bytes stored in the log.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Parses stored bytes, upcasting the payload to the current schema. A
    /// payload stored at the current version (nearly all) is decoded straight
    /// from its bytes; only older ones are built as a JSON tree for the upcaster.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let raw: Envelope<Box<serde_json::value::RawValue>> = serde_json::from_slice(bytes)?;
        raw.typed_with(|payload, event_type, stored, known| {
            if stored == known {
                return Ok(serde_json::from_str(payload.get())?);
            }
            let tree: Value = serde_json::from_str(payload.get())?;
            Ok(serde_json::from_value(P::upcast(event_type, stored, tree)?)?)
        })
    }
}

impl Envelope<Value> {
    /// Turns a generic envelope into a typed one, upcasting as needed.
    pub fn into_typed<P: DomainEvent>(self) -> Result<Envelope<P>, EnvelopeError> {
        self.typed_with(|payload, event_type, stored, known| {
            let payload = if stored < known { P::upcast(event_type, stored, payload)? } else { payload };
            Ok(serde_json::from_value(payload)?)
        })
    }
}

impl<R> Envelope<R> {
    /// Checks the aggregate kind and the schema version, then makes the typed
    /// payload with `payload(raw, event_type, stored_version, current_version)`.
    fn typed_with<P: DomainEvent>(
        self,
        payload: impl FnOnce(R, &str, u32, u32) -> Result<P, EnvelopeError>,
    ) -> Result<Envelope<P>, EnvelopeError> {
        if self.aggregate_kind != P::KIND {
            return Err(EnvelopeError::WrongKind { found: self.aggregate_kind, expected: P::KIND });
        }
        let known = P::schema_version(&self.event_type);
        if self.schema_version > known {
            return Err(EnvelopeError::FromTheFuture {
                event_type: self.event_type,
                version: self.schema_version,
                known,
            });
        }
        let payload = payload(self.payload, &self.event_type, self.schema_version, known)?;
        Ok(Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: known,
            aggregate_kind: self.aggregate_kind,
            aggregate_id: self.aggregate_id,
            aggregate_version: self.aggregate_version,
            occurred_at: self.occurred_at,
            actor: self.actor,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            payload,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}
