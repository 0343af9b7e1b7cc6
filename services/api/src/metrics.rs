//! `GET /metrics` and the HTTP request metrics (names in
//! [`fetchml_runtime::metrics`]).
//!
//! **Requests** are counted by one layer ([`Track`]) around every route:
//! the route's template from axum's `MatchedPath` (never the raw path, so ids
//! do not become labels), the status, and the latency to the answer's head.
//! Error answers carry their stable code as a response extension
//! ([`ErrorCode`], set by `ApiError`'s `IntoResponse`), so refusals are
//! counted by code without any handler knowing about metrics.
//!
//! **Gauges derived from state** are computed when Prometheus scrapes, so an
//! api nobody scrapes pays nothing: the queue from the in-memory job index (a
//! scan of the unfinished jobs under its read lock), the projection lag from
//! the checkpoint row and the log's head (two small reads), and the jobs per
//! state from a count over the read model, run at most every
//! [`JOB_COUNT_EVERY`] (it touches every job). While Postgres is down the
//! Postgres-derived gauges keep their last value and the scrape still answers.
//!
//! **No authentication**, like `/healthz` and `/readyz`: the text holds only
//! counts per route, code, state, pool and priority (no id, user, path or
//! spec). The api listens on loopback by default; an api exposed beyond it can
//! turn the route off (`api.metrics: false`) or have its proxy keep
//! `/metrics` inside.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fetchml_runtime::metrics as m;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::Service;

/// The stable code of an error answer, for the request metrics.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// The jobs-per-state count runs at most this often (scrapes in between
/// answer the last count).
pub const JOB_COUNT_EVERY: Duration = Duration::from_secs(5);
/// A scrape waits at most this for Postgres; past it the last values stand.
const POSTGRES_WITHIN: Duration = Duration::from_millis(500);
/// Pools shown one by one in the queue gauges; jobs of further pools (a pool
/// name is chosen by whoever submits) are added up under `pool="other"`, so
/// a flood of made-up pools cannot flood Prometheus.
const MAX_POOLS: usize = 50;

/// The job states, each shown (0 when none), so a state emptied is seen as 0
/// rather than as a series that stopped.
const STATES: [&str; 8] =
    ["queued", "running", "retry_scheduled", "succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];

/// What the scrapes of one api remember between them.
#[derive(Default)]
pub struct Scrapes {
    /// When the jobs per state were last counted.
    counted_at: Mutex<Option<Instant>>,
    /// Queue series shown before: set to 0 when their queue empties.
    queues: Mutex<BTreeSet<(String, u8)>>,
}

/// Records every request: count by (method, route, status), latency by
/// (method, route), and error answers by code. A layer of its own rather than
/// axum's `from_fn`, which clones every layer beneath it per request.
#[derive(Clone)]
pub struct Track<S>(pub S);

impl<S, B, E> Service<Request> for Track<S>
where
    S: Service<Request, Response = axum::http::Response<B>, Error = E>,
{
    type Response = axum::http::Response<B>;
    type Error = E;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Tracked {
            started: Instant::now(),
            method: method_label(req.method()),
            route: req.extensions().get::<MatchedPath>().map_or("unmatched", |p| label(p.as_str())),
            inner: self.0.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, recorded in the metrics when it is ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: &'static str,
        route: &'static str,
    }
}

impl<F, B, E> Future for Tracked<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = Result<axum::http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            record(this.method, this.route, *this.started, response);
        }
        Poll::Ready(answer)
    }
}

fn record<B>(method: &'static str, route: &'static str, started: Instant, response: &axum::http::Response<B>) {
    metrics::histogram!(m::HTTP_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>().copied() {
        metrics::counter!(m::HTTP_ERRORS, "route" => route, "code" => code).increment(1);
        if method == "POST" && (route == "/v1/jobs" || route == "/v1/jobs/batch") {
            metrics::counter!(m::JOBS_REFUSED, "code" => code).increment(1);
        }
    }
    let status = label(response.status().as_str());
    metrics::counter!(m::HTTP_REQUESTS, "method" => method, "route" => route, "status" => status).increment(1);
}

/// `text` as a label that lives as long as the process, made once: route
/// templates and statuses are few (a route's template, never its raw path),
/// and every request names them again.
fn label(text: &str) -> &'static str {
    static LABELS: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let labels = LABELS.get_or_init(Default::default);
    if let Some(known) = labels.read().unwrap_or_else(PoisonError::into_inner).get(text) {
        return known;
    }
    let mut labels = labels.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = labels.get(text) {
        return known;
    }
    let made: &'static str = Box::leak(text.to_owned().into_boxed_str());
    labels.insert(made);
    made
}

/// The method as a label: clients may send any token, so only the standard
/// methods are named.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: the process's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "The process's metrics in the Prometheus text format (no credentials needed)", body = String, content_type = "text/plain; version=0.0.4"),
    (status = 404, description = "`route_not_found`: metrics are off (`api.metrics: false`)", body = fetchml_api_types::ErrorBody),
))]
pub async fn serve(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(scrapes) = state.metrics.clone() else { return Err(ApiError::NotFound("route_not_found")) };
    refresh_queues(&state, &scrapes);
    refresh_lag(&state).await;
    refresh_job_counts(&state, &scrapes).await;
    Ok(([(header::CONTENT_TYPE, m::CONTENT_TYPE)], m::render()).into_response())
}

