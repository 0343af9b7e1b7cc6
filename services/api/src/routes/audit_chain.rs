//! The audit trail's chain: the keys checkpoints are signed with, an online
//! verification and the offline export (`fetchml-audit` does the work; these
//! are thin shells). All need `audit:read`.

use crate::AppState;
use crate::error::ApiError;
use crate::routes::body::Params;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fetchml_api_types::{AuditExportQuery, AuditKey, AuditKeys, AuditVerdict, AuditVerifyQuery, ErrorBody, VerifyFrom};
use fetchml_audit::{AuditError, online};
use futures::StreamExt;

/// `GET /v1/audit/keys`: the Ed25519 public keys of the checkpoints: the
/// current signing key and the older ones still trusted.
#[utoipa::path(get, path = "/v1/audit/keys", tag = "audit", security(("bearer" = [])), responses(
    (status = 200, description = "The public keys checkpoints are verified with", body = AuditKeys),
    (status = 403, description = "`forbidden` (needs `audit:read`)", body = ErrorBody),
))]
pub async fn keys(State(state): State<AppState>, caller: crate::auth::Caller) -> Result<Json<AuditKeys>, ApiError> {
    state.auth.require(&caller, "audit:read", "audit")?;
    let keys = state
        .audit
        .keys
        .keys()
        .iter()
        .map(|k| AuditKey {
            algorithm: "ed25519".into(),
            current: state.audit.signer_id.as_deref() == Some(k.id.as_str()),
            id: k.id.clone(),
            public_key: k.public_key.clone(),
        })
        .collect();
    Ok(Json(AuditKeys { keys }))
}

/// `GET /v1/audit/verify`: replays the log (from sequence 1, or from the
/// latest signed checkpoint) and says "intact up to sequence N, head H, last
/// checkpoint C signed by key K", or names the first break. A break is an
/// answer (200 with `intact: false`), not an error.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", security(("bearer" = [])), params(AuditVerifyQuery), responses(
    (status = 200, description = "The verdict", body = AuditVerdict),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden` (needs `audit:read`)", body = ErrorBody),
    (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
))]
pub async fn verify(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Params(q): Params<AuditVerifyQuery>,
) -> Result<Json<AuditVerdict>, ApiError> {
    state.auth.require(&caller, "audit:read", "audit")?;
    let from = match q.from.unwrap_or_default() {
        VerifyFrom::Start => online::From::Start,
        VerifyFrom::Checkpoint => online::From::LatestCheckpoint,
    };
    let verdict = online::verify_store(&state.store, state.audit.keys.clone(), from).await.map_err(audit_error)?;
    Ok(Json(to_answer(&verdict)?))
}

/// The library's verdict as the api's answer type.
pub fn to_answer(v: &fetchml_audit::Verdict) -> Result<AuditVerdict, ApiError> {
    let mut value = serde_json::to_value(v).map_err(|e| ApiError::Internal(e.into()))?;
    value["summary"] = serde_json::Value::String(v.to_string());
    serde_json::from_value(value).map_err(|e| ApiError::Internal(e.into()))
}

/// `GET /v1/audit/export`: the events `from_seq..=to_seq` with their global
/// chain entries and the checkpoints, as JSON Lines (a manifest first, an end
/// line last; see the README, "Audit"), streamed in bounded memory.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit", security(("bearer" = [])), params(AuditExportQuery), responses(
    (status = 200, description = "The export, one JSON object per line", content_type = "application/x-ndjson", body = String),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden` (needs `audit:read`)", body = ErrorBody),
    (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
))]
pub async fn export(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
    Params(q): Params<AuditExportQuery>,
) -> Result<Response, ApiError> {
    state.auth.require(&caller, "audit:read", "audit")?;
    if let (Some(from), Some(to)) = (q.from_seq, q.to_seq)
        && from > to
    {
        return Err(ApiError::bad_request("invalid_parameter", format!("from_seq {from} is after to_seq {to}")));
    }
    let keys = state.audit.keys.keys().to_vec();
    let lines = online::export(&state.store, keys, q.from_seq.unwrap_or(1), q.to_seq).await.map_err(audit_error)?;
    // An error mid-stream cuts the body: the export then lacks its end line,
    // which the verifier reports as `truncated`.
    let body = Body::from_stream(lines.map(|r| r.map_err(std::io::Error::other)));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn audit_error(e: AuditError) -> ApiError {
    match e {
        AuditError::Store(s) => s.into(),
        other => ApiError::Internal(other.into()),
    }
}
