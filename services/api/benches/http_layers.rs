//! What the layers every route has cost a request, in CPU alone: the api's
//! [`fetchml_api::http::around`] stack (metrics, request ids, span, gzip, deadline,
//! correlation, the transport's body rules) around a handler that answers at
//! once, against the same handler bare. Called in-process on one thread: no
//! socket, no NATS, so what is left is the layers.
//!
//! ```sh
//! cargo bench -p fetchml-api --bench http_layers
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use axum::routing::post;
use http_body_util::BodyExt as _;
use std::time::Instant;
use tower::ServiceExt as _;

// The allocator of the `fetchml` binary: the layers' cost is mostly allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A submit's request: its body, its headers, as the bench's clients send it.
fn request() -> Request<Body> {
    let body = r#"{"executor":"noop","command":[]}"#;
    Request::post("/v1/jobs")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::AUTHORIZATION, "Bearer fml_0123456789abcdef0123456789abcdef")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap()
}

/// Answers as a submit does (202 and a small JSON object), after reading the body.
async fn submit(body: Bytes) -> (StatusCode, axum::Json<serde_json::Value>) {
    assert!(!body.is_empty());
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"duplicate": false, "id": "0193b0a4-7c1e-7d2a-9f3b-5a6c7d8e9f01", "seq": 1})),
    )
}

/// Nanoseconds of one request through `app`, the best of five rounds.
async fn time(app: &Router, n: u32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..n {
            let answer = app.clone().oneshot(request()).await.unwrap();
            assert_eq!(answer.status(), StatusCode::ACCEPTED);
            let _ = answer.into_body().collect().await.unwrap();
        }
        best = best.min(t0.elapsed().as_nanos() as f64 / f64::from(n));
    }
    best
}

fn main() {
    // The served api's recorder: without one the metrics calls cost nothing.
    let _ = fetchml_runtime::metrics::install();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bare = Router::new().route("/v1/jobs", post(submit));
    let layered = fetchml_api::http::around(
        bare.clone(),
        &fetchml_api::transport::HttpLimits::default(),
        &fetchml_api::http::HttpOptions::default(),
    );
    let n = 50_000;
    runtime.block_on(async {
        time(&layered, n / 10).await;
        let bare_ns = time(&bare, n).await;
        let layered_ns = time(&layered, n).await;
        println!("bare handler            {bare_ns:>8.0} ns a request");
        println!("with the api's layers   {layered_ns:>8.0} ns a request");
        println!("the layers              {:>8.0} ns a request", layered_ns - bare_ns);
    });
}
