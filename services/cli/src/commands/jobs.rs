//! Reading and steering jobs: `list`, `status`, `history`, `logs`, `cancel`,
//! `retry`.

use super::{Ctx, job_id, when};
use crate::cli::{CancelArgs, JobArg, ListArgs, LogsArgs, RetryArgs, State};
use crate::error::{CliError, Result, code};
use crate::output::{self, DIM, Out, ago, num, opt};
use chrono::{DateTime, Utc};
use comfy_table::Cell;
use fetchml_api_types::{
    AsOfJob, CommandAccepted, EventList, JobAnswer, JobPage, JobRow, JobsAnswer, ListJobsQuery, LogLine, LogsQuery,
    ReasonRequest, SortOrder, StoredEvent,
};
use fetchml_events::job::{FailureClass, JobStatus, Metric};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

pub fn status_of(s: State) -> JobStatus {
    match s {
        State::Queued => JobStatus::Queued,
        State::Running => JobStatus::Running,
        State::RetryScheduled => JobStatus::RetryScheduled,
        State::Succeeded => JobStatus::Succeeded,
        State::Failed => JobStatus::Failed,
        State::Cancelled => JobStatus::Cancelled,
        State::TimedOut => JobStatus::TimedOut,
        State::DeadLettered => JobStatus::DeadLettered,
    }
}

/// The query of `ml list`'s flags.
pub fn list_query(a: &ListArgs) -> Result<ListJobsQuery> {
    if !(1..=fetchml_api_types::MAX_LIST_LIMIT).contains(&a.limit) {
        return Err(CliError::usage(format!("--limit {}: 1-{}", a.limit, fetchml_api_types::MAX_LIST_LIMIT)));
    }
    if let Some(t) = &a.tag {
        super::key_value("--tag", t)?;
    }
    Ok(ListJobsQuery {
        state: a.state.map(status_of),
        owner: a.owner.clone(),
        pool: a.pool.clone(),
        experiment: a.experiment.clone(),
        tag: a.tag.clone(),
        created_after: a.since.as_deref().map(|s| when("--since", s)).transpose()?,
        created_before: a.before.as_deref().map(|s| when("--before", s)).transpose()?,
        sort: a.oldest_first.then_some(SortOrder::OldestFirst),
        limit: Some(a.limit),
        cursor: a.cursor.clone(),
        after_seq: None,
        as_of_seq: a.as_of_seq,
        as_of: a.as_of.as_deref().map(|s| when("--as-of", s)).transpose()?,
    })
}

/// Every page of a list (`--all`), or the first.
pub async fn fetch_list(ctx: &Ctx, mut q: ListJobsQuery, all: bool) -> Result<JobsAnswer> {
    let first: JobsAnswer = ctx.api.get_query("/v1/jobs", &q).await?;
    let JobsAnswer::Page(mut page) = first else { return Ok(first) };
    while all && let Some(next) = page.next.take() {
        q.cursor = Some(next);
        let JobsAnswer::Page(more) = ctx.api.get_query("/v1/jobs", &q).await? else {
            return Err(CliError::Protocol { url: ctx.api.base.clone(), cause: "a page turned into as_of".into() });
        };
        page.items.extend(more.items);
        page.next = more.next;
    }
    Ok(JobsAnswer::Page(page))
}

/// The rows of a page, typed.
pub fn rows(page: &JobPage, ctx: &Ctx) -> Result<Vec<JobRow>> {
    page.items
        .iter()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| CliError::Protocol { url: ctx.api.base.clone(), cause: format!("a job row: {e}") })
        })
        .collect()
}

pub async fn list(ctx: &Ctx, a: &ListArgs) -> Result<()> {
    let q = list_query(a)?;
    if a.watch {
        return super::watch::list_live(ctx, q).await;
    }
    let answer = fetch_list(ctx, q, a.all).await?;
    if ctx.out.json {
        return ctx.out.json(&answer);
    }
    print_list(ctx, &answer)?;
    if let JobsAnswer::Page(JobPage { next: Some(n), .. }) = &answer
        && ctx.out.stderr_tty
    {
        eprintln!("{}", ctx.out.err_paint(&format!("More: ml list --cursor {n} (or --all)"), DIM));
    }
    Ok(())
}

