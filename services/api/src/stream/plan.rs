//! What a subscription may read, decided once when it is made: the subjects
//! the server filters on, a check per message where subjects cannot say enough
//! (experiments), and the redaction an analyst's view needs. Who may see what
//! is decided by [`crate::policy`], like every route.

use super::protocol::{StreamKind, Target};
use crate::AppState;
use crate::auth::Caller;
use crate::policy::JobAction;
use fetchml_events::subject::Subjects;
use fetchml_events::{JobId, UserName};
use fetchml_eventstore::StoredEvent;
use fetchml_projections::queries::Scope;
use serde_json::{Value, json};
use std::collections::HashSet;

/// Why a subscription is refused.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    /// The permission to record in the audit trail, if this is a denial.
    pub permission: Option<&'static str>,
}

fn refuse(code: &'static str, message: impl Into<String>, permission: Option<&'static str>) -> Refusal {
    Refusal { code, message: message.into(), permission }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub stream: StreamKind,
    pub stream_name: String,
    pub filters: Vec<String>,
    /// Only jobs of this experiment (checked per message).
    pub experiment: Option<String>,
    /// Analyst view: strip command lines, environment, owners, reasons, actors.
    pub redact: bool,
}

/// How long an experiment subscription waits for the job index to catch up
/// with the log after an api start.
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The maximum number of jobs one subscription may name.
pub const MAX_JOBS: usize = 64;

impl Plan {
    pub async fn make(
        state: &AppState,
        caller: &Caller,
        stream: StreamKind,
        target: &Target,
        kinds: Option<&[String]>,
    ) -> Result<Plan, Refusal> {
        let subjects = state.store.subjects();
        // Who sees what is the policy's ([`crate::policy`]), as for every route.
        let p = &caller.principal;
        let dir = state.auth.directory();
        let deny = |d: crate::policy::Denied, message: String| refuse(d.code(), message, Some(d.permission));
        let scope = crate::policy::list_scope(p, &dir).map_err(|d| deny(d, "you may not read jobs".into()))?;
        let summary_only = matches!(scope, Scope::Summary);
        let owners: Option<Vec<UserName>> = match scope {
            Scope::Owners(o) => Some(user_names(o)),
            Scope::All | Scope::Summary => None,
        };
        // Progress kinds the caller may see.
        let kinds: Vec<String> = match stream {
            StreamKind::Events => Vec::new(),
            StreamKind::Progress => {
                // By default, every kind the caller may see: log lines only
                // with a logs permission (checked per job or owner below).
                let wanted: Vec<String> = kinds.map(<[String]>::to_vec).unwrap_or_else(|| {
                    if summary_only || !(p.may("jobs:logs") || p.may("jobs:logs:all")) {
                        vec!["metric".into(), "percent".into()]
                    } else {
                        vec!["log".into(), "metric".into(), "percent".into()]
                    }
                });
                for k in &wanted {
                    if !["log", "metric", "percent"].contains(&k.as_str()) {
                        return Err(refuse("invalid_kind", format!("unknown progress kind {k:?}"), None));
                    }
                }
                wanted
            }
        };
        let wants_logs = kinds.iter().any(|k| k == "log");
        // A job the caller sees only in summary is redacted, whatever the scope.
        let mut redact = summary_only;
        let mut filters = Vec::new();
        // One job's own subjects: exact, so the server filters without a scan.
        let push_job = |filters: &mut Vec<String>, job_subject: &str, owner: &UserName, id: JobId| match stream {
            StreamKind::Events => filters.push(job_subject.to_owned()),
            StreamKind::Progress => {
                for k in &kinds {
                    filters.push(subjects.progress(owner, id, k));
                }
            }
        };
        let mut experiment = None;
        if let Target::Jobs(v) = target
            && v.len() > MAX_JOBS
        {
            return Err(refuse("too_many_jobs", format!("at most {MAX_JOBS} jobs per subscription"), None));
        }
        match target {
            Target::Job(_) | Target::Jobs(_) => {
                let ids: Vec<JobId> = match target {
                    Target::Job(id) => vec![*id],
                    Target::Jobs(ids) => ids.clone(),
                    _ => Vec::new(),
                };
                if ids.is_empty() {
                    return Err(refuse("invalid_target", "name at least one job", None));
                }
                for id in ids {
                    let loaded = crate::routes::jobs::load(state, id)
                        .await
                        .map_err(|e| refuse("unavailable", e.to_string(), None))?;
                    let (Some(job), Some(job_subject)) = (loaded.state, loaded.subject) else {
                        return Err(refuse("job_not_found", format!("job {id} not found"), None));
                    };
                    let refused = |d: crate::policy::Denied| match d.answer {
                        crate::policy::Answer::NotFound => deny(d, format!("job {id} not found")),
                        crate::policy::Answer::Forbidden => {
                            deny(d, format!("job {id}: you lack the permission {}", d.permission))
                        }
                    };
                    let view = crate::policy::decide(p, &dir, &job.owner, JobAction::Read).map_err(refused)?;
                    if wants_logs {
                        crate::policy::decide(p, &dir, &job.owner, JobAction::Logs).map_err(refused)?;
                    }
                    redact |= view == crate::policy::View::Summary;
                    push_job(&mut filters, &job_subject, &job.owner, id);
                }
            }
            Target::Pool(pool) => {
                let Ok(pool) = fetchml_events::ids::PoolName::parse(pool.as_str()) else {
                    return Err(refuse("invalid_target", "not a pool name", None));
                };
                match (&owners, stream) {
                    (None, StreamKind::Events) => filters.push(subjects.job_events_in_pool(None, &pool)),
                    (Some(o), StreamKind::Events) => {
                        o.iter().for_each(|o| filters.push(subjects.job_events_in_pool(Some(o), &pool)))
                    }
                    // Progress subjects carry no pool: filter per message by job.
                    (_, StreamKind::Progress) => {
                        return Err(refuse(
                            "invalid_target",
                            "subscribe to a pool's events, or to jobs' progress",
                            None,
                        ));
                    }
                }
            }
            Target::Experiment(_) | Target::All => {
                if let Target::Experiment(name) = target {
                    // Which jobs are in the experiment comes, for progress and
                    // for replays that start after a job was queued, from the
                    // job index: a subscription made while it still replays the
                    // log after a start would drop messages of jobs it has not
                    // read yet.
                    if !state.index.caught_up()
                        && !tokio::time::timeout(INDEX_WAIT, state.index.wait_caught_up()).await.unwrap_or(false)
                    {
                        return Err(refuse("not_caught_up", "the job index is still reading the log; try again", None));
                    }
                    experiment = Some(name.clone());
                }
                // Log lines go to whoever may read them, the rest by the read scope.
                let (logs, rest): (Vec<String>, Vec<String>) = kinds.iter().cloned().partition(|k| k == "log");
                if !logs.is_empty() {
                    let log_owners =
                        crate::policy::log_owners(p, &dir).map_err(|d| deny(d, "you may not read logs".into()))?;
                    let log_owners = log_owners.map(user_names);
                    all_filters(&mut filters, subjects, stream, log_owners.as_deref(), &logs);
                }
                // An auditor's "everything" is every family of the log:
                // logins, refusals, workers and checkpoints besides jobs.
                let auditor = matches!(target, Target::All) && owners.is_none() && p.may("audit:read");
                if stream == StreamKind::Events && auditor {
                    filters.push(subjects.all_events());
                } else if stream == StreamKind::Events || !rest.is_empty() {
                    all_filters(&mut filters, subjects, stream, owners.as_deref(), &rest);
                }
            }
        }
        if filters.is_empty() {
            return Err(refuse("invalid_target", "nothing to subscribe to", None));
        }
        let stream_name = match stream {
            StreamKind::Events => subjects.events_stream(),
            StreamKind::Progress => subjects.progress_stream(),
        };
        Ok(Plan { stream, stream_name, filters, experiment, redact })
    }

