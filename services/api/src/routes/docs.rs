//! `GET /docs`: the api's reference page. The browser renders
//! `GET /v1/openapi.json` with Redoc (the npm package `redoc`, pinned with a
//! lockfile in `web/docs/`), whose standalone bundle the api itself serves at
//! `GET /docs/redoc.standalone.js`: the page fetches nothing from anywhere else,
//! so it works wherever the api is reachable, offline included.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use std::path::Path;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fetchml api reference</title>
</head>
<body>
<redoc spec-url="/v1/openapi.json"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// Reads the renderer once at start. A missing bundle is not an error: the api
/// serves without its reference page and says how to get it.
pub fn load_bundle(path: &Path) -> Option<bytes::Bytes> {
    match std::fs::read(path) {
        Ok(b) => Some(b.into()),
        Err(e) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "no reference page at /docs: its renderer is missing (npm ci --prefix web/docs, or set api.docs_bundle)"
            );
            None
        }
    }
}

fn unavailable() -> ApiError {
    ApiError::NotFound("docs_unavailable")
}

/// `GET /docs`: the reference page.
pub async fn page(State(state): State<AppState>) -> Result<Html<&'static str>, ApiError> {
    state.docs_bundle.as_ref().map(|_| Html(PAGE)).ok_or_else(unavailable)
}

/// `GET /docs/redoc.standalone.js`: the renderer.
pub async fn bundle(State(state): State<AppState>) -> Result<Response, ApiError> {
    let js = state.docs_bundle.clone().ok_or_else(unavailable)?;
    Ok((
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        js,
    )
        .into_response())
}
