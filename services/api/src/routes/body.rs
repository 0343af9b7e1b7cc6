//! The request's edges as types: JSON bodies, query strings and job ids in
//! paths, each refused with a stable code when it does not parse.
//!
//! serde's derived structs also accept a JSON array (fields by position), so a
//! body `["x"]` would pass as `{"api_key": "x"}`. Every body must be a JSON
//! object, and the types it becomes refuse unknown fields. Query strings
//! become the route's parameter struct (`fetchml_api_types::*Query`), which
//! refuses names it does not know: a misspelt filter must not silently return
//! everything.

use crate::error::ApiError;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use fetchml_events::JobId;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses `raw` as a JSON object into `T`; `what` describes the expected shape
/// in the error message (`{"reason": "..."}`).
pub fn json_object<T: DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("request body is not JSON ({what} expected): {e}"))
    })?;
    object_value(value, what)
}

/// Like [`json_object`] for a value already parsed (one item of a batch).
pub fn object_value<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request("invalid_body", format!("expected a JSON object: {what}")));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("invalid_body", format!("expected {what}: {e}")))
}

/// A route's query string as its parameter struct `T` (which must refuse
/// unknown fields). An unknown name is 400 `unknown_parameter`; a value that
/// does not parse, or a name given twice, 400 `invalid_parameter`.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        query(parts.uri.query().unwrap_or_default()).map(Params)
    }
}

/// See [`Params`].
pub fn query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw).map_err(|e| {
        let message = e.to_string();
        // serde's own wording for a struct that refuses a name
        // (`de::Error::unknown_field`), the one error that is not the value's.
        let code = if message.starts_with("unknown field") { "unknown_parameter" } else { "invalid_parameter" };
        ApiError::bad_request(code, format!("query string: {message}"))
    })
}

/// The `{id}` of a job route, in the one canonical spelling of ids (else 400
/// `invalid_job_id`).
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw,
            Err(e) => return Err(ApiError::bad_request("invalid_job_id", e.body_text())),
        };
        raw.parse()
            .map(JobPath)
            .map_err(|_| ApiError::bad_request("invalid_job_id", format!("{raw:?} is not a job id")))
    }
}
