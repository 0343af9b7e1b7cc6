#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The audit trail as its readers meet it: what never enters the log
//! (secrets, keys, tokens), what the api lists for an auditor, and who may
//! write to NATS at all.

mod authz;
mod helpers;
mod listing;
mod secrets;
