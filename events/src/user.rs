//! The User aggregate: authentication and authorization facts for the audit
//! trail. Every login, every failed attempt and every refused request is
//! recorded here; attempts with an unknown identity go to the `_unknown` chain.
//!
//! Compatibility: fields added later carry a serde default and are left out
//! when they hold it, so stored events keep decoding and an event without the
//! new field serializes to the same bytes (and hash) as before.

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
    /// An authenticated user asked for something they may not do. `count`
    /// refusals of this permission, resource and source are recorded by this
    /// one event: identical refusals within the api's refusal window are
    /// folded into a later event with their number (1 when absent).
    AccessDenied {
        permission: String,
        resource: String,
        source: String,
        #[serde(default = "one", skip_serializing_if = "is_one")]
        count: u64,
    },
    /// A session token was ended by its holder (`POST /v1/auth/logout`).
    UserLoggedOut {
        source: String,
    },
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

impl DomainEvent for UserEvent {
    const KIND: AggregateKind = AggregateKind::User;

    fn event_type(&self) -> &'static str {
        match self {
            UserEvent::UserAuthenticated { .. } => "user_authenticated",
            UserEvent::AuthenticationFailed { .. } => "authentication_failed",
            UserEvent::AccessDenied { .. } => "access_denied",
            UserEvent::UserLoggedOut { .. } => "user_logged_out",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_denied_stored_before_count_existed_decodes_and_reserializes_the_same() {
        let old = r#"{"type":"access_denied","permission":"jobs:create","resource":"jobs","source":"127.0.0.1"}"#;
        let e: UserEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(&e, UserEvent::AccessDenied { count: 1, .. }));
        assert_eq!(serde_json::to_string(&e).unwrap(), old);
        let folded = UserEvent::AccessDenied {
            permission: "jobs:create".into(),
            resource: "jobs".into(),
            source: "127.0.0.1".into(),
            count: 199,
        };
        assert!(serde_json::to_string(&folded).unwrap().contains(r#""count":199"#));
    }
}
