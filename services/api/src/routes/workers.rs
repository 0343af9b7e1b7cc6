use crate::AppState;
use crate::error::ApiError;
use crate::routes::body::Params;
use axum::Json;
use axum::extract::State;
use fetchml_api_types::{WorkerList, WorkersQuery};
use fetchml_eventstore::{list_workers, open_registry};

/// `GET /v1/workers`: the live workers (entries expire when a worker stops
/// renewing them).
/// With `?history=true`, every worker ever started (from the read model).
pub async fn list(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Params(q): Params<WorkersQuery>,
) -> Result<Json<WorkerList>, ApiError> {
    state.auth.require(&caller, "workers:read", "workers")?;
    if q.history == Some(true) {
        let items = fetchml_projections::queries::worker_history(&state.pg, 1000).await?;
        return Ok(Json(WorkerList { items }));
    }
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    let live = list_workers(&kv).await?;
    // The registry's records, as stored (described by `api_types::Worker`).
    let items =
        live.iter().map(serde_json::to_value).collect::<Result<_, _>>().map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(WorkerList { items }))
}
