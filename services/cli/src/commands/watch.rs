//! `ml watch` (and `--wait`, `ml list --watch`): live over the WebSocket
//! `GET /v1/stream`, never by polling.
//!
//! Delivery: each subscription's messages come in stream order, exactly
//! once per connection. After a dropped connection `ml` connects again and
//! subscribes `from` the last sequence it saw plus one, per stream, and drops
//! anything at or below it, so nothing is missed or shown twice across the
//! seam. A job counts as finished once its folded state is terminal and at
//! least as many of its events were seen as it had when the watch began (a
//! job retried after it ended replays an old terminal event first).

use super::jobs::{Facts, metrics_short, outcome};
use super::{Ctx, job_id};
use crate::client::WebSocket;
use crate::error::{CliError, Result, code};
use crate::output::{self, BOLD, DIM, num};
use fetchml_api_types::{
    JobAnswer, JobsAnswer, ListJobsQuery, ProgressLog, ProgressMetric, ProgressPercent, StreamFrame, StreamFrom,
    StreamName, StreamRequest, StreamTarget,
};
use fetchml_events::JobId;
use fetchml_events::job::JobStatus;
use futures::{SinkExt as _, StreamExt as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Progress bars on a terminal, plain lines elsewhere.
    Live,
    /// Nothing until the end (`--wait`).
    Quiet,
}

/// How long a lost stream is tried again before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);
/// After the last job ended: progress that is still in flight (the streams
/// are separate, so the last lines may trail the terminal event).
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const DRAIN_MAX: Duration = Duration::from_secs(2);

const EVENTS_SUB: &str = "events";
const PROGRESS_SUB: &str = "progress";

struct Watched {
    id: JobId,
    short: String,
    state: JobStatus,
    attempt: u32,
    /// Events seen; the job is finished only past `version_at_start`.
    seen: u64,
    version_at_start: u64,
    percent: f64,
    metrics: BTreeMap<String, (f64, Option<u64>)>,
    logs: VecDeque<String>,
    bar: Option<ProgressBar>,
}

impl Watched {
    fn finished(&self) -> bool {
        self.state.is_terminal() && self.seen >= self.version_at_start
    }

    fn message(&self, lines: usize) -> String {
        let m: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, (v, step))| format!("{k}={}{}", num(*v), step.map(|s| format!("@{s}")).unwrap_or_default()))
            .collect();
        let mut msg = format!("{} {}", self.state.as_str(), m.join(" "));
        for l in self.logs.iter().rev().take(lines).rev() {
            msg.push_str("\n    ");
            msg.push_str(l);
        }
        msg
    }
}

/// `ml watch --json`: the stream's messages as they came, then one result
/// per job.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsonLine<'a> {
    Result { job: &'a JobAnswer },
}

struct View<'a> {
    ctx: &'a Ctx,
    mode: Mode,
    lines: usize,
    multi: Option<MultiProgress>,
}

impl View<'_> {
    /// A diagnostic about the stream itself: on stderr in every mode.
    fn note(&self, text: &str) {
        let text = self.ctx.out.err_paint(text, DIM);
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("ml: {text}"),
        }
    }

    /// A line for people: above the bars, or on stdout when there are none.
    fn say(&self, text: String) {
        if self.mode == Mode::Quiet || self.ctx.out.json {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => println!("{text}"),
        }
    }
}

