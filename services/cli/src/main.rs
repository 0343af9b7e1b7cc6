//! `ml`: queue jobs and read them back. Data goes to stdout (JSON with
//! `--json`, else a short summary); diagnostics go to stderr.

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fetchml_api_types::{CommandAccepted, ErrorBody, Submitted};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ml", version, about = "fetchml command-line client")]
struct Cli {
    /// The fetchml api.
    #[arg(long, global = true, env = "FETCHML_API", default_value = "http://127.0.0.1:9101")]
    api: String,
    /// API key or session token (sent as `Authorization: Bearer`).
    #[arg(long, global = true, env = "FETCHML_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the api's JSON answers as they are.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Queue a job: `ml submit [options] -- python train.py --lr 0.1`.
    Submit {
        #[arg(long)]
        pool: Option<String>,
        /// 1 (lowest) to 10 (highest).
        #[arg(long)]
        priority: Option<u8>,
        #[arg(long)]
        timeout_secs: Option<u64>,
        #[arg(long)]
        experiment: Option<String>,
        /// KEY=VALUE, repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// Run the command through /bin/sh -c.
        #[arg(long)]
        shell: bool,
        /// The folder to run in, relative to the worker's job root.
        #[arg(long)]
        workdir: Option<String>,
        /// Makes a retried submit name the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the job ends; exit with its exit code.
        #[arg(long)]
        wait: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show a job.
    Status { id: String },
    /// Show a job's history.
    Events { id: String },
    /// Wait until a job ends; exit with its exit code.
    Wait { id: String },
    /// List jobs (newest first).
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        experiment: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Queue a failed, timed-out, dead-lettered or cancelled job again.
    Retry { id: String },
    /// Print a job's log lines; with --follow, until the job ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Who the key belongs to.
    Whoami,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ml: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    headers: reqwest::header::HeaderMap,
}

impl Api {
    /// Sends `req` and reads the answer as `T` (the api's answer types, or
    /// `Value` to print it as it came); a refusal becomes an error that
    /// names its code, message and field.
    async fn call<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req.send().await.with_context(|| format!("cannot reach the fetchml api at {}", self.base))?;
        let status = resp.status();
        let body =
            resp.bytes().await.with_context(|| format!("the answer of the fetchml api at {} broke off", self.base))?;
        if !status.is_success() {
            let Ok(ErrorBody { error }) = serde_json::from_slice::<ErrorBody>(&body) else {
                bail!("{status}: unknown: the api's answer is not an error body");
            };
            let field = error.field.map(|f| format!(" (field {f})")).unwrap_or_default();
            bail!("{status}: {}: {}{field}", error.code, error.message);
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from the fetchml api ({status})"))
    }

    async fn job(&self, id: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}/v1/jobs/{id}", self.base))).await
    }
}

