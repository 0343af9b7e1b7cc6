use crate::AppState;
use crate::auth::{Caller, Source};
use crate::error::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    api_key: String,
}

/// `POST /v1/auth/login` with `{"api_key": "fml_..."}`: a short-lived bearer
/// token, so that argon2 is paid once per session rather than per request.
pub async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: LoginBody = super::body::json_object(&body, r#"{"api_key": "..."}"#)?;
    let (token, expires_at, p) = state.auth.login(&b.api_key, &source).await?;
    Ok(Json(json!({ "token": token, "expires_at": expires_at, "user": p.name, "role": p.role })))
}

/// `POST /v1/auth/logout`, sent with the session token to end: 204; the token
/// answers 401 from then on and streams opened with it close with 4001. An
/// API key is not a session (400 `not_a_session`): remove it from the users
/// file to revoke it.
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/auth/whoami`: who the credentials belong to.
pub async fn whoami(caller: Caller) -> Json<Value> {
    let p = &caller.principal;
    Json(json!({ "user": p.name, "role": p.role, "groups": p.groups, "permissions": p.permissions }))
}
