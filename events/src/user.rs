//! The User aggregate: authentication and authorization facts for the audit
//! trail. Every login, every failed attempt and every refused request is
//! recorded here; attempts with an unknown identity go to the `_unknown` chain.

use crate::envelope::{AggregateKind, DomainEvent, EnvelopeError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The aggregate id (and subject token) of attempts whose user is unknown.
/// User names may not start with `_`, so no user can own it.
pub const UNKNOWN_USER: &str = "_unknown";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserEvent {
    /// `method`: `api_key` (first use of a key since start or reload) or `login`.
    UserAuthenticated {
        method: String,
        source: String,
    },
    AuthenticationFailed {
        method: String,
        source: String,
        reason: String,
    },
    /// An authenticated user asked for something they may not do.
    AccessDenied {
        permission: String,
        resource: String,
        source: String,
    },
}

impl DomainEvent for UserEvent {
    const KIND: AggregateKind = AggregateKind::User;

    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::UserAuthenticated { .. } => "user_authenticated",
            UserEvent::AuthenticationFailed { .. } => "authentication_failed",
            UserEvent::AccessDenied { .. } => "access_denied",
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
