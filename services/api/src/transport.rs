//! The HTTP transport: accepting connections and serving HTTP/1.1 on them.
//!
//! `axum::serve` has no timeouts and no connection limit, so one client could
//! hold connections open forever (partial headers, a body that never ends,
//! silence) until the process runs out of file descriptors. Here:
//!
//! - **Connection limit**: at most `api.max_connections` connections are open
//!   at once, WebSockets included (the permit lives as long as the socket, also
//!   after an upgrade). Beyond it the listener stops accepting: new connections
//!   wait in the kernel's listen backlog until one closes, they are not refused
//!   with an error.
//! - **Header timeout** (`api.header_read_timeout_ms`): a request's headers must
//!   arrive within it, from the connection's start or from the end of the
//!   previous response, so it also bounds an idle keep-alive connection. hyper
//!   closes the connection when it passes.
//! - **Body timeout** (`api.body_timeout_ms`) and **early 413**: see [`edge`],
//!   the router's outermost layer.
//! - **Graceful drain**: on shutdown the listener stops accepting, idle
//!   connections close, and requests in flight finish (a following logs
//!   request ends too); WebSocket sessions close themselves with 1001 on the
//!   same signal.
//! - **Lingering close**: a closed connection shuts its side down and drains
//!   what the peer still sends for up to 2 s, so that our last answer is not
//!   destroyed by a TCP reset (see `Connection`'s `Drop`).
//!
//! Every connection gets `TCP_NODELAY` (responses are written whole: Nagle
//! would only hold them) and its peer address as `ConnectInfo<SocketAddr>`.

use crate::error::ApiError;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The transport's limits (`api.*` in the settings).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

