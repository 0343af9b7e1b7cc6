//! fetchml's domain: what a job is, which commands may change it, and the events
//! that record each change.
//!
//! This crate is pure: no I/O, no clock reads except where a caller passes time in,
//! no async runtime. Adapters (the JetStream event store, the api, the worker) sit
//! beside it and depend on it, never the other way round.

pub mod dispatch;
pub mod envelope;
pub mod hash;
pub mod ids;
pub mod job;
pub mod pool;
pub mod subject;
pub mod text;
pub mod user;
pub mod worker;

pub use envelope::{Actor, AggregateKind, Envelope, EnvelopeError, NewEvent};
pub use ids::{CommandId, EventId, JobId, UserName, WorkerId};
