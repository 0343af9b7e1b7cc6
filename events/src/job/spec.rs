//! What a user asks to run. `JobSpec` is the validated form; every field that can
//! be wrong is checked by [`JobSpec::validate`], which names the offending field
//! and a stable code, so the api can answer 422 precisely.

use crate::ids::PoolName;
use crate::job::FailureClass;
use crate::text::TextKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a job needs from the machine it runs on. Workers advertise capacity;
/// matching on them beyond pool and labels is left to the pool's operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub gpus: u32,
}

/// When a failed attempt is tried again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Random spread of each delay, in percent (0-100), so that many jobs
    /// failing together do not come back together.
    pub jitter_percent: u8,
    /// Which failure classes are retried.
    pub retry_on: Vec<FailureClass>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            jitter_percent: 20,
            retry_on: vec![FailureClass::Infrastructure],
        }
    }
}

/// Longest retry delay a policy may ask for (a week). Submits over it are
/// refused; [`RetryPolicy::backoff_ms`] also caps at it, so a policy stored
/// before the bound existed cannot overflow into no delay at all.
pub const MAX_BACKOFF_MS: u64 = 7 * 24 * 3600 * 1000;

impl RetryPolicy {
    /// The delay before attempt `failed_attempt + 1`, given a random draw
    /// `jitter_permille` in 0..=1000 (the caller brings randomness; this stays pure).
    /// Saturating throughout: a huge policy means a long delay, never a wrap.
    pub fn backoff_ms(&self, failed_attempt: u32, jitter_permille: u16) -> u64 {
        let exp = failed_attempt.saturating_sub(1).min(32);
        let base = self.backoff_initial_ms.saturating_mul(1u64 << exp).min(self.backoff_max_ms).min(MAX_BACKOFF_MS);
        let spread = base * u64::from(self.jitter_percent.min(100)) / 100;
        // Map 0..=1000 onto -spread..=+spread (base and spread are at most
        // MAX_BACKOFF_MS, so nothing here can overflow).
        let j = u64::from(jitter_permille.min(1000));
        (base + spread * j / 500).saturating_sub(spread)
    }
}

/// How a job is executed. `process` runs argv; the built-ins exist for tests and
/// benchmarks and never spawn anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    #[default]
    Process,
    /// Succeeds at once.
    Noop,
    /// Sleeps for `command[0]` milliseconds (default 1000), then succeeds.
    Sleep,
    /// Fails at once with exit code `command[0]` (1-255, default 1).
    Fail,
    /// Runs `command` inside a container of `image` with podman.
    Podman,
}

/// A job as submitted and stored in `job_queued`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// argv; never passed through a shell unless `shell` is true.
    pub command: Vec<String>,
    /// Run `command` joined by spaces through `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of environment variables whose values the worker supplies from
    /// its own host when the job starts (see the README's "Secrets"): the
    /// values never enter the log. Left out of the stored form when empty, so
    /// specs stored before the field existed keep their bytes and hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Relative to the worker's job root.
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default = "default_pool")]
    #[schema(default = "default")]
    pub pool: PoolName,
    #[serde(default)]
    pub labels: Vec<String>,
    /// 1 (lowest) to 10 (highest).
    #[serde(default = "default_priority")]
    #[schema(minimum = 1, maximum = 10, default = 5)]
    pub priority: u8,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub experiment: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub executor: ExecutorKind,
    /// The container image, for the `podman` executor.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub retry: RetryPolicy,
}

pub fn default_pool() -> PoolName {
    // "default" is a valid token; parsing cannot fail.
    PoolName::parse("default").unwrap_or_else(|_| unreachable!("static pool name"))
}

pub fn default_priority() -> u8 {
    5
}

/// Limits that keep one job's spec from bloating the log.
pub const MAX_ARGS: usize = 1024;
pub const MAX_ARG_BYTES: usize = 64 * 1024;
pub const MAX_ENV: usize = 256;
pub const MAX_SECRETS: usize = 64;
pub const MAX_TAGS: usize = 64;
pub const MAX_LABELS: usize = 8;

