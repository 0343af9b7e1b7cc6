//! Hardening tests: worker.