pub async fn run(ctx: &Ctx, ids: &[String], mode: Mode, lines: usize) -> Result<u8> {
    let ids = ids.iter().map(|i| job_id(i)).collect::<Result<Vec<_>>>()?;
    let mut jobs: Vec<Watched> = Vec::new();
    for id in &ids {
        // Also the check that each job exists and may be read (404, 403).
        let answer: JobAnswer = ctx.api.get(&format!("/v1/jobs/{id}")).await?;
        let (state, attempt, version) = match &answer {
            JobAnswer::Full(j) => (j.state, j.attempt, j.version),
            JobAnswer::Summary(j) => (j.state, j.attempt, j.version),
        };
        let s = id.to_string();
        jobs.push(Watched {
            id: *id,
            short: s[..8.min(s.len())].to_owned(),
            state,
            attempt,
            seen: 0,
            version_at_start: version,
            percent: 0.0,
            metrics: BTreeMap::new(),
            logs: VecDeque::new(),
            bar: None,
        });
    }
    let bars = mode == Mode::Live && !ctx.out.json && ctx.out.stderr_tty;
    let multi = bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
    if let Some(m) = &multi {
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        for j in &mut jobs {
            let bar = m.add(ProgressBar::new(100).with_style(style.clone()).with_prefix(j.short.clone()));
            bar.set_message(j.message(lines));
            bar.enable_steady_tick(Duration::from_millis(250));
            j.bar = Some(bar);
        }
    }
    let view = View { ctx, mode, lines, multi };
    let target = if ids.len() == 1 { StreamTarget::Job(ids[0]) } else { StreamTarget::Jobs(ids.clone()) };
    follow(&view, &target, &mut jobs).await?;
    // The outcome, as the job's own read says it.
    let mut exit = code::OK;
    for j in &jobs {
        let answer: JobAnswer = ctx.api.get(&format!("/v1/jobs/{}", j.id)).await?;
        let (state, exit_code, signal, class, reason, metrics) = match &answer {
            JobAnswer::Full(v) => {
                (v.state, v.exit_code, v.signal, v.failure_class, v.reason.clone(), v.metrics.clone())
            }
            JobAnswer::Summary(v) => (v.state, v.exit_code, v.signal, v.failure_class, None, v.metrics.clone()),
        };
        if let Some(b) = &j.bar {
            if state == JobStatus::Succeeded {
                b.set_position(100);
            }
            b.set_message(j.message(0));
            b.finish();
        }
        let c = exit_code_of(state, exit_code);
        if exit == code::OK {
            exit = c;
        }
        if ctx.out.json {
            ctx.out.json_line(&JsonLine::Result { job: &answer })?;
            continue;
        }
        let how = outcome(exit_code, signal, class, reason.as_deref()).map(|o| format!(" ({o})")).unwrap_or_default();
        let line = format!(
            "{} {}{how}{}",
            j.id,
            if mode == Mode::Quiet { ctx.out.err_state(state) } else { ctx.out.state(state) },
            if metrics.is_empty() { String::new() } else { format!("  {}", metrics_short(&metrics)) }
        );
        // `--wait` keeps stdout for the id `queue` printed; a watch's result is its data.
        if mode == Mode::Quiet { eprintln!("{line}") } else { println!("{line}") }
    }
    Ok(exit)
}

/// The documented exit code of a finished job.
pub fn exit_code_of(state: JobStatus, exit_code: Option<i32>) -> u8 {
    match state {
        JobStatus::Succeeded => code::OK,
        JobStatus::Cancelled => code::JOB_CANCELLED,
        _ => match exit_code {
            Some(c) if (1..=255).contains(&c) => c as u8,
            _ => code::JOB_FAILED,
        },
    }
}

