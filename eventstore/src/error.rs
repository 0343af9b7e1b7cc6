use std::time::Duration;

/// What can go wrong talking to the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another append to the same aggregate won; reload and decide again.
    #[error("concurrent change to {subject}: expected last sequence {expected}")]
    Conflict { subject: String, expected: u64 },
    /// A message with the same id was already stored in a way that contradicts
    /// this append (for example a different subject).
    #[error("message id {msg_id} was already used")]
    Duplicate { msg_id: String },
    /// NATS or JetStream cannot be reached or did not answer in time.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The request or the stored data is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A stream exists with a configuration that contradicts ours.
    #[error("stream {stream} exists with {field} = {existing}, but fetchml needs {wanted}; fix or remove it by hand")]
    StreamConflict { stream: String, field: &'static str, existing: String, wanted: String },
    /// The server is older than fetchml supports.
    #[error(
        "nats-server {found} is too old: fetchml needs {required} or newer (run ./deploy/up, which installs the pinned release)"
    )]
    ServerTooOld { found: String, required: String },
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

impl StoreError {
    /// Wraps any transport error as [`StoreError::Unavailable`].
    pub fn unavailable_from(e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }

    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        StoreError::Unavailable(e.to_string())
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::TimedOut(_))
    }
}
