//! Who may see and act on a job: the one home of the visibility rules. The job
//! routes, the log follower, the stream planner and the experiments routes ask
//! here, and turn a [`Denied`] into an answer through `Auth::enforce`, which
//! records it (`access_denied`), so every refusal is on record the same way.
//!
//! The rules, from the caller's principal, the job's owner and the directory:
//! - **Read in full** (command line, environment, history): `jobs:read:all`;
//!   `jobs:read` on one's own jobs; `jobs:read:group` on the jobs of users who
//!   share a group with the caller.
//! - **Read a summary** (state, timing, pool, metrics): `jobs:read:summary`.
//! - **Logs**: `jobs:logs:all` on any job; `jobs:logs` on the jobs one reads in
//!   full through `jobs:read` or `jobs:read:group` (own and group mates').
//! - **Cancel / retry**: `jobs:cancel:all` / `jobs:retry:all` on any job;
//!   `jobs:cancel` / `jobs:retry` on one's own.
//! - A job the caller may not see at all answers 404 `job_not_found` (its
//!   existence is not revealed) to callers who read jobs at all, 403 to those
//!   who read none; a job the caller sees but may not act on answers 403.
//! - Lists (`GET /v1/jobs`, experiments, broad stream subscriptions) read the
//!   caller's [`Scope`]: everything, the visible owners' jobs, or summaries.
//!
//! These are pure functions, tested below without a server.

use crate::error::ApiError;
use fetchml_events::UserName;
use fetchml_identity::{Directory, Principal};
use fetchml_projections::queries::{Scope, UsageScope};

/// How much of one job a caller sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Everything: command line, environment, history.
    Full,
    /// State, timing, pool and metrics only (analysts).
    Summary,
    /// Nothing; the job's existence is not revealed.
    Hidden,
}

/// What a caller asks to do with one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobAction {
    /// `GET /v1/jobs/{id}`, a stream subscription to its events or metrics.
    Read,
    /// `GET /v1/jobs/{id}/events`: the full history.
    History,
    /// `GET /v1/jobs/{id}/logs`, a stream subscription to its log lines.
    Logs,
    Cancel,
    Retry,
}

/// How a refusal answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 404 `job_not_found`: the job's existence is not revealed.
    NotFound,
    /// 403 `forbidden`.
    Forbidden,
}

/// A refusal: the permission missing (recorded in `access_denied`) and how to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denied {
    pub permission: &'static str,
    pub answer: Answer,
}

impl Denied {
    pub fn forbidden(permission: &'static str) -> Self {
        Denied { permission, answer: Answer::Forbidden }
    }

    /// The HTTP error for this refusal.
    pub fn error(&self) -> ApiError {
        match self.answer {
            Answer::NotFound => ApiError::NotFound("job_not_found"),
            Answer::Forbidden => ApiError::Forbidden(self.permission),
        }
    }

    /// The stable code, as the stream protocol reports it.
    pub fn code(&self) -> &'static str {
        match self.answer {
            Answer::NotFound => "job_not_found",
            Answer::Forbidden => "forbidden",
        }
    }
}

/// Whether `p` reads any job at all (then hidden jobs answer 404, else 403).
pub fn reads_jobs(p: &Principal) -> bool {
    ["jobs:read", "jobs:read:all", "jobs:read:group", "jobs:read:summary"].iter().any(|perm| p.may(perm))
}

/// Whether `p` reads `owner`'s jobs through `jobs:read` (own) or `jobs:read:group`.
fn reads_as_owner_or_group(p: &Principal, dir: &Directory, owner: &UserName) -> bool {
    (p.may("jobs:read") && &p.name == owner)
        || (p.may("jobs:read:group") && dir.user(owner).is_some_and(|o| p.shares_group_with(o)))
}

/// How much of `owner`'s job `p` sees.
pub fn view(p: &Principal, dir: &Directory, owner: &UserName) -> View {
    if p.may("jobs:read:all") || reads_as_owner_or_group(p, dir, owner) {
        View::Full
    } else if p.may("jobs:read:summary") {
        View::Summary
    } else {
        View::Hidden
    }
}

/// Decides whether `p` may do `action` on `owner`'s job; `Ok` carries how much
/// of the job `p` sees.
pub fn decide(p: &Principal, dir: &Directory, owner: &UserName, action: JobAction) -> Result<View, Denied> {
    let seen = view(p, dir, owner);
    let hidden =
        || Denied { permission: "jobs:read", answer: if reads_jobs(p) { Answer::NotFound } else { Answer::Forbidden } };
    let own = &p.name == owner;
    let allowed = match action {
        JobAction::Read => seen != View::Hidden,
        JobAction::History => seen == View::Full,
        JobAction::Logs => p.may("jobs:logs:all") || (p.may("jobs:logs") && reads_as_owner_or_group(p, dir, owner)),
        JobAction::Cancel => p.may("jobs:cancel:all") || (p.may("jobs:cancel") && own),
        JobAction::Retry => p.may("jobs:retry:all") || (p.may("jobs:retry") && own),
    };
    if allowed {
        return Ok(seen);
    }
    if seen == View::Hidden {
        return Err(hidden());
    }
    Err(Denied::forbidden(match action {
        JobAction::Read | JobAction::History => "jobs:read",
        JobAction::Logs => "jobs:logs",
        JobAction::Cancel => "jobs:cancel",
        JobAction::Retry => "jobs:retry",
    }))
}

