//! One module per family of commands. Each takes the context (where to talk,
//! how to print) and returns the process's exit code or a [`CliError`].

pub mod audit;
pub mod auth;
pub mod experiments;
pub mod fleet;
pub mod jobs;
pub mod queue;
pub mod usage;
pub mod watch;

use crate::client::Api;
use crate::config::Target;
use crate::error::{CliError, Result};
use crate::output::Out;
use chrono::{DateTime, Utc};
use fetchml_events::JobId;

/// Where a command talks and how it prints.
pub struct Ctx {
    pub out: Out,
    pub target: Target,
    pub api: Api,
}

/// A job id as the api spells them, checked before anything is sent.
pub fn job_id(s: &str) -> Result<JobId> {
    s.parse::<JobId>().map_err(|_| {
        CliError::usage(format!("{s:?} is not a job id (a UUID like 01a20adb-3701-713e-9175-763a289b5a9f)"))
    })
}

/// An RFC 3339 time, or a duration ago (`10m`, `2h 30m`, `3d`).
pub fn when(flag: &str, s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        CliError::usage(format!(
            "{flag} {s:?}: expected an RFC 3339 time (2026-01-31T12:00:00Z) or a duration (10m, 2h)"
        ))
    })?;
    let d = chrono::TimeDelta::from_std(d).map_err(|_| CliError::usage(format!("{flag} {s:?}: too long ago")))?;
    Ok(Utc::now() - d)
}

/// `KEY=VALUE` split at the first `=`.
pub fn key_value<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::usage(format!("{flag} {s:?}: expected KEY=VALUE")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_durations_ago() {
        let t = when("--since", "2026-01-31T12:00:00Z").expect("rfc3339");
        assert_eq!(t.to_rfc3339(), "2026-01-31T12:00:00+00:00");
        let ago = Utc::now() - when("--since", "10m").expect("duration");
        assert!((599..=601).contains(&ago.num_seconds()));
        assert!(when("--since", "yesterday-ish").is_err());
        assert!(job_id("nope").is_err());
        assert_eq!(key_value("--tag", "a=b=c").expect("kv"), ("a", "b=c"));
        assert!(key_value("--tag", "=b").is_err());
    }
}
