//! The WebSocket protocol of `GET /v1/stream` (docs/streams.md) as a client
//! sees it: what a client sends and what it receives, for the CLI and other
//! Rust clients. The api's own definitions (`services/api/src/stream/
//! protocol.rs`) are the ones the OpenAPI description shows; these mirror
//! them field for field, and the CLI's tests run them against the live api.

use chrono::{DateTime, Utc};
use fetchml_events::JobId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which stream a subscription reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    /// Lifecycle events.
    Events,
    /// Log lines, metrics and percent done.
    Progress,
}

/// What a subscription covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamTarget {
    Job(JobId),
    Jobs(Vec<JobId>),
    Experiment(String),
    Pool(String),
    All,
}

/// Where a subscription starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamFrom {
    Beginning,
    Live,
    /// From this sequence, inclusive: resume with the last seen + 1.
    Seq(u64),
    Time(DateTime<Utc>),
}

/// A message from the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StreamRequest {
    Subscribe {
        id: String,
        stream: StreamName,
        target: StreamTarget,
        from: StreamFrom,
        /// Progress only: `log`, `metric`, `percent`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kinds: Option<Vec<String>>,
        /// Take `messages` frames (many messages in one) as well as `message`
        /// frames; left out when false, as servers before batching expect.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batch: bool,
    },
    Unsubscribe {
        id: String,
    },
    Ping {},
}

/// A message from the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamFrame {
    Hello {
        protocol: u32,
        user: String,
        max_subscriptions: usize,
        max_message_bytes: usize,
    },
    Subscribed {
        id: String,
        stream: StreamName,
    },
    Unsubscribed {
        id: String,
    },
    /// One stored event (`events`: the envelope, see [`crate::StoredEvent`])
    /// or progress message (`progress`: [`ProgressLog`], [`ProgressMetric`]
    /// or [`ProgressPercent`] by `subject_kind`).
    Message {
        sub: String,
        stream: StreamName,
        seq: u64,
        subject_kind: String,
        data: Value,
    },
    /// Several messages of a subscription made with `batch: true`, in order.
    Messages {
        sub: String,
        stream: StreamName,
        items: Vec<StreamItem>,
    },
    Lagged {
        sub: String,
        stream: StreamName,
        resume_from: u64,
    },
    Error {
        id: Option<String>,
        code: String,
        message: String,
    },
    Pong {},
}

/// One message of a `messages` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamItem {
    pub seq: u64,
    pub subject_kind: String,
    pub data: Value,
}

/// A progress message of kind `log`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressLog {
    pub job_id: JobId,
    pub attempt: u32,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
    pub at: DateTime<Utc>,
}

/// A progress message of kind `metric`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressMetric {
    pub job_id: JobId,
    pub attempt: u32,
    pub name: String,
    pub value: f64,
    #[serde(default)]
    pub step: Option<u64>,
    pub at: DateTime<Utc>,
}

/// A progress message of kind `percent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressPercent {
    pub job_id: JobId,
    pub attempt: u32,
    pub percent: f64,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let id: JobId = "01a20adb-3701-713e-9175-763a289b5a9f".parse().expect("id");
        let sub = StreamRequest::Subscribe {
            id: "p".into(),
            stream: StreamName::Progress,
            target: StreamTarget::Job(id),
            from: StreamFrom::Seq(1042),
            kinds: Some(vec!["metric".into()]),
            batch: false,
        };
        assert_eq!(
            serde_json::to_value(&sub).expect("json"),
            serde_json::json!({"op": "subscribe", "id": "p", "stream": "progress",
                "target": {"job": "01a20adb-3701-713e-9175-763a289b5a9f"}, "from": {"seq": 1042}, "kinds": ["metric"]})
        );
        let all = serde_json::to_value(StreamTarget::All).expect("json");
        assert_eq!(all, serde_json::json!("all"));
        let frame: StreamFrame =
            serde_json::from_str(r#"{"type":"lagged","sub":"e","stream":"events","resume_from":7}"#).expect("frame");
        assert_eq!(frame, StreamFrame::Lagged { sub: "e".into(), stream: StreamName::Events, resume_from: 7 });
        let frame: StreamFrame = serde_json::from_str(
            r#"{"type":"messages","sub":"e","stream":"events","items":[{"seq":8,"subject_kind":"job_queued","data":{}}]}"#,
        )
        .expect("frame");
        let StreamFrame::Messages { items, .. } = frame else { panic!("{frame:?}") };
        assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [8]);
    }
}
