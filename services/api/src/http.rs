//! The layers around every route: request metrics, and HTTP hygiene from
//! tower-http (request ids, one tracing span per request, CORS, gzip, and a
//! deadline for each answer), around the transport's request rules.
//!
//! Outermost first, as a request meets them:
//!
//! - **Metrics** ([`crate::metrics::Track`]): outside the rest, so they count
//!   the deadline's 504s and the CORS preflights too.
//! - **Request id**: a client's `X-Request-Id` is kept if it is sane (1-128
//!   characters of `A-Z a-z 0-9 - _ . :`), else replaced by a fresh UUID; it is
//!   echoed in the answer's `X-Request-Id`, whatever the answer.
//! - **Span**: every request runs in an `INFO` span `request` with `method`,
//!   `route` (the route's template, `/v1/jobs/{id}`, never the raw path, which
//!   holds ids), `request_id` and `correlation`; `status` and `latency_ms` are
//!   recorded when the answer's head leaves, with one `INFO` line "answered".
//!   Every log line of the request, the handler's included, carries them.
//! - **CORS** (`api.cors_allowed_origins`): off unless origins are listed;
//!   then preflights from those origins are answered and answers carry
//!   `Access-Control-Allow-Origin`. Bearer credentials are headers, not
//!   cookies, so credentials mode is never allowed.
//! - **Compression**: JSON answers of 1 KiB or more are gzipped for clients
//!   that accept it. NDJSON log streams (each line must reach the reader as it
//!   is written) and WebSocket upgrades are never compressed.
//! - **Deadline** (`api.request_timeout_ms`): the answer's head must be ready
//!   within it, else 504 `request_timeout` in the JSON error format. It bounds
//!   the head only: the streaming routes (`/v1/stream`, `/v1/jobs/{id}/logs`)
//!   send their head at once and their bodies are never cut by it. It counts
//!   the body's arrival too, and is longer than the body deadline (checked by
//!   the settings), so a stalled body still gets the transport's 408.
//! - **Correlation**: the request id becomes the correlation id of every
//!   command the request runs (see [`fetchml_eventstore::correlation`]): a
//!   UUID request id is used as is, any other is mapped to a UUIDv5 (the span
//!   shows both), so one id ties the request, its events and the dispatcher's
//!   and workers' log lines together.
//!
//! - **The transport's request rules** ([`crate::transport::edge`]): the
//!   early 413, the body's deadline, JSON for the transport's own answers;
//!   the connection's rules (header timeout, connection limit) are in
//!   [`crate::transport`] too.
//!
//! **One stack, applied once.** Every `Router::layer` call boxes each route
//! again, and every request then clones and polls each box; axum's `from_fn`
//! and `map_*` also clone everything beneath them and box a future per
//! request. Eleven layers applied one by one cost five times the bare
//! handler of a submit; as one `ServiceBuilder` with layers of tower's own
//! kind, a fraction of that (`benches/http_layers.rs`; BENCHMARKS.md,
//! twenty-second session). The stack is applied with `Router::layer`, not
//! around the router, so `MatchedPath` (the route's template, for the span
//! and the metrics) is known to every layer.

use crate::error::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::futures::TaskLocalFuture;
use tower::layer::layer_fn;
use tower::util::{MapRequestLayer, MapResponseLayer};
use tower::{Service, ServiceBuilder};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use uuid::Uuid;

/// The request id header, sent and answered.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client request id kept (W3C trace ids and the like fit).
const MAX_REQUEST_ID: usize = 128;

/// JSON answers smaller than this are not worth compressing.
const COMPRESS_FROM_BYTES: u16 = 1024;

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The UUIDv5 namespace that maps a non-UUID request id to a correlation id.
const REQUEST_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a52_8a3e_4c35_9d0b_6a41_7e2f_5c11);

/// The settings of these layers (`api.*`).
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub request_timeout: Duration,
    /// Empty: CORS off.
    pub cors_allowed_origins: Vec<String>,
}

impl HttpOptions {
    pub fn from_settings(api: &fetchml_runtime::settings::ApiSettings) -> Self {
        Self {
            request_timeout: Duration::from_millis(api.request_timeout_ms.max(1)),
            cors_allowed_origins: api.cors_allowed_origins.clone(),
        }
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self::from_settings(&fetchml_runtime::settings::ApiSettings::default())
    }
}

