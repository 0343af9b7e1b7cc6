//! The one error type at the HTTP edge. Every error has a status and a stable
//! machine-readable `code`; 5xx bodies say nothing internal (the cause is
//! logged instead).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fetchml_api_types::{ErrorBody, ErrorDetail};
use fetchml_events::job::{JobRejection, SpecError};
use fetchml_eventstore::{ExecuteError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    InvalidSpec(SpecError),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("too many failed attempts; retry in {} s", .0.as_secs())]
    Throttled(std::time::Duration),
    #[error("you lack the permission {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Rejected(JobRejection),
    #[error("the job list has not caught up with sequence {0} yet; retry shortly")]
    NotCaughtUp(u64),
    #[error("the read models are unavailable (Postgres); commands still work, retry reads shortly")]
    ReadModel(#[source] fetchml_projections::ProjectionError),
    #[error("the event store is unavailable")]
    Unavailable(#[source] StoreError),
    /// The transport's refusals (see `transport::edge`).
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("this route does not take that method (see Allow)")]
    MethodNotAllowed,
    /// The answer was not ready within `api.request_timeout_ms` (`crate::http`).
    #[error(
        "the answer was not ready in time; retry later (a command may have been stored: retry it with the same Idempotency-Key)"
    )]
    RequestTimeout,
    /// No scheduler answered (none runs, or NATS is down).
    #[error("no scheduler answered; retry shortly")]
    SchedulerUnavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest { code, message: message.into() }
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::InvalidSpec(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.code),
            ApiError::NotFound(code) => (StatusCode::NOT_FOUND, code),
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Rejected(JobRejection::NotFound) => (StatusCode::NOT_FOUND, "job_not_found"),
            ApiError::Rejected(JobRejection::InvalidSpec(e)) => (StatusCode::UNPROCESSABLE_ENTITY, e.code),
            ApiError::Rejected(r) => (StatusCode::CONFLICT, r.code()),
            ApiError::NotCaughtUp(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_caught_up"),
            ApiError::ReadModel(e) if e.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "read_model_unavailable"),
            ApiError::ReadModel(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "event_store_unavailable"),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::RequestTimeout => (StatusCode::GATEWAY_TIMEOUT, "request_timeout"),
            ApiError::SchedulerUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "scheduler_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(_) => ApiError::Internal(anyhow::Error::new(e)),
            other => ApiError::Unavailable(other),
        }
    }
}

impl From<fetchml_projections::ProjectionError> for ApiError {
    fn from(e: fetchml_projections::ProjectionError) -> Self {
        // A query's data error comes from what the request asked for (a
        // value Postgres cannot compare), not from the read models being
        // unavailable: the filters are checked first, so this is a backstop.
        if e.is_data_error() {
            tracing::warn!(error = %e, "a read model refused a query's parameters");
            return ApiError::bad_request(
                "invalid_parameter",
                "a parameter holds a value the read models cannot compare",
            );
        }
        ApiError::ReadModel(e)
    }
}

impl From<fetchml_projections::queries::FilterError> for ApiError {
    fn from(e: fetchml_projections::queries::FilterError) -> Self {
        ApiError::bad_request("invalid_parameter", e.to_string())
    }
}

impl From<ExecuteError> for ApiError {
    fn from(e: ExecuteError) -> Self {
        match e {
            ExecuteError::Rejected(JobRejection::InvalidSpec(s)) => ApiError::InvalidSpec(s),
            ExecuteError::Rejected(r) => ApiError::Rejected(r),
            ExecuteError::Store(s) => s.into(),
        }
    }
}

impl ApiError {
    /// The `error` object of a response body: `code`, `message` and, for an
    /// invalid spec, `field`.
    pub fn detail(&self) -> ErrorDetail {
        let (_, code) = self.status_and_code();
        match self {
            ApiError::InvalidSpec(e) | ApiError::Rejected(JobRejection::InvalidSpec(e)) => {
                ErrorDetail { code: code.to_owned(), field: Some(e.field.clone()), message: e.message.clone() }
            }
            _ => ErrorDetail { code: code.to_owned(), field: None, message: self.to_string() },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let error = self.detail();
        // ERROR is for what an operator must look at: a fault of ours. A read
        // model still catching up is expected and answered with a retry hint;
        // a dependency that is down is worth a warning (its own health checks
        // and the reconnect logs say more).
        match &self {
            ApiError::Internal(_) | ApiError::ReadModel(_) if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(code, error = ?self, "request failed");
            }
            ApiError::NotCaughtUp(_) => tracing::debug!(code, "read model not caught up"),
            _ if status.is_server_error() => tracing::warn!(code, error = %self, "request failed"),
            _ => {}
        }
        let mut response = (status, Json(ErrorBody { error })).into_response();
        // For the request metrics (refusals by code); see `crate::metrics`.
        response.extensions_mut().insert(crate::metrics::ErrorCode(code));
        if let ApiError::Throttled(wait) = &self
            && let Ok(v) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}