const TERMINAL: [&str; 5] = ["succeeded", "failed", "cancelled", "timed_out", "dead_lettered"];

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = &cli.key {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}"))
            .context("the API key contains characters a header cannot carry")?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let api = Api {
        base: cli.api.trim_end_matches('/').to_owned(),
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).default_headers(headers.clone()).build()?,
        headers,
    };
    match cli.command {
        Command::Submit {
            pool,
            priority,
            timeout_secs,
            experiment,
            env,
            shell,
            workdir,
            idempotency_key,
            wait,
            command,
        } => {
            let mut spec = json!({ "command": command, "shell": shell });
            if let Some(w) = workdir {
                spec["working_dir"] = json!(w);
            }
            if let Some(p) = pool {
                spec["pool"] = json!(p);
            }
            if let Some(p) = priority {
                spec["priority"] = json!(p);
            }
            if let Some(t) = timeout_secs {
                spec["timeout_secs"] = json!(t);
            }
            if let Some(e) = experiment {
                spec["experiment"] = json!(e);
            }
            let mut vars = BTreeMap::new();
            for kv in env {
                let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv:?} is not KEY=VALUE"))?;
                vars.insert(k.to_owned(), v.to_owned());
            }
            spec["env"] = json!(vars);
            let mut req = api.http.post(format!("{}/v1/jobs", api.base)).json(&spec);
            if let Some(k) = idempotency_key {
                req = req.header("Idempotency-Key", k);
            }
            let out: Submitted = api.call(req).await?;
            let id = out.id.to_string();
            if cli.json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!("{id}");
            }
            if wait {
                return wait_for(&api, &id, cli.json).await;
            }
        }
        Command::Status { id } => {
            let job = api.job(&id).await?;
            if cli.json {
                println!("{job}");
            } else {
                println!("{}", status_line(&job));
            }
        }
        Command::Events { id } => {
            let events: Value = api.call(api.http.get(format!("{}/v1/jobs/{id}/events", api.base))).await?;
            if cli.json {
                println!("{events}");
            } else {
                for e in events["items"].as_array().into_iter().flatten() {
                    println!(
                        "{:>8}  {}  {}",
                        e["seq"],
                        e["occurred_at"].as_str().unwrap_or(""),
                        e["type"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Wait { id } => return wait_for(&api, &id, cli.json).await,
        Command::List { state, experiment, limit } => {
            let mut url = reqwest::Url::parse(&format!("{}/v1/jobs", api.base)).context("--api is not a URL")?;
            url.query_pairs_mut().append_pair("limit", &limit.to_string());
            if let Some(s) = state {
                url.query_pairs_mut().append_pair("state", &s);
            }
            if let Some(e) = experiment {
                url.query_pairs_mut().append_pair("experiment", &e);
            }
            let out: Value = api.call(api.http.get(url)).await?;
            if cli.json {
                println!("{out}");
            } else {
                for j in out["items"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<15} attempt {}  {}  {}",
                        j["id"].as_str().unwrap_or(""),
                        j["state"].as_str().unwrap_or(""),
                        j["attempt"],
                        j["created_at"].as_str().unwrap_or(""),
                        j["experiment"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Cancel { id } => {
            let out: CommandAccepted = api.call(api.http.post(format!("{}/v1/jobs/{id}/cancel", api.base))).await?;
            let text =
                if cli.json { serde_json::to_string(&out)? } else { format!("cancel requested (seq {})", out.seq) };
            println!("{text}");
        }
        Command::Retry { id } => {
            let out: CommandAccepted = api.call(api.http.post(format!("{}/v1/jobs/{id}/retry", api.base))).await?;
            let text = if cli.json { serde_json::to_string(&out)? } else { format!("queued again (seq {})", out.seq) };
            println!("{text}");
        }
        Command::Logs { id, follow } => {
            let url = format!("{}/v1/jobs/{id}/logs?follow={follow}", api.base);
            // No overall timeout: a followed job may run for hours.
            let http = reqwest::Client::builder().default_headers(api.headers.clone()).build()?;
            let mut resp = http.get(url).send().await.context("cannot reach the fetchml api")?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                bail!(
                    "{status}: {}: {}",
                    body["error"]["code"].as_str().unwrap_or(""),
                    body["error"]["message"].as_str().unwrap_or("")
                );
            }
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if cli.json {
                        print!("{}", String::from_utf8_lossy(&line));
                    } else if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        println!("{}", v["line"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        Command::Whoami => {
            let out: Value = api.call(api.http.get(format!("{}/v1/auth/whoami", api.base))).await?;
            println!(
                "{}",
                if cli.json {
                    out.to_string()
                } else {
                    format!("{} ({})", out["user"].as_str().unwrap_or(""), out["role"].as_str().unwrap_or(""))
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line about a job: id, state, attempt, how its last attempt ended and
/// why. Only what the job has is printed: an attempt that ended without an
/// exit code (killed by a signal, lost with its worker, refused before it
/// started) says so by its signal or failure class, never "exit null".
fn status_line(job: &Value) -> String {
    let mut parts = vec![
        job["id"].as_str().unwrap_or("").to_owned(),
        job["state"].as_str().unwrap_or("").to_owned(),
        format!("attempt {}", job["attempt"].as_u64().unwrap_or(0)),
    ];
    let class = job["failure_class"].as_str();
    if let Some(code) = job["exit_code"].as_i64() {
        parts.push(format!("exit {code}"));
    } else if let Some(sig) = job["signal"].as_i64() {
        parts.push(format!("signal {sig}"));
    } else if class.is_some() {
        parts.push("no exit code".to_owned());
    }
    if let Some(class) = class {
        parts.push(format!("{class} failure"));
    }
    if job["state"] == "retry_scheduled"
        && let Some(nb) = job["not_before"].as_str()
    {
        parts.push(format!("next attempt after {nb}"));
    }
    if let Some(reason) = job["reason"].as_str().filter(|r| !r.is_empty()) {
        parts.push(reason.to_owned());
    }
    parts.join("  ")
}

/// Polls the job until it ends (the streams issue replaces this with a
/// WebSocket subscription); exits with the job's exit code, or 1.
async fn wait_for(api: &Api, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut delay = Duration::from_millis(50);
    loop {
        let job = api.job(id).await?;
        let state = job["state"].as_str().unwrap_or("");
        if TERMINAL.contains(&state) {
            if json {
                println!("{job}");
            } else {
                eprintln!("{id}: {state}");
            }
            let code = job["exit_code"].as_i64().unwrap_or(if state == "succeeded" { 0 } else { 1 });
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 14: `ml status` printed "exit null" for an attempt that ended
    /// without an exit code.
    #[test]
    fn status_says_how_an_attempt_ended_without_printing_null() {
        let failed = json!({"id": "j", "state": "failed", "attempt": 1, "exit_code": null, "signal": null,
            "failure_class": "code", "reason": "working dir out leaves the job root"});
        let line = status_line(&failed);
        assert_eq!(line, "j  failed  attempt 1  no exit code  code failure  working dir out leaves the job root");
        let killed = json!({"id": "j", "state": "dead_lettered", "attempt": 3, "exit_code": null, "signal": 9,
            "failure_class": "infrastructure", "reason": "killed by signal 9"});
        assert_eq!(
            status_line(&killed),
            "j  dead_lettered  attempt 3  signal 9  infrastructure failure  killed by signal 9"
        );
        let ok = json!({"id": "j", "state": "succeeded", "attempt": 1, "exit_code": 0, "signal": null,
            "failure_class": null, "reason": null});
        assert_eq!(status_line(&ok), "j  succeeded  attempt 1  exit 0");
        let queued = json!({"id": "j", "state": "queued", "attempt": 0, "exit_code": null});
        assert_eq!(status_line(&queued), "j  queued  attempt 0");
        for job in [failed, killed, ok, queued] {
            assert!(!status_line(&job).contains("null"));
        }
    }
}
