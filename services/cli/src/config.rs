//! Where `ml` finds its api and credential: flags, then the environment
//! (`FETCHML_API`, `FETCHML_API_KEY`, `FETCHML_PROFILE`, `FETCHML_CA_FILE`),
//! then the profile stored by `ml login` in the user's config file
//! (`$XDG_CONFIG_HOME/fetchml/config.yaml`, or `FETCHML_CONFIG`).
//!
//! The file holds session tokens, so it is written with mode 0600 in a
//! directory of mode 0700, replaced atomically (write a temp file, rename),
//! and a stored token is only ever sent to the api it was issued by.

use crate::error::{CliError, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The api `ml` talks to when nothing else is said.
pub const DEFAULT_API: &str = "http://127.0.0.1:9101";
pub const DEFAULT_PROFILE: &str = "default";

/// The config file: one profile per server (or per identity on a server).
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One profile. No `Debug`: it holds a token.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub api: String,
    /// The session token from `POST /v1/auth/login` (`fms_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A PEM file of CA certificates to trust for this api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The config file's path: `FETCHML_CONFIG`, else `<config dir>/fetchml/config.yaml`.
pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FETCHML_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let dir = dirs::config_dir().ok_or_else(|| {
        CliError::local("config", "no config directory (set HOME or XDG_CONFIG_HOME, or FETCHML_CONFIG)")
    })?;
    Ok(dir.join("fetchml").join("config.yaml"))
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(CliError::local(format!("cannot read {}", path.display()), e)),
        };
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "ml: warning: {} can be read by other users (mode {:o}); run: chmod 600 {}",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
        serde_yaml_ng::from_str(&text).map_err(|e| CliError::local(format!("{} does not parse", path.display()), e))
    }

    /// Writes the file with mode 0600 (its directory 0700), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |e: &dyn std::fmt::Display| CliError::local(format!("cannot write {}", path.display()), e);
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail(&e))?;
        }
        let text = serde_yaml_ng::to_string(self).map_err(|e| fail(&e))?;
        let tmp = dir.join(format!(".config.yaml.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(b"# Written by `ml login`: session tokens; keep this file private (mode 0600).\n")?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(&e));
        }
        Ok(())
    }
}

/// Two spellings of one api (a trailing slash) are the same api.
pub fn same_api(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// What the global flags and the environment said.
pub struct Overrides {
    pub api: Option<String>,
    pub profile: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// `FETCHML_API_KEY` (never a flag: a flag would show in `ps`).
    pub api_key: Option<String>,
}

/// The credential to send, and where it came from (never its value in messages).
pub enum Credential {
    /// `FETCHML_API_KEY`.
    EnvKey(String),
    /// The profile's session token.
    Session { token: String, expires_at: Option<DateTime<Utc>> },
}

impl Credential {
    pub fn secret(&self) -> &str {
        match self {
            Credential::EnvKey(k) => k,
            Credential::Session { token, .. } => token,
        }
    }
}

/// The api, credential and CA file a command will use.
pub struct Target {
    pub api: String,
    pub profile: String,
    pub ca_file: Option<PathBuf>,
    pub credential: Option<Credential>,
    /// Why there is no credential, to say when one is needed.
    pub missing: String,
    pub config_path: PathBuf,
}

impl Target {
    /// Resolves flags, environment and the config file, in that order.
    pub fn resolve(o: &Overrides) -> Result<Self> {
        let config_path = path()?;
        let file = ConfigFile::load(&config_path)?;
        let profile_name = o.profile.clone().unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
        let profile = file.profiles.get(&profile_name).cloned();
        if o.profile.is_some() && profile.is_none() && o.api_key.is_none() && o.api.is_none() {
            return Err(CliError::NotLoggedIn(format!(
                "no profile {profile_name:?} in {}; create it with: ml login --profile {profile_name} --api URL",
                config_path.display()
            )));
        }
        let api = o
            .api
            .clone()
            .or_else(|| profile.as_ref().map(|p| p.api.clone()))
            .unwrap_or_else(|| DEFAULT_API.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let ca_file = o.ca_file.clone().or_else(|| profile.as_ref().and_then(|p| p.ca_file.clone()));
        let mut missing =
            format!("not logged in to {api}: run `ml login --api {api}`, or set FETCHML_API_KEY to an API key");
        let credential = if let Some(k) = &o.api_key {
            Some(Credential::EnvKey(k.clone()))
        } else {
            match profile {
                // A token goes only to the api that issued it.
                Some(Profile { api: p_api, token: Some(token), expires_at, .. }) if same_api(&p_api, &api) => {
                    match expires_at {
                        Some(t) if t <= Utc::now() => {
                            missing = format!(
                                "the session of profile {profile_name:?} expired at {}; log in again: ml login{}",
                                t.format("%Y-%m-%d %H:%M:%S UTC"),
                                if profile_name == DEFAULT_PROFILE {
                                    String::new()
                                } else {
                                    format!(" --profile {profile_name}")
                                }
                            );
                            None
                        }
                        _ => Some(Credential::Session { token, expires_at }),
                    }
                }
                _ => None,
            }
        };
        Ok(Target { api, profile: profile_name, ca_file, credential, missing, config_path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_file_is_private_and_reads_back() {
        let dir = tempfile_dir();
        let path = dir.join("sub").join("config.yaml");
        let mut c = ConfigFile::default();
        c.profiles.insert(
            "default".into(),
            Profile { api: "http://x".into(), token: Some("fms_secret".into()), ..Profile::default() },
        );
        c.save(&path).expect("saves");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().expect("dir")).expect("dir").permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let back = ConfigFile::load(&path).expect("loads");
        assert_eq!(back.profiles["default"].token.as_deref(), Some("fms_secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ml-config-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }
}
