//! Liveness and readiness.
//!
//! Readiness is about commands: NATS connected and the event log answering.
//! The read models are reported beside it but do not decide it (commands
//! work while Postgres is down): `read_models` says whether Postgres answers,
//! and `projection_faults` counts the events the read models could not store
//! (see `fetchml_projections::fold`; the rows of `projection_faults` say which).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest `/readyz` waits for Postgres before it reports the read models unknown.
const READ_MODELS_WITHIN: Duration = Duration::from_millis(500);

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: NATS is connected and the event log answers.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let connected = state.nats.connection_state() == async_nats::connection::State::Connected;
    let last = if connected { state.store.last_sequence().await.ok() } else { None };
    let faults =
        tokio::time::timeout(READ_MODELS_WITHIN, state.pg_health.guard(fetchml_projections::fault_count(&state.pg)))
            .await;
    let (read_models, faults) = match faults {
        Ok(Ok(n)) => ("up", Some(n)),
        Ok(Err(e)) if !e.is_unavailable() => {
            tracing::warn!(error = %e, "cannot count projection faults");
            ("up", None)
        }
        _ => ("unavailable", None),
    };
    match last {
        Some(seq) => (
            StatusCode::OK,
            Json(json!({
                "status": "ready", "nats": "connected", "last_seq": seq,
                "read_models": read_models, "projection_faults": faults,
            })),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": {
                "code": "not_ready",
                "message": if connected { "the event log does not answer" } else { "not connected to NATS" },
            }})),
        ),
    }
}
