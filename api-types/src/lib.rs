//! The HTTP api's (v1) requests, query strings and answers as types, shared by
//! the api (which validates and answers with them), the `ml` CLI and the bench.
//!
//! The api's OpenAPI description (`docs/openapi.json`) is derived from these
//! types, so what is documented is what is parsed and sent. Two rules hold
//! throughout:
//! - bodies and query strings refuse unknown fields (`deny_unknown_fields`):
//!   a misspelt field or filter is an error, never silently ignored;
//! - answers send a field that has no value as `null` rather than leaving it
//!   out (except where a role may not see it), and their fields are declared
//!   in alphabetical order: the order the answers had when they were built as
//!   `serde_json::Value`s (a nested job spec keeps its declaration order).
//!
//! The read models' rows (job lists, experiments, worker history) are built by
//! Postgres and pass through the api as JSON; [`JobRow`], [`Experiment`] and
//! [`Worker`] describe them, and a client can read them into these types.
//!
//! The WebSocket protocol (`GET /v1/stream`) as a client sees it is in
//! [`StreamRequest`] and [`StreamFrame`].

mod answer;
mod audit_chain;
mod error;
mod query;
mod request;
mod scheduling;
mod stream;
mod trail;

pub use answer::*;
pub use audit_chain::*;
pub use error::*;
pub use query::*;
pub use request::*;
pub use scheduling::*;
pub use stream::*;
pub use trail::*;
