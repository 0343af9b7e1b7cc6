//! Job commands and the reads folded from a job's own events.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy::{self, JobAction, View};
use crate::routes::body::{JobPath, Params};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use fetchml_api_types::ErrorBody;
use fetchml_api_types::{
    AsOfJob, AsOfPage, BatchAnswer, BatchFailure, BatchItem, BatchRequest, CommandAccepted, CountJobsQuery,
    DEFAULT_LIST_LIMIT, DryRun, EventList, JobAnswer, JobCounts, JobPage, JobSummary, JobView, JobsAnswer,
    ListJobsQuery, MAX_LIST_LIMIT, ReasonRequest, SortOrder, SubmitQuery, Submitted,
};
use fetchml_events::job::{JobCommand, JobEvent, JobRejection, JobSpec};
use fetchml_events::text::TextKind;
use fetchml_events::{Actor, CommandId, JobId, UserName};
use fetchml_eventstore::{CommandContext, Executed, LoadedJob};
use fetchml_projections::queries::{JobFilter, Scope};
use futures::StreamExt;
use serde_json::json;
use std::collections::HashMap;

/// Loads a job and checks `action` on it against the visibility policy
/// ([`crate::policy`]); a refusal is recorded. `Ok` carries the job and how
/// much of it the caller sees.
pub async fn authorize(
    state: &AppState,
    caller: &Caller,
    id: JobId,
    action: JobAction,
    resource: &str,
) -> Result<(LoadedJob, View), ApiError> {
    let loaded = load(state, id).await?;
    let Some(job) = &loaded.state else { return Err(ApiError::NotFound("job_not_found")) };
    let decision = policy::decide(&caller.principal, &state.auth.directory(), &job.owner, action);
    let view = state.auth.enforce(caller, decision, resource)?;
    Ok((loaded, view))
}

const MAX_IDEMPOTENCY_KEY: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().ok().filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    })?;
    Ok(Some(key.to_owned()))
}

/// Loads a job, by its exact subject when the index knows it (fast), else by
/// a wildcard search (a job the index has not seen yet).
pub async fn load(state: &AppState, id: JobId) -> Result<LoadedJob, ApiError> {
    Ok(match state.index.subject_of(id) {
        Some(subject) => state.store.load_job_at(id, &subject).await?,
        None => state.store.load_job(id).await?,
    })
}