/// Connects, subscribes and applies messages until every job finished,
/// reconnecting from the last sequences seen when the connection drops.
async fn follow(view: &View<'_>, target: &StreamTarget, jobs: &mut [Watched]) -> Result<()> {
    let mut last_events: Option<u64> = None;
    let mut last_progress: Option<u64> = None;
    let mut progress_kinds: Option<Vec<String>> = None;
    let mut lost_since: Option<tokio::time::Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let ws = match view.ctx.api.websocket().await {
            Ok(ws) => ws,
            // Before the first connection, or for a refusal: say so at once.
            // Once connected, an api away or restarting (unreachable, 5xx)
            // is tried again for a while.
            Err(e) if lost_since.is_none() || !retryable(&e) => return Err(e),
            Err(e) => {
                if lost_since.is_some_and(|t| t.elapsed() > RECONNECT_FOR) {
                    return Err(e);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if lost_since.take().is_some() {
            view.note("stream resumed");
        }
        backoff = Duration::from_millis(100);
        let mut s =
            Session { ws, view, jobs: &mut *jobs, last_events: &mut last_events, last_progress: &mut last_progress };
        match s.run(target, &mut progress_kinds).await? {
            Ended::AllFinished => return Ok(()),
            Ended::Dropped(why) => {
                view.note(&format!("stream lost ({why}); reconnecting"));
                lost_since = Some(tokio::time::Instant::now());
            }
        }
    }
}

fn retryable(e: &CliError) -> bool {
    matches!(e, CliError::Unreachable { .. }) || matches!(e, CliError::Api { status, .. } if *status >= 500)
}

enum Ended {
    AllFinished,
    Dropped(String),
}

struct Session<'a, 'v> {
    ws: WebSocket,
    view: &'a View<'v>,
    jobs: &'a mut [Watched],
    last_events: &'a mut Option<u64>,
    last_progress: &'a mut Option<u64>,
}

fn from(last: Option<u64>) -> StreamFrom {
    match last {
        Some(s) => StreamFrom::Seq(s + 1),
        None => StreamFrom::Beginning,
    }
}

async fn send(ws: &mut WebSocket, req: &StreamRequest) -> std::result::Result<(), String> {
    let text = serde_json::to_string(req).map_err(|e| e.to_string())?;
    ws.send(Message::text(text)).await.map_err(|e| e.to_string())
}

impl Session<'_, '_> {
    async fn run(&mut self, target: &StreamTarget, kinds: &mut Option<Vec<String>>) -> Result<Ended> {
        let subscribe = |id: &str, stream, from, kinds: Option<Vec<String>>| StreamRequest::Subscribe {
            id: id.to_owned(),
            stream,
            target: target.clone(),
            from,
            kinds,
            // A terminal needs no batches: one frame a message.
            batch: false,
        };
        let ev = subscribe(EVENTS_SUB, StreamName::Events, from(*self.last_events), None);
        if let Err(e) = send(&mut self.ws, &ev).await {
            return Ok(Ended::Dropped(e));
        }
        let pr = subscribe(PROGRESS_SUB, StreamName::Progress, from(*self.last_progress), kinds.clone());
        if let Err(e) = send(&mut self.ws, &pr).await {
            return Ok(Ended::Dropped(e));
        }
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if self.jobs.iter().all(Watched::finished) && drain_until.is_none() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_MAX);
            }
            let wait = match drain_until {
                Some(t) => DRAIN_QUIET.min(t.saturating_duration_since(tokio::time::Instant::now())),
                // The server pings every 20 s; a minute of silence is a dead link.
                None => Duration::from_secs(60),
            };
            let frame = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) if drain_until.is_some() => return Ok(Ended::AllFinished),
                Err(_) => return Ok(Ended::Dropped("no frame for a minute".into())),
                Ok(None) => return Ok(Ended::Dropped("closed".into())),
                Ok(Some(Err(e))) => return Ok(Ended::Dropped(crate::client::root_cause(&e))),
                Ok(Some(Ok(m))) => m,
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Close(c) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(0);
                    if code == 4001 {
                        return Err(CliError::NotLoggedIn(
                            "the api ended this session (logged out, expired or revoked); log in again: ml login"
                                .into(),
                        ));
                    }
                    if drain_until.is_some() {
                        return Ok(Ended::AllFinished);
                    }
                    return Ok(Ended::Dropped(format!("closed with {code}")));
                }
                _ => continue,
            };
            let frame: StreamFrame = serde_json::from_str(&text).map_err(|e| CliError::Protocol {
                url: self.view.ctx.api.base.clone(),
                cause: format!("a stream frame: {e}"),
            })?;
            match frame {
                StreamFrame::Message { sub, seq, subject_kind, data, stream, .. } => {
                    let last = if sub == EVENTS_SUB { &mut *self.last_events } else { &mut *self.last_progress };
                    // At or below the last seen: already shown before a reconnect.
                    if last.is_some_and(|l| seq <= l) {
                        continue;
                    }
                    *last = Some(seq);
                    if self.view.ctx.out.json {
                        let raw = StreamFrame::Message {
                            sub,
                            stream,
                            seq,
                            subject_kind: subject_kind.clone(),
                            data: data.clone(),
                        };
                        self.view.ctx.out.json_line(&raw)?;
                    }
                    if stream == StreamName::Events {
                        self.on_event(&subject_kind, &data);
                    } else {
                        self.on_progress(&subject_kind, &data);
                    }
                }
                StreamFrame::Error { id, code, message } => {
                    if id.as_deref() == Some(PROGRESS_SUB) && code == "forbidden" && kinds.is_none() {
                        // A role without logs (analyst): metrics and percent only.
                        let k = vec!["metric".to_owned(), "percent".to_owned()];
                        *kinds = Some(k.clone());
                        let pr = subscribe(PROGRESS_SUB, StreamName::Progress, from(*self.last_progress), Some(k));
                        if let Err(e) = send(&mut self.ws, &pr).await {
                            return Ok(Ended::Dropped(e));
                        }
                        continue;
                    }
                    let status = match code.as_str() {
                        "job_not_found" => 404,
                        "forbidden" => 403,
                        "unavailable" => 503,
                        _ => 400,
                    };
                    let detail = fetchml_api_types::ErrorDetail { code, field: None, message };
                    return Err(CliError::Api { status, detail, hint: None });
                }
                // Our own sequences say where to resume; the close follows.
                // Not asked for (`batch: false`).
                StreamFrame::Lagged { .. } | StreamFrame::Messages { .. } => {}
                StreamFrame::Hello { .. }
                | StreamFrame::Subscribed { .. }
                | StreamFrame::Unsubscribed { .. }
                | StreamFrame::Pong {} => {}
            }
        }
    }

    fn job(&mut self, id: &str) -> Option<&mut Watched> {
        self.jobs.iter_mut().find(|j| j.id.to_string() == id)
    }

    fn on_event(&mut self, kind: &str, data: &serde_json::Value) {
        let Some(id) = data.get("aggregate_id").and_then(|v| v.as_str()).map(str::to_owned) else { return };
        let facts: Facts = data.get("payload").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default();
        let at = data
            .get("occurred_at")
            .and_then(|v| v.as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc).format("%H:%M:%S").to_string())
            .unwrap_or_default();
        let lines = self.view.lines;
        let out = self.view.ctx.out;
        let Some(j) = self.job(&id) else { return };
        j.seen += 1;
        let state = match kind {
            "job_queued" | "job_requeued" => JobStatus::Queued,
            "job_started" => JobStatus::Running,
            "job_succeeded" => JobStatus::Succeeded,
            "job_retry_scheduled" => JobStatus::RetryScheduled,
            "job_failed" => JobStatus::Failed,
            "job_timed_out" => JobStatus::TimedOut,
            "job_dead_lettered" => JobStatus::DeadLettered,
            "job_cancelled" => JobStatus::Cancelled,
            _ => j.state,
        };
        j.state = state;
        if let Some(a) = facts.attempt {
            j.attempt = a;
        }
        if kind == "job_started" {
            j.percent = 0.0;
        }
        let mut text = format!("{at} {} {}", j.short, kind);
        if let Some(w) = &facts.worker {
            text.push_str(&format!(" (attempt {} on {w})", j.attempt));
        }
        let detail = facts.detail();
        if !detail.is_empty() {
            text.push_str(&format!(": {detail}"));
        }
        if let Some(b) = &j.bar {
            b.set_message(j.message(lines));
        }
        let painted =
            if out.color_err && j.bar.is_some() { out.err_paint(&text, output::state_style(state)) } else { text };
        self.view.say(painted);
    }

    fn on_progress(&mut self, kind: &str, data: &serde_json::Value) {
        let lines = self.view.lines;
        let plain = self.view.multi.is_none();
        let text = match kind {
            "log" => {
                let Ok(p) = serde_json::from_value::<ProgressLog>(data.clone()) else { return };
                let Some(j) = self.job(&p.job_id.to_string()) else { return };
                let short = j.short.clone();
                j.logs.push_back(p.line.clone());
                while j.logs.len() > lines.max(1) {
                    j.logs.pop_front();
                }
                if let Some(b) = &j.bar {
                    b.set_message(j.message(lines));
                }
                plain.then(|| format!("{short} | {}", p.line))
            }
            "metric" => {
                let Ok(p) = serde_json::from_value::<ProgressMetric>(data.clone()) else { return };
                let Some(j) = self.job(&p.job_id.to_string()) else { return };
                j.metrics.insert(p.name.clone(), (p.value, p.step));
                if let Some(b) = &j.bar {
                    b.set_message(j.message(lines));
                }
                let step = p.step.map(|s| format!(" (step {s})")).unwrap_or_default();
                plain.then(|| format!("{} metric {}={}{step}", j.short, p.name, num(p.value)))
            }
            "percent" => {
                let Ok(p) = serde_json::from_value::<ProgressPercent>(data.clone()) else { return };
                let Some(j) = self.job(&p.job_id.to_string()) else { return };
                j.percent = p.percent;
                if let Some(b) = &j.bar {
                    b.set_position(p.percent.clamp(0.0, 100.0) as u64);
                }
                plain.then(|| format!("{} progress {}%", j.short, num(p.percent)))
            }
            _ => None,
        };
        if let Some(t) = text {
            self.view.say(t);
        }
    }
}

