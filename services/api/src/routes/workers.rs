use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Query, State};
use fetchml_eventstore::{list_workers, open_registry};
use serde_json::{Value, json};
use std::collections::HashMap;

/// `GET /v1/workers`: the live workers (entries expire when a worker stops
/// renewing them).
/// With `?history=true`, every worker ever started (from the read model).
pub async fn list(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    state.auth.require(&caller, "workers:read", "workers")?;
    if q.get("history").is_some_and(|v| v == "true") {
        let items = fetchml_projections::queries::worker_history(&state.pg, 1000).await?;
        return Ok(Json(json!({ "items": items })));
    }
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    let items = list_workers(&kv).await?;
    Ok(Json(json!({ "items": items })))
}
