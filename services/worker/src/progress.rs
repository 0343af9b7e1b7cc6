//! Output and progress of a running job, to PROGRESS.
//!
//! The progress protocol: a job prints, on stdout, a line that starts with
//! `##fetchml ` followed by one JSON object:
//!
//! ```text
//! ##fetchml {"percent": 42}
//! ##fetchml {"metric": "loss", "value": 0.31, "step": 1200}
//! ```
//!
//! Any language can do it (`print("##fetchml", json.dumps({...}))`). Percent
//! goes to `<ns>.progress.<owner>.<job>.percent`, metrics to `...metric`, and
//! every other line (and a protocol line that does not parse) to `...log`. The
//! last value of each metric is kept and recorded with the attempt's outcome, so
//! it lands in the job's state.

use crate::executor::{LogLine, LogStream};
use async_nats::jetstream;
use bytes::Bytes;
use fetchml_events::job::{Metric, Metrics};
use fetchml_events::subject::Subjects;
use fetchml_events::{JobId, UserName};
use futures::StreamExt;
use serde_json::{Value, json};
use std::future::IntoFuture;
use tokio::sync::mpsc;
use tracing::Instrument;

pub const PREFIX: &str = "##fetchml ";
/// Distinct metrics kept per attempt; more are still streamed, not recorded.
pub const MAX_METRICS: usize = 256;
/// Progress messages published and not yet acknowledged, at most.
const MAX_UNACKED: usize = 256;

fn settle(ack: Option<Result<jetstream::publish::PublishAck, jetstream::context::PublishError>>) {
    if let Some(Err(e)) = ack {
        tracing::debug!(error = %e, "progress message not acknowledged");
    }
}

/// What one output line means.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Percent(f64),
    Metric { name: String, value: f64, step: Option<u64> },
    Log,
}

pub fn parse(line: &LogLine) -> Parsed {
    if line.stream != LogStream::Stdout {
        return Parsed::Log;
    }
    let Some(rest) = line.line.strip_prefix(PREFIX) else { return Parsed::Log };
    let Ok(v) = serde_json::from_str::<Value>(rest.trim()) else { return Parsed::Log };
    if let Some(p) = v.get("percent").and_then(Value::as_f64).filter(|p| (0.0..=100.0).contains(p)) {
        return Parsed::Percent(p);
    }
    if let Some(p) = v.get("progress").and_then(Value::as_f64).filter(|p| (0.0..=1.0).contains(p)) {
        return Parsed::Percent(p * 100.0);
    }
    let name = v.get("metric").and_then(Value::as_str);
    let value = v.get("value").and_then(Value::as_f64).filter(|x| x.is_finite());
    match (name, value) {
        (Some(n), Some(value)) if !n.is_empty() && n.len() <= 128 && !n.chars().any(char::is_control) => {
            Parsed::Metric { name: n.to_owned(), value, step: v.get("step").and_then(Value::as_u64) }
        }
        _ => Parsed::Log,
    }
}

/// Publishes lines in order until the sender side closes; returns the last
/// value of each metric.
pub fn forward(
    js: jetstream::Context,
    subjects: Subjects,
    owner: UserName,
    job: JobId,
    attempt: u32,
    mut rx: mpsc::Receiver<LogLine>,
) -> tokio::task::JoinHandle<Metrics> {
    let publish = async move {
        let mut metrics = Metrics::new();
        let mut acks = futures::stream::FuturesOrdered::new();
        while let Some(line) = rx.recv().await {
            let at = chrono::Utc::now();
            let (kind, body) = match parse(&line) {
                Parsed::Percent(p) => ("percent", json!({"job_id": job, "attempt": attempt, "percent": p, "at": at})),
                Parsed::Metric { name, value, step } => {
                    if metrics.len() < MAX_METRICS || metrics.contains_key(&name) {
                        metrics.insert(name.clone(), Metric { value, step });
                    }
                    (
                        "metric",
                        json!({"job_id": job, "attempt": attempt, "name": name, "value": value, "step": step, "at": at}),
                    )
                }
                Parsed::Log => (
                    "log",
                    json!({"job_id": job, "attempt": attempt, "stream": line.stream, "line": line.line, "at": at}),
                ),
            };
            let subject = subjects.progress(&owner, job, kind);
            // Publishes go out in order on one connection, so they are stored
            // in order; waiting for each acknowledgement before the next
            // publish capped a job's output at one broker round trip a line.
            match js.publish(subject, Bytes::from(body.to_string())).await {
                Ok(ack) => {
                    if acks.len() >= MAX_UNACKED {
                        settle(acks.next().await);
                    }
                    acks.push_back(ack.into_future());
                }
                Err(e) => tracing::debug!(error = %e, "progress message not published"),
            }
        }
        // Every line is stored before the attempt's outcome is recorded.
        while let Some(r) = acks.next().await {
            settle(Some(r));
        }
        metrics
    };
    // In the attempt's span: its lines name the job.
    tokio::spawn(publish.in_current_span())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> LogLine {
        LogLine { stream: LogStream::Stdout, line: s.into() }
    }

    #[test]
    fn protocol_lines_parse_and_everything_else_is_a_log_line() {
        assert_eq!(parse(&out(r#"##fetchml {"percent": 42}"#)), Parsed::Percent(42.0));
        assert_eq!(parse(&out(r#"##fetchml {"progress": 0.5}"#)), Parsed::Percent(50.0));
        assert_eq!(
            parse(&out(r#"##fetchml {"metric": "loss", "value": 0.3, "step": 7}"#)),
            Parsed::Metric { name: "loss".into(), value: 0.3, step: Some(7) }
        );
        assert_eq!(parse(&out(r#"##fetchml {"percent": 420}"#)), Parsed::Log);
        assert_eq!(parse(&out("##fetchml not json")), Parsed::Log);
        assert_eq!(parse(&out("epoch 1 done")), Parsed::Log);
        let err = LogLine { stream: LogStream::Stderr, line: r#"##fetchml {"percent": 1}"#.into() };
        assert_eq!(parse(&err), Parsed::Log);
    }
}
