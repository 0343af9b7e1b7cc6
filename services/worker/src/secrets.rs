//! Secrets a job names (`JobSpec::secrets`) and this host provides. The values
//! are read here, on the worker's host, when an attempt starts, and go only
//! into the job's process environment: never into an event, a progress
//! message, a log line or a read model. The job's own output is redacted
//! before it is published, so a program that prints its token does not put it
//! in the log either.
//!
//! Sources, the first that has a name winning: the file named by
//! `secrets.file` (a YAML map `NAME: value`, readable by this user only), then,
//! if `secrets.from_env`, the worker's own environment.

use fetchml_runtime::settings::SecretSettings;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Values shorter than this are given to the job but not redacted from its
/// output: replacing every `1` or `yes` in a log would garble it and hide
/// nothing worth hiding. Real credentials are far longer.
pub const MIN_REDACTED_CHARS: usize = 6;

/// What stands in the log for a secret's value.
pub const REDACTED: &str = "[secret]";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("secrets file {path}: not a YAML map of NAME: value ({message})")]
    Parse { path: PathBuf, message: String },
    #[error("secrets file {path} is readable by others (mode {mode:o}); chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
}

/// Where this worker finds secrets.
#[derive(Default)]
pub struct SecretSource {
    file: BTreeMap<String, String>,
    from_env: bool,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource").field("names", &self.file.keys()).field("from_env", &self.from_env).finish()
    }
}

impl SecretSource {
    /// Reads the settings' file now, so that a bad file stops the worker at
    /// start rather than failing its jobs one by one.
    pub fn load(settings: &SecretSettings) -> Result<Self, SecretsError> {
        let file = match &settings.file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        Ok(Self { file, from_env: settings.from_env })
    }

    /// The values of `names`, or the first name this host does not provide.
    pub fn resolve(&self, names: &[String]) -> Result<Secrets, String> {
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            let value = match self.file.get(name) {
                Some(v) => v.clone(),
                None if self.from_env => std::env::var(name).map_err(|_| name.clone())?,
                None => return Err(name.clone()),
            };
            values.push((name.clone(), value));
        }
        Ok(Secrets { values })
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |source| SecretsError::Read { path: path.to_owned(), source };
    let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Exposed { path: path.to_owned(), mode });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    // The parser's message may quote the file's text: keep only where it failed.
    let parsed: BTreeMap<String, String> = serde_yaml_ng::from_str(&text).map_err(|e| SecretsError::Parse {
        path: path.to_owned(),
        message: e.location().map(|l| format!("line {}", l.line())).unwrap_or_else(|| "no location".into()),
    })?;
    Ok(parsed)
}

/// The secrets of one attempt. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Vec<(String, String)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.iter().map(|(n, _)| n)).finish()
    }
}

impl Secrets {
    pub fn new(values: Vec<(String, String)>) -> Self {
        Self { values }
    }

    /// `(name, value)` pairs, for the process environment only.
    pub fn env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }

    /// `line` with every secret value of [`MIN_REDACTED_CHARS`] or more
    /// replaced by [`REDACTED`].
    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for (_, v) in &self.values {
            if v.chars().count() >= MIN_REDACTED_CHARS && out.contains(v.as_str()) {
                out = Cow::Owned(out.replace(v.as_str(), REDACTED));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(mode: u32, text: &str) -> tempfile::NamedTempFile {
        use std::os::unix::fs::PermissionsExt;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    fn settings(file: Option<&Path>, from_env: bool) -> SecretSettings {
        SecretSettings { file: file.map(Path::to_owned), from_env, ..SecretSettings::default() }
    }

    #[test]
    fn the_file_wins_and_a_missing_name_is_reported() {
        let f = file_with(0o600, "WANDB_API_KEY: from-the-file\n");
        let src = SecretSource::load(&settings(Some(f.path()), false)).unwrap();
        let s = src.resolve(&["WANDB_API_KEY".into()]).unwrap();
        assert_eq!(s.env().collect::<Vec<_>>(), [("WANDB_API_KEY", "from-the-file")]);
        assert_eq!(src.resolve(&["WANDB_API_KEY".into(), "NOPE".into()]).unwrap_err(), "NOPE");
    }

    #[test]
    fn a_file_others_can_read_is_refused_without_quoting_it() {
        let f = file_with(0o644, "A: b\n");
        assert!(matches!(SecretSource::load(&settings(Some(f.path()), false)), Err(SecretsError::Exposed { .. })));
        let f = file_with(0o600, "A: [not, a, string]\nTOKEN: hunter22\n");
        let e = SecretSource::load(&settings(Some(f.path()), false)).unwrap_err().to_string();
        assert!(!e.contains("hunter22"), "{e}");
    }

    #[test]
    fn output_is_redacted_and_debug_shows_names_only() {
        let s = Secrets { values: vec![("T".into(), "s3cr3t-value".into()), ("SHORT".into(), "ab".into())] };
        assert_eq!(s.redact("token=s3cr3t-value; again s3cr3t-value"), "token=[secret]; again [secret]");
        assert_eq!(s.redact("ab stays"), "ab stays");
        assert!(matches!(s.redact("nothing here"), Cow::Borrowed(_)));
        let shown = format!("{s:?}");
        assert!(shown.contains('T') && !shown.contains("s3cr3t"), "{shown}");
    }
}
