//! `GET /v1/jobs/{id}/logs`: a job's log lines as newline-delimited JSON
//! (`{"seq", "attempt", "stream", "line", "at"}` per line), for scripts. With
//! `follow=true` it stays open and streams new lines until the job ends; with
//! `from_seq=N` it resumes after a disconnect. Same replay machinery as the
//! WebSocket: one ordered consumer, no gap, no duplicate.
//!
//! When the answer ends:
//! - a plain read: once the job's last line stored when the request came has
//!   been sent (at once if `from_seq` is past it);
//! - `follow=true`: once the job has ended *and* every line stored up to its
//!   end has been sent. The worker stores all of an attempt's lines before it
//!   records the outcome, so the job's last line, read after its end is seen,
//!   is its last line for good;
//! - always: when the client goes away, or the api shuts down (the body then
//!   simply ends; resume with `from_seq`). The reader's consumer is deleted on
//!   the server then, so an abandoned request leaves nothing behind.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::Response;
use fetchml_events::JobId;
use fetchml_eventstore::{EventStore, StartAt, StreamReader};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often a follower checks whether the job has ended.
const END_CHECK: Duration = Duration::from_millis(500);

/// The query of the logs route: `follow` (`true` or `false`) and `from_seq`.
#[derive(Debug, PartialEq)]
struct LogsQuery {
    follow: bool,
    /// The first stream sequence wanted (`None`: from the job's first line).
    from_seq: Option<u64>,
}

impl LogsQuery {
    /// Refuses what the route does not know (`unknown_parameter`) and what it
    /// cannot read, a parameter given twice included (`invalid_parameter`).
    fn parse(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let bad = |msg: String| ApiError::bad_request("invalid_parameter", msg);
        let mut q = LogsQuery { follow: false, from_seq: None };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if seen.contains(&k.as_str()) {
                return Err(bad(format!("{k}: given more than once")));
            }
            seen.push(k);
            match k.as_str() {
                "follow" => {
                    q.follow = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("follow: {v:?} is not true or false"))),
                    }
                }
                "from_seq" => {
                    q.from_seq = Some(v.parse().map_err(|_| bad(format!("from_seq: {v:?} is not a sequence")))?)
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "unknown_parameter",
                        format!("unknown query parameter {k:?} (known: follow, from_seq)"),
                    ));
                }
            }
        }
        Ok(q)
    }
}

pub async fn job_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id: JobId =
        raw_id.parse().map_err(|_| ApiError::bad_request("invalid_job_id", format!("{raw_id:?} is not a job id")))?;
    let Query(pairs) = query.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let q = LogsQuery::parse(&pairs)?;
    let (loaded, _) =
        crate::routes::jobs::authorize(&state, &caller, id, crate::policy::JobAction::Logs, &format!("job/{id}/logs"))
            .await?;
    let (Some(job), Some(job_subject)) = (loaded.state, loaded.subject) else {
        return Err(ApiError::NotFound("job_not_found"));
    };
    let subjects = state.store.subjects();
    let log_subject = subjects.progress(&job.owner, id, "log");
    // Everything before `from_seq` counts as delivered.
    let delivered = q.from_seq.map_or(0, |s| s.saturating_sub(1));
    let end = if q.follow {
        None
    } else {
        // A plain read stops at what exists now.
        Some(state.store.last_on_progress_subject(&log_subject).await?.unwrap_or(0))
    };
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(256);
    if end.is_none_or(|e| delivered < e) {
        let from = q.from_seq.map_or(StartAt::Beginning, StartAt::Sequence);
        let events = state.store.read_stream(&subjects.progress_stream(), vec![log_subject.clone()], from).await?;
        let follower = Follower {
            store: state.store.clone(),
            id,
            job_subject,
            log_subject,
            delivered,
            end,
            tx,
            shutdown: state.shutdown.clone(),
        };
        // In the request's span: the follower's lines carry its request id.
        tokio::spawn(follower.run(events).in_current_span());
    }
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(|e| ApiError::Internal(e.into()))
}

/// Sends one job's log lines to one response body.
struct Follower {
    store: EventStore,
    id: JobId,
    job_subject: String,
    log_subject: String,
    /// The last sequence sent (or skipped by `from_seq`).
    delivered: u64,
    /// The sequence of the job's last line, once known: done when it is sent.
    end: Option<u64>,
    tx: mpsc::Sender<Result<String, std::io::Error>>,
    shutdown: CancellationToken,
}

impl Follower {
    async fn run(mut self, mut events: StreamReader) {
        let mut check = tokio::time::interval(END_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.end.is_some_and(|e| self.delivered >= e) {
                return;
            }
            tokio::select! {
                // The client left: stop at once, whatever else is ready.
                biased;
                _ = self.tx.closed() => return,
                _ = self.shutdown.cancelled() => return,
                ev = events.next() => {
                    let Some(Ok(ev)) = ev else { return };
                    let mut v: Value = serde_json::from_slice(&ev.payload).unwrap_or(Value::Null);
                    v["seq"] = json!(ev.seq);
                    if self.tx.send(Ok(format!("{v}\n"))).await.is_err() {
                        return;
                    }
                    self.delivered = ev.seq;
                    // Past the end and nothing else stored: a line that aged
                    // out of PROGRESS must not keep the read open.
                    if self.end.is_some() && ev.pending == Some(0) {
                        return;
                    }
                }
                // The first check is immediate: a job that has already ended
                // gets its end at once, and its stored lines are still sent.
                _ = check.tick(), if self.end.is_none() => {
                    match self.job_end().await {
                        Ok(end) => self.end = end,
                        Err(e) => tracing::debug!(job = %self.id, error = %e, "log follower: cannot read the job yet"),
                    }
                }
            }
        }
    }

    /// `Some(last line's sequence, 0 if none)` once the job has ended. Read in
    /// this order: the job's end first, then its last line.
    async fn job_end(&self) -> Result<Option<u64>, fetchml_eventstore::StoreError> {
        let job = self.store.load_job_at(self.id, &self.job_subject).await?;
        if !job.state.is_some_and(|s| s.status.is_terminal()) {
            return Ok(None);
        }
        Ok(Some(self.store.last_on_progress_subject(&self.log_subject).await?.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &[(&str, &str)]) -> Result<LogsQuery, (axum::http::StatusCode, &'static str)> {
        let pairs: Vec<(String, String)> = q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LogsQuery::parse(&pairs).map_err(|e| e.status_and_code())
    }

    #[test]
    fn the_logs_query_takes_follow_and_from_seq_and_nothing_else() {
        assert_eq!(parse(&[]), Ok(LogsQuery { follow: false, from_seq: None }));
        assert_eq!(parse(&[("follow", "true"), ("from_seq", "7")]), Ok(LogsQuery { follow: true, from_seq: Some(7) }));
        assert_eq!(parse(&[("follow", "false")]), Ok(LogsQuery { follow: false, from_seq: None }));
        let bad = Err((axum::http::StatusCode::BAD_REQUEST, "invalid_parameter"));
        assert_eq!(parse(&[("follow", "maybe")]), bad);
        assert_eq!(parse(&[("follow", "")]), bad);
        assert_eq!(parse(&[("follow", "TRUE")]), bad);
        assert_eq!(parse(&[("from_seq", "-1")]), bad);
        assert_eq!(parse(&[("from_seq", "1"), ("from_seq", "2")]), bad);
        assert_eq!(parse(&[("foo", "1")]), Err((axum::http::StatusCode::BAD_REQUEST, "unknown_parameter")));
    }
}
