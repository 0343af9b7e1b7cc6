use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: NATS is connected and the event log answers.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let connected = state.nats.connection_state() == async_nats::connection::State::Connected;
    let last = if connected { state.store.last_sequence().await.ok() } else { None };
    match last {
        Some(seq) => (StatusCode::OK, Json(json!({ "status": "ready", "nats": "connected", "last_seq": seq }))),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": {
                "code": "not_ready",
                "message": if connected { "the event log does not answer" } else { "not connected to NATS" },
            }})),
        ),
    }
}
