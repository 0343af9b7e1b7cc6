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
use crate::routes::body::{JobPath, Params};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use fetchml_api_types::{ErrorBody, LogLine, LogsQuery};
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

#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs", security(("bearer" = [])), params(("id" = JobId, Path, description = "The job id (lowercase hyphenated UUID)"), LogsQuery), responses(
    (status = 200, description = "The job's log lines as NDJSON, one `LogLine` per line", content_type = "application/x-ndjson", body = LogLine),
    (status = 400, description = "`invalid_job_id`, `invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden`", body = ErrorBody),
    (status = 404, description = "`job_not_found`", body = ErrorBody),
))]
pub async fn job_logs(
    State(state): State<AppState>,
    caller: Caller,
    JobPath(id): JobPath,
    Params(q): Params<LogsQuery>,
) -> Result<Response, ApiError> {
    let follow = q.follow.unwrap_or(false);
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
    let end = if follow {
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

    fn parse(q: &str) -> Result<LogsQuery, (axum::http::StatusCode, &'static str)> {
        crate::routes::body::query::<LogsQuery>(q).map_err(|e| e.status_and_code())
    }

    #[test]
    fn the_logs_query_takes_follow_and_from_seq_and_nothing_else() {
        assert_eq!(parse(""), Ok(LogsQuery { follow: None, from_seq: None }));
        assert_eq!(parse("follow=true&from_seq=7"), Ok(LogsQuery { follow: Some(true), from_seq: Some(7) }));
        assert_eq!(parse("follow=false"), Ok(LogsQuery { follow: Some(false), from_seq: None }));
        let bad = Err((axum::http::StatusCode::BAD_REQUEST, "invalid_parameter"));
        assert_eq!(parse("follow=maybe"), bad);
        assert_eq!(parse("follow="), bad);
        assert_eq!(parse("follow=TRUE"), bad);
        assert_eq!(parse("from_seq=-1"), bad);
        assert_eq!(parse("from_seq=1&from_seq=2"), bad);
        assert_eq!(parse("foo=1"), Err((axum::http::StatusCode::BAD_REQUEST, "unknown_parameter")));
    }
}
