use crate::AppState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use fetchml_eventstore::{list_workers, open_registry};
use serde_json::{Value, json};

/// `GET /v1/workers`: the live workers (entries expire when a worker stops
/// renewing them).
pub async fn list(State(state): State<AppState>, caller: crate::auth::Caller) -> Result<Json<Value>, ApiError> {
    state.auth.require(&caller, "workers:read", "workers")?;
    let kv = open_registry(state.store.jetstream(), state.store.subjects()).await?;
    let items = list_workers(&kv).await?;
    Ok(Json(json!({ "items": items })))
}