/// `POST /v1/jobs`: queue a job. 202 `{"id", "seq"}` once `job_queued` is stored.
///
/// With `?dry_run=true`: 200 with the spec as it would be queued, and nothing
/// stored (the CLI's `ml queue --dry-run`), after the same checks a submit
/// makes before it appends: permission, body, idempotency key, spec.
#[tracing::instrument(skip_all)]
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), request_body = JobSpec,
    params(SubmitQuery, ("Idempotency-Key" = Option<String>, Header, description = "1-200 visible ASCII characters: a retried submit names the same job and stores one event")),
    responses(
        (status = 200, description = "`dry_run=true`: the spec is valid; nothing was stored", body = DryRun),
        (status = 202, description = "`job_queued` is stored in the log", body = Submitted),
        (status = 400, description = "`invalid_body`, `invalid_idempotency_key`, `invalid_parameter`, `unknown_parameter`", body = ErrorBody),
        (status = 403, description = "`forbidden`: no `jobs:create`", body = ErrorBody),
        (status = 422, description = "The spec is invalid (`field` names the field): `command_empty`, `out_of_range`, `too_large`, `invalid_env_name`, `invalid_label`, `working_dir_escapes`, `invalid_argument`, `image_required`, `invalid_image`, `image_without_podman`, `invalid_secret_name`, `duplicate_secret`, `secret_in_env`, `text_invalid_character`, `text_too_long`, `text_empty`; or `idempotency_key_reused`", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<SubmitQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    state.auth.require(&caller, "jobs:create", "jobs")?;
    let mut spec: JobSpec = super::body::json_object(&body, "a job spec")?;
    spec.normalize();
    state.credential_rules.check(&spec).map_err(ApiError::InvalidSpec)?;
    let key = idempotency_key(&headers)?.map(|key| Idempotent { digest: request_digest(&spec), key });
    if q.dry_run == Some(true) {
        // The checks `decide` would make on a new job; nothing is appended.
        spec.validate().map_err(ApiError::InvalidSpec)?;
        return Ok((StatusCode::OK, Json(DryRun { dry_run: true, spec })).into_response());
    }
    let (id, done) = queue(&state, caller.name(), spec, key).await;
    let done = done?;
    Ok((StatusCode::ACCEPTED, Json(Submitted { duplicate: done.duplicate, id, seq: done.seq })).into_response())
}

/// An idempotent request: the client's key and a digest of what it asked.
struct Idempotent {
    key: String,
    digest: String,
}

/// The digest that tells one request from another under the same key: SHA-256
/// of the normalized spec(s) as JSON (fields in declaration order, maps
/// sorted), so defaults spelled out or left out are the same request.
fn request_digest<T: serde::Serialize>(request: &T) -> String {
    fetchml_identity::sha256_hex(&serde_json::to_string(request).unwrap_or_default())
}

/// Queues one job for `owner`. With an idempotency key, the same owner and key
/// always name the same job, and the same request is the same command, so a
/// retried submit is stored once and answered the same; the same key with a
/// different request is refused (422 `idempotency_key_reused`), never answered
/// with the other job.
async fn queue(
    state: &AppState,
    owner: &UserName,
    spec: JobSpec,
    key: Option<Idempotent>,
) -> (JobId, Result<Executed, ApiError>) {
    let mut ctx = CommandContext::new(Actor::User { name: owner.clone() });
    let (id, known) = match &key {
        Some(k) => {
            let id = JobId::from_idempotency_key(owner, &k.key);
            ctx.command_id = CommandId::from_idempotent_request(owner, &k.key, k.digest.as_bytes());
            // Read the job at its exact subject (never by a wildcard the server
            // would scan): where the index saw it, else where this spec puts it.
            let subject =
                state.index.subject_of(id).unwrap_or_else(|| state.store.subjects().job(owner, &spec.pool, id));
            match state.store.load_job_at(id, &subject).await {
                Ok(known) => (id, Some(known)),
                Err(e) => return (id, Err(e.into())),
            }
        }
        // A fresh UUIDv7 has no history: no need to read it.
        None => {
            let id = JobId::new();
            (id, Some(LoadedJob::new_job(id)))
        }
    };
    let cmd = JobCommand::Queue { owner: owner.clone(), spec };
    let done = state.store.execute_job_on(id, known, cmd, &ctx).await.map_err(|e| match (e, &key) {
        (fetchml_eventstore::ExecuteError::Rejected(JobRejection::AlreadyExists), Some(k)) => key_reused(&k.key),
        (e, _) => ApiError::from(e),
    });
    // This process's scheduler may take the job now rather than when the
    // log delivers it (see `SchedulerHandle::queued_here`).
    if let (Ok(done), Some(scheduler)) = (&done, &state.scheduler)
        && let [(seq, event)] = done.appended.as_slice()
    {
        scheduler.queued_here(*seq, &done.subject, event).await;
    }
    (id, done)
}

fn key_reused(key: &str) -> ApiError {
    let shown: String = key.chars().take(64).collect();
    ApiError::Unprocessable {
        code: "idempotency_key_reused",
        message: format!("Idempotency-Key {shown:?} was already used with a different request; use a new key"),
    }
}

/// Most jobs one `POST /v1/jobs/batch` may queue.
pub const MAX_BATCH: usize = 1000;
/// Appends of one batch in flight at once: enough to keep NATS busy
/// (pipelined on the one connection), few enough not to starve other requests.
const BATCH_IN_FLIGHT: usize = 128;

/// `POST /v1/jobs/batch`: queue up to [`MAX_BATCH`] jobs in one request,
/// `{"jobs": [spec, ...]}`. Every spec is validated before any is stored, so an
/// invalid batch stores nothing. The appends then run pipelined; each job is
/// its own aggregate, stored independently. 202 with one `{"id", "seq",
/// "duplicate"}` per spec, in order, when all are stored; if some could not be
/// (NATS went away mid-batch), the status and `error` are the first failure's,
/// and `jobs` says per spec which were stored. With an `Idempotency-Key`, job
/// `i` is named by the key and `i`, so resending the same batch with the same
/// key stores only what is missing.
#[tracing::instrument(skip_all)]
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", security(("bearer" = [])), request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Job `i` of the batch is named by the key and `i`: resending the same batch stores only what is missing")),
    responses(
        (status = 202, description = "Every job is stored, in request order", body = BatchAnswer),
        (status = 400, description = "`invalid_body`, `empty_batch`, `batch_too_large`, `invalid_idempotency_key`", body = ErrorBody),
        (status = 403, description = "`forbidden`: no `jobs:create`", body = ErrorBody),
        (status = 422, description = "A spec is invalid (`field` like `jobs[3].command`; nothing stored), or `idempotency_key_reused`. When some jobs were stored before the refusal, `jobs` says which", body = ErrorBody),
        (status = 503, description = "`event_store_unavailable`; when NATS failed mid-batch, `jobs` (see `BatchAnswer`) says per job which were stored", body = ErrorBody),
    ))]