/// Longest a `sleep` job may sleep, in milliseconds (a week).
pub const MAX_SLEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Free-text limits, in characters (see [`crate::text`]).
pub const MAX_EXPERIMENT_CHARS: usize = 128;
pub const MAX_TAG_KEY_CHARS: usize = 128;
pub const MAX_TAG_VALUE_CHARS: usize = 1024;
pub const MAX_WORKING_DIR_CHARS: usize = 1024;

/// Applies the free-text rules to one field; the field name is built only on
/// failure.
fn text_rule(value: &str, kind: TextKind, max: usize, field: impl FnOnce() -> String) -> Result<(), SpecError> {
    crate::text::check(value, kind, max).map_err(|e| err(e.code(), field(), e.to_string()))
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A user-supplied key made safe to echo in an error's `field`.
fn printable(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// A spec field that is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// A stable machine-readable code, e.g. `command_empty`.
    pub code: &'static str,
    /// The offending field, e.g. `command` or `env.PATH`.
    pub field: String,
    pub message: String,
}

fn err(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { code, field: field.into(), message: message.into() }
}

impl JobSpec {
    /// A spec running `command` with every other field at its default.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            command: argv.into_iter().map(Into::into).collect(),
            shell: false,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            working_dir: None,
            pool: default_pool(),
            labels: Vec::new(),
            priority: default_priority(),
            timeout_secs: None,
            experiment: None,
            tags: BTreeMap::new(),
            executor: ExecutorKind::Process,
            image: None,
            resources: Resources::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Brings the free-text fields (experiment, tag keys and values) to Unicode
    /// NFC, so that two spellings of one name are one name. The api calls this
    /// before [`JobSpec::validate`], which refuses text that is not NFC.
    pub fn normalize(&mut self) {
        if let Some(e) = &mut self.experiment {
            crate::text::normalize_in_place(e);
        }
        let changes = |s: &str| matches!(crate::text::normalize(s), std::borrow::Cow::Owned(_));
        if self.tags.iter().any(|(k, v)| changes(k) || changes(v)) {
            self.tags = std::mem::take(&mut self.tags)
                .into_iter()
                .map(|(k, v)| (crate::text::normalize(&k).into_owned(), crate::text::normalize(&v).into_owned()))
                .collect();
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        match (&self.executor, &self.image) {
            (ExecutorKind::Podman, None) => {
                return Err(err("image_required", "image", "the podman executor needs an image"));
            }
            (ExecutorKind::Podman, Some(i))
                if i.is_empty() || i.len() > 256 || i.starts_with('-') || i.contains(char::is_whitespace) =>
            {
                return Err(err("invalid_image", "image", "not an image reference"));
            }
            (ExecutorKind::Podman, _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(err("image_without_podman", "image", "only the podman executor takes an image"));
            }
        }
        if self.command.is_empty() && matches!(self.executor, ExecutorKind::Process | ExecutorKind::Podman) {
            return Err(err("command_empty", "command", "must name a program to run"));
        }
        if self.command.first().is_some_and(|c| c.is_empty()) {
            return Err(err("command_empty", "command[0]", "program name is empty"));
        }
        if self.command.len() > MAX_ARGS {
            return Err(err("too_large", "command", format!("at most {MAX_ARGS} arguments")));
        }
        let bytes: usize = self.command.iter().map(String::len).sum();
        if bytes > MAX_ARG_BYTES {
            return Err(err("too_large", "command", format!("at most {MAX_ARG_BYTES} bytes in all")));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(err("invalid_argument", "command", "arguments may not contain NUL"));
        }
        if !(1..=10).contains(&self.priority) {
            return Err(err("out_of_range", "priority", "must be between 1 and 10"));
        }
        if self.env.len() > MAX_ENV {
            return Err(err("too_large", "env", format!("at most {MAX_ENV} variables")));
        }
        for (k, v) in &self.env {
            if !is_env_name(k) {
                return Err(err(
                    "invalid_env_name",
                    format!("env.{}", printable(k)),
                    "names are letters, digits and '_', not starting with a digit",
                ));
            }
            if v.contains('\0') {
                return Err(err("invalid_argument", format!("env.{k}"), "values may not contain NUL"));
            }
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(err("too_large", "secrets", format!("at most {MAX_SECRETS} secrets")));
        }
        for (i, name) in self.secrets.iter().enumerate() {
            if !is_env_name(name) || name.starts_with("FETCHML_") {
                return Err(err(
                    "invalid_secret_name",
                    format!("secrets[{i}]"),
                    "names are letters, digits and '_', not starting with a digit or FETCHML_",
                ));
            }
            if self.env.contains_key(name) || self.secrets[..i].contains(name) {
                return Err(err(
                    "duplicate_secret",
                    format!("secrets[{i}]"),
                    "named twice (in env or in secrets); a variable comes from one place",
                ));
            }
        }
        if let Some(dir) = &self.working_dir {
            text_rule(dir, TextKind::Line, MAX_WORKING_DIR_CHARS, || "working_dir".to_owned())?;
            let escapes = dir.starts_with('/')
                || std::path::Path::new(dir).components().any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes {
                return Err(err(
                    "working_dir_escapes",
                    "working_dir",
                    "must be relative to the job root and may not contain '..'",
                ));
            }
        }
        if self.timeout_secs == Some(0) {
            return Err(err("out_of_range", "timeout_secs", "must be at least 1"));
        }
        if self.tags.len() > MAX_TAGS {
            return Err(err("too_large", "tags", format!("at most {MAX_TAGS} tags")));
        }
        for (k, v) in &self.tags {
            text_rule(k, TextKind::Line, MAX_TAG_KEY_CHARS, || format!("tags.{}", printable(k)))?;
            text_rule(v, TextKind::Line, MAX_TAG_VALUE_CHARS, || format!("tags.{}", printable(k)))?;
        }
        if let Some(e) = &self.experiment {
            text_rule(e, TextKind::Line, MAX_EXPERIMENT_CHARS, || "experiment".to_owned())?;
        }
        if self.labels.len() > MAX_LABELS {
            return Err(err("too_large", "labels", format!("at most {MAX_LABELS} labels")));
        }
        for (i, l) in self.labels.iter().enumerate() {
            // Labels become one token of a dispatch subject; the rule (and why
            // `_` is refused) lives with the subject encoding.
            crate::subject::check_label(l).map_err(|e| err("invalid_label", format!("labels[{i}]"), e.to_string()))?;
        }
        match self.executor {
            ExecutorKind::Sleep => {
                self.sleep_ms()?;
            }
            ExecutorKind::Fail => {
                self.fail_exit_code()?;
            }
            ExecutorKind::Process | ExecutorKind::Noop | ExecutorKind::Podman => {}
        }
        if !(1..=100).contains(&self.retry.max_attempts) {
            return Err(err("out_of_range", "retry.max_attempts", "must be between 1 and 100"));
        }
        if self.retry.jitter_percent > 100 {
            return Err(err("out_of_range", "retry.jitter_percent", "must be between 0 and 100"));
        }
        if self.retry.backoff_initial_ms > MAX_BACKOFF_MS {
            return Err(err("out_of_range", "retry.backoff_initial_ms", format!("must be at most {MAX_BACKOFF_MS}")));
        }
        if self.retry.backoff_max_ms > MAX_BACKOFF_MS {
            return Err(err("out_of_range", "retry.backoff_max_ms", format!("must be at most {MAX_BACKOFF_MS}")));
        }
        if self.retry.backoff_max_ms < self.retry.backoff_initial_ms {
            return Err(err("out_of_range", "retry.backoff_max_ms", "must be at least backoff_initial_ms"));
        }
        if self.resources.gpus > 64 {
            return Err(err("out_of_range", "resources.gpus", "must be at most 64"));
        }
        Ok(())
    }

    /// The one argument of a built-in executor, if any: `command[0]`, with
    /// nothing after it.
    fn builtin_arg(&self) -> Result<Option<&str>, SpecError> {
        if self.command.len() > 1 {
            return Err(err("invalid_argument", "command[1]", "this executor takes at most one argument"));
        }
        Ok(self.command.first().map(String::as_str))
    }

    /// How long the `sleep` executor sleeps: `command[0]` milliseconds (plain
    /// decimal digits, at most [`MAX_SLEEP_MS`]), 1000 without an argument.
    /// Checked at submit by [`JobSpec::validate`] and used by the worker, so
    /// both read the argument the same way.
    pub fn sleep_ms(&self) -> Result<u64, SpecError> {
        let Some(arg) = self.builtin_arg()? else { return Ok(1000) };
        let ms = decimal(arg).ok_or_else(|| {
            err("invalid_argument", "command[0]", "the sleep executor takes a number of milliseconds")
        })?;
        match ms {
            Some(ms) if ms <= MAX_SLEEP_MS => Ok(ms),
            _ => Err(err("out_of_range", "command[0]", format!("must be at most {MAX_SLEEP_MS} milliseconds"))),
        }
    }

    /// The exit code the `fail` executor ends with: `command[0]` (1-255: a
    /// failure, as an exit status can hold it), 1 without an argument.
    pub fn fail_exit_code(&self) -> Result<i32, SpecError> {
        let Some(arg) = self.builtin_arg()? else { return Ok(1) };
        let code = decimal(arg)
            .ok_or_else(|| err("invalid_argument", "command[0]", "the fail executor takes an exit code"))?;
        match code {
            Some(c @ 1..=255) => Ok(c as i32),
            _ => Err(err("out_of_range", "command[0]", "the exit code of a failure is between 1 and 255")),
        }
    }
}

/// `s` as an unsigned decimal number: `None` if it is not one (sign, space,
/// empty), `Some(None)` if it is one too large for u64.
fn decimal(s: &str) -> Option<Option<u64>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let mut s = JobSpec::command(["echo"]);
        assert!(s.validate().is_ok());
        s.priority = 11;
        assert_eq!(s.validate().unwrap_err().field, "priority");
        let mut s = JobSpec::command(["echo"]);
        s.working_dir = Some("a/../../etc".into());
        assert_eq!(s.validate().unwrap_err().code, "working_dir_escapes");
        let mut s = JobSpec::command(["echo"]);
        s.env.insert("1BAD".into(), "x".into());
        assert_eq!(s.validate().unwrap_err().field, "env.1BAD");
        assert_eq!(JobSpec::command(Vec::<String>::new()).validate().unwrap_err().code, "command_empty");
    }

    #[test]
    fn backoff_grows_is_capped_and_jitters_within_bounds() {
        let p = RetryPolicy { jitter_percent: 0, ..RetryPolicy::default() };
        assert_eq!([1, 2, 3].map(|a| p.backoff_ms(a, 500)), [1000, 2000, 4000]);
        assert_eq!(p.backoff_ms(30, 500), 60_000);
        let j = RetryPolicy::default();
        assert_eq!(j.backoff_ms(1, 0), 800);
        assert_eq!(j.backoff_ms(1, 500), 1000);
        assert_eq!(j.backoff_ms(1, 1000), 1200);
    }

    #[test]
    fn labels_must_be_subject_tokens() {
        let mut s = JobSpec::command(["x"]);
        s.labels = vec!["gpu".into(), "a.b".into()];
        assert_eq!(s.validate().unwrap_err().code, "invalid_label");
    }

    /// Defect 10: `_` is the dispatch subject's token for "no labels", so a job
    /// needing the label `_` ran on workers offering none.
    #[test]
    fn the_label_of_no_labels_is_refused() {
        for bad in ["_", "_gpu", "-x"] {
            let mut s = JobSpec::command(["x"]);
            s.labels = vec!["gpu".into(), bad.into()];
            let e = s.validate().unwrap_err();
            assert_eq!((e.code, e.field.as_str()), ("invalid_label", "labels[1]"), "{bad:?}");
        }
        let mut s = JobSpec::command(["x"]);
        s.labels = vec!["gpu_x".into(), "a-100".into()];
        assert!(s.validate().is_ok());
    }

    fn builtin(kind: ExecutorKind, argv: &[&str]) -> JobSpec {
        let mut s = JobSpec::command(argv.iter().copied());
        s.executor = kind;
        s
    }

    /// Defect 13: `sleep abc`, `sleep -1` and `sleep 2^64` succeeded at once,
    /// and `fail 0` ended `failed` with exit 0.
    #[test]
    fn builtin_executor_arguments_are_checked_at_submit() {
        let refused = [
            (ExecutorKind::Sleep, &["abc"][..], "invalid_argument", "command[0]"),
            (ExecutorKind::Sleep, &["-1"], "invalid_argument", "command[0]"),
            (ExecutorKind::Sleep, &["+5"], "invalid_argument", "command[0]"),
            (ExecutorKind::Sleep, &[" 5"], "invalid_argument", "command[0]"),
            (ExecutorKind::Sleep, &["18446744073709551616"], "out_of_range", "command[0]"),
            (ExecutorKind::Sleep, &["604800001"], "out_of_range", "command[0]"),
            (ExecutorKind::Sleep, &["5", "6"], "invalid_argument", "command[1]"),
            (ExecutorKind::Fail, &["0"], "out_of_range", "command[0]"),
            (ExecutorKind::Fail, &["256"], "out_of_range", "command[0]"),
            (ExecutorKind::Fail, &["-1"], "invalid_argument", "command[0]"),
            (ExecutorKind::Fail, &["x"], "invalid_argument", "command[0]"),
        ];
        for (kind, argv, code, field) in refused {
            let e = builtin(kind, argv).validate().unwrap_err();
            assert_eq!((e.code, e.field.as_str()), (code, field), "{kind:?} {argv:?}");
        }
        assert_eq!(builtin(ExecutorKind::Sleep, &["250"]).sleep_ms(), Ok(250));
        assert_eq!(builtin(ExecutorKind::Sleep, &[]).sleep_ms(), Ok(1000));
        assert_eq!(builtin(ExecutorKind::Fail, &["255"]).fail_exit_code(), Ok(255));
        assert_eq!(builtin(ExecutorKind::Fail, &[]).fail_exit_code(), Ok(1));
        // noop ignores its command (it stands in for a real one in tests).
        assert!(builtin(ExecutorKind::Noop, &["train.py", "--lr"]).validate().is_ok());
    }

    /// Defect 13: a huge `backoff_initial_ms` overflowed into no delay.
    #[test]
    fn huge_backoffs_are_refused_and_saturate_where_stored() {
        let mut s = JobSpec::command(["x"]);
        s.retry.backoff_initial_ms = u64::MAX;
        s.retry.backoff_max_ms = u64::MAX;
        assert_eq!(s.validate().unwrap_err().field, "retry.backoff_initial_ms");
        s.retry.backoff_initial_ms = 1000;
        assert_eq!(s.validate().unwrap_err().field, "retry.backoff_max_ms");
        // A policy stored before the bound: the longest delay, never none.
        let p = s.retry.clone();
        let p = RetryPolicy { backoff_initial_ms: u64::MAX, ..p };
        for jitter in [0, 500, 1000] {
            for attempt in [1, 2, 40] {
                assert!(p.backoff_ms(attempt, jitter) >= MAX_BACKOFF_MS * 8 / 10, "{attempt} {jitter}");
            }
        }
        assert_eq!(p.backoff_ms(1, 500), MAX_BACKOFF_MS);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<JobSpec, _> = serde_json::from_str(r#"{"command":["x"],"comand":1}"#);
        assert!(r.is_err());
    }
}
