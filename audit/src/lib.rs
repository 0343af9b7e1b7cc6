//! fetchml's audit trail on top of the event log (see the README, "Audit"):
//!
//! - [`chain`]: the global chain, derived from the log in stream order;
//! - [`checkpoint`]: Ed25519-signed checkpoints committing to its head;
//! - [`verify`]: the replay that names the first break;
//! - [`export`]: the offline JSON Lines export and its verifier;
//! - `online`: the same over a live `fetchml_eventstore::EventStore`, and
//!   the checkpoint writer.
//!
//! Everything but `online` (the default cargo feature of that name) is pure:
//! no I/O beyond reading the given input. `ml` builds it without the feature.

pub mod chain;
pub mod checkpoint;
pub mod export;
#[cfg(feature = "online")]
pub mod online;
pub mod verify;

pub use checkpoint::{Keyring, PublicKey, SigningKey};
pub use verify::{Break, BreakKind, Verdict};

/// What can go wrong in the audit library (a broken chain is not an error: it
/// is a [`Verdict`]).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Invalid(String),
    #[error("reading the export: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[cfg(feature = "online")]
    #[error(transparent)]
    Store(#[from] fetchml_eventstore::StoreError),
}