pub async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<BatchAnswer>), ApiError> {
    state.auth.require(&caller, "jobs:create", "jobs")?;
    let key = idempotency_key(&headers)?;
    let batch: BatchRequest = super::body::json_object(&body, r#"{"jobs": [...]}"#)?;
    if batch.jobs.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "a batch holds at least one job"));
    }
    if batch.jobs.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!("a batch holds at most {MAX_BATCH} jobs, this one {}", batch.jobs.len()),
        ));
    }
    let owner = caller.name().clone();
    let mut specs = Vec::with_capacity(batch.jobs.len());
    for (i, raw) in batch.jobs.into_iter().enumerate() {
        let mut spec: JobSpec = super::body::object_value(raw, &format!("jobs[{i}]: a job spec"))?;
        spec.normalize();
        if let Err(mut e) = spec.validate().and_then(|()| state.credential_rules.check(&spec)) {
            e.field = format!("jobs[{i}].{}", e.field);
            return Err(ApiError::InvalidSpec(e));
        }
        specs.push(spec);
    }
    // One digest for the whole batch: resending it with one spec changed, or
    // with jobs added or left out, is a different request under the same key.
    let digest = key.as_ref().map(|_| request_digest(&specs));
    if let (Some(k), Some(d)) = (&key, &digest) {
        refuse_reused_batch_key(&state, &owner, k, d, specs.len()).await?;
    }
    let results: Vec<(JobId, Result<Executed, ApiError>)> = futures::stream::iter(specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let item_key = key
                .as_ref()
                .zip(digest.as_ref())
                .map(|(k, d)| Idempotent { key: format!("{k}#{i}"), digest: d.clone() });
            let (state, owner) = (&state, &owner);
            async move { queue(state, owner, spec, item_key).await }
        })
        .buffered(BATCH_IN_FLIGHT)
        .collect()
        .await;
    let mut first_error = None;
    let mut items = Vec::with_capacity(results.len());
    for (id, r) in results {
        match r {
            Ok(done) => items.push(BatchItem::Stored(Submitted { duplicate: done.duplicate, id, seq: done.seq })),
            Err(e) => {
                items.push(BatchItem::Failed(BatchFailure { error: e.detail(), id }));
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok((StatusCode::ACCEPTED, Json(BatchAnswer { error: None, jobs: items }))),
        Some(e) => {
            let (status, _) = e.status_and_code();
            let mut error = e.detail();
            if status.is_server_error() {
                tracing::error!(error = ?e, "batch partly stored");
                error.message = format!("{e}; see jobs for which were stored");
            }
            Ok((status, Json(BatchAnswer { error: Some(error), jobs: items })))
        }
    }
}

/// Before a keyed batch stores anything: if a job of this key already exists
/// and was queued by a different request, refuse the whole batch (422), so a
/// reused key never leaves a mix of old and new jobs. Jobs the index has not
/// seen are checked again, one by one, when they are queued.
async fn refuse_reused_batch_key(
    state: &AppState,
    owner: &UserName,
    key: &str,
    digest: &str,
    len: usize,
) -> Result<(), ApiError> {
    let known: Vec<(usize, JobId, String)> = (0..len)
        .filter_map(|i| {
            let id = JobId::from_idempotency_key(owner, &format!("{key}#{i}"));
            state.index.subject_of(id).map(|subject| (i, id, subject))
        })
        .collect();
    let checks = futures::stream::iter(known)
        .map(|(i, id, subject)| async move {
            let command = CommandId::from_idempotent_request(owner, &format!("{key}#{i}"), digest.as_bytes());
            let loaded = state.store.load_job_at(id, &subject).await?;
            let ours = loaded.history.iter().any(|(_, e)| e.causation_id == *command.as_uuid());
            Ok::<bool, ApiError>(loaded.state.is_none() || ours)
        })
        .buffer_unordered(BATCH_IN_FLIGHT);
    futures::pin_mut!(checks);
    while let Some(same) = checks.next().await {
        if !same? {
            return Err(key_reused(key));
        }
    }
    Ok(())
}

/// `GET /v1/jobs/{id}`: the job folded from its own events (strongly consistent).
#[tracing::instrument(skip_all, fields(job = %id))]
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])), params(("id" = JobId, Path, description = "The job id (lowercase hyphenated UUID)")), responses(
    (status = 200, description = "The job folded from its own events: in full, or the summary for `jobs:read:summary`", body = JobAnswer),
    (status = 400, description = "`invalid_job_id`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 404, description = "`job_not_found` (also for a job the caller may not see)", body = ErrorBody),
))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<JobAnswer>, ApiError> {
    let (loaded, view) = authorize(&state, &caller, id, JobAction::Read, &format!("job/{id}")).await?;
    let mut full = job_view(&loaded).ok_or(ApiError::NotFound("job_not_found"))?;
    Ok(Json(match view {
        View::Full => {
            // The explanation names the owner's usage: full views only.
            if !full.state.is_terminal() {
                full.scheduling = super::pools::explain(&state, id).await;
            }
            JobAnswer::Full(Box::new(full))
        }
        _ => JobAnswer::Summary(Box::new(summary_only(full))),
    }))
}

