//! Hardening tests: projector.
