//! Prometheus metrics: the catalogue of every metric fetchml exports, and the
//! process-wide recorder that renders them in the text format.
//!
//! Every crate records through the `metrics` facade (`metrics::counter!(NAME)`),
//! which costs an atomic add and nothing at all before [`install`] runs (a
//! process that never serves `/metrics`, such as `ml` or `fetchml verify`,
//! records into the facade's no-op recorder). The api and each worker call
//! [`install`] once and serve [`render`] on their own listener.
//!
//! **One recorder per process.** The facade has one global recorder, so the
//! numbers are the process's: a test process running several apps sees them
//! added up (tests compare before and after, never absolute values).
//!
//! **Bounded cardinality.** Labels only take values from small, fixed sets
//! (routes are axum's templates, codes are the api's stable error codes,
//! states and failure classes are the domain's enums) or sets an operator
//! bounds (pools, priorities 1-10). No job id, user name or raw path ever
//! becomes a label.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

// HTTP (the api).
/// Counter `{method, route, status}`: answered requests; `route` is the
/// matched template (`/v1/jobs/{id}`), `unmatched` for a 404 on no route.
pub const HTTP_REQUESTS: &str = "fetchml_http_requests_total";
/// Histogram `{method, route}`: time from the request to its answer's head.
pub const HTTP_DURATION: &str = "fetchml_http_request_duration_seconds";
/// Counter `{route, code}`: error answers by their stable code.
pub const HTTP_ERRORS: &str = "fetchml_http_errors_total";

// Jobs (the api and its store).
/// Counter: jobs stored by a submit (single or batch); a retried submit
/// recognised as a duplicate is not counted again.
pub const JOBS_ACCEPTED: &str = "fetchml_jobs_accepted_total";
/// Counter `{code}`: submit requests (`POST /v1/jobs`, `/v1/jobs/batch`) refused.
pub const JOBS_REFUSED: &str = "fetchml_job_submissions_refused_total";
/// Gauge `{state}`: jobs per state in the read model (refreshed on a scrape,
/// at most every few seconds: it is a count over every job).
pub const JOBS_BY_STATE: &str = "fetchml_jobs";
/// Gauge `{pool, priority}`: jobs waiting for a worker (queued, or a retry
/// whose backoff is over), from the api's index of unfinished jobs.
pub const QUEUE_DEPTH: &str = "fetchml_queue_depth";
/// Gauge `{pool, priority}`: how long the longest-waiting of those has waited.
pub const QUEUE_OLDEST: &str = "fetchml_queue_oldest_wait_seconds";

// Attempts (each worker).
/// Histogram `{pool, priority}`: from the moment a job could run (queued, or
/// its retry's backoff over) to its attempt's start.
pub const QUEUE_WAIT: &str = "fetchml_job_queue_wait_seconds";
/// Histogram `{pool, outcome}`: how long an attempt ran on this worker.
pub const RUN_TIME: &str = "fetchml_job_run_seconds";
/// Counter `{outcome}`: attempts recorded, `succeeded` or the failure class
/// (`infrastructure`, `code`, `resource`, `unknown`).
pub const ATTEMPTS: &str = "fetchml_job_attempts_total";
/// Gauge: attempts running on this worker now.
pub const WORKER_RUNNING: &str = "fetchml_worker_running_jobs";

// Projections (the api reads the checkpoints, wherever the projector runs).
/// Gauge `{projection}`: events in the log not yet in the read models.
pub const PROJECTION_LAG_EVENTS: &str = "fetchml_projection_lag_events";
/// Gauge `{projection}`: age of the oldest event not yet projected (0 when caught up).
pub const PROJECTION_LAG_SECONDS: &str = "fetchml_projection_lag_seconds";

// Streams (the api's WebSocket).
/// Gauge: open `GET /v1/stream` connections.
pub const STREAM_CONNECTIONS: &str = "fetchml_stream_connections";
/// Counter: `GET /v1/stream` connections opened.
pub const STREAM_OPENED: &str = "fetchml_stream_connections_opened_total";
/// Counter: connections closed because the client fell behind (4008).
pub const STREAM_LAGGED: &str = "fetchml_stream_lagged_closes_total";

