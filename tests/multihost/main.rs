#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! fetchml beyond one machine: TLS to NATS and to Postgres, a read replica
//! for the queries, two apis behind one address, and the service units and
//! container files an operator deploys.

mod deploy_files;
mod nats_tls;
mod pg_tls;
mod pki;
mod replica;
mod two_apis;