impl HttpLimits {
    pub fn from_settings(api: &fetchml_runtime::settings::ApiSettings) -> Self {
        Self {
            max_body_bytes: api.max_body_bytes,
            header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
            body_timeout: Duration::from_millis(api.body_timeout_ms),
            max_connections: api.max_connections.max(1),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self::from_settings(&fetchml_runtime::settings::ApiSettings::default())
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then stops accepting
/// and waits for the open connections to finish (idle ones close at once).
pub async fn serve(listener: TcpListener, app: Router, limits: HttpLimits, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Every connection task holds a receiver; `closed()` resolves when all are gone.
    let (close_tx, close_rx) = watch::channel(());
    loop {
        // Take a slot before accepting: at the limit, new connections wait in
        // the backlog instead of being accepted and left unserved.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed; be safe anyway
            },
            _ = stop.cancelled() => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(Connection { tcp: Some(tcp), permit: Some(permit), closing: false });
        let service = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            hyper::service::Service::call(&service, req)
        });
        let (stop, close_rx, header_read_timeout) = (stop.clone(), close_rx.clone(), limits.header_read_timeout);
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout).keep_alive(true);
            let conn = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(conn);
            let mut draining = false;
            loop {
                tokio::select! {
                    done = conn.as_mut() => {
                        if let Err(e) = done {
                            tracing::debug!(peer = %remote, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

/// Per-connection accept errors (the peer left before we accepted) are
/// nothing; others (out of file descriptors) are logged and retried after a
/// pause rather than in a hot loop.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A TCP connection holding its slot of the connection limit. It is kept by
/// hyper, and after an upgrade by the WebSocket, so the slot is free exactly
/// when the socket is closed.
struct Connection {
    tcp: Option<TcpStream>,
    permit: Option<OwnedSemaphorePermit>,
    /// Our side is shut down already (hyper closed the connection).
    closing: bool,
}

impl Connection {
    fn tcp(&mut self) -> io::Result<&mut TcpStream> {
        self.tcp.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.closing = true;
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.tcp() {
            Ok(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }
}

impl Drop for Connection {
    /// A socket closed while the peer is still sending (an early 413, a body
    /// timeout, a WebSocket client's pings) would answer its data with a
    /// reset, which can destroy our last answer before the peer reads it. So
    /// our side is shut down (after what is queued) and the rest is read and
    /// discarded for a moment, bounded in time and bytes, as web servers'
    /// "lingering close" does; the slot is held until then.
    fn drop(&mut self) {
        let (Some(mut tcp), Some(permit)) = (self.tcp.take(), self.permit.take()) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let shut = self.closing;
        rt.spawn(async move {
            let linger = async {
                if !shut {
                    let _ = tcp.shutdown().await;
                }
                let mut buf = [0u8; 8192];
                let mut left: usize = 1 << 20;
                while left > 0 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, linger).await;
            drop(permit);
        });
    }
}

/// How long a closed connection is drained at most (see `Connection`'s `Drop`).
const LINGER: Duration = Duration::from_secs(2);

/// The router's outermost layer: the request-level rules of the transport.
///
/// - A `Content-Length` over `max_body_bytes` is answered 413 `body_too_large`
///   at once, before the body is read; with `Expect: 100-continue` no
///   `100 Continue` is sent (hyper sends it only when the body is first read).
/// - The body must arrive within `body_timeout` of the headers: a stalled
///   (slow-loris) body gets 408 `body_timeout`, and the connection is closed
///   (its body was not read to the end).
/// - The transport's plain-text answers (413 from the body limit of a chunked
///   body, 405 from the router) become the JSON error format, `Allow` kept.
pub async fn edge(limits: Arc<HttpLimits>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return close(ApiError::BodyTooLarge(limits.max_body_bytes).into_response());
    }
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = if req.body().is_end_stream() {
        req
    } else {
        let (parts, body) = req.into_parts();
        Request::from_parts(parts, deadline_body(body, limits.body_timeout, timed_out.clone()))
    };
    let response = next.run(req).await;
    if timed_out.load(Ordering::Acquire) {
        return close(ApiError::BodyTimeout.into_response());
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !is_json => {
            close(ApiError::BodyTooLarge(limits.max_body_bytes).into_response())
        }
        StatusCode::METHOD_NOT_ALLOWED if !is_json => {
            let mut answer = ApiError::MethodNotAllowed.into_response();
            if let Some(allow) = response.headers().get(header::ALLOW) {
                answer.headers_mut().insert(header::ALLOW, allow.clone());
            }
            answer
        }
        _ => response,
    }
}

/// Says the connection ends after this answer (its body is left unread).
fn close(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `body`, failing with [`BodyTimedOut`] (and setting `timed_out`) if it has
/// not ended within `within`.
fn deadline_body(body: Body, within: Duration, timed_out: Arc<AtomicBool>) -> Body {
    Body::new(DeadlineBody { inner: body, deadline: tokio::time::Instant::now() + within, timer: None, timed_out })
}

pin_project_lite::pin_project! {
    /// A body with a deadline. Its timer is made only when the body first
    /// has nothing to give: most bodies have arrived with their headers, and
    /// a timer per request is a cost every request would pay.
    struct DeadlineBody {
        #[pin]
        inner: Body,
        deadline: tokio::time::Instant,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        timed_out: Arc<AtomicBool>,
    }
}

impl HttpBody for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.timed_out.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep_until(*this.deadline)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => {
                this.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    fn app(limits: HttpLimits) -> Router {
        let limits = Arc::new(limits);
        Router::new()
            .route("/echo", post(|b: axum::body::Bytes| async move { b }))
            .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
            .layer(axum::middleware::from_fn(move |req, next| edge(limits.clone(), req, next)))
    }

    /// Calls the router as a connection would (no `tower::ServiceExt` here).
    async fn call(app: Router, req: Request) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
        let svc = TowerToHyperService::new(app);
        let r = match hyper::service::Service::call(&svc, req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let (status, headers) = (r.status(), r.headers().clone());
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null), headers)
    }

    fn limits() -> HttpLimits {
        HttpLimits { max_body_bytes: 1024, ..HttpLimits::default() }
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        // The body never ends: answering at all shows it was not read.
        let (_tx, rx) = futures::channel::mpsc::unbounded::<Result<axum::body::Bytes, io::Error>>();
        let req = Request::post("/echo").header("content-length", "1073741824").body(Body::from_stream(rx)).unwrap();
        let (status, body, headers) = call(app(limits()), req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "body_too_large");
        assert_eq!(headers[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn an_undeclared_body_over_the_limit_gets_the_json_413() {
        let req = Request::post("/echo").body(Body::from_stream(futures::stream::iter([Ok::<_, io::Error>(
            axum::body::Bytes::from(vec![b'x'; 4096]),
        )])));
        let (status, body, _) = call(app(limits()), req.unwrap()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "body_too_large");
    }

    #[tokio::test]
    async fn a_body_that_stalls_gets_408() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<axum::body::Bytes, io::Error>>();
        tx.unbounded_send(Ok(axum::body::Bytes::from_static(b"{"))).unwrap();
        let req = Request::post("/echo").header("content-length", "100").body(Body::from_stream(rx)).unwrap();
        let quick = HttpLimits { body_timeout: Duration::from_millis(50), ..limits() };
        let (status, body, headers) = call(app(quick), req).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"]["code"], "body_timeout");
        assert_eq!(headers[header::CONNECTION], "close");
        drop(tx);
    }

    #[tokio::test]
    async fn a_wrong_method_gets_the_json_405_with_allow() {
        let req = Request::get("/echo").body(Body::empty()).unwrap();
        let (status, body, headers) = call(app(limits()), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert_eq!(headers[header::ALLOW], "POST");
    }
}