/// What an analyst may see of a job: no command line, environment, working
/// directory, owner or free-text reason (which can quote the command).
fn summary_only(full: JobView) -> JobSummary {
    let spec = full.spec;
    JobSummary {
        attempt: full.attempt,
        created_at: full.created_at,
        exit_code: full.exit_code,
        experiment: spec.experiment,
        failure_class: full.failure_class,
        finished_at: full.finished_at,
        id: full.id,
        labels: spec.labels,
        metrics: full.metrics,
        pool: spec.pool,
        priority: spec.priority,
        resources: spec.resources,
        seq: full.seq,
        signal: full.signal,
        started_at: full.started_at,
        state: full.state,
        version: full.version,
    }
}

/// `GET /v1/jobs/{id}/events`: the job's history, in order, as stored.
#[tracing::instrument(skip_all, fields(job = %id))]
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])), params(("id" = JobId, Path, description = "The job id (lowercase hyphenated UUID)")), responses(
    (status = 200, description = "The job's stored events in order", body = EventList),
    (status = 400, description = "`invalid_job_id`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 404, description = "`job_not_found`", body = ErrorBody),
))]
pub async fn job_events(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
) -> Result<Json<EventList>, ApiError> {
    // The history holds the command line and environment: full view only.
    let (loaded, _) = authorize(&state, &caller, id, JobAction::History, &format!("job/{id}/events")).await?;
    // The job's own subject, as `load` found it: a wildcard filter
    // (`<ns>.ev.job.*.*.<id>`) would make the server scan its subject index.
    let Some(subject) = &loaded.subject else { return Err(ApiError::NotFound("job_not_found")) };
    let stored = state.store.load(subject).await?;
    let mut items = Vec::with_capacity(stored.len());
    for ev in &stored {
        let mut v = ev.json()?;
        v["seq"] = json!(ev.seq);
        items.push(v);
    }
    Ok(Json(EventList { items }))
}

