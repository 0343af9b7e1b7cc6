//! Experiments: jobs grouped by experiment name, from the caller's read model
//! (scoped by [`crate::policy::list_scope`]; every refusal is recorded).

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy;
use crate::routes::body::Params;
use crate::routes::jobs::read_your_writes;
use axum::Json;
use axum::extract::{Path, State};
use fetchml_api_types::{ErrorBody, ExperimentList, ReadQuery};
use serde_json::Value;

/// `GET /v1/experiments`: job counts by state and, per metric, the last,
/// lowest and highest value.
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments", security(("bearer" = [])), params(ReadQuery), responses(
    (status = 200, description = "Every experiment the caller sees", body = ExperimentList),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable`, `not_caught_up`", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<ReadQuery>,
) -> Result<Json<ExperimentList>, ApiError> {
    state.auth.require(&caller, "experiments:read", "experiments")?;
    let scope =
        state.auth.enforce(&caller, policy::list_scope(&caller.principal, &state.auth.directory()), "experiments")?;
    read_your_writes(&state, q.after_seq).await?;
    let items = state.pg_health.guard(fetchml_projections::queries::experiments(&state.pg, &scope, None)).await?;
    Ok(Json(ExperimentList { items }))
}

/// `GET /v1/experiments/{name}`.
#[utoipa::path(get, path = "/v1/experiments/{name}", tag = "experiments", security(("bearer" = [])),
    params(("name" = String, Path, description = "The experiment's name"), ReadQuery), responses(
    (status = 200, description = "One experiment", body = fetchml_api_types::Experiment),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`, `text_invalid_character`, `text_too_long`, `text_empty`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 404, description = "`experiment_not_found`", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable`, `not_caught_up`", body = ErrorBody),
))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Params(q): Params<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    state.auth.require(&caller, "experiments:read", "experiments")?;
    let scope =
        state.auth.enforce(&caller, policy::list_scope(&caller.principal, &state.auth.directory()), "experiments")?;
    read_your_writes(&state, q.after_seq).await?;
    // By the rules experiment names were stored under: a name no job can
    // have (NUL, control characters, too long) is a bad request, not a query.
    let name = fetchml_events::text::normalize(&name).into_owned();
    fetchml_projections::queries::check_value("name", &name, fetchml_events::job::MAX_EXPERIMENT_CHARS)?;
    let read = fetchml_projections::queries::experiments(&state.pg, &scope, Some(&name));
    let mut items = state.pg_health.guard(read).await?;
    items.pop().map(Json).ok_or(ApiError::NotFound("experiment_not_found"))
}