// Authentication (the api).
/// Counter: requests whose credentials were refused (401).
pub const AUTH_FAILURES: &str = "fetchml_auth_failures_total";
/// Counter: requests refused for too many failed attempts (429).
pub const AUTH_THROTTLED: &str = "fetchml_auth_throttled_total";

// Dependencies (every process).
/// Counter: NATS connections re-established after a loss.
pub const NATS_RECONNECTS: &str = "fetchml_nats_reconnects_total";
/// Counter: Postgres found answering again after it was marked down.
pub const POSTGRES_RECONNECTS: &str = "fetchml_postgres_reconnects_total";

/// Every metric above (the README's table and the Grafana dashboard are
/// checked against it).
pub const ALL: [&str; 21] = [
    HTTP_REQUESTS,
    HTTP_DURATION,
    HTTP_ERRORS,
    JOBS_ACCEPTED,
    JOBS_REFUSED,
    JOBS_BY_STATE,
    QUEUE_DEPTH,
    QUEUE_OLDEST,
    QUEUE_WAIT,
    RUN_TIME,
    ATTEMPTS,
    WORKER_RUNNING,
    PROJECTION_LAG_EVENTS,
    PROJECTION_LAG_SECONDS,
    STREAM_CONNECTIONS,
    STREAM_OPENED,
    STREAM_LAGGED,
    AUTH_FAILURES,
    AUTH_THROTTLED,
    NATS_RECONNECTS,
    POSTGRES_RECONNECTS,
];

/// HTTP latencies: most answers take a millisecond or two; the top buckets
/// catch reads waiting for a read model (`after_seq`) and slow appends.
const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Queue waits: milliseconds on an idle fleet, hours on a saturated one.
const WAIT_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];
/// Run times: test jobs take milliseconds, training runs a day.
const RUN_BUCKETS: &[f64] =
    &[0.01, 0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0];