/// Longest cancel or retry reason, in characters.
pub const MAX_REASON_CHARS: usize = 1024;

pub(crate) fn reason_from(body: &Bytes, default: &str) -> Result<String, ApiError> {
    if body.is_empty() {
        return Ok(default.to_owned());
    }
    let b: ReasonRequest = super::body::json_object(body, r#"{"reason": "..."}"#)?;
    let Some(mut reason) = b.reason else { return Ok(default.to_owned()) };
    fetchml_events::text::normalize_in_place(&mut reason);
    fetchml_events::text::check(&reason, TextKind::Multiline, MAX_REASON_CHARS)
        .map_err(|e| ApiError::bad_request(e.code(), format!("reason: {e}")))?;
    Ok(reason)
}

/// A command on an existing job by a user: reason from the body, authorized
/// by the policy (the `own` permission on one's own jobs, `all` on any).
async fn user_command(
    state: &AppState,
    caller: &Caller,
    id: JobId,
    body: &Bytes,
    (default_reason, action): (&str, JobAction),
    command: impl FnOnce(String) -> JobCommand,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let reason = reason_from(body, default_reason)?;
    authorize(state, caller, id, action, &format!("job/{id}")).await?;
    let ctx = CommandContext::new(Actor::User { name: caller.name().clone() });
    let done = state.store.execute_job(id, command(reason), &ctx).await?;
    Ok((StatusCode::ACCEPTED, Json(CommandAccepted { seq: done.seq })))
}

/// `POST /v1/jobs/{id}/cancel`: a queued job never starts afterwards; a
/// running one's process group gets SIGTERM, then SIGKILL after the grace.
#[tracing::instrument(skip_all, fields(job = %id))]
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])), params(("id" = JobId, Path, description = "The job id (lowercase hyphenated UUID)")),
    request_body(content = Option<ReasonRequest>, description = "Optional; an empty body is allowed"),
    responses(
        (status = 202, description = "The event is stored", body = CommandAccepted),
        (status = 400, description = "`invalid_job_id`, `invalid_body`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`job_terminal`: the job already ended; `stale_attempt`", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    body: Bytes,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let perms = ("cancelled by user", JobAction::Cancel);
    user_command(&state, &caller, id, &body, perms, |reason| JobCommand::Cancel { reason }).await
}

/// `POST /v1/jobs/{id}/retry`: queue a failed, timed-out, dead-lettered or
/// cancelled job again as a new attempt.
#[tracing::instrument(skip_all, fields(job = %id))]
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", security(("bearer" = [])), params(("id" = JobId, Path, description = "The job id (lowercase hyphenated UUID)")),
    request_body(content = Option<ReasonRequest>, description = "Optional; an empty body is allowed"),
    responses(
        (status = 202, description = "The event is stored", body = CommandAccepted),
        (status = 400, description = "`invalid_job_id`, `invalid_body`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 409, description = "`job_not_retryable`: only a failed, timed-out, dead-lettered or cancelled job can be retried; `stale_attempt`", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    body: Bytes,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let perms = ("retried by user", JobAction::Retry);
    user_command(&state, &caller, id, &body, perms, |reason| JobCommand::Retry { reason }).await
}

/// The read model a caller's queries go to ([`policy::list_scope`]).
pub fn scope_of(state: &AppState, caller: &Caller) -> Option<Scope> {
    policy::list_scope(&caller.principal, &state.auth.directory()).ok()
}

/// `?after_seq=N`: waits (bounded) until the read models include write N.
pub async fn read_your_writes(state: &AppState, after_seq: Option<u64>) -> Result<(), ApiError> {
    if let Some(seq) = after_seq {
        // A sequence the log has not reached yet was never answered to a
        // write: a mistake to say so now, not a wait that ends in a 503.
        if seq > state.store.last_sequence().await? {
            return Err(ApiError::bad_request("invalid_parameter", "after_seq: beyond the log's last sequence"));
        }
        let caught_up = state.pg_health.guard(fetchml_projections::wait_for(
            &state.pg,
            seq,
            state.read_your_writes,
            state.projector_progress.as_ref(),
        ));
        if !caught_up.await? {
            return Err(ApiError::NotCaughtUp(seq));
        }
    }
    Ok(())
}

/// The filters `GET /v1/jobs` and `GET /v1/jobs/counts` share, as given.
struct Selection<'a> {
    owner: Option<&'a str>,
    pool: Option<&'a str>,
    experiment: Option<&'a str>,
    tag: Option<&'a str>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
}

/// The caller's read model and the filter of `sel` on it, checked once for
/// both routes: the caller may read jobs, an analyst does not select by
/// owner (no owners in its model), names and tags compare in NFC (as stored),
/// and values follow the text rules. Refusals are recorded.
fn scoped_filter(state: &AppState, caller: &Caller, sel: &Selection<'_>) -> Result<(Scope, JobFilter), ApiError> {
    let Some(scope) = scope_of(state, caller) else {
        return Err(state.auth.deny(caller, "jobs:read", "jobs", ApiError::Forbidden("jobs:read")));
    };
    if matches!(scope, Scope::Summary) && sel.owner.is_some() {
        return Err(state.auth.deny(caller, "jobs:read", "jobs?owner", ApiError::Forbidden("jobs:read")));
    }
    let nfc = |s: &str| fetchml_events::text::normalize(s).into_owned();
    let tag = sel
        .tag
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (nfc(k), nfc(v)))
                .ok_or_else(|| ApiError::bad_request("invalid_parameter", "tag: expected key=value"))
        })
        .transpose()?;
    let filter = JobFilter {
        owner: sel.owner.map(str::to_owned),
        pool: sel.pool.map(str::to_owned),
        experiment: sel.experiment.map(nfc),
        tag,
        created_after: sel.created_after,
        created_before: sel.created_before,
        ..JobFilter::default()
    };
    filter.check(&scope)?;
    Ok((scope, filter))
}

