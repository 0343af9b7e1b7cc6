//! `GET /v1/jobs/{id}/logs`: a job's log lines as newline-delimited JSON
//! (`{"seq", "attempt", "stream", "line", "at"}` per line), for scripts. With
//! `follow=true` it stays open and streams new lines until the job ends; with
//! `from_seq=N` it resumes after a disconnect. Same replay machinery as the
//! WebSocket: one ordered consumer, no gap, no duplicate.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::Response;
use fetchml_events::JobId;
use fetchml_eventstore::StartAt;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

pub async fn job_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(raw_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id: JobId =
        raw_id.parse().map_err(|_| ApiError::bad_request("invalid_job_id", format!("{raw_id:?} is not a job id")))?;
    let follow = q.get("follow").is_some_and(|v| v == "true");
    let from = match q.get("from_seq") {
        Some(s) => StartAt::Sequence(
            s.parse().map_err(|_| ApiError::bad_request("invalid_parameter", "from_seq: not a sequence"))?,
        ),
        None => StartAt::Beginning,
    };
    let (loaded, _) =
        crate::routes::jobs::authorize(&state, &caller, id, crate::policy::JobAction::Logs, &format!("job/{id}/logs"))
            .await?;
    let Some(job) = loaded.state else { return Err(ApiError::NotFound("job_not_found")) };
    let subjects = state.store.subjects();
    let subject = subjects.progress(&job.owner, id, "log");
    let stream_name = subjects.progress_stream();
    // Without follow, stop at what exists now.
    let last_of_job = state.store.last_on_progress_subject(&subject).await?.unwrap_or(0);
    let mut events = state.store.read_stream(&stream_name, vec![subject], from).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(256);
    let store = state.store.clone();
    tokio::spawn(async move {
        if !follow && last_of_job == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = events.next() => {
                    let Some(Ok(ev)) = ev else { return };
                    let mut v: Value = serde_json::from_slice(&ev.payload).unwrap_or(Value::Null);
                    v["seq"] = json!(ev.seq);
                    if tx.send(Ok(format!("{v}\n"))).await.is_err() {
                        return; // the client left
                    }
                    if !follow && ev.seq >= last_of_job {
                        return;
                    }
                }
                _ = tick.tick(), if follow => {
                    // Quiet for a moment: stop once the job has ended.
                    if let Ok(l) = store.load_job(id).await
                        && l.state.is_some_and(|s| s.status.is_terminal())
                    {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) }));
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .map_err(|e| ApiError::Internal(e.into()))
}
