//! The client of the bench's submit loops: one keep-alive HTTP/1 connection
//! per concurrent client, each request's head and body made once.
//!
//! Why not reqwest, as in the rest of the bench: the load generator shares the
//! two cores with what it measures, so its CPU per job lowers every end-to-end
//! figure. With reqwest it spent 35-41 µs a single-submitted job (80 on a
//! slower host), a tenth of all processes together, mostly on what a loop of
//! identical requests does not need: the URL parsed again (IDNA included), a
//! connection pool, a JSON tree per answer (twenty-second session;
//! BENCHMARKS.md). The api sees the same requests either way: a bearer token,
//! a JSON body, keep-alive.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// One connection to the api, and the head every request on it carries.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    authorization: HeaderValue,
}

impl Connection {
    /// Connects to `url` (`http://host:port`, what the bench's api listens on),
    /// sending `key` as the bearer token of every request.
    pub async fn open(url: &str, key: &str) -> anyhow::Result<Self> {
        let authority = url.strip_prefix("http://").unwrap_or(url).trim_end_matches('/');
        let stream = tokio::net::TcpStream::connect(authority).await?;
        // As reqwest does: a request is one write, nothing to wait for.
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: HeaderValue::from_str(authority)?,
            authorization: HeaderValue::from_str(&format!("Bearer {key}"))?,
        })
    }

    /// `POST path` with a JSON `body`; the answer's status and body.
    pub async fn post_json(&mut self, path: &'static str, body: Bytes) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let request = Request::post(path)
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let answer = self.sender.send_request(request).await?;
        let status = answer.status();
        Ok((status, answer.into_body().collect().await?.to_bytes()))
    }
}
