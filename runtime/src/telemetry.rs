//! Logging: to stderr, filtered by `RUST_LOG` (default `info`), JSON when
//! `FETCHML_LOG_FORMAT=json`. Data goes to stdout; diagnostics never do.

use std::io::IsTerminal;
use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FETCHML_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless; ignore the error.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
