//! What can go wrong in `ml`, each with its documented exit code. Every error
//! prints as one line on stderr (`ml: ...`): what was tried and what to check,
//! never a backtrace, and never a key or token (none is ever put in a message).

use fetchml_api_types::ErrorDetail;
use std::process::ExitCode;

/// The exit codes of `ml` (also in `ml --help` and the README). With `--wait`
/// and `watch`, a job that ran and exited passes its own code through instead.
pub mod code {
    pub const OK: u8 = 0;
    /// Anything not covered below (an answer `ml` does not understand, local I/O).
    pub const ERROR: u8 = 1;
    /// Bad flags or arguments, or local input that does not parse (clap uses 2 too).
    pub const USAGE: u8 = 2;
    /// The job or experiment does not exist (or is not yours to see).
    pub const NOT_FOUND: u8 = 3;
    /// No credential, or the api refused it (wrong key, session expired or revoked).
    pub const AUTH: u8 = 4;
    /// The credential is good but its role may not do this.
    pub const FORBIDDEN: u8 = 5;
    /// The api refused the request as invalid or conflicting (400, 409, 422, 429).
    pub const REFUSED: u8 = 6;
    /// The api could not be reached, or answered that it is unavailable (5xx).
    pub const UNAVAILABLE: u8 = 7;
    /// The job failed, timed out or was dead-lettered without an exit code of
    /// its own (killed by a signal, lost with its worker, out of time).
    pub const JOB_FAILED: u8 = 8;
    /// The job was cancelled.
    pub const JOB_CANCELLED: u8 = 9;
    /// `ml audit verify`: the trail is broken (the verdict names where).
    pub const BROKEN: u8 = 10;
}

/// The exit-code table as `ml --help` shows it.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (with --wait or watch: the job succeeded)
  1  an error not listed here
  2  usage: bad flags or arguments, or a local file that does not parse
  3  not found: no such job or experiment (or not yours to see)
  4  authentication: no credential, wrong key, session expired or revoked
  5  forbidden: your role may not do this
  6  refused: the api found the request invalid or conflicting
  7  unavailable: the api could not be reached or is not ready
  8  the job failed without an exit code of its own (signal, lost worker, timeout)
  9  the job was cancelled
  10 ml audit verify: the trail is broken (the verdict names the first break)
  N  with --wait or watch: the job's own non-zero exit code";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input caught before anything was sent.
    #[error("{0}")]
    Usage(String),
    /// No credential to send, or a stored one that expired.
    #[error("{0}")]
    NotLoggedIn(String),
    /// The api answered with an error body.
    #[error("{status}: {}{}: {}", .detail.code, field_suffix(.detail), .detail.message)]
    Api { status: u16, detail: ErrorDetail, hint: Option<&'static str> },
    /// The api could not be reached at all.
    #[error(
        "cannot reach the fetchml api at {url}: {cause}; check that the api runs there and the URL (--api, FETCHML_API or `ml login --api`)"
    )]
    Unreachable { url: String, cause: String },
    /// An answer that is not what the api documents.
    #[error("unexpected answer from the fetchml api at {url}: {cause}")]
    Protocol { url: String, cause: String },
    /// Local files: the config, a spec file.
    #[error("{what}: {cause}")]
    Local { what: String, cause: String },
    /// A job watched or waited for ended without success.
    #[error("job {id} {state}")]
    JobEnded { id: String, state: String, code: u8 },
}

fn field_suffix(d: &ErrorDetail) -> String {
    d.field.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError::Usage(msg.into())
    }

    pub fn local(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        CliError::Local { what: what.into(), cause: cause.to_string() }
    }

    /// The documented exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => code::USAGE,
            CliError::NotLoggedIn(_) => code::AUTH,
            CliError::Api { status, .. } => match status {
                401 => code::AUTH,
                403 => code::FORBIDDEN,
                404 => code::NOT_FOUND,
                s if *s >= 500 => code::UNAVAILABLE,
                _ => code::REFUSED,
            },
            CliError::Unreachable { .. } => code::UNAVAILABLE,
            CliError::Protocol { .. } | CliError::Local { .. } => code::ERROR,
            CliError::JobEnded { code, .. } => *code,
        }
    }

    /// What to do about it, printed after the error on its own line.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Api { status: 401, .. } => Some("log in again with `ml login`, or check FETCHML_API_KEY".into()),
            CliError::Api { status: 403, .. } => Some("ask an admin for a role that allows it".into()),
            CliError::Api { hint: Some(h), .. } => Some((*h).to_owned()),
            _ => None,
        }
    }

    /// The error as the process's exit.
    pub fn exit(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CliError {
        CliError::Api {
            status,
            detail: ErrorDetail { code: "x".into(), field: Some("command".into()), message: "m".into() },
            hint: None,
        }
    }

    #[test]
    fn statuses_map_to_the_documented_codes() {
        assert_eq!(api(401).exit_code(), code::AUTH);
        assert_eq!(api(403).exit_code(), code::FORBIDDEN);
        assert_eq!(api(404).exit_code(), code::NOT_FOUND);
        assert_eq!(api(422).exit_code(), code::REFUSED);
        assert_eq!(api(409).exit_code(), code::REFUSED);
        assert_eq!(api(503).exit_code(), code::UNAVAILABLE);
        assert_eq!(api(422).to_string(), "422: x (command): m");
        assert_eq!(CliError::usage("u").exit_code(), 2);
    }

    #[test]
    fn every_code_is_in_the_help_table() {
        for c in 0..=9 {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {c}  ")), "{c}");
        }
    }
}