pub fn print_list(ctx: &Ctx, answer: &JobsAnswer) -> Result<()> {
    let out = &ctx.out;
    match answer {
        JobsAnswer::Page(page) => {
            let rows = rows(page, ctx)?;
            let owners = rows.iter().any(|r| r.owner.is_some());
            let mut header = vec!["ID", "STATE", "ATTEMPT", "POOL", "PRI", "EXPERIMENT"];
            if owners {
                header.push("OWNER");
            }
            header.extend(["CREATED", "METRICS"]);
            let mut t = out.table(&header);
            for r in &rows {
                let mut cells = vec![
                    Cell::new(r.id),
                    out.state_cell(r.state),
                    Cell::new(r.attempt),
                    Cell::new(&r.pool),
                    Cell::new(r.priority),
                    Cell::new(r.experiment.as_deref().unwrap_or("-")),
                ];
                if owners {
                    cells.push(Cell::new(r.owner.as_deref().unwrap_or("-")));
                }
                cells.extend([Cell::new(ago(r.created_at)), Cell::new(metrics_short(&r.metrics))]);
                t.add_row(cells);
            }
            if rows.is_empty() {
                eprintln!("No jobs.");
            } else {
                out.print_table(&mut t);
            }
        }
        JobsAnswer::AsOf(page) => {
            let mut t = out.table(&["ID", "STATE", "ATTEMPT", "POOL", "PRI", "EXPERIMENT", "CREATED", "METRICS"]);
            for AsOfJob { id, state, attempt, pool, priority, experiment, created_at, metrics, .. } in &page.items {
                t.add_row(vec![
                    Cell::new(id),
                    out.state_cell(*state),
                    Cell::new(attempt),
                    Cell::new(pool),
                    Cell::new(priority),
                    Cell::new(experiment.as_deref().unwrap_or("-")),
                    Cell::new(output::time(*created_at)),
                    Cell::new(metrics_short(metrics)),
                ]);
            }
            out.print_table(&mut t);
            eprintln!("As of sequence {}: {} matching jobs.", page.as_of_seq, page.total);
        }
    }
    Ok(())
}

/// `loss=0.31 acc=0.9`.
pub fn metrics_short(m: &BTreeMap<String, Metric>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter().map(|(k, v)| format!("{k}={}", num(v.value))).collect::<Vec<_>>().join(" ")
}

/// How an attempt ended, in words; only what the job has: an attempt without
/// an exit code says so by its signal or failure class, never "exit null".
pub fn outcome(
    exit_code: Option<i32>,
    signal: Option<i32>,
    class: Option<FailureClass>,
    reason: Option<&str>,
) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(code) = exit_code {
        parts.push(format!("exit {code}"));
    } else if let Some(sig) = signal {
        parts.push(format!("signal {sig}"));
    } else if class.is_some() {
        parts.push("no exit code".to_owned());
    }
    if let Some(c) = class {
        parts.push(format!("{} failure", serde_json::to_value(c).ok()?.as_str()?));
    }
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        parts.push(r.to_owned());
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub async fn get_job(ctx: &Ctx, id: &str) -> Result<JobAnswer> {
    let id = job_id(id)?;
    ctx.api.get(&format!("/v1/jobs/{id}")).await
}

pub async fn status(ctx: &Ctx, a: &JobArg) -> Result<()> {
    let job = get_job(ctx, &a.job).await?;
    if ctx.out.json {
        return ctx.out.json(&job);
    }
    print_job(&ctx.out, &job);
    Ok(())
}

