//! `GET /`: the web dashboard (`web/app`, built by Vite into `web/app/dist`),
//! served by the api itself from the folder `api.ui_dir` names.
//!
//! The folder is read once at start into memory (the built app is a few
//! hundred KB): a rebuild needs an api restart, and a request never touches
//! the disk. Without the folder the api starts anyway, logs how to build it,
//! and `/` answers 404 `dashboard_unavailable` (like `/docs` without Redoc).
//!
//! Routing: files of the build answer at their own path (`/assets/...` are
//! content-hashed by Vite, so they are cached for a year and marked
//! immutable); any other GET outside the api's own prefixes is a client-side
//! route of the single-page app and gets `index.html` (never cached, so a new
//! build is picked up at the next load). The api's prefixes (`/v1`, `/docs`,
//! `/metrics`, `/healthz`, `/readyz`) keep their JSON 404 `route_not_found`.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The dashboard's policy: everything from the api's own origin, no inline
/// scripts; styles from the bundle's CSS file, plus `'unsafe-inline'` for style
/// attributes only (uPlot and the progress bars size elements with them).
/// `connect-src` is completed per request with the WebSocket origin of the
/// host the page was loaded from (see [`csp`]).
const CSP_HEAD: &str = "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; \
     img-src 'self' data: blob:; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'; connect-src 'self'";

/// The policy for a page loaded from `host`: the live stream is a WebSocket
/// to that same host. `'self'` covers it in current browsers; it is named
/// explicitly for those that do not. A host header with anything but host
/// characters gets `'self'` alone (it cannot add directives).
fn csp(host: Option<&str>) -> HeaderValue {
    let sane = host.filter(|h| {
        !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let value = match sane {
        Some(h) => format!("{CSP_HEAD} ws://{h} wss://{h}"),
        None => CSP_HEAD.to_owned(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(CSP_HEAD))
}

/// Paths the api answers itself; the single-page app never shadows them.
const API_PREFIXES: &[&str] = &["/v1", "/docs", "/metrics", "/healthz", "/readyz"];

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One file of the build.
#[derive(Clone)]
struct File {
    body: Bytes,
    content_type: &'static str,
}

/// The built dashboard, by URL path (`/index.html`, `/assets/index-3f2a.js`).
#[derive(Clone)]
pub struct Dashboard {
    files: Arc<HashMap<String, File>>,
}

/// Why the folder could not be loaded (logged once at start).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} has no index.html")]
    NoIndex(String),
}

impl Dashboard {
    /// Reads the built app from `dir`. A missing or incomplete folder is not
    /// an error for the api: it serves without a dashboard and says why.
    pub fn load_or_warn(dir: &Path) -> Option<Self> {
        match Self::load(dir) {
            Ok(d) => {
                tracing::info!(dir = %dir.display(), files = d.files.len(), "dashboard served at /");
                Some(d)
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "no dashboard at /: build it (npm ci && npm run build in web/app; ./deploy/up does) or set api.ui_dir"
                );
                None
            }
        }
    }

    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let mut files = HashMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let read_err = |source| LoadError::Read { path: d.display().to_string(), source };
            for entry in std::fs::read_dir(&d).map_err(read_err)? {
                let entry = entry.map_err(read_err)?;
                let path = entry.path();
                let kind = entry.file_type().map_err(read_err)?;
                if kind.is_dir() {
                    pending.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(dir) else { continue };
                // URL paths use '/', whatever the platform's separator.
                let url = rel.components().fold(String::new(), |mut acc, c| {
                    acc.push('/');
                    acc.push_str(&c.as_os_str().to_string_lossy());
                    acc
                });
                let body = std::fs::read(&path)
                    .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
                files.insert(url, File { body: body.into(), content_type: content_type(&path) });
            }
        }
        if !files.contains_key("/index.html") {
            return Err(LoadError::NoIndex(dir.display().to_string()));
        }
        Ok(Self { files: Arc::new(files) })
    }

    fn index(&self) -> Option<&File> {
        self.files.get("/index.html")
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

fn answer(file: &File, cache: &'static str, host: Option<&str>) -> Response {
    let mut r = file.body.clone().into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::CONTENT_SECURITY_POLICY, csp(host));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

fn unavailable() -> ApiError {
    ApiError::NotFound("dashboard_unavailable")
}

/// `GET /`: the app's page.
pub async fn index(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let d = state.dashboard.as_ref().ok_or_else(unavailable)?;
    let file = d.index().ok_or_else(unavailable)?;
    Ok(answer(file, "no-cache", host_of(&headers)))
}

/// Every path no route took: a file of the build, the app's page for one of
/// its own routes, or the api's JSON 404.
pub async fn fallback(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let host = host_of(&headers);
    let path = uri.path();
    let under_api = API_PREFIXES.iter().any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')));
    if under_api || (method != Method::GET && method != Method::HEAD) {
        return Err(ApiError::NotFound("route_not_found"));
    }
    let d = state.dashboard.as_ref().ok_or_else(unavailable)?;
    if let Some(file) = d.files.get(path) {
        let cache = if path.starts_with("/assets/") { IMMUTABLE } else { "no-cache" };
        return Ok(answer(file, cache, host));
    }
    // A missing hashed asset is a stale page asking for an old build: a 404,
    // not the page (which the browser would try to run as a script).
    if path.starts_with("/assets/") {
        return Err(ApiError::NotFound("route_not_found"));
    }
    let file = d.index().ok_or_else(unavailable)?;
    Ok(answer(file, "no-cache", host))
}

fn host_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}
