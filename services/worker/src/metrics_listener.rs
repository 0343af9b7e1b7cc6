//! The worker's own `GET /metrics` listener (`worker.metrics_listen`): the
//! attempts this worker ran, their queue waits and run times, and its NATS
//! reconnects, in the Prometheus text format. Unauthenticated (counts per
//! pool, priority and outcome only); bind it where Prometheus, and nobody
//! else, can reach it.

use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, stop: CancellationToken) {
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            ([(header::CONTENT_TYPE, fetchml_runtime::metrics::CONTENT_TYPE)], fetchml_runtime::metrics::render())
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "worker metrics listening");
    }
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::warn!(error = %e, "worker metrics listener stopped");
    }
}