/// Queue depth and oldest wait per (pool, priority), from the job index.
fn refresh_queues(state: &AppState, scrapes: &Scrapes) {
    let now = Utc::now();
    // (pool, priority) → (waiting jobs, since when the longest has waited)
    let mut queues: BTreeMap<(String, u8), (u64, DateTime<Utc>)> = BTreeMap::new();
    state.index.for_each_unfinished(|job| {
        if !job.state.status.is_waiting() {
            return;
        }
        // A retry waits for a worker once its backoff is over, not before.
        let ready = job.state.not_before.map_or(job.updated_at, |nb| nb.max(job.updated_at));
        if ready > now {
            return;
        }
        let spec = &job.state.spec;
        let q = queues.entry((spec.pool.as_str().to_owned(), spec.priority)).or_insert((0, ready));
        q.0 += 1;
        q.1 = q.1.min(ready);
    });
    let queues = cap_pools(queues);
    let mut shown = scrapes.queues.lock().unwrap_or_else(|p| p.into_inner());
    for key in shown.iter() {
        if !queues.contains_key(key) {
            let labels = [("pool", key.0.clone()), ("priority", key.1.to_string())];
            metrics::gauge!(m::QUEUE_DEPTH, &labels).set(0.0);
            metrics::gauge!(m::QUEUE_OLDEST, &labels).set(0.0);
        }
    }
    for ((pool, priority), (depth, since)) in &queues {
        let labels = [("pool", pool.clone()), ("priority", priority.to_string())];
        metrics::gauge!(m::QUEUE_DEPTH, &labels).set(*depth as f64);
        let waited = (now - *since).to_std().unwrap_or_default();
        metrics::gauge!(m::QUEUE_OLDEST, &labels).set(waited.as_secs_f64());
        shown.insert((pool.clone(), *priority));
    }
}

/// Keeps the [`MAX_POOLS`] pools with the most waiting jobs and adds the rest
/// up under `other`, per priority.
fn cap_pools(queues: BTreeMap<(String, u8), (u64, DateTime<Utc>)>) -> BTreeMap<(String, u8), (u64, DateTime<Utc>)> {
    let mut per_pool: BTreeMap<&str, u64> = BTreeMap::new();
    for ((pool, _), (n, _)) in &queues {
        *per_pool.entry(pool).or_default() += n;
    }
    if per_pool.len() <= MAX_POOLS {
        return queues;
    }
    let mut ranked: Vec<(&str, u64)> = per_pool.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let kept: BTreeSet<String> = ranked.iter().take(MAX_POOLS).map(|(p, _)| (*p).to_owned()).collect();
    let mut out = BTreeMap::new();
    for ((pool, priority), (n, since)) in queues {
        let key = if kept.contains(&pool) { (pool, priority) } else { ("other".to_owned(), priority) };
        let q = out.entry(key).or_insert((0, since));
        q.0 += n;
        q.1 = q.1.min(since);
    }
    out
}

/// Projection lag: the log's head against the projector's checkpoint, and
/// the age of the first event it has not applied. Read from the checkpoint
/// row, so it is right wherever the projector runs (embedded or standalone);
/// with `postgres.read_url`, the replica's row: the lag the queries see,
/// replication included.
async fn refresh_lag(state: &AppState) {
    let checkpoint =
        tokio::time::timeout(POSTGRES_WITHIN, state.pg_health.guard(fetchml_projections::checkpoint(&state.pg))).await;
    let Ok(Ok(checkpoint)) = checkpoint else { return };
    let Ok(head) = state.store.last_sequence().await else { return };
    let behind = head.saturating_sub(checkpoint);
    let seconds = if behind == 0 {
        0.0
    } else {
        match state.store.stored_at(checkpoint + 1).await {
            Ok(Some(at)) => (Utc::now() - at).to_std().unwrap_or_default().as_secs_f64(),
            _ => return,
        }
    };
    let projection = fetchml_projections::JOBS;
    metrics::gauge!(m::PROJECTION_LAG_EVENTS, "projection" => projection).set(behind as f64);
    metrics::gauge!(m::PROJECTION_LAG_SECONDS, "projection" => projection).set(seconds);
}

/// Jobs per state from the read model, at most every [`JOB_COUNT_EVERY`].
async fn refresh_job_counts(state: &AppState, scrapes: &Scrapes) {
    {
        let mut at = scrapes.counted_at.lock().unwrap_or_else(|p| p.into_inner());
        if at.is_some_and(|t| t.elapsed() < JOB_COUNT_EVERY) {
            return;
        }
        // Claimed before the query, so concurrent scrapes do not all count.
        *at = Some(Instant::now());
    }
    let counts = tokio::time::timeout(
        POSTGRES_WITHIN,
        state.pg_health.guard(fetchml_projections::queries::jobs_by_state(&state.pg)),
    )
    .await;
    let counts = match counts {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "jobs per state not counted");
            return;
        }
        Err(_) => return,
    };
    for s in STATES {
        let n = counts.iter().find(|(state, _)| state == s).map_or(0, |(_, n)| *n);
        metrics::gauge!(m::JOBS_BY_STATE, "state" => s).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_beyond_the_cap_are_added_up_as_other() {
        let t = Utc::now();
        let mut q = BTreeMap::new();
        for i in 0..(MAX_POOLS + 3) {
            q.insert((format!("p{i:03}"), 5), (i as u64 + 1, t));
        }
        let capped = cap_pools(q);
        assert_eq!(capped.len(), MAX_POOLS + 1);
        // The three smallest pools (1, 2 and 3 jobs) make up `other`.
        assert_eq!(capped.get(&("other".to_owned(), 5)).map(|v| v.0), Some(6));
        assert!(capped.contains_key(&(format!("p{:03}", MAX_POOLS + 2), 5)));
    }
}
