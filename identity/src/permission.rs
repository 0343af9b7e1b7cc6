//! Permissions are `resource:action` strings; roles are sets of them.

/// Every permission fetchml checks. Anything else in a config is an error.
pub const ALL_PERMISSIONS: &[&str] = &[
    "jobs:create",
    "jobs:read",
    "jobs:read:group",
    "jobs:read:all",
    "jobs:read:summary",
    "jobs:cancel",
    "jobs:cancel:all",
    "jobs:retry",
    "jobs:retry:all",
    "jobs:logs",
    "jobs:logs:all",
    "experiments:read",
    "workers:read",
    "usage:read",
    "usage:read:all",
    "usage:read:summary",
    "audit:read",
    "users:manage",
    "workers:manage",
];

/// A checked permission name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(&'static str);

impl Permission {
    pub fn parse(s: &str) -> Option<Self> {
        ALL_PERMISSIONS.iter().find(|p| **p == s).map(|p| Permission(p))
    }
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

/// The default roles (DESIGN.md), used unless the users file defines a role of
/// the same name.
pub fn default_roles() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("admin", ALL_PERMISSIONS.to_vec()),
        (
            "researcher",
            vec![
                "jobs:create",
                "jobs:read",
                "jobs:cancel",
                "jobs:retry",
                "jobs:logs",
                "experiments:read",
                "workers:read",
                "usage:read",
            ],
        ),
        ("analyst", vec!["jobs:read:summary", "experiments:read", "workers:read", "usage:read:summary"]),
    ]
}