/// The owners whose jobs `p` reads in full through `jobs:read` and
/// `jobs:read:group` (not `jobs:read:all`), sorted.
pub fn visible_owners(p: &Principal, dir: &Directory) -> Vec<String> {
    let mut owners = Vec::new();
    if p.may("jobs:read") {
        owners.push(p.name.to_string());
    }
    if p.may("jobs:read:group") {
        owners.extend(dir.group_mates(p).into_iter().map(|u| u.to_string()));
    }
    owners.sort();
    owners.dedup();
    owners
}

/// The jobs a list, an experiment summary or a broad subscription shows `p`,
/// or `Denied` if `p` reads no jobs.
pub fn list_scope(p: &Principal, dir: &Directory) -> Result<Scope, Denied> {
    if p.may("jobs:read:all") {
        Ok(Scope::All)
    } else if p.may("jobs:read") || p.may("jobs:read:group") {
        Ok(Scope::Owners(visible_owners(p, dir)))
    } else if p.may("jobs:read:summary") {
        Ok(Scope::Summary)
    } else {
        Err(Denied::forbidden("jobs:read"))
    }
}

/// Whose usage `GET /v1/usage` shows `p`: everyone's by owner
/// (`usage:read:all`), their own (`usage:read`), or everyone's per pool and
/// day without owners (`usage:read:summary`, analysts: the design keeps owners
/// from them, and a per-user or per-group sum would name or narrow down one).
pub fn usage_scope(p: &Principal) -> Result<UsageScope, Denied> {
    if p.may("usage:read:all") {
        Ok(UsageScope::All)
    } else if p.may("usage:read") {
        Ok(UsageScope::Owner(p.name.to_string()))
    } else if p.may("usage:read:summary") {
        Ok(UsageScope::Summary)
    } else {
        Err(Denied::forbidden("usage:read"))
    }
}

/// Whose log lines a broad subscription shows `p`: `None` for everyone's,
/// `Some(owners)` for those owners', or `Denied`.
pub fn log_owners(p: &Principal, dir: &Directory) -> Result<Option<Vec<String>>, Denied> {
    if p.may("jobs:logs:all") {
        return Ok(None);
    }
    let owners = if p.may("jobs:logs") { visible_owners(p, dir) } else { Vec::new() };
    if owners.is_empty() { Err(Denied::forbidden("jobs:logs")) } else { Ok(Some(owners)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let yaml = "roles:\n  groupie: [jobs:read, jobs:read:group, jobs:logs]\n  browser: [experiments:read]\nusers:\n  - {name: alice, role: researcher, groups: [vision]}\n  - {name: bob, role: researcher, groups: [nlp]}\n  - {name: carol, role: groupie, groups: [vision]}\n  - {name: ana, role: analyst}\n  - {name: root, role: admin}\n  - {name: eve, role: browser}\n";
        Directory::parse(yaml, "t").unwrap()
    }

    fn who(d: &Directory, name: &str) -> Principal {
        d.user(&UserName::parse(name).unwrap()).unwrap().clone()
    }

    #[test]
    fn every_action_on_alices_job_for_every_kind_of_caller() {
        let d = dir();
        let alice = UserName::parse("alice").unwrap();
        let nf = Denied { permission: "jobs:read", answer: Answer::NotFound };
        let f = Denied::forbidden;
        use JobAction::*;
        let table: &[(&str, [Result<View, Denied>; 5])] = &[
            ("alice", [Ok(View::Full), Ok(View::Full), Ok(View::Full), Ok(View::Full), Ok(View::Full)]),
            ("root", [Ok(View::Full), Ok(View::Full), Ok(View::Full), Ok(View::Full), Ok(View::Full)]),
            ("carol", [Ok(View::Full), Ok(View::Full), Ok(View::Full), Err(f("jobs:cancel")), Err(f("jobs:retry"))]),
            ("bob", [Err(nf), Err(nf), Err(nf), Err(nf), Err(nf)]),
            (
                "ana",
                [
                    Ok(View::Summary),
                    Err(f("jobs:read")),
                    Err(f("jobs:logs")),
                    Err(f("jobs:cancel")),
                    Err(f("jobs:retry")),
                ],
            ),
            (
                "eve",
                [
                    Err(f("jobs:read")),
                    Err(f("jobs:read")),
                    Err(f("jobs:read")),
                    Err(f("jobs:read")),
                    Err(f("jobs:read")),
                ],
            ),
        ];
        for (name, expected) in table {
            let p = who(&d, name);
            let got = [Read, History, Logs, Cancel, Retry].map(|a| decide(&p, &d, &alice, a));
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn scopes_follow_the_same_rules() {
        let d = dir();
        let scope = |name: &str| format!("{:?}", list_scope(&who(&d, name), &d));
        assert_eq!(scope("carol"), r#"Ok(Owners(["alice", "carol"]))"#);
        assert_eq!(scope("ana"), "Ok(Summary)");
        assert_eq!(scope("eve"), format!("{:?}", Err::<(), _>(Denied::forbidden("jobs:read"))));
        assert_eq!(log_owners(&who(&d, "carol"), &d), Ok(Some(vec!["alice".into(), "carol".into()])));
        assert_eq!(log_owners(&who(&d, "root"), &d), Ok(None));
        assert_eq!(log_owners(&who(&d, "ana"), &d), Err(Denied::forbidden("jobs:logs")));
        let usage = |name: &str| format!("{:?}", usage_scope(&who(&d, name)));
        assert_eq!(usage("root"), "Ok(All)");
        assert_eq!(usage("alice"), r#"Ok(Owner("alice"))"#);
        assert_eq!(usage("ana"), "Ok(Summary)");
        assert_eq!(usage("eve"), format!("{:?}", Err::<(), _>(Denied::forbidden("usage:read"))));
    }
}
