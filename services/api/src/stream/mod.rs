//! Live streams: `GET /v1/stream` (WebSocket) and the plain-HTTP log follower.

pub mod fanout;
pub mod frames;
pub mod logs;
pub mod plan;
pub mod protocol;
pub mod session;

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use session::{Inbound, Outbound};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// Open stream connections per user, capped (`stream.max_connections_per_user`).
#[derive(Clone, Default)]
pub struct ConnectionCount(Arc<Mutex<HashMap<String, usize>>>);

struct ConnectionSlot {
    counts: ConnectionCount,
    user: String,
}

impl ConnectionCount {
    fn take(&self, user: &str, max: usize) -> Option<ConnectionSlot> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        // The slot's life is the connection's: the gauge follows it.
        metrics::counter!(fetchml_runtime::metrics::STREAM_OPENED).increment(1);
        metrics::gauge!(fetchml_runtime::metrics::STREAM_CONNECTIONS).increment(1);
        Some(ConnectionSlot { counts: self.clone(), user: user.to_owned() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        metrics::gauge!(fetchml_runtime::metrics::STREAM_CONNECTIONS).decrement(1);
        let mut g = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The WebSocket subprotocol a browser names next to its token.
pub const WS_PROTOCOL: &str = "fetchml.v1";

/// `GET /v1/stream`: authenticated at the upgrade like any request.
#[utoipa::path(get, path = "/v1/stream", tag = "streams", security(("bearer" = [])),
    description = "The WebSocket of live streams (protocol version 1, JSON text frames; see docs/streams.md). The client sends `StreamClientMessage`s (`subscribe`, `unsubscribe`, `ping`); the server answers `StreamServerMessage`s: `hello` first, then `subscribed`, `message` (and `messages`, many messages in one frame, for a subscription made with `batch: true`), `lagged`, `unsubscribed`, `error`, `pong`. Close codes: 4001 credentials revoked or expired, 4008 too slow (resume from `lagged.resume_from`), 4009 idle, 4029 too many connections for this user, 1001 server going away, 1009 frame too large.",
    params(
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "For browsers, which cannot set `Authorization` on a WebSocket: `fetchml.v1, fetchml.bearer.<session token>` (a token from `POST /v1/auth/login`, not an API key), used only when `Authorization` is absent; the server selects `fetchml.v1`"),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol; frames are `StreamClientMessage` (client) and `StreamServerMessage` (server)"),
        (status = 400, description = "Not a WebSocket upgrade request"),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    caller: Caller,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let limits = state.stream_limits.clone();
    let max_conns = state.max_stream_connections;
    let slot = state.stream_connections.take(caller.name().as_str(), max_conns);
    // The protocol limit is enforced per message with a clear error; the
    // transport refuses only what is far beyond it (closing with 1009).
    let hard = limits.max_message_bytes.saturating_mul(16);
    // A browser offering its session token as a subprotocol (see
    // auth::websocket_session) must get one of its offers back, or it drops
    // the connection: the server selects `fetchml.v1`.
    let ws = ws.max_message_size(hard).max_frame_size(hard).protocols([WS_PROTOCOL]);
    // The session stays in the request's span (request id, route) for its life.
    let span = tracing::Span::current();
    Ok(ws.on_upgrade(move |socket| async move {
        let Some(slot) = slot else {
            let mut socket = socket;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: protocol::close::TOO_MANY_CONNECTIONS,
                    reason: "too many stream connections for this user".into(),
                })))
                .await;
            return;
        };
        serve(state, caller, limits, socket).instrument(span).await;
        drop(slot);
    }))
}

async fn serve(state: AppState, caller: Caller, limits: session::Limits, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let sink = sink.with(|o: Outbound| async move {
        Ok::<_, axum::Error>(match o {
            Outbound::Text(t) => Message::Text(t.into()),
            Outbound::Ping => Message::Ping(Default::default()),
            Outbound::Close(code, reason) => Message::Close(Some(CloseFrame { code, reason: reason.into() })),
        })
    });
    let inbound = stream.map(|m| match m {
        Ok(Message::Text(t)) => Inbound::Text(t.to_string()),
        Ok(Message::Binary(_)) => Inbound::Binary,
        Ok(Message::Ping(_)) => Inbound::Ping,
        Ok(Message::Pong(_)) => Inbound::Pong,
        Ok(Message::Close(_)) => Inbound::Close,
        Err(e) if is_too_large(&e) => Inbound::TooLarge,
        Err(_) => Inbound::Close,
    });
    let shutdown = state.shutdown.clone();
    session::run(state, caller, limits, Box::pin(sink), Box::pin(inbound), shutdown).await;
}

/// Whether a read failed because the frame or message is over the transport's
/// limit (the connection is then closed with 1009 rather than dropped).
fn is_too_large(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|e| matches!(e, Error::Capacity(_)))
}
