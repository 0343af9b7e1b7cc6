//! The api's OpenAPI 3.1 description, derived from the code: the routes'
//! `#[utoipa::path]` attributes, the request and answer types of
//! `fetchml_api_types`, and the WebSocket protocol's messages
//! ([`crate::stream::protocol`]) as components.
//!
//! Served at `GET /v1/openapi.json` (no credentials needed) and printed by
//! `fetchml openapi`; `docs/openapi.json` is that output, and a test fails when
//! the two differ. The refusals every route can give (credentials, throttling,
//! the transport's limits, our own faults) are added here once, by
//! [`CommonResponses`], rather than repeated on every route.

use crate::stream::protocol;
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::LazyLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fetchml",
        description = "fetchml's HTTP api (v1): queue, follow and manage machine-learning jobs. Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}` with a stable `code` (see `ErrorBody` and the README's errors table). Credentials: `Authorization: Bearer <api key or session token>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://127.0.0.1:9101", description = "the default listen address")),
    paths(
        super::health::healthz,
        super::health::readyz,
        crate::metrics::serve,
        super::auth::login,
        super::auth::logout,
        super::auth::whoami,
        super::jobs::submit,
        super::jobs::list,
        super::jobs::counts,
        super::jobs::submit_batch,
        super::jobs::get_job,
        super::jobs::job_events,
        crate::stream::logs::job_logs,
        super::jobs::cancel,
        super::jobs::retry,
        super::experiments::list,
        super::experiments::get,
        super::workers::list,
        super::pools::drain,
        super::pools::list,
        super::pools::pause,
        super::pools::resume,
        super::usage::report,
        super::audit::list,
        super::audit_chain::keys,
        super::audit_chain::verify,
        super::audit_chain::export,
        crate::stream::upgrade,
        serve,
    ),
    components(schemas(
        fetchml_api_types::ErrorBody,
        fetchml_api_types::JobRow,
        fetchml_api_types::StoredEvent,
        fetchml_api_types::Experiment,
        fetchml_api_types::Worker,
        protocol::ClientMsg,
        protocol::ServerMsg,
    )),
    modifiers(&CommonResponses),
    tags(
        (name = "jobs", description = "Queue, read, follow, cancel and retry jobs"),
        (name = "experiments", description = "Jobs grouped by experiment"),
        (name = "workers", description = "The worker fleet"),
        (name = "scheduling", description = "Pools paused and resumed, workers drained, each pool's queue (README, \"Scheduling\")"),
        (name = "usage", description = "Resources held by jobs' attempts, per user, group, pool and day"),
        (name = "audit", description = "The audit trail for `audit:read`: every event of the log, signed checkpoints, verification and export"),
        (name = "streams", description = "Live streams over WebSocket (docs/streams.md)"),
        (name = "auth", description = "Sessions and identity"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

/// The description as pretty JSON, ending with a newline (as committed in
/// `docs/openapi.json`).
pub fn openapi_json() -> String {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    });
    DOC.clone()
}

/// `GET /v1/openapi.json`: this api's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", responses(
    (status = 200, description = "The OpenAPI 3.1 description of this api", content_type = "application/json", body = Object),
))]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

/// Adds the bearer scheme and, to every operation, the answers any route can
/// give: 401/429 and the credential's 400 where credentials are needed, 413
/// and 408 where a body is read, 504 (the request deadline) except on streams,
/// 500 everywhere.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("an API key (fml_...) or a session token (fms_...)")
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            // Streams answer their head at once: the request deadline never cuts them.
            let streams = path == "/v1/stream" || path == "/v1/jobs/{id}/logs";
            if let Some(op) = item.get.as_mut() {
                add_common(op, false, !streams);
            }
            if let Some(op) = item.post.as_mut() {
                add_common(op, true, true);
            }
        }
    }
}

fn add_common(op: &mut Operation, has_body: bool, deadline: bool) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, description: &str| {
        use utoipa::openapi::RefOr;
        match responses.get_mut(status) {
            Some(RefOr::T(r)) => r.description = format!("{}; {description}", r.description),
            Some(RefOr::Ref(_)) => {}
            None => {
                let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                let r = ResponseBuilder::new().description(description).content("application/json", content).build();
                responses.insert(status.to_owned(), r.into());
            }
        }
    };
    if secured {
        add("400", "`ambiguous_credentials`: more than one Authorization header");
        add("401", "`unauthenticated`: no, unknown, expired or revoked credentials (with `WWW-Authenticate: Bearer`)");
        add(
            "429",
            "`too_many_attempts`: too many failed attempts from this address or for this user (with `Retry-After`)",
        );
        add("503", "`event_store_unavailable`: NATS does not answer");
    }
    if has_body {
        add("408", "`body_timeout`: the body did not arrive in time");
        add("413", "`body_too_large`: the body is larger than `api.max_body_bytes`");
    }
    if deadline {
        add(
            "504",
            "`request_timeout`: no answer within `api.request_timeout_ms` (a command may still have been stored: retry with the same `Idempotency-Key`)",
        );
    }
    add("500", "`internal`: a fault of ours (details only in the log)");
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is what the code describes: regenerate it with
    /// `cargo run -q -p fetchml-server -- openapi > docs/openapi.json`.
    #[test]
    fn the_committed_openapi_file_is_what_the_code_describes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::openapi_json(),
            "docs/openapi.json differs from the code's description: run \
             `cargo run -q -p fetchml-server -- openapi > docs/openapi.json` and commit it"
        );
    }
}