/// How often histograms are compacted when nobody scrapes (a render does it too).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle) and describes every metric.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
            // Explicit buckets make real Prometheus histograms (the exporter's
            // default is a summary, which cannot be aggregated across workers).
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)?
                .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), WAIT_BUCKETS)?
                .set_buckets_for_metric(Matcher::Full(RUN_TIME.into()), RUN_BUCKETS)
        };
        let recorder = match builder() {
            Ok(b) => b.build_recorder(),
            Err(e) => {
                // Only an empty bucket list fails, and ours are constants.
                tracing::error!(error = %e, "metric buckets refused; histograms render as summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        // A thread, not a task: tests run many short-lived runtimes, and the
        // upkeep must outlive each of them.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// Shows each counter and gauge in `names` at 0 until it moves: a series
/// that appears only at its first increment makes `rate()` miss that
/// increment and leaves dashboards blank rather than at 0. Each process
/// names its own, so a worker does not show the api's.
pub fn show_from_zero(counters: &[&'static str], gauges: &[&'static str]) {
    install();
    for name in counters {
        metrics::counter!(*name).increment(0);
    }
    for name in gauges {
        metrics::gauge!(*name).increment(0.0);
    }
}

/// The current values in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    install().render()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn describe() {
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests answered, by method, route template and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "Time to answer an HTTP request, by method and route template.");
    describe_counter!(HTTP_ERRORS, Unit::Count, "HTTP error answers by route template and stable error code.");
    describe_counter!(
        JOBS_ACCEPTED,
        Unit::Count,
        "Jobs stored by a submit (duplicates of a retried submit not counted)."
    );
    describe_counter!(JOBS_REFUSED, Unit::Count, "Submit requests refused, by error code.");
    describe_gauge!(JOBS_BY_STATE, Unit::Count, "Jobs per state in the read model.");
    describe_gauge!(QUEUE_DEPTH, Unit::Count, "Jobs waiting for a worker, by pool and priority.");
    describe_gauge!(QUEUE_OLDEST, Unit::Seconds, "Wait of the longest-waiting job, by pool and priority.");
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "From a job being ready to run to its attempt's start.");
    describe_histogram!(RUN_TIME, Unit::Seconds, "How long attempts ran, by pool and outcome.");
    describe_counter!(ATTEMPTS, Unit::Count, "Attempts recorded by outcome: succeeded or the failure class.");
    describe_gauge!(WORKER_RUNNING, Unit::Count, "Attempts running on this worker.");
    describe_gauge!(PROJECTION_LAG_EVENTS, Unit::Count, "Events in the log not yet projected, by projection.");
    describe_gauge!(PROJECTION_LAG_SECONDS, Unit::Seconds, "Age of the oldest event not yet projected.");
    describe_gauge!(STREAM_CONNECTIONS, Unit::Count, "Open WebSocket stream connections.");
    describe_counter!(STREAM_OPENED, Unit::Count, "WebSocket stream connections opened.");
    describe_counter!(STREAM_LAGGED, Unit::Count, "Stream connections closed because the client fell behind (4008).");
    describe_counter!(AUTH_FAILURES, Unit::Count, "Requests whose credentials were refused (401).");
    describe_counter!(AUTH_THROTTLED, Unit::Count, "Requests refused for too many failed attempts (429).");
    describe_counter!(NATS_RECONNECTS, Unit::Count, "NATS connections re-established after a loss.");
    describe_counter!(POSTGRES_RECONNECTS, Unit::Count, "Times Postgres answered again after being marked down.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_with_buckets_and_counters_with_help() {
        install();
        metrics::histogram!(HTTP_DURATION, "method" => "GET", "route" => "/x").record(0.003);
        metrics::counter!(NATS_RECONNECTS).increment(1);
        let text = render();
        assert!(
            text.contains("fetchml_http_request_duration_seconds_bucket{method=\"GET\",route=\"/x\",le=\"0.005\"} 1")
        );
        assert!(text.contains("# HELP fetchml_nats_reconnects_total"));
        assert!(text.contains("# TYPE fetchml_nats_reconnects_total counter"));
    }

    /// The `fetchml_…` names in `text`, with a histogram's `_bucket`,
    /// `_count` and `_sum` series named by their family.
    fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("fetchml_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| ALL.contains(f)))
                .unwrap_or(name);
            out.insert(family.to_owned());
            rest = &tail[end..];
        }
        out
    }

    #[test]
    fn the_grafana_dashboard_graphs_only_metrics_that_exist() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/fetchml.json");
        let text = std::fs::read_to_string(path).expect("deploy/grafana/fetchml.json");
        // Skip the dashboard's own ids ("fetchml-overview") and title.
        let names = names_in(&text);
        for core in [QUEUE_WAIT, RUN_TIME, HTTP_DURATION, QUEUE_DEPTH, PROJECTION_LAG_SECONDS, ATTEMPTS] {
            assert!(names.contains(core), "the dashboard does not graph {core}");
        }
        let unknown: Vec<String> =
            names.into_iter().filter(|n| n.len() > "fetchml_".len() && !ALL.contains(&n.as_str())).collect();
        assert!(unknown.is_empty(), "the dashboard names metrics nobody exports: {unknown:?}");
    }

    #[test]
    fn names_follow_the_prometheus_conventions() {
        for name in ALL {
            assert!(name.starts_with("fetchml_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
        }
        for counter in [HTTP_REQUESTS, HTTP_ERRORS, JOBS_ACCEPTED, JOBS_REFUSED, ATTEMPTS, STREAM_OPENED] {
            assert!(counter.ends_with("_total"), "{counter}");
        }
        for seconds in [HTTP_DURATION, QUEUE_OLDEST, QUEUE_WAIT, RUN_TIME, PROJECTION_LAG_SECONDS] {
            assert!(seconds.ends_with("_seconds"), "{seconds}");
        }
    }
}
