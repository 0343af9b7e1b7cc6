//! The event store over NATS JetStream.
//!
//! JetStream *is* the event store: the EVENTS stream holds every event, one
//! subject per aggregate instance. Guarantees:
//!
//! - **Optimistic concurrency per aggregate**: an append names the stream
//!   sequence of the aggregate's last event it has seen
//!   (`Nats-Expected-Last-Subject-Sequence`); if another append got there first
//!   the server refuses and we return [`StoreError::Conflict`].
//! - **Idempotency**: each append carries `Nats-Msg-Id` derived from the command
//!   id, so a retried command within the stream's duplicate window is stored once
//!   and the retry gets the original sequence back ([`Appended::duplicate`]).
//!   Outside that window the aggregate's own rules (a job is queued once, an
//!   attempt starts once) reject the repeat.
//! - **Immutability**: EVENTS denies delete and purge.
//! - **Reads**: one aggregate's history (direct gets, no consumer state on the
//!   server), or everything from a sequence or time (an ordered consumer).

pub mod authorization;
mod connect;
pub mod correlation;
mod error;
mod index;
mod jobs;
mod registry;
pub mod retry;
mod store;
mod streams;
mod tap;

pub use connect::{
    ConnectSecurity, MIN_SERVER_VERSION, ServerVersion, check_server_version, connect, connect_secure, connect_with,
};
pub use error::StoreError;
pub use index::{IndexedJob, JobIndex};
pub use jobs::{CommandContext, ExecuteError, Executed, LoadedJob};
pub use registry::{
    DEFAULT_WORKER_TTL, HEARTBEAT, WorkerRecord, ensure_registry, entry_ttl, heartbeat_every, list_workers,
    open_registry, refresh_every,
};
pub use store::{Appended, EventStore, LOAD_BATCH, StartAt, StoredEvent, StreamReader};
pub use streams::{StreamSettings, ensure_streams, log_replicas};
pub use tap::{EventFeed, LogSource, LogTap, STALL_CHECK};