/// `ml list --watch`: the table again after every change of a job the caller
/// sees (read from the list with `after_seq`, so it includes that change).
/// The first table is read once the subscription stands, so no change falls
/// between the two.
pub async fn list_live(ctx: &Ctx, mut q: ListJobsQuery) -> Result<()> {
    let mut last: Option<u64> = None;
    let mut lost_since: Option<tokio::time::Instant> = None;
    let mut drawn = false;
    let redraw = |ctx: &Ctx, answer: &JobsAnswer| -> Result<()> {
        if ctx.out.json {
            return ctx.out.json_line(answer);
        }
        if ctx.out.stdout_tty {
            print!("\x1b[2J\x1b[H");
        }
        println!("{}", ctx.out.paint(&format!("{} (Ctrl-C to stop)", output::time(chrono::Utc::now())), DIM));
        super::jobs::print_list(ctx, answer)
    };
    loop {
        let mut ws = match ctx.api.websocket().await {
            Ok(ws) => ws,
            Err(e) if lost_since.is_none_or(|t| t.elapsed() > RECONNECT_FOR) => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let sub = StreamRequest::Subscribe {
            id: EVENTS_SUB.into(),
            stream: StreamName::Events,
            target: StreamTarget::All,
            from: last.map_or(StreamFrom::Live, |s| StreamFrom::Seq(s + 1)),
            kinds: None,
            batch: false,
        };
        if send(&mut ws, &sub).await.is_err() {
            lost_since = Some(tokio::time::Instant::now());
            continue;
        }
        let mut changed = false;
        loop {
            // Changes come in bursts: redraw once they pause.
            let wait = if changed { Duration::from_millis(200) } else { Duration::from_secs(60) };
            match tokio::time::timeout(wait, ws.next()).await {
                Err(_) if changed => {
                    q.after_seq = last;
                    redraw(ctx, &super::jobs::fetch_list(ctx, q.clone(), false).await?)?;
                    changed = false;
                }
                Err(_) => {}
                Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<StreamFrame>(&t) {
                    Ok(StreamFrame::Subscribed { .. }) if !drawn => {
                        redraw(ctx, &super::jobs::fetch_list(ctx, q.clone(), false).await?)?;
                        drawn = true;
                    }
                    Ok(StreamFrame::Message { seq, .. }) if last.is_none_or(|l| seq > l) => {
                        last = Some(seq);
                        changed = true;
                    }
                    Ok(StreamFrame::Error { code, message, .. }) => {
                        let detail = fetchml_api_types::ErrorDetail { code, field: None, message };
                        return Err(CliError::Api { status: 400, detail, hint: None });
                    }
                    _ => {}
                },
                Ok(Some(Ok(Message::Close(c)))) if c.as_ref().is_some_and(|c| u16::from(c.code) == 4001) => {
                    return Err(CliError::NotLoggedIn("the api ended this session; log in again: ml login".into()));
                }
                Ok(Some(Ok(_))) => {}
                Ok(None | Some(Err(_))) => {
                    lost_since = Some(tokio::time::Instant::now());
                    eprintln!("ml: {}", ctx.out.err_paint("stream lost; reconnecting", BOLD));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_the_documented_exit_codes() {
        assert_eq!(exit_code_of(JobStatus::Succeeded, Some(0)), 0);
        assert_eq!(exit_code_of(JobStatus::Failed, Some(3)), 3);
        assert_eq!(exit_code_of(JobStatus::Failed, None), code::JOB_FAILED);
        assert_eq!(exit_code_of(JobStatus::DeadLettered, Some(-1)), code::JOB_FAILED);
        assert_eq!(exit_code_of(JobStatus::TimedOut, None), code::JOB_FAILED);
        assert_eq!(exit_code_of(JobStatus::Cancelled, None), code::JOB_CANCELLED);
    }
}