/// `GET /v1/jobs/counts`: the caller's jobs by state, with the list's filters
/// (the job list's "counts by state"; one grouped count in the read model).
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/v1/jobs/counts", tag = "jobs", security(("bearer" = [])), params(CountJobsQuery), responses(
    (status = 200, description = "Jobs by state in the caller's read model", body = JobCounts),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
    (status = 403, description = "`forbidden` (also: `owner` by a role that sees no owners)", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable` (Postgres), `not_caught_up` (`after_seq`), `event_store_unavailable`", body = ErrorBody),
))]
pub async fn counts(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<CountJobsQuery>,
) -> Result<Json<JobCounts>, ApiError> {
    let selection = Selection {
        owner: q.owner.as_deref(),
        pool: q.pool.as_deref(),
        experiment: q.experiment.as_deref(),
        tag: q.tag.as_deref(),
        created_after: q.created_after,
        created_before: q.created_before,
    };
    let (scope, filter) = scoped_filter(&state, &caller, &selection)?;
    read_your_writes(&state, q.after_seq).await?;
    let rows = state.pg_health.guard(fetchml_projections::queries::count_jobs(&state.pg, &scope, &filter)).await?;
    const STATES: [&str; 8] =
        ["queued", "running", "retry_scheduled", "succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];
    let mut by_state: std::collections::BTreeMap<String, u64> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for (st, n) in rows {
        by_state.insert(st, u64::try_from(n).unwrap_or(0));
    }
    let total = by_state.values().sum();
    Ok(Json(JobCounts { by_state, total }))
}

/// `GET /v1/jobs`, from the caller's own read model in Postgres: filters
/// `state`, `owner`, `pool`, `experiment`, `tag` (`key=value`), `created_after`,
/// `created_before`; `sort` (`-created_at`, the default, or `created_at`);
/// `limit`; `cursor` (from `next`); `after_seq` (wait until the list includes
/// that write).
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), params(ListJobsQuery), responses(
    (status = 200, description = "A page from the caller's read model, or with `as_of_seq`/`as_of` the list as it was then", body = JobsAnswer),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`, `as_of_too_far`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
    (status = 403, description = "`forbidden` (also: `owner` by a role that sees no owners)", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable` (Postgres), `not_caught_up` (`after_seq`), `event_store_unavailable`", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ListJobsQuery>,
) -> Result<Json<JobsAnswer>, ApiError> {
    let selection = Selection {
        owner: q.owner.as_deref(),
        pool: q.pool.as_deref(),
        experiment: q.experiment.as_deref(),
        tag: q.tag.as_deref(),
        created_after: q.created_after,
        created_before: q.created_before,
    };
    let (scope, mut filter) = scoped_filter(&state, &caller, &selection)?;
    let bad = |field: &str, msg: &str| ApiError::bad_request("invalid_parameter", format!("{field}: {msg}"));
    let limit = match q.limit {
        Some(l) if (1..=MAX_LIST_LIMIT).contains(&l) => l,
        Some(_) => return Err(bad("limit", "1-500")),
        None => DEFAULT_LIST_LIMIT,
    };
    let after = q
        .cursor
        .as_deref()
        .map(|c| parse_cursor(c).ok_or_else(|| bad("cursor", "not a cursor from `next`")))
        .transpose()?;
    filter.state = q.state.map(|st| st.as_str().to_owned());
    filter.ascending = q.sort.unwrap_or_default() == SortOrder::OldestFirst;
    filter.limit = limit;
    filter.after = after.map(|(t, id)| (t, *id.as_uuid()));
    let point = match (q.as_of_seq, q.as_of) {
        (None, None) => None,
        (Some(n), None) => Some((Some(n), None)),
        (None, Some(t)) => Some((None, Some(t))),
        _ => return Err(ApiError::bad_request("invalid_parameter", "give as_of_seq or as_of, not both")),
    };
    if let Some((upto, until)) = point {
        return Ok(Json(JobsAnswer::AsOf(as_of(&state, &scope, upto, until, &filter).await?)));
    }
    read_your_writes(&state, q.after_seq).await?;
    let (items, next) =
        state.pg_health.guard(fetchml_projections::queries::list_jobs(&state.pg, &scope, &filter)).await?;
    let next = next.map(|(t, id)| make_cursor((t, JobId::from_uuid(id))));
    Ok(Json(JobsAnswer::Page(JobPage { items, next })))
}

/// `GET /v1/jobs?as_of_seq=N` (or `as_of=TIME`): the job list as it was then,
/// folded from the log from sequence 1 up to N. The cost is one pass over at
/// most `streaming.as_of_max_events` events (a larger N is refused), and the
/// result is filtered and redacted by the caller's role like the live list.
async fn as_of(
    state: &AppState,
    scope: &Scope,
    upto: Option<u64>,
    until: Option<DateTime<Utc>>,
    f: &JobFilter,
) -> Result<AsOfPage, ApiError> {
    use fetchml_events::job::evolve;
    let head = state.store.last_sequence().await?;
    let upto = upto.map_or(head, |n| n.min(head));
    if upto > state.as_of_max_events {
        return Err(ApiError::bad_request(
            "as_of_too_far",
            format!("as_of replays at most {} events; this needs {upto}", state.as_of_max_events),
        ));
    }
    let mut jobs: HashMap<JobId, (fetchml_events::job::Job, DateTime<Utc>, u64)> = HashMap::new();
    let mut reached = 0;
    if upto > 0 {
        let subjects = state.store.subjects();
        let mut events = state
            .store
            .read_stream(
                &subjects.events_stream(),
                vec![subjects.all_job_events()],
                fetchml_eventstore::StartAt::Beginning,
            )
            .await?;
        // The first message (or its absence: no job events at all) within a
        // bound; after that `pending` says when the replay is done.
        while let Ok(Some(ev)) = tokio::time::timeout(std::time::Duration::from_secs(2), events.next()).await {
            let ev = ev?;
            if ev.seq > upto {
                break;
            }
            if let Ok(env) = ev.decode::<JobEvent>() {
                if until.is_some_and(|t| env.occurred_at > t) {
                    break;
                }
                if let Ok(id) = env.aggregate_id.parse::<JobId>() {
                    let prev = jobs.remove(&id);
                    let created = prev.as_ref().map(|p| p.1).unwrap_or(env.occurred_at);
                    if let Some(job) = evolve(prev.map(|p| p.0), &env.payload) {
                        jobs.insert(id, (job, created, ev.seq));
                    }
                }
            }
            reached = ev.seq;
            // Stop at N, or when nothing older is pending: the log's last
            // sequences may belong to other families (user, worker events).
            if ev.seq >= upto || ev.pending == Some(0) {
                break;
            }
        }
    }
    let mut rows: Vec<(JobId, fetchml_events::job::Job, DateTime<Utc>, u64)> = jobs
        .into_iter()
        .map(|(id, (j, c, s))| (id, j, c, s))
        .filter(|(_, j, c, _)| scope.admits(j.owner.as_str()) && f.matches(j, *c))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.2, r.0)));
    let full = !matches!(scope, Scope::Summary);
    let items = rows
        .iter()
        .take(f.limit)
        .map(|(id, j, created, seq)| AsOfJob {
            attempt: j.attempt,
            created_at: *created,
            exit_code: j.exit_code,
            experiment: j.spec.experiment.clone(),
            failure_class: j.failure_class,
            id: *id,
            metrics: j.metrics.clone(),
            pool: j.spec.pool.clone(),
            priority: j.spec.priority,
            seq: *seq,
            state: j.status,
            // What a summary reader may not see is left out, not nulled.
            owner: full.then(|| j.owner.clone()),
            reason: full.then(|| j.reason.clone()),
            tags: full.then(|| j.spec.tags.clone()),
        })
        .collect();
    Ok(AsOfPage { as_of_seq: reached, items, total: rows.len() as u64 })
}

fn make_cursor((t, id): (DateTime<Utc>, JobId)) -> String {
    format!("{}_{id}", t.timestamp_micros())
}

fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, JobId)> {
    let (t, id) = c.split_once('_')?;
    Some((DateTime::from_timestamp_micros(t.parse().ok()?)?, id.parse().ok()?))
}

fn job_view(loaded: &LoadedJob) -> Option<JobView> {
    let job = loaded.state.as_ref()?;
    let first = loaded.history.first().map(|(_, e)| e.occurred_at);
    let started = loaded
        .history
        .iter()
        .rev()
        .find(|(_, e)| matches!(e.payload, JobEvent::JobStarted { .. }))
        .map(|(_, e)| e.occurred_at);
    let finished = job.status.is_terminal().then(|| loaded.history.last().map(|(_, e)| e.occurred_at)).flatten();
    Some(JobView {
        attempt: job.attempt,
        attempts_in_run: job.attempts_in_run,
        created_at: first,
        exit_code: job.exit_code,
        failure_class: job.failure_class,
        finished_at: finished,
        id: loaded.id,
        metrics: job.metrics.clone(),
        not_before: job.not_before,
        owner: job.owner.clone(),
        reason: job.reason.clone(),
        seq: loaded.last_seq(),
        signal: job.signal,
        spec: job.spec.clone(),
        started_at: started,
        state: job.status,
        version: job.version,
        worker: job.worker,
        scheduling: None,
    })
}
