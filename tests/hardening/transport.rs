//! Hardening tests: transport.
