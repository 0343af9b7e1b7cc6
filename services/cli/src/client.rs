//! The api client: typed requests and answers (`fetchml-api-types`), one
//! error per failure with its exit code, TLS, and the stream's WebSocket.
//! The credential is sent as `Authorization: Bearer` marked sensitive, so it
//! appears in no debug output; no message `ml` prints contains it.

use crate::config::Target;
use crate::error::{CliError, Result};
use fetchml_api_types::{ErrorBody, ErrorDetail};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Api {
    pub base: String,
    http: reqwest::Client,
    /// No overall timeout: followed logs run as long as the job.
    streaming: reqwest::Client,
    bearer: Option<HeaderValue>,
    missing: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Api {
    pub fn new(target: &Target) -> Result<Self> {
        let https = target.api.starts_with("https://");
        if !https && !target.api.starts_with("http://") {
            return Err(CliError::usage(format!(
                "--api {:?}: expected an http:// or https:// URL, like {}",
                target.api,
                crate::config::DEFAULT_API
            )));
        }
        reqwest::Url::parse(&target.api).map_err(|e| CliError::usage(format!("--api {:?}: {e}", target.api)))?;
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
        let build = |timeout: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("ml/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().map_err(|e| CliError::local("HTTP client", e))
        };
        Ok(Api {
            base: target.api.clone(),
            http: build(Some(Duration::from_secs(70)))?,
            streaming: build(None)?,
            bearer,
            missing: target.missing.clone(),
            tls,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth_headers(&self, required: bool) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        match &self.bearer {
            Some(v) => {
                h.insert(AUTHORIZATION, v.clone());
            }
            None if required => return Err(CliError::NotLoggedIn(self.missing.clone())),
            None => {}
        }
        Ok(h)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.http.get(self.url(path)).headers(self.auth_headers(true)?);
        self.call(req).await
    }

    pub async fn get_query<T: DeserializeOwned, Q: Serialize + ?Sized>(&self, path: &str, q: &Q) -> Result<T> {
        let req = self.http.get(self.url(path)).headers(self.auth_headers(true)?).query(q);
        self.call(req).await
    }

    /// A POST with a JSON body (or none), extra headers, and a query string.
    pub async fn post<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: Option<&B>,
        extra: &[(&str, String)],
    ) -> Result<T> {
        let mut req = self.http.post(self.url(path)).headers(self.auth_headers(true)?);
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in extra {
            req = req.header(*k, v);
        }
        self.call(req).await
    }

    /// `POST /v1/auth/login` sends the key in the body, not as a credential.
    pub async fn login(&self, api_key: &str) -> Result<fetchml_api_types::LoginAnswer> {
        let body = fetchml_api_types::LoginRequest { api_key: api_key.to_owned() };
        let req = self.http.post(self.url("/v1/auth/login")).json(&body);
        self.call(req).await
    }

    /// A POST whose success has no body (204).
    pub async fn post_no_content(&self, path: &str) -> Result<()> {
        let req = self.http.post(self.url(path)).headers(self.auth_headers(true)?);
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Err(api_error(status.as_u16(), &body))
    }

    /// A streaming GET (NDJSON logs): the response once its head said success.
    pub async fn stream<Q: Serialize + ?Sized>(&self, path: &str, q: &Q) -> Result<reqwest::Response> {
        let req = self.streaming.get(self.url(path)).headers(self.auth_headers(true)?).query(q);
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        Err(api_error(status.as_u16(), &body))
    }

    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CliError::Protocol { url: self.base.clone(), cause: format!("{status}: {e}") })
    }

    /// A transport failure as one line: what was tried and the root cause.
    pub fn transport(&self, e: reqwest::Error) -> CliError {
        let mut cause = root_cause(&e);
        if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            cause.push_str(" (for an api behind a private CA, pass --ca-file or set FETCHML_CA_FILE)");
        }
        if e.is_timeout() {
            cause = format!("no answer in time ({cause})");
        }
        CliError::Unreachable { url: self.base.clone(), cause }
    }

    /// Opens `GET /v1/stream` (ws or wss, with the same TLS and credential).
    pub async fn websocket(&self) -> Result<WebSocket> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let ws_url = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}/v1/stream")
        } else {
            format!("ws://{}/v1/stream", self.base.trim_start_matches("http://"))
        };
        let mut request = ws_url.as_str().into_client_request().map_err(|e| CliError::usage(format!("{e}")))?;
        if let Some(v) = &self.bearer {
            request.headers_mut().insert(AUTHORIZATION, v.clone());
        } else {
            return Err(CliError::NotLoggedIn(self.missing.clone()));
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        let connect = tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector));
        match tokio::time::timeout(Duration::from_secs(15), connect).await {
            Err(_) => {
                Err(CliError::Unreachable { url: self.base.clone(), cause: "the stream did not open in 15 s".into() })
            }
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let status = resp.status().as_u16();
                Err(api_error(status, resp.body().as_deref().unwrap_or_default()))
            }
            Ok(Err(e)) => Err(CliError::Unreachable { url: self.base.clone(), cause: root_cause(&e) }),
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
