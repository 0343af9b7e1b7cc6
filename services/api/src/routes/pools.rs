//! Scheduling control: pools paused and resumed, workers drained, and each
//! pool's queue. Pausing and draining are events in the log (who did it, and
//! when, is in the audit trail, and every scheduler learns it from there);
//! the queue is the scheduler's board, asked of the embedded scheduler or,
//! where the api runs none, of any scheduler over NATS.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::jobs::reason_from;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use fetchml_api_types::{CommandAccepted, ErrorBody, PoolList, PoolSummary, ReasonRequest, Scheduling};
use fetchml_events::ids::PoolName;
use fetchml_events::pool::PoolEvent;
use fetchml_events::worker::WorkerEvent;
use fetchml_events::{Actor, JobId, WorkerId};
use fetchml_eventstore::{CommandContext, list_workers, open_registry};

/// `GET /v1/pools`: every pool with waiting jobs, workers or a pause.
#[utoipa::path(get, path = "/v1/pools", tag = "scheduling", security(("bearer" = [])), responses(
    (status = 200, description = "Each pool's queue: depth per priority, oldest wait, running, paused", body = PoolList),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 503, description = "`scheduler_unavailable`", body = ErrorBody),
))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<PoolList>, ApiError> {
    state.auth.require(&caller, "workers:read", "pools")?;
    let items: Vec<PoolSummary> = match &state.scheduler {
        Some(s) => s.pools(),
        None => {
            let v = fetchml_scheduler::ask(&state.store, &fetchml_scheduler::Query::Pools)
                .await
                .map_err(|_| ApiError::SchedulerUnavailable)?;
            serde_json::from_value(v).map_err(|e| ApiError::Internal(e.into()))?
        }
    };
    Ok(Json(PoolList { items }))
}

/// Why a job waits, from the scheduler (`None` if no scheduler knows it).
pub(crate) async fn explain(state: &AppState, job: JobId) -> Option<Scheduling> {
    match &state.scheduler {
        Some(s) => s.explain(job),
        None => {
            let v = fetchml_scheduler::ask(&state.store, &fetchml_scheduler::Query::Explain(job)).await.ok()?;
            serde_json::from_value(v).ok().flatten()
        }
    }
}

fn pool_of(name: &str) -> Result<PoolName, ApiError> {
    PoolName::parse(name).map_err(|e| ApiError::bad_request("invalid_pool", format!("pool {name:?}: {e}")))
}

/// `POST /v1/pools/{pool}/pause`: the scheduler starts nothing new in the
/// pool; waiting jobs keep their place and running ones finish.
#[utoipa::path(post, path = "/v1/pools/{pool}/pause", tag = "scheduling", security(("bearer" = [])),
    params(("pool" = String, Path, description = "The pool's name")),
    request_body(content = Option<ReasonRequest>, description = "Optional; an empty body is allowed"),
    responses(
        (status = 202, description = "The event is stored", body = CommandAccepted),
        (status = 400, description = "`invalid_pool`, `invalid_body`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    Path(pool): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let pool = pool_of(&pool)?;
    let reason = reason_from(&body, "paused by an admin")?;
    state.auth.require(&caller, "workers:manage", &format!("pool/{pool}"))?;
    let event = PoolEvent::PoolPaused { pool: pool.to_string(), reason };
    pool_event(&state, &caller, &pool, event).await
}

/// `POST /v1/pools/{pool}/resume`: the scheduler starts jobs in the pool again.
#[utoipa::path(post, path = "/v1/pools/{pool}/resume", tag = "scheduling", security(("bearer" = [])),
    params(("pool" = String, Path, description = "The pool's name")),
    responses(
        (status = 202, description = "The event is stored", body = CommandAccepted),
        (status = 400, description = "`invalid_pool`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(pool): Path<String>,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let pool = pool_of(&pool)?;
    state.auth.require(&caller, "workers:manage", &format!("pool/{pool}"))?;
    let event = PoolEvent::PoolResumed { pool: pool.to_string() };
    pool_event(&state, &caller, &pool, event).await
}

async fn pool_event(
    state: &AppState,
    caller: &Caller,
    pool: &PoolName,
    event: PoolEvent,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let ctx = CommandContext::new(Actor::User { name: caller.name().clone() });
    let subject = state.store.subjects().pool(pool);
    let appended = state.store.append_to_chain(&subject, pool.as_str(), event, &ctx).await?;
    Ok((StatusCode::ACCEPTED, Json(CommandAccepted { seq: appended.seq })))
}

/// `POST /v1/workers/{id}/drain`: the worker finishes what runs and is given
/// nothing new (it stays up, listed as draining).
#[utoipa::path(post, path = "/v1/workers/{id}/drain", tag = "scheduling", security(("bearer" = [])),
    params(("id" = String, Path, description = "The worker's id (as `GET /v1/workers` lists it)")),
    request_body(content = Option<ReasonRequest>, description = "Optional; an empty body is allowed"),
    responses(
        (status = 202, description = "The event is stored", body = CommandAccepted),
        (status = 400, description = "`invalid_worker_id`, `invalid_body`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
        (status = 403, description = "`forbidden`", body = ErrorBody),
        (status = 404, description = "`worker_not_found`: no live worker has this id", body = ErrorBody),
        (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
    ))]
pub async fn drain(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<CommandAccepted>), ApiError> {
    let worker: WorkerId = id
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_worker_id", format!("{id:?} is not a worker id (a UUID)")))?;
    let reason = reason_from(&body, "drained by an admin")?;
    state.auth.require(&caller, "workers:manage", &format!("worker/{worker}"))?;
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    if !list_workers(&kv).await?.iter().any(|w| w.id == worker.to_string()) {
        return Err(ApiError::NotFound("worker_not_found"));
    }
    let ctx = CommandContext::new(Actor::User { name: caller.name().clone() });
    let subject = state.store.subjects().worker(worker);
    let event = WorkerEvent::WorkerDrainRequested { reason };
    let appended = state.store.append_to_chain(&subject, &worker.to_string(), event, &ctx).await?;
    Ok((StatusCode::ACCEPTED, Json(CommandAccepted { seq: appended.seq })))
}