    /// The message as this subscriber may see it, or `None` to skip it.
    pub fn render(
        &self,
        state: &AppState,
        ev: &StoredEvent,
        known_experiment: &mut HashSet<String>,
    ) -> Option<(String, Value)> {
        let mut v: Value = serde_json::from_slice(&ev.payload).ok()?;
        let kind = match self.stream {
            StreamKind::Events => v.get("type").and_then(Value::as_str).unwrap_or("event").to_owned(),
            StreamKind::Progress => ev.subject.rsplit('.').next().unwrap_or("progress").to_owned(),
        };
        if let Some(exp) = &self.experiment {
            let job = match self.stream {
                StreamKind::Events => v.get("aggregate_id").and_then(Value::as_str).map(str::to_owned),
                StreamKind::Progress => v.get("job_id").and_then(Value::as_str).map(str::to_owned),
            }?;
            if let Some(e) = v.pointer("/payload/spec/experiment").and_then(Value::as_str)
                && e == exp
            {
                known_experiment.insert(job.clone());
            }
            let in_exp = known_experiment.contains(&job)
                || job.parse::<JobId>().ok().and_then(|id| state.index.experiment_of(id)).is_some_and(|e| *e == **exp);
            if !in_exp {
                return None;
            }
            known_experiment.insert(job);
        }
        if self.redact {
            redact(&mut v);
        }
        Some((kind, v))
    }
}

fn all_filters(
    filters: &mut Vec<String>,
    subjects: &Subjects,
    stream: StreamKind,
    owners: Option<&[UserName]>,
    kinds: &[String],
) {
    match (owners, stream) {
        (None, StreamKind::Events) => filters.push(subjects.all_job_events()),
        (Some(o), StreamKind::Events) => o.iter().for_each(|o| filters.push(subjects.job_events_of_owner(o))),
        (None, StreamKind::Progress) => kinds.iter().for_each(|k| filters.push(subjects.progress_of_kind(None, k))),
        (Some(o), StreamKind::Progress) => {
            for o in o {
                kinds.iter().for_each(|k| filters.push(subjects.progress_of_kind(Some(o), k)));
            }
        }
    }
}

/// Owner names as subject tokens. They come from the users file, which
/// validates them; a name that is not a token could never own a job.
fn user_names(owners: Vec<String>) -> Vec<UserName> {
    owners.into_iter().filter_map(|o| UserName::parse(o).ok()).collect()
}

/// An analyst's view of an event: no actor, no owner, no command line,
/// environment, working directory, tags or free-text reason.
pub fn redact(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("actor");
        if let Some(p) = o.get_mut("payload").and_then(Value::as_object_mut) {
            p.remove("owner");
            p.remove("reason");
            if let Some(spec) = p.get("spec").cloned() {
                let keep = json!({
                    "pool": spec.get("pool"),
                    "priority": spec.get("priority"),
                    "labels": spec.get("labels"),
                    "experiment": spec.get("experiment"),
                    "resources": spec.get("resources"),
                });
                p.insert("spec".into(), keep);
            }
        }
    }
}
