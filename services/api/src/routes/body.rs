//! Request bodies: one strict parser for every JSON body the api takes.
//!
//! serde's derived structs also accept a JSON array (fields by position), so a
//! body `["x"]` would pass as `{"api_key": "x"}`. Every body must be a JSON
//! object, and the types it becomes refuse unknown fields.

use crate::error::ApiError;
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

/// Refuses a query parameter the route does not know (400 `unknown_parameter`):
/// a misspelt filter must not silently return everything.
pub fn only_known_params(q: &std::collections::HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request("unknown_parameter", format!("unknown query parameter {k:?}"))),
        None => Ok(()),
    }
}
