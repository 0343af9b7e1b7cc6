//! Typed identifiers. A `JobId` is never confused with an `EventId` across a
//! boundary, and names that end up inside NATS subjects are validated once, here.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid, example = "01a20adb-3701-713e-9175-763a289b5a9f")]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7), so ids sort by creation time.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        /// Parses the one canonical text form: lowercase, hyphenated
        /// (`01a20adb-3701-713e-9175-763a289b5a9f`). Uppercase, braces, `urn:`
        /// and simple (unhyphenated) forms are refused, so one job has one
        /// spelling in URLs, logs and audit reports.
        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_canonical_uuid(s).map(Self)
            }
        }
    };
}

/// An id that is not a UUID in its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an id: expected a lowercase hyphenated UUID such as 01a20adb-3701-713e-9175-763a289b5a9f")]
pub struct InvalidId;

fn parse_canonical_uuid(s: &str) -> Result<Uuid, InvalidId> {
    if s.len() != 36 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(InvalidId);
    }
    let u = Uuid::try_parse(s).map_err(|_| InvalidId)?;
    // 36 characters, no uppercase, parsed: only the hyphenated form remains,
    // but say so rather than rely on the parser's list of accepted forms.
    if u.hyphenated().to_string() != s {
        return Err(InvalidId);
    }
    Ok(u)
}

uuid_id!(
    /// Identifies one job for its whole life, across attempts.
    JobId
);
uuid_id!(
    /// Identifies one stored event.
    EventId
);
uuid_id!(
    /// Identifies one command (one request); the store derives its
    /// deduplication id from it, so a retried command is stored once.
    CommandId
);
uuid_id!(
    /// Identifies one worker process for its lifetime.
    WorkerId
);

/// A namespace under which `JobId`s derived from client idempotency keys live.
const IDEMPOTENCY_NS: Uuid = Uuid::from_u128(0x6a1f_5c3e_9b2d_4e7a_8c10_f00d_fe7c_4d11);

impl JobId {
    /// The job id a client idempotency key stands for: the same owner and key
    /// always name the same job, so a second submit finds the first.
    pub fn from_idempotency_key(owner: &UserName, key: &str) -> Self {
        let name = format!("{}\u{0}{}", owner.as_str(), key);
        Self(Uuid::new_v5(&IDEMPOTENCY_NS, name.as_bytes()))
    }
}

impl CommandId {
    /// The command id of an idempotent request: the owner, the key and a digest
    /// of the request (the normalized spec, or the whole batch). The same
    /// request sent again has the same command id, so the store answers it as
    /// a duplicate; the same key with a different request has another one,
    /// and finds the job already queued by someone else's command.
    pub fn from_idempotent_request(owner: &UserName, key: &str, request_digest: &[u8]) -> Self {
        let mut name = Vec::with_capacity(owner.as_str().len() + key.len() + request_digest.len() + 2);
        name.extend_from_slice(owner.as_str().as_bytes());
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        name.push(0);
        name.extend_from_slice(request_digest);
        Self(Uuid::new_v5(&IDEMPOTENCY_NS, &name))
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be 1-64 characters of letters, digits, '_' or '-' (got {value:?})")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

/// Checks a name that becomes one token of a NATS subject. NATS tokens must not
/// contain '.', '*', '>' or whitespace; we allow a conservative alphabet so that
/// names are also safe in file paths, SQL identifiers and URLs.
fn validate_token(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(InvalidName { what, value: value.to_owned() }) }
}

macro_rules! token_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, pattern = "^[A-Za-z0-9_-]{1,64}$")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                validate_token($what, &value)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

token_name!(
    /// A user's name as configured; it is a token of job subjects.
    UserName,
    "user name"
);
token_name!(
    /// A worker pool's name; it is a token of job and dispatch subjects.
    PoolName,
    "pool"
);
token_name!(
    /// A stream/subject namespace prefix, so tenants and tests share one server.
    Namespace,
    "namespace"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_subject_metacharacters() {
        for bad in ["", "a.b", "a*", ">", "a b", "ü", &"x".repeat(65)] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserName::parse("alice_01-x").is_ok());
    }

    #[test]
    fn idempotency_key_names_one_job_per_owner() {
        let a = UserName::parse("alice").unwrap();
        let b = UserName::parse("bob").unwrap();
        assert_eq!(JobId::from_idempotency_key(&a, "k1"), JobId::from_idempotency_key(&a, "k1"));
        assert_ne!(JobId::from_idempotency_key(&a, "k1"), JobId::from_idempotency_key(&b, "k1"));
        assert_ne!(JobId::from_idempotency_key(&a, "k1"), JobId::from_idempotency_key(&a, "k2"));
    }

    #[test]
    fn only_the_canonical_form_of_an_id_parses() {
        let id = JobId::new();
        let canonical = id.to_string();
        assert_eq!(canonical.parse::<JobId>(), Ok(id));
        for other in [
            canonical.to_uppercase(),
            format!("{{{canonical}}}"),
            format!("urn:uuid:{canonical}"),
            canonical.replace('-', ""),
            format!(" {canonical}"),
        ] {
            assert_eq!(other.parse::<JobId>(), Err(InvalidId), "{other}");
        }
    }

    #[test]
    fn ids_round_trip_through_display() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
    }
}
