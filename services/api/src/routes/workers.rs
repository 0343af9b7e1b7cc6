use crate::AppState;
use crate::error::ApiError;
use crate::routes::body::Params;
use axum::Json;
use axum::extract::State;
use fetchml_api_types::{ErrorBody, WorkerList, WorkersQuery};
use fetchml_eventstore::{list_workers, open_registry};

/// `GET /v1/workers`: the live workers (entries expire when a worker stops
/// renewing them).
/// With `?history=true`, every worker ever started (from the read model).
#[utoipa::path(get, path = "/v1/workers", tag = "workers", security(("bearer" = [])), params(WorkersQuery), responses(
    (status = 200, description = "The live workers, or with `history=true` every worker ever started", body = WorkerList),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable` (`history=true`), `event_store_unavailable`", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Params(q): Params<WorkersQuery>,
) -> Result<Json<WorkerList>, ApiError> {
    state.auth.require(&caller, "workers:read", "workers")?;
    if q.history == Some(true) {
        let items = state.pg_health.guard(fetchml_projections::queries::worker_history(&state.pg, 1000)).await?;
        return Ok(Json(WorkerList { items }));
    }
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    let live = list_workers(&kv).await?;
    // The registry's records, as stored (described by `api_types::Worker`).
    let items =
        live.iter().map(serde_json::to_value).collect::<Result<_, _>>().map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(WorkerList { items }))
}
