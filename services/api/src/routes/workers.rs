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
    super::body::only_known_params(&q, &["history"])?;
    state.auth.require(&caller, "workers:read", "workers")?;
    let history = match q.get("history").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("invalid_parameter", "history: true or false")),
    };
    if history {
        let items = state.pg_health.guard(fetchml_projections::queries::worker_history(&state.pg, 1000)).await?;
        return Ok(Json(json!({ "items": items })));
    }
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    let items = list_workers(&kv).await?;
    Ok(Json(json!({ "items": items })))
}