/// `router` wrapped in the layers of this module (see the module header).
pub fn around<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limits: &crate::transport::HttpLimits,
    options: &HttpOptions,
) -> Router<S> {
    let edge_limits = std::sync::Arc::new(limits.clone());
    router.layer(
        ServiceBuilder::new()
            .layer(layer_fn(crate::metrics::Track))
            .layer(MapRequestLayer::new(drop_insane_request_id))
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(answered)
                    // 5xx are logged by `ApiError` with their cause, and the
                    // "answered" line has the status: no second line for them.
                    .on_failure(()),
            )
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
            .option_layer(cors(&options.cors_allowed_origins))
            .layer(CompressionLayer::new().compress_when(SizeAbove::new(COMPRESS_FROM_BYTES).and(is_json)))
            .layer(MapResponseLayer::new(timeout_as_json))
            // The 504 status is how the timeout's answer is told apart
            // above: no handler answers 504 itself.
            .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, options.request_timeout))
            .layer(layer_fn(Correlate))
            .layer(axum::middleware::from_fn(move |req, next| crate::transport::edge(edge_limits.clone(), req, next)))
            .layer(DefaultBodyLimit::max(limits.max_body_bytes)),
    )
}

/// A client's request id that is not sane is dropped (and a fresh one made):
/// it goes into every log line and into the event log.
fn drop_insane_request_id(mut req: Request) -> Request {
    if req.headers().get_all(&X_REQUEST_ID).iter().count() > 1
        || req.headers().get(&X_REQUEST_ID).is_some_and(|v| !is_sane_request_id(v.as_bytes()))
    {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

pub fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The correlation id for a request id (see the module header).
pub fn correlation_of(request_id: &str) -> Uuid {
    Uuid::try_parse(request_id).unwrap_or_else(|_| Uuid::new_v5(&REQUEST_ID_NAMESPACE, request_id.as_bytes()))
}

fn request_id_of(extensions: &Extensions) -> &str {
    extensions.get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("")
}

/// The request's span: its route's template, never the raw path.
fn request_span(req: &Request) -> Span {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
    let request_id = request_id_of(req.extensions());
    tracing::info_span!(
        "request",
        method = %req.method(),
        // Display, not Debug: unquoted in text logs.
        route = %route,
        request_id = %request_id,
        correlation = %correlation_of(request_id),
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

fn answered<B>(res: &axum::http::Response<B>, latency: Duration, span: &Span) {
    span.record("status", res.status().as_u16());
    span.record("latency_ms", u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
    tracing::info!("answered");
}

/// Runs each request inside its correlation scope, for the commands it runs.
#[derive(Clone)]
struct Correlate<S>(S);

impl<S: Service<Request>> Service<Request> for Correlate<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Uuid, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let id = correlation_of(request_id_of(req.extensions()));
        fetchml_eventstore::correlation::scope(id, self.0.call(req))
    }
}

/// The timeout's bare 504 in the JSON error format.
fn timeout_as_json(response: Response) -> Response {
    if response.status() == StatusCode::GATEWAY_TIMEOUT && !response.headers().contains_key(header::CONTENT_TYPE) {
        return ApiError::RequestTimeout.into_response();
    }
    response
}

/// Only JSON answers are compressed: not NDJSON streams, not upgrades.
fn is_json(_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")))
}

/// The CORS layer for `origins`, `None` (CORS off) when there are none.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Checked by the settings; one that still fails to parse cannot match.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                X_REQUEST_ID,
            ])
            .expose_headers([X_REQUEST_ID, header::RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert!(is_sane_request_id(b"abc-123_x.y:z"));
        assert!(is_sane_request_id(Uuid::new_v4().to_string().as_bytes()));
        for bad in [&b""[..], b"has space", b"semi;colon", b"new\nline", &[b'a'; MAX_REQUEST_ID + 1]] {
            assert!(!is_sane_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_uuid_request_id_is_its_own_correlation_id_and_others_map_stably() {
        let id = Uuid::new_v4();
        assert_eq!(correlation_of(&id.to_string()), id);
        assert_eq!(correlation_of("abc"), correlation_of("abc"));
        assert_ne!(correlation_of("abc"), correlation_of("abd"));
    }
}
