//! The stream protocol (version 1), as JSON text frames. See docs/streams.md.

use chrono::{DateTime, Utc};
use fetchml_events::JobId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const PROTOCOL_VERSION: u32 = 1;

/// Close codes (4000-4999 are the application's).
pub mod close {
    /// The credential the connection was opened with was revoked (logout, or
    /// its key or user removed from the users file), its user's role or groups
    /// changed, or its session expired: authenticate again and reconnect.
    pub const REVOKED: u16 = 4001;
    /// The client fell too far behind; resume from the `lagged` message's `resume_from`.
    pub const TOO_SLOW: u16 = 4008;
    /// No frame from the client (not even a pong) within the idle timeout.
    pub const IDLE: u16 = 4009;
    /// Too many connections for this user.
    pub const TOO_MANY_CONNECTIONS: u16 = 4029;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame larger than the maximum.
    pub const TOO_BIG: u16 = 1009;
}

/// Which stream a subscription reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Lifecycle events (the audit log).
    Events,
    /// Logs, metrics and percent done of running jobs.
    Progress,
}

/// What a subscription covers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = StreamTarget)]
pub enum Target {
    Job(JobId),
    Jobs(Vec<JobId>),
    Experiment(String),
    Pool(String),
    /// Everything the caller's role may see.
    All,
}

/// Where a subscription starts. Sequences are per stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = StreamFrom)]
pub enum From {
    Beginning,
    /// Only what is appended from now on.
    #[default]
    Live,
    /// From this stream sequence, inclusive (resume with the last seen + 1).
    Seq(u64),
    Time(DateTime<Utc>),
}

/// What a client sends on `GET /v1/stream`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = StreamClientMessage)]
pub enum ClientMsg {
    Subscribe {
        id: String,
        stream: StreamKind,
        target: Target,
        #[serde(default)]
        from: From,
        /// Progress only: any of `log`, `metric`, `percent` (default: all the
        /// caller may see).
        #[serde(default)]
        kinds: Option<Vec<String>>,
        /// Whether this client takes `messages` frames (many messages of the
        /// subscription in one frame) instead of one `message` frame each.
        /// Default false, so clients written before batching keep working.
        #[serde(default)]
        batch: bool,
    },
    Unsubscribe {
        id: String,
    },
    Ping {},
}

/// What the server sends on `GET /v1/stream`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = StreamServerMessage)]
pub enum ServerMsg {
    /// The first message of every connection.
    Hello {
        protocol: u32,
        user: String,
        max_subscriptions: usize,
        max_message_bytes: usize,
    },
    Subscribed {
        id: String,
        stream: StreamKind,
    },
    Unsubscribed {
        id: String,
    },
    /// One stored event (`events`) or progress message (`progress`) of subscription `sub`.
    Message {
        sub: String,
        stream: StreamKind,
        seq: u64,
        subject_kind: String,
        #[schema(value_type = Object)]
        data: Value,
    },
    /// Several messages of subscription `sub` in stream order, for a
    /// subscription made with `batch: true` (which may also get single
    /// `message` frames). At most `max_message_bytes` long unless its one item
    /// is longer.
    Messages {
        sub: String,
        stream: StreamKind,
        items: Vec<Item>,
    },
    /// The client fell behind; the connection closes with 4008.
    Lagged {
        sub: String,
        stream: StreamKind,
        resume_from: u64,
    },
    Error {
        id: Option<String>,
        #[schema(value_type = String)]
        code: &'static str,
        message: String,
    },
    Pong {},
}

/// One message of a `messages` frame: what a `message` frame carries besides
/// `sub` and `stream`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StreamItem)]
pub struct Item {
    pub seq: u64,
    pub subject_kind: String,
    #[schema(value_type = Object)]
    pub data: Value,
}

impl ServerMsg {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"encoding"}"#.into())
    }

    pub fn error(id: Option<String>, code: &'static str, message: impl Into<String>) -> Self {
        ServerMsg::Error { id, code, message: message.into() }
    }
}
