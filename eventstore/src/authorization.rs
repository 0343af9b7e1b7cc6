//! Who may do what on NATS: the server's `authorization` block for one
//! namespace, with one NKey user per class of process. The server enforces it,
//! so a process that is not the api cannot append what only the api may, nor
//! touch the streams' configuration, whatever its code does.
//!
//! - **api**: everything (it creates and updates the streams, appends every
//!   family of events, keeps the sessions).
//! - **worker**: appends job and worker events, publishes progress, works the
//!   dispatch queue and its own registry entry. It may not append user or
//!   audit events, touch the sessions bucket (a session written there would
//!   be a login), or create, update, delete, purge, snapshot or restore a
//!   stream, or delete a stored message.
//! - **reader** (verifiers, exports): reads the streams through consumers
//!   and direct gets, and publishes nothing else.
//!
//! What this still trusts: a worker can append any job event the api would
//! accept from a worker for any job (the domain's decide rules and fencing
//! apply, but a worker could lie about an outcome), and every process of a
//! class shares that class's key. The log records which actor each event
//! names; NATS does not stamp the publishing user on a message.

use fetchml_events::subject::Subjects;
use std::fmt::Write;

/// The classes of processes, each with its own NKey user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Reader,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Api, Role::Worker, Role::Reader];

    pub fn name(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::Reader => "reader",
        }
    }
}

/// The JetStream api calls that change a stream or remove what it holds.
const STREAM_ADMIN: &[&str] = &[
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.PEER.>",
    "$JS.API.STREAM.LEADER.>",
    "$JS.API.ACCOUNT.PURGE.>",
    "$JS.API.META.>",
    "$JS.API.SERVER.>",
];

/// The `(allow, deny)` subjects a role may publish and subscribe to.
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
    pub subscribe_deny: Vec<String>,
}

/// What `role` may do in the namespace of `subjects`.
pub fn permissions(role: Role, subjects: &Subjects) -> Permissions {
    let ns = subjects.namespace();
    let sessions = subjects.sessions_bucket();
    let workers = subjects.workers_bucket();
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // Reading the sessions bucket shows who is logged in; writing it is a login.
    let sessions_api = vec![
        format!("$KV.{sessions}.>"),
        format!("$JS.API.DIRECT.GET.KV_{sessions}.>"),
        format!("$JS.API.DIRECT.GET.KV_{sessions}"),
        format!("$JS.API.STREAM.MSG.GET.KV_{sessions}"),
        format!("$JS.API.CONSUMER.CREATE.KV_{sessions}.>"),
        format!("$JS.API.CONSUMER.CREATE.KV_{sessions}"),
    ];
    match role {
        Role::Api => Permissions {
            publish_allow: owned(&[">"]),
            publish_deny: Vec::new(),
            subscribe_allow: owned(&[">"]),
            subscribe_deny: Vec::new(),
        },
        Role::Worker => {
            // A worker may create a stream (its registry bucket, if it comes
            // first; creating one that exists with another configuration
            // fails), but never change or empty one.
            let mut publish_deny = owned(STREAM_ADMIN);
            publish_deny.retain(|s| s != "$JS.API.STREAM.CREATE.>");
            publish_deny.extend(sessions_api.iter().cloned());
            publish_deny.push(format!("{ns}.ev.user.>"));
            publish_deny.push(format!("{ns}.ev.audit.>"));
            Permissions {
                publish_allow: vec![
                    format!("{ns}.ev.job.>"),
                    format!("{ns}.ev.worker.>"),
                    format!("{ns}.progress.>"),
                    format!("$KV.{workers}.>"),
                    "$JS.API.>".into(),
                    "$JS.ACK.>".into(),
                    "$JS.FC.>".into(),
                    "_INBOX.>".into(),
                ],
                publish_deny,
                subscribe_allow: vec![format!("{ns}.>"), "_INBOX.>".into(), format!("$KV.{workers}.>")],
                subscribe_deny: vec![format!("$KV.{sessions}.>")],
            }
        }
        Role::Reader => {
            let mut publish_deny = owned(STREAM_ADMIN);
            publish_deny.extend(sessions_api);
            Permissions {
                publish_allow: owned(&[
                    "$JS.API.INFO",
                    "$JS.API.STREAM.INFO.>",
                    "$JS.API.STREAM.NAMES",
                    "$JS.API.STREAM.LIST",
                    "$JS.API.STREAM.MSG.GET.>",
                    "$JS.API.DIRECT.GET.>",
                    "$JS.API.CONSUMER.CREATE.>",
                    "$JS.API.CONSUMER.DELETE.>",
                    "$JS.API.CONSUMER.INFO.>",
                    "$JS.API.CONSUMER.MSG.NEXT.>",
                    "$JS.ACK.>",
                    "$JS.FC.>",
                ]),
                publish_deny,
                subscribe_allow: owned(&["_INBOX.>"]),
                subscribe_deny: Vec::new(),
            }
        }
    }
}

/// The nats-server `authorization` block: one NKey user per role, given the
/// roles' public keys (`U...`).
pub fn server_authorization(subjects: &Subjects, public_keys: &[(Role, String)]) -> String {
    let list = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
    let mut out = String::from("authorization {\n  users = [\n");
    for (role, key) in public_keys {
        let p = permissions(*role, subjects);
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "    # {role}\n    {{ nkey: \"{key}\", permissions: {{\n      \
             publish: {{ allow: [{}], deny: [{}] }},\n      \
             subscribe: {{ allow: [{}], deny: [{}] }}\n    }} }},",
            list(&p.publish_allow),
            list(&p.publish_deny),
            list(&p.subscribe_allow),
            list(&p.subscribe_deny),
            role = role.name(),
        );
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetchml_events::ids::Namespace;

    #[test]
    fn a_worker_may_not_append_user_or_audit_events_nor_change_streams() {
        let s = Subjects::new(Namespace::parse("lab").unwrap());
        let w = permissions(Role::Worker, &s);
        for denied in ["lab.ev.user.>", "lab.ev.audit.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.UPDATE.>"] {
            assert!(w.publish_deny.iter().any(|d| d == denied), "{denied}");
        }
        assert!(w.publish_deny.iter().any(|d| d.starts_with("$KV.lab_sessions")));
        assert!(w.publish_allow.iter().any(|a| a == "lab.ev.job.>"));
        let conf = server_authorization(&s, &[(Role::Api, "UAPI".into()), (Role::Worker, "UWORKER".into())]);
        assert!(conf.contains("nkey: \"UWORKER\"") && conf.contains("\"lab.ev.user.>\""), "{conf}");
    }
}
