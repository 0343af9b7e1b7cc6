//! The users file, parsed and checked. A config mistake is reported with the
//! exact place (user, role, key) at start-up and on reload; a reload that fails
//! keeps the previous directory.

use crate::keys::check_hash;
use crate::permission::{Permission, default_roles};
use fetchml_events::UserName;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub type RoleName = String;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("cannot read users file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("users file {path}: {source}")]
    Parse { path: String, source: serde_yaml_ng::Error },
    #[error("role {role:?}: unknown permission {permission:?} (known: {known})")]
    UnknownPermission { role: String, permission: String, known: String },
    #[error("user {0:?} is defined twice")]
    DuplicateUser(String),
    #[error("user {user:?}: {message}")]
    InvalidUser { user: String, message: String },
    #[error("user {user:?} has role {role:?}, which is not defined")]
    UnknownRole { user: String, role: String },
    #[error("user {user:?}, key {key_id:?}: malformed hash: {message}")]
    MalformedHash { user: String, key_id: String, message: String },
    #[error("key id {0:?} is used twice")]
    DuplicateKeyId(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    role: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    hash: String,
}

/// An authenticated user and what they may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: UserName,
    pub role: RoleName,
    pub groups: BTreeSet<String>,
    pub permissions: BTreeSet<&'static str>,
}

impl Principal {
    pub fn may(&self, permission: &str) -> bool {
        self.permissions.contains(permission)
    }

    /// Whether this principal shares a group with `other` (for `jobs:read:group`).
    pub fn shares_group_with(&self, other: &Principal) -> bool {
        !self.groups.is_disjoint(&other.groups)
    }
}

/// Every configured user, role and key.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    users: HashMap<UserName, Principal>,
    /// key id → (user, argon2id PHC hash)
    keys: HashMap<String, (UserName, String)>,
}

impl Directory {
    pub fn load(path: &Path) -> Result<Self, DirectoryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DirectoryError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, DirectoryError> {
        let file: UsersFile = serde_yaml_ng::from_str(text)
            .map_err(|source| DirectoryError::Parse { path: origin.to_owned(), source })?;
        let mut roles: BTreeMap<String, BTreeSet<&'static str>> =
            default_roles().into_iter().map(|(name, perms)| (name.to_owned(), perms.into_iter().collect())).collect();
        for (role, perms) in file.roles {
            let mut set = BTreeSet::new();
            for p in perms {
                let parsed = Permission::parse(&p).ok_or_else(|| DirectoryError::UnknownPermission {
                    role: role.clone(),
                    permission: p.clone(),
                    known: crate::ALL_PERMISSIONS.join(", "),
                })?;
                set.insert(parsed.as_str());
            }
            roles.insert(role, set);
        }
        let mut dir = Directory::default();
        for u in file.users {
            let name = UserName::parse(&u.name)
                .map_err(|e| DirectoryError::InvalidUser { user: u.name.clone(), message: e.to_string() })?;
            if name.as_str() == "anonymous" || name.as_str().starts_with(['_', '-']) {
                return Err(DirectoryError::InvalidUser {
                    user: u.name,
                    message: "the name is reserved (\"anonymous\", or starting with '_' or '-')".into(),
                });
            }
            if dir.users.contains_key(&name) {
                return Err(DirectoryError::DuplicateUser(u.name));
            }
            let permissions = roles
                .get(&u.role)
                .cloned()
                .ok_or_else(|| DirectoryError::UnknownRole { user: u.name.clone(), role: u.role.clone() })?;
            for k in u.keys {
                check_hash(&k.hash).map_err(|e| DirectoryError::MalformedHash {
                    user: u.name.clone(),
                    key_id: k.id.clone(),
                    message: e.to_string(),
                })?;
                if k.id.len() != 8 || !k.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DirectoryError::InvalidUser {
                        user: u.name.clone(),
                        message: format!("key id {:?} must be 8 hex digits (as printed by `fetchml keygen`)", k.id),
                    });
                }
                if dir.keys.insert(k.id.clone(), (name.clone(), k.hash)).is_some() {
                    return Err(DirectoryError::DuplicateKeyId(k.id));
                }
            }
            let principal =
                Principal { name: name.clone(), role: u.role, groups: u.groups.into_iter().collect(), permissions };
            dir.users.insert(name, principal);
        }
        Ok(dir)
    }

    pub fn user(&self, name: &UserName) -> Option<&Principal> {
        self.users.get(name)
    }

    /// The user and hash behind a key id.
    pub fn key(&self, key_id: &str) -> Option<(&UserName, &str)> {
        self.keys.get(key_id).map(|(u, h)| (u, h.as_str()))
    }

    /// Every user who shares at least one group with `p` (`p` included).
    pub fn group_mates(&self, p: &Principal) -> Vec<UserName> {
        let mut v: Vec<UserName> = self
            .users
            .values()
            .filter(|u| u.name == p.name || p.shares_group_with(u))
            .map(|u| u.name.clone())
            .collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

    fn err(yaml: &str) -> String {
        Directory::parse(yaml, "t").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_are_named_precisely() {
        assert!(err("roles: {r: [jobs:frob]}\nusers: []").contains("unknown permission \"jobs:frob\""));
        assert!(err("users: [{name: a, role: admin}, {name: a, role: admin}]").contains("defined twice"));
        assert!(err("users: [{name: a, role: pilot}]").contains("role \"pilot\""));
        let bad = "users: [{name: a, role: admin, keys: [{id: 0011aabb, hash: 'nope'}]}]";
        assert!(err(bad).contains("key \"0011aabb\": malformed hash"), "{}", err(bad));
        assert!(err("users: [{name: a, role: admin, colour: red}]").contains("colour"));
    }

    #[test]
    fn default_roles_apply_and_custom_roles_are_allowed() {
        let yaml = format!(
            "roles: {{viewer: [workers:read]}}\nusers:\n  - {{name: alice, role: researcher, groups: [vision], keys: [{{id: 0011aabb, hash: '{HASH}'}}]}}\n  - {{name: vic, role: viewer}}\n"
        );
        let d = Directory::parse(&yaml, "t").unwrap();
        let alice = d.user(&UserName::parse("alice").unwrap()).unwrap();
        assert!(alice.may("jobs:create") && !alice.may("jobs:read:all"));
        let vic = d.user(&UserName::parse("vic").unwrap()).unwrap();
        assert_eq!(vic.permissions.iter().copied().collect::<Vec<_>>(), ["workers:read"]);
        assert_eq!(d.key("0011aabb").unwrap().0.as_str(), "alice");
    }
}
