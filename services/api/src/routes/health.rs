//! Liveness and readiness.
//!
//! Readiness is about commands: NATS connected and the event log answering.
//! The read models are reported beside it but do not decide it (commands
//! work while Postgres is down): `read_models` says whether Postgres answers,
//! and `projection_faults` counts the events the read models could not store
//! (see `fetchml_projections::fold`; the rows of `projection_faults` say which).
//! With `postgres.read_url`, `read_models` is the writer's database (the
//! projector's) and `read_replica` the one the queries read.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fetchml_api_types::{ErrorBody, ErrorDetail, Health, Ready};
use std::time::Duration;

/// Longest `/readyz` waits for Postgres before it reports the read models unknown.
const READ_MODELS_WITHIN: Duration = Duration::from_millis(500);

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process runs", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

/// Readiness: NATS is connected and the event log answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "NATS is connected and the event log answers", body = Ready),
    (status = 503, description = "`not_ready`", body = ErrorBody),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let connected = state.nats.connection_state() == async_nats::connection::State::Connected;
    let last = if connected { state.store.last_sequence().await.ok() } else { None };
    let (read_models, faults) = fault_count(&state.pg_writer_health, &state.pg_writer).await;
    // The replica is asked the same question: a count it answers proves
    // both that it is reachable and that the read models' tables are there.
    let read_replica = match state.has_read_replica {
        true => Some(fault_count(&state.pg_health, &state.pg).await.0.to_owned()),
        false => None,
    };
    match last {
        Some(seq) => Json(Ready {
            last_seq: seq,
            nats: "connected".into(),
            projection_faults: faults,
            read_models: read_models.into(),
            read_replica,
            status: "ready".into(),
        })
        .into_response(),
        None => {
            let message = if connected { "the event log does not answer" } else { "not connected to NATS" };
            let error = ErrorDetail { code: "not_ready".into(), field: None, message: message.into() };
            (StatusCode::SERVICE_UNAVAILABLE, Json(ErrorBody { error })).into_response()
        }
    }
}

/// Whether the database behind `pool` answers, and its count of projection faults.
async fn fault_count(health: &fetchml_projections::Health, pool: &sqlx::PgPool) -> (&'static str, Option<u64>) {
    match tokio::time::timeout(READ_MODELS_WITHIN, health.guard(fetchml_projections::fault_count(pool))).await {
        Ok(Ok(n)) => ("up", Some(n)),
        Ok(Err(e)) if !e.is_unavailable() => {
            tracing::warn!(error = %e, "cannot count projection faults");
            ("up", None)
        }
        _ => ("unavailable", None),
    }
}
