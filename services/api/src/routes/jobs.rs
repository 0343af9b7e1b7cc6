//! Job commands and the reads folded from a job's own events.

use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fetchml_events::job::{JobCommand, JobEvent, JobSpec};
use fetchml_events::{Actor, CommandId, JobId, UserName};
use fetchml_eventstore::{CommandContext, LoadedJob};
use serde_json::{Value, json};

/// Until authentication lands (identity issue), every caller acts as this user.
fn caller() -> UserName {
    UserName::parse("anonymous").unwrap_or_else(|_| unreachable!("static user name"))
}

const MAX_IDEMPOTENCY_KEY: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::bad_request("invalid_idempotency_key", format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"))
        })?;
    Ok(Some(key.to_owned()))
}

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("invalid_job_id", format!("{raw:?} is not a job id")))
}

/// `POST /v1/jobs`: queue a job. 202 `{"id", "seq"}` once `job_queued` is stored.
#[tracing::instrument(skip_all)]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec: JobSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("request body is not a job spec: {e}")))?;
    let owner = caller();
    let mut ctx = CommandContext::new(Actor::User { name: owner.clone() });
    // The same owner and key always mean the same job and the same command,
    // so a retried submit is stored once and answered the same.
    let id = match idempotency_key(&headers)? {
        Some(key) => {
            let id = JobId::from_idempotency_key(&owner, &key);
            ctx.command_id = CommandId::from_uuid(*id.as_uuid());
            id
        }
        None => JobId::new(),
    };
    let done = state.store.execute_job(id, JobCommand::Queue { owner, spec }, &ctx).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id, "seq": done.seq, "duplicate": done.duplicate }))))
}

/// `GET /v1/jobs/{id}`: the job folded from its own events (strongly consistent).
#[tracing::instrument(skip_all, fields(job = %raw_id))]
pub async fn get_job(State(state): State<AppState>, Path(raw_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&raw_id)?;
    let loaded = state.store.load_job(id).await?;
    job_view(&loaded).map(Json).ok_or(ApiError::NotFound("job_not_found"))
}

/// `GET /v1/jobs/{id}/events`: the job's history, in order, as stored.
#[tracing::instrument(skip_all, fields(job = %raw_id))]
pub async fn job_events(State(state): State<AppState>, Path(raw_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_job_id(&raw_id)?;
    let stored = state.store.load(&state.store.subjects().job_by_id(id)).await?;
    if stored.is_empty() {
        return Err(ApiError::NotFound("job_not_found"));
    }
    let mut items = Vec::with_capacity(stored.len());
    for ev in &stored {
        let mut v = ev.json()?;
        v["seq"] = json!(ev.seq);
        items.push(v);
    }
    Ok(Json(json!({ "items": items })))
}

fn job_view(loaded: &LoadedJob) -> Option<Value> {
    let job = loaded.state.as_ref()?;
    let first = loaded.history.first().map(|(_, e)| e.occurred_at);
    let started = loaded
        .history
        .iter()
        .rev()
        .find(|(_, e)| matches!(e.payload, JobEvent::JobStarted { .. }))
        .map(|(_, e)| e.occurred_at);
    let finished = job.status.is_terminal().then(|| loaded.history.last().map(|(_, e)| e.occurred_at)).flatten();
    Some(json!({
        "id": loaded.id,
        "state": job.status,
        "attempt": job.attempt,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "failure_class": job.failure_class,
        "reason": job.reason,
        "owner": job.owner,
        "worker": job.worker,
        "spec": job.spec,
        "created_at": first,
        "started_at": started,
        "finished_at": finished,
        "version": job.version,
        "seq": loaded.last_seq(),
    }))
}
