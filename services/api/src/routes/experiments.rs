//! Experiments: jobs grouped by experiment name, from the caller's read model
//! (scoped by [`crate::policy::list_scope`]; every refusal is recorded).

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy;
use crate::routes::jobs::read_your_writes;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use std::collections::HashMap;

/// `GET /v1/experiments`: job counts by state and, per metric, the last,
/// lowest and highest value.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    state.auth.require(&caller, "experiments:read", "experiments")?;
    let scope =
        state.auth.enforce(&caller, policy::list_scope(&caller.principal, &state.auth.directory()), "experiments")?;
    read_your_writes(&state, &q).await?;
    let items = fetchml_projections::queries::experiments(&state.pg, &scope, None).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/experiments/{name}`.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    state.auth.require(&caller, "experiments:read", "experiments")?;
    let scope =
        state.auth.enforce(&caller, policy::list_scope(&caller.principal, &state.auth.directory()), "experiments")?;
    read_your_writes(&state, &q).await?;
    let mut items = fetchml_projections::queries::experiments(&state.pg, &scope, Some(&name)).await?;
    items.pop().map(Json).ok_or(ApiError::NotFound("experiment_not_found"))
}