fn print_job(out: &Out, job: &JobAnswer) {
    let mut t = out.table(&[]);
    let mut row = |k: &str, v: String| {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    };
    match job {
        JobAnswer::Full(j) => {
            row("id", j.id.to_string());
            row("state", format!("{} (attempt {}, {} in this run)", out.state(j.state), j.attempt, j.attempts_in_run));
            if let Some(o) = outcome(j.exit_code, j.signal, j.failure_class, j.reason.as_deref()) {
                row("outcome", o);
            }
            if let Some(nb) = j.not_before.filter(|_| j.state == JobStatus::RetryScheduled) {
                row("next attempt", format!("after {}", output::time(nb)));
            }
            row("owner", j.owner.to_string());
            let s = &j.spec;
            row("command", format!("{}{}", if s.shell { "sh -c " } else { "" }, shell_words(&s.command)));
            if let Some(w) = &s.working_dir {
                row("workdir", w.clone());
            }
            row("pool", format!("{} (priority {})", s.pool, s.priority));
            if !s.labels.is_empty() {
                row("labels", s.labels.join(", "));
            }
            let r = &s.resources;
            if r.cpus.is_some() || r.memory_mb.is_some() || r.gpus > 0 {
                row("resources", format!("cpus {}, memory {} MiB, gpus {}", opt(r.cpus), opt(r.memory_mb), r.gpus));
            }
            row(
                "executor",
                serde_json::to_value(s.executor).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            );
            if let Some(i) = &s.image {
                row("image", i.clone());
            }
            if let Some(t) = s.timeout_secs {
                row("timeout", format!("{t}s"));
            }
            row("retries", format!("{} attempts in all", s.retry.max_attempts));
            if let Some(e) = &s.experiment {
                row("experiment", e.clone());
            }
            if !s.tags.is_empty() {
                row("tags", s.tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
            }
            if !s.env.is_empty() {
                row("env", s.env.keys().cloned().collect::<Vec<_>>().join(" "));
            }
            if let Some(w) = &j.worker {
                row("worker", w.to_string());
            }
            times(&mut row, j.created_at, j.started_at, j.finished_at);
            metric_rows(&mut row, &j.metrics);
        }
        JobAnswer::Summary(j) => {
            row("id", j.id.to_string());
            row("state", format!("{} (attempt {})", out.state(j.state), j.attempt));
            if let Some(o) = outcome(j.exit_code, j.signal, j.failure_class, None) {
                row("outcome", o);
            }
            row("pool", format!("{} (priority {})", j.pool, j.priority));
            if let Some(e) = &j.experiment {
                row("experiment", e.clone());
            }
            times(&mut row, j.created_at, j.started_at, j.finished_at);
            metric_rows(&mut row, &j.metrics);
        }
    }
    out.print_table(&mut t);
}

fn times(
    row: &mut impl FnMut(&str, String),
    created: Option<DateTime<Utc>>,
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
) {
    if let Some(c) = created {
        row("created", format!("{} ({})", output::time(c), ago(c)));
    }
    if let Some(s) = started {
        row("started", output::time(s));
    }
    match (started, finished) {
        (Some(s), Some(f)) => row("finished", format!("{} (ran {})", output::time(f), output::duration(f - s))),
        (None, Some(f)) => row("finished", output::time(f)),
        _ => {}
    }
}

fn metric_rows(row: &mut impl FnMut(&str, String), m: &BTreeMap<String, Metric>) {
    for (name, v) in m {
        let step = v.step.map(|s| format!(" (step {s})")).unwrap_or_default();
        row(&format!("metric {name}"), format!("{}{step}", num(v.value)));
    }
}

/// argv as a shell would need it typed.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn history(ctx: &Ctx, a: &JobArg) -> Result<()> {
    let id = job_id(&a.job)?;
    let list: EventList = ctx.api.get(&format!("/v1/jobs/{id}/events")).await?;
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    let mut t = ctx.out.table(&["SEQ", "TIME", "EVENT", "ACTOR", "ATTEMPT", "WORKER", "DETAIL"]);
    for raw in &list.items {
        let e: StoredEvent = serde_json::from_value(raw.clone())
            .map_err(|err| CliError::Protocol { url: ctx.api.base.clone(), cause: format!("an event: {err}") })?;
        let f: Facts = serde_json::from_value(e.payload.clone()).unwrap_or_default();
        let actor = actor(&e.actor);
        let worker = f.worker.clone().or_else(|| {
            (e.actor.get("kind").and_then(|k| k.as_str()) == Some("worker"))
                .then(|| e.actor.get("id").and_then(|v| v.as_str()).map(str::to_owned))
                .flatten()
        });
        t.add_row(vec![
            Cell::new(e.seq),
            Cell::new(output::time(e.occurred_at)),
            Cell::new(&e.kind),
            Cell::new(actor),
            Cell::new(opt(f.attempt)),
            Cell::new(worker.unwrap_or_else(|| "-".into())),
            Cell::new(f.detail()),
        ]);
    }
    ctx.out.print_table(&mut t);
    Ok(())
}

/// The fields of an event's payload the history shows.
#[derive(Default, serde::Deserialize)]
pub struct Facts {
    pub attempt: Option<u32>,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub class: Option<FailureClass>,
    pub reason: Option<String>,
    pub not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Metric>,
}

impl Facts {
    pub fn detail(&self) -> String {
        let mut parts: Vec<String> =
            outcome(self.exit_code, self.signal, self.class, self.reason.as_deref()).into_iter().collect();
        if let Some(nb) = self.not_before {
            parts.push(format!("next attempt after {}", output::time(nb)));
        }
        if !self.metrics.is_empty() {
            parts.push(metrics_short(&self.metrics));
        }
        parts.join("; ")
    }
}

/// `user alice`, `worker w-1`, `system reconciler`.
pub fn actor(v: &serde_json::Value) -> String {
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("-");
    let who = ["name", "id", "component"].iter().find_map(|k| v.get(*k).and_then(|x| x.as_str())).unwrap_or("");
    format!("{kind} {who}").trim().to_owned()
}

