//! What keeps credentials out of the log. The log is kept forever and read by
//! auditors, so a token written into a job's `env` would be there for good. A
//! job names its secrets instead (`JobSpec::secrets`) and the worker supplies
//! the values on its own host; these rules refuse, at submit, `env` entries
//! that look like credentials, with a code that points the user to `secrets`.
//!
//! The rules are heuristics, configurable per deployment: names matched by
//! glob patterns (`*` is any run of characters, case-insensitive) and values
//! that start with a well-known token prefix.

use super::spec::{JobSpec, SpecError};

/// Values shorter than this are never taken for a token by their prefix
/// (`sk-1` is a plausible ordinary value; real tokens are long).
const MIN_TOKEN_CHARS: usize = 16;

/// Which `env` entries look like credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialRules {
    /// Glob patterns over variable names, e.g. `*_TOKEN`.
    pub names: Vec<String>,
    /// Prefixes of well-known tokens, e.g. `ghp_`.
    pub value_prefixes: Vec<String>,
}

/// The default name patterns. `*_TOKEN` rather than `*TOKEN*`: ML jobs set
/// `TOKENIZERS_PARALLELISM`, which is not a credential.
pub const DEFAULT_NAME_PATTERNS: &[&str] = &[
    "*PASSWORD*",
    "*PASSWD*",
    "*SECRET*",
    "TOKEN",
    "*_TOKEN",
    "*_TOKEN_*",
    "*API_KEY*",
    "*APIKEY*",
    "*ACCESS_KEY*",
    "*PRIVATE_KEY*",
    "*CREDENTIAL*",
];

/// The default token prefixes (GitHub, GitLab, Hugging Face, OpenAI-style,
/// Slack, AWS access key ids, fetchml's own API keys).
pub const DEFAULT_VALUE_PREFIXES: &[&str] =
    &["ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "hf_", "sk-", "xoxb-", "xoxp-", "AKIA", "fml_"];

impl Default for CredentialRules {
    fn default() -> Self {
        Self {
            names: DEFAULT_NAME_PATTERNS.iter().map(|s| (*s).to_owned()).collect(),
            value_prefixes: DEFAULT_VALUE_PREFIXES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl CredentialRules {
    /// Refuses the first `env` entry that looks like a credential. An empty
    /// value is never one (it is how a job unsets a variable).
    pub fn check(&self, spec: &JobSpec) -> Result<(), SpecError> {
        for (name, value) in &spec.env {
            if value.is_empty() {
                continue;
            }
            let upper = name.to_ascii_uppercase();
            let by_name = self.names.iter().any(|p| glob_match(&p.to_ascii_uppercase(), &upper));
            let by_value = value.chars().count() >= MIN_TOKEN_CHARS
                && !value.contains(char::is_whitespace)
                && self.value_prefixes.iter().any(|p| !p.is_empty() && value.starts_with(p.as_str()));
            if by_name || by_value {
                let why = if by_name { "its name" } else { "its value" };
                return Err(SpecError {
                    code: "secret_in_env",
                    field: format!("env.{name}"),
                    message: format!(
                        "{why} looks like a credential, and env values are kept in the audit log forever: \
                         list \"{name}\" in `secrets` instead and provide its value on the worker's host"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `*` matches any run of characters (none included); everything else itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(k: &str, v: &str) -> JobSpec {
        let mut s = JobSpec::command(["true"]);
        s.env.insert(k.into(), v.into());
        s
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob_match("*_TOKEN", "HF_TOKEN"));
        assert!(!glob_match("*_TOKEN", "HF_TOKENS"));
        assert!(glob_match("*SECRET*", "AWS_SECRET_ACCESS_KEY"));
        assert!(glob_match("TOKEN", "TOKEN"));
        assert!(!glob_match("TOKEN", "TOKENS"));
        assert!(glob_match("A*B*C", "AxxBxxC"));
        assert!(!glob_match("A*B*C", "AxxCxxB"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("AB*BA", "ABA"));
    }

    #[test]
    fn credential_names_and_token_values_are_refused_and_ordinary_ones_pass() {
        let rules = CredentialRules::default();
        for (k, v) in [
            ("WANDB_API_KEY", "abc"),
            ("hf_token", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("DB_PASSWORD", "x"),
            ("ANYTHING", "ghp_0123456789abcdefghij"),
            ("URL", "fml_0123456789abcdef.0123456789"),
        ] {
            let e = rules.check(&with_env(k, v)).unwrap_err();
            assert_eq!((e.code, e.field.as_str()), ("secret_in_env", format!("env.{k}").as_str()));
        }
        for (k, v) in [
            ("TOKENIZERS_PARALLELISM", "false"),
            ("HF_TOKEN", ""),
            ("LR", "0.01"),
            ("MODE", "sk-1"),
            ("NOTE", "hf_ is the prefix of a token"),
        ] {
            assert_eq!(rules.check(&with_env(k, v)), Ok(()), "{k}={v}");
        }
    }

    #[test]
    fn no_rules_refuse_nothing() {
        let rules = CredentialRules { names: vec![], value_prefixes: vec![] };
        assert_eq!(rules.check(&with_env("API_TOKEN", "ghp_0123456789abcdefghij")), Ok(()));
    }
}
