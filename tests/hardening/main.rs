#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! Hardening: one test (at least) per defect of the hostile-input and fault
//! review, each of which failed before its fix. Grouped by the layer that owns
//! the rule.

mod auth;
mod edge;
mod fuzz;
mod projector;
mod transport;
mod worker;