pub async fn logs(ctx: &Ctx, a: &LogsArgs) -> Result<()> {
    let id = job_id(&a.job)?;
    let since = a.since.as_deref().map(|s| when("--since", s)).transpose()?;
    let path = format!("/v1/jobs/{id}/logs");
    let mut last_seq = None;
    // With --tail, read what is stored first and keep the last N; -f then
    // goes on from there.
    let mut kept: VecDeque<LogLine> = VecDeque::new();
    let first = LogsQuery { follow: Some(a.follow && a.tail.is_none()), from_seq: None };
    read_logs(ctx, &path, &first, |line| {
        last_seq = Some(line.seq);
        if since.is_some_and(|s| line.at < s) {
            return Ok(());
        }
        match a.tail {
            Some(n) => {
                kept.push_back(line);
                if kept.len() > n {
                    kept.pop_front();
                }
                Ok(())
            }
            None => print_log(&ctx.out, &line),
        }
    })
    .await?;
    for line in kept.drain(..) {
        print_log(&ctx.out, &line)?;
    }
    if a.follow && a.tail.is_some() {
        let q = LogsQuery { follow: Some(true), from_seq: last_seq.map(|s| s + 1) };
        read_logs(ctx, &path, &q, |line| print_log(&ctx.out, &line)).await?;
    }
    Ok(())
}

fn print_log(out: &Out, line: &LogLine) -> Result<()> {
    if out.json {
        return out.json_line(line);
    }
    println!("{}", line.line);
    Ok(())
}

/// Reads NDJSON log lines as they come.
async fn read_logs(ctx: &Ctx, path: &str, q: &LogsQuery, mut each: impl FnMut(LogLine) -> Result<()>) -> Result<()> {
    use http_body_util::BodyExt as _;
    let mut body = ctx.api.stream(path, q).await?;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ctx.api.transport(&e))?;
        let Ok(chunk) = frame.into_data() else { continue };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line: LogLine = serde_json::from_slice(&raw)
                .map_err(|e| CliError::Protocol { url: ctx.api.base.clone(), cause: format!("a log line: {e}") })?;
            each(line)?;
        }
    }
    Ok(())
}

/// `ml cancel --json` and `ml retry --json`: one per job done.
#[derive(Serialize)]
struct Done {
    id: String,
    seq: u64,
}

pub async fn cancel(ctx: &Ctx, a: &CancelArgs) -> Result<u8> {
    command(ctx, &a.jobs, "cancel", a.reason.as_deref(), "cancel requested").await
}

pub async fn retry(ctx: &Ctx, a: &RetryArgs) -> Result<u8> {
    command(ctx, &a.jobs, "retry", a.reason.as_deref(), "queued again").await
}

/// Sends one command to each job; a refusal of one does not stop the others.
/// Exits with the first refusal's code.
async fn command(ctx: &Ctx, jobs: &[String], verb: &str, reason: Option<&str>, said: &str) -> Result<u8> {
    let ids = jobs.iter().map(|j| job_id(j)).collect::<Result<Vec<_>>>()?;
    let body = ReasonRequest { reason: reason.map(str::to_owned) };
    let mut done = Vec::new();
    let mut first_err: Option<CliError> = None;
    for id in ids {
        match ctx.api.post::<CommandAccepted, _>(&format!("/v1/jobs/{id}/{verb}"), Some(&body), &[]).await {
            Ok(a) => {
                if !ctx.out.json {
                    println!("{id}  {said} (seq {})", a.seq);
                }
                done.push(Done { id: id.to_string(), seq: a.seq });
            }
            Err(e) => {
                crate::report(&ctx.out, &format!("{verb} {id}"), &e);
                first_err.get_or_insert(e);
            }
        }
    }
    if ctx.out.json {
        ctx.out.json(&done)?;
    }
    Ok(first_err.map(|e| e.exit_code()).unwrap_or(code::OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 14: `ml status` printed "exit null" for an attempt that ended
    /// without an exit code.
    #[test]
    fn an_outcome_says_how_an_attempt_ended_without_printing_null() {
        let failed = outcome(None, None, Some(FailureClass::Code), Some("working dir out leaves the job root"));
        assert_eq!(failed.as_deref(), Some("no exit code, code failure, working dir out leaves the job root"));
        let killed = outcome(None, Some(9), Some(FailureClass::Infrastructure), Some("killed by signal 9"));
        assert_eq!(killed.as_deref(), Some("signal 9, infrastructure failure, killed by signal 9"));
        assert_eq!(outcome(Some(0), None, None, None).as_deref(), Some("exit 0"));
        assert_eq!(outcome(None, None, None, None), None);
        assert_eq!(shell_words(&["python".into(), "-c".into(), "print(1)".into()]), "python -c 'print(1)'");
    }
}
