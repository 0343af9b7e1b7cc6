use crate::AppState;
use crate::auth::{Caller, Source};
use crate::error::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use fetchml_api_types::{ErrorBody, LoginAnswer, LoginRequest, Whoami};

/// `POST /v1/auth/login` with `{"api_key": "fml_..."}`: a short-lived bearer
/// token, so that argon2 is paid once per session rather than per request.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, description = "A session token", body = LoginAnswer),
    (status = 400, description = "`invalid_body`", body = ErrorBody),
    (status = 401, description = "`unauthenticated`: the key is not known", body = ErrorBody),
))]
pub async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    body: Bytes,
) -> Result<Json<LoginAnswer>, ApiError> {
    let b: LoginRequest = super::body::json_object(&body, r#"{"api_key": "..."}"#)?;
    let (token, expires_at, p) = state.auth.login(&b.api_key, &source).await?;
    Ok(Json(LoginAnswer { expires_at, role: p.role, token, user: p.name }))
}

/// `POST /v1/auth/logout`, sent with the session token to end: 204; the token
/// answers 401 from then on and streams opened with it close with 4001. An
/// API key is not a session (400 `not_a_session`): remove it from the users
/// file to revoke it.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "The session is ended; its token answers 401 from now on"),
    (status = 400, description = "`not_a_session`: an API key cannot be logged out", body = ErrorBody),
))]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/auth/whoami`: who the credentials belong to.
#[utoipa::path(get, path = "/v1/auth/whoami", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "Who the credentials belong to", body = Whoami),
))]
pub async fn whoami(caller: Caller) -> Json<Whoami> {
    let p = caller.principal;
    Json(Whoami {
        groups: p.groups,
        permissions: p.permissions.iter().map(|s| (*s).to_owned()).collect(),
        role: p.role,
        user: p.name,
    })
}
