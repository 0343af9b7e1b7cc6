//! The api client: typed requests and answers (`fetchml-api-types`), one
//! error per failure with its exit code, TLS, and the stream's WebSocket.
//!
//! HTTP/1.1 over hyper's connection API, one connection per request: a CLI
//! makes a handful of requests, and owning the connection keeps TLS (rustls
//! with the ring provider, `--ca-file`) entirely in this crate, with no TLS
//! feature switched on for the workspace's other HTTP clients. The credential
//! is sent as `Authorization: Bearer`, marked sensitive; no message `ml`
//! prints contains it.

use crate::config::Target;
use crate::error::{CliError, Result};
use bytes::Bytes;
use fetchml_api_types::{ErrorBody, ErrorDetail};
use http_body_util::{BodyExt as _, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A body being received (followed logs).
pub type Incoming = hyper::body::Incoming;

/// How long an ordinary request may take, answer included (the api's own
/// request timeout is 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(70);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Api {
    /// As given, without a trailing slash (for messages).
    pub base: String,
    https: bool,
    host: String,
    port: u16,
    /// The URL's path, prefixed to every request's (an api under a prefix).
    prefix: String,
    bearer: Option<HeaderValue>,
    missing: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    pub fn new(target: &Target) -> Result<Self> {
        let bad = |why: &str| {
            CliError::usage(format!(
                "--api {:?}: {why}; expected an http:// or https:// URL, like {}",
                target.api,
                crate::config::DEFAULT_API
            ))
        };
        let uri: hyper::Uri = target.api.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("not http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let tls = crate::tls::client_config(https, target.ca_file.as_deref())?;
        let bearer = match &target.credential {
            Some(c) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", c.secret())).map_err(|_| {
                    CliError::usage("the API key or token holds characters an HTTP header cannot carry")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Api { base: target.api.clone(), https, host, port, prefix, bearer, missing: target.missing.clone(), tls })
    }

    fn unreachable(&self, cause: String) -> CliError {
        let mut cause = cause;
        if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            cause.push_str(" (for an api behind a private CA, pass --ca-file or set FETCHML_CA_FILE)");
        }
        CliError::Unreachable { url: self.base.clone(), cause }
    }

    /// A failure while sending or receiving, as one line.
    pub fn transport(&self, e: &(dyn std::error::Error + 'static)) -> CliError {
        self.unreachable(root_cause(e))
    }

    /// A fresh connection: TCP, TLS for https, the HTTP/1.1 handshake.
    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.transport(&e))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if self.https {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| CliError::usage(format!("--api {:?}: not a TLS server name", self.base)))?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.transport(&e))?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| self.transport(&e))?;
            // Drives the connection; ends with it.
            tokio::spawn(conn);
            Ok(sender)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| self.unreachable(format!("no connection within {}s", CONNECT_TIMEOUT.as_secs())))?
    }

    /// Sends one request; the answer's head.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, String)],
        auth: bool,
    ) -> Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, self.host_header())
            .header(header::USER_AGENT, concat!("ml/", env!("CARGO_PKG_VERSION")))
            .header(header::ACCEPT, "application/json");
        if auth {
            match &self.bearer {
                Some(v) => req = req.header(header::AUTHORIZATION, v.clone()),
                None => return Err(CliError::NotLoggedIn(self.missing.clone())),
            }
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::usage(format!("cannot make the request: {e}")))?;
        let mut sender = self.connect().await?;
        sender.send_request(req).await.map_err(|e| self.transport(&e))
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        match (self.https, self.port) {
            (true, 443) | (false, 80) => host,
            (_, p) => format!("{host}:{p}"),
        }
    }

    /// One request and its whole answer, within [`REQUEST_TIMEOUT`]; an
    /// error status becomes the api's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, String)],
        auth: bool,
    ) -> Result<T> {
        let exchange = async {
            let resp = self.send(method, path, body, extra, auth).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.map_err(|e| self.transport(&e))?.to_bytes();
            Ok::<_, CliError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))??;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &bytes));
        }
        let bytes = if status == 204 { Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::Protocol { url: self.base.clone(), cause: format!("{status}: {e}") })
    }

    fn json<B: Serialize + ?Sized>(body: &B) -> Result<Vec<u8>> {
        serde_json::to_vec(body).map_err(|e| CliError::local("request body", e))
    }

    fn with_query<Q: Serialize + ?Sized>(path: &str, q: &Q) -> Result<String> {
        let qs = serde_urlencoded::to_string(q).map_err(|e| CliError::usage(format!("query string: {e}")))?;
        Ok(if qs.is_empty() { path.to_owned() } else { format!("{path}?{qs}") })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None, &[], true).await
    }

    pub async fn get_query<T: DeserializeOwned, Q: Serialize + ?Sized>(&self, path: &str, q: &Q) -> Result<T> {
        self.call(Method::GET, &Self::with_query(path, q)?, None, &[], true).await
    }

    /// A POST with a JSON body (or none) and extra headers.
    pub async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: Option<&B>,
        extra: &[(&str, String)],
    ) -> Result<T> {
        let body = body.map(Self::json).transpose()?;
        self.call(Method::POST, path, body, extra, true).await
    }

    /// `POST /v1/auth/login` sends the key in the body, not as a credential.
    pub async fn login(&self, api_key: &str) -> Result<fetchml_api_types::LoginAnswer> {
        let body = Self::json(&fetchml_api_types::LoginRequest { api_key: api_key.to_owned() })?;
        self.call(Method::POST, "/v1/auth/login", Some(body), &[], false).await
    }

    /// A POST whose success has no body (204).
    pub async fn post_no_content(&self, path: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::POST, path, None, &[], true).await.map(|_| ())
    }

    /// A streaming GET (NDJSON logs): the body once the head said success.
    /// No overall timeout: followed logs last as long as the job.
    pub async fn stream<Q: Serialize + ?Sized>(&self, path: &str, q: &Q) -> Result<Incoming> {
        let path = Self::with_query(path, q)?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.send(Method::GET, &path, None, &[], true))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))??;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp.into_body());
        }
        let bytes = resp.into_body().collect().await.map_err(|e| self.transport(&e))?.to_bytes();
        Err(api_error(status, &bytes))
    }

    /// Opens `GET /v1/stream` (ws or wss, with the same TLS and credential).
    pub async fn websocket(&self) -> Result<WebSocket> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let ws_url =
            format!("{}://{}{}/v1/stream", if self.https { "wss" } else { "ws" }, self.host_header(), self.prefix);
        let mut request = ws_url.as_str().into_client_request().map_err(|e| CliError::usage(format!("{e}")))?;
        match &self.bearer {
            Some(v) => {
                request.headers_mut().insert(header::AUTHORIZATION, v.clone());
            }
            None => return Err(CliError::NotLoggedIn(self.missing.clone())),
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector));
        match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Err(_) => Err(self.unreachable("the stream did not open within 15s".into())),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                Err(api_error(status, resp.body().as_deref().unwrap_or_default()))
            }
            Ok(Err(e)) => Err(self.transport(&e)),
        }
    }
}

/// An error answer as a [`CliError`]; a body that is not the api's error
/// shape (a proxy's page) still keeps its status.
pub fn api_error(status: u16, body: &[u8]) -> CliError {
    let detail = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error,
        Err(_) => ErrorDetail {
            code: format!("http_{status}"),
            field: None,
            message: "the answer is not a fetchml error (is a proxy in between, or is this not a fetchml api?)".into(),
        },
    };
    let hint = match detail.code.as_str() {
        "read_model_unavailable" => Some("the api's database is down; commands still work, lists come back with it"),
        "too_many_attempts" => Some("too many failed attempts from this address; wait a minute"),
        "idempotency_key_reused" => Some("this key already queued a different request; pick a new --idempotency-key"),
        _ => None,
    };
    CliError::Api { status, detail, hint }
}

/// The innermost cause of an error chain, which names what failed (refused
/// connection, unknown CA), without the outer layers' repetition.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
