mod audit;
mod audit_chain;
mod auth;
pub(crate) mod body;
pub(crate) mod docs;
mod experiments;
mod health;
pub(crate) mod jobs;
pub(crate) mod openapi;
mod pools;
pub(crate) mod ui;
pub(crate) mod usage;
mod workers;

use crate::AppState;
use axum::Router;
use axum::routing::{get, post};

/// Every route, inside the layers every route has ([`crate::http::around`]).
pub fn router(limits: &crate::transport::HttpLimits, options: &crate::http::HttpOptions) -> Router<AppState> {
    let routes = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::serve))
        .route("/", get(ui::index))
        .route("/docs", get(docs::page))
        .route("/docs/redoc.standalone.js", get(docs::bundle))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/counts", get(jobs::counts))
        .route("/v1/jobs/{id}", get(jobs::get_job))
        .route("/v1/jobs/{id}/events", get(jobs::job_events))
        .route("/v1/jobs/{id}/logs", get(crate::stream::logs::job_logs))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/experiments", get(experiments::list))
        .route("/v1/experiments/{name}", get(experiments::get))
        .route("/v1/workers", get(workers::list))
        .route("/v1/workers/{id}/drain", post(pools::drain))
        .route("/v1/pools", get(pools::list))
        .route("/v1/pools/{pool}/pause", post(pools::pause))
        .route("/v1/pools/{pool}/resume", post(pools::resume))
        .route("/v1/usage", get(usage::report))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/keys", get(audit_chain::keys))
        .route("/v1/audit/verify", get(audit_chain::verify))
        .route("/v1/audit/export", get(audit_chain::export))
        .route("/v1/stream", get(crate::stream::upgrade))
        .route("/v1/openapi.json", get(openapi::serve))
        // The dashboard's files and client-side routes; the api's own
        // prefixes still answer 404 route_not_found (see ui::fallback).
        .fallback(ui::fallback);
    crate::http::around(routes, limits, options)
}
