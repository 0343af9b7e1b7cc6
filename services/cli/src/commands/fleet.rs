//! `ml workers` and `ml pools`: the fleet and what waits for it.

use super::Ctx;
use super::jobs::{fetch_list, rows};
use crate::cli::WorkersArgs;
use crate::error::{CliError, Result};
use crate::output::{ago, opt};
use chrono::{DateTime, Utc};
use comfy_table::Cell;
use fetchml_api_types::{JobsAnswer, ListJobsQuery, Worker, WorkerList, WorkersQuery};
use fetchml_events::job::JobStatus;
use serde::Serialize;
use std::collections::BTreeMap;

fn workers_of(ctx: &Ctx, list: &WorkerList) -> Result<Vec<Worker>> {
    list.items
        .iter()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| CliError::Protocol { url: ctx.api.base.clone(), cause: format!("a worker: {e}") })
        })
        .collect()
}

pub async fn workers(ctx: &Ctx, a: &WorkersArgs) -> Result<()> {
    let q = WorkersQuery { history: a.history.then_some(true) };
    let list: WorkerList = ctx.api.get_query("/v1/workers", &q).await?;
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    let ws = workers_of(ctx, &list)?;
    let mut t = if a.history {
        ctx.out.table(&["ID", "POOL", "LABELS", "CONCURRENCY", "HOST", "PID", "STATE", "STARTED", "STOPPED"])
    } else {
        ctx.out.table(&["ID", "POOL", "LABELS", "RUNNING", "HOST", "PID", "STARTED", "SEEN"])
    };
    for w in &ws {
        let labels = if w.labels.is_empty() { "-".into() } else { w.labels.join(",") };
        if a.history {
            t.add_row(vec![
                Cell::new(&w.id),
                Cell::new(&w.pool),
                Cell::new(labels),
                Cell::new(w.concurrency),
                Cell::new(&w.host),
                Cell::new(w.pid),
                Cell::new(opt(w.state.as_deref())),
                Cell::new(ago(w.started_at)),
                Cell::new(w.stopped_at.map(ago).unwrap_or_else(|| "-".into())),
            ]);
        } else {
            let running = format!(
                "{}/{}{}",
                w.running.unwrap_or(0),
                w.concurrency,
                if w.draining == Some(true) { " draining" } else { "" }
            );
            t.add_row(vec![
                Cell::new(&w.id),
                Cell::new(&w.pool),
                Cell::new(labels),
                Cell::new(running),
                Cell::new(&w.host),
                Cell::new(w.pid),
                Cell::new(ago(w.started_at)),
                Cell::new(w.seen_at.map(ago).unwrap_or_else(|| "-".into())),
            ]);
        }
    }
    if ws.is_empty() {
        eprintln!("No {}workers.", if a.history { "" } else { "live " });
    } else {
        ctx.out.print_table(&mut t);
    }
    Ok(())
}

/// One queue: a pool at one priority.
#[derive(Serialize, Default)]
struct Queue {
    pool: String,
    priority: i32,
    /// Waiting for a worker now.
    queued: u64,
    /// Waiting for a retry's backoff to pass.
    retry_scheduled: u64,
    /// When the longest-waiting of them was created.
    oldest: Option<DateTime<Utc>>,
}

/// The live workers of one pool.
#[derive(Serialize, Default)]
struct PoolWorkers {
    pool: String,
    workers: u64,
    running: u64,
    concurrency: u64,
}

/// `ml pools --json`.
#[derive(Serialize)]
struct PoolsOut {
    queues: Vec<Queue>,
    workers: Vec<PoolWorkers>,
}

/// Counted from the caller's job list (waiting states) and the live workers:
/// what the api offers every role, with no endpoint of its own.
pub async fn pools(ctx: &Ctx) -> Result<()> {
    let mut queues: BTreeMap<(String, std::cmp::Reverse<i32>), Queue> = BTreeMap::new();
    for state in [JobStatus::Queued, JobStatus::RetryScheduled] {
        let q = ListJobsQuery { state: Some(state), limit: Some(500), ..ListJobsQuery::default() };
        let JobsAnswer::Page(page) = fetch_list(ctx, q, true).await? else { continue };
        for r in rows(&page, ctx)? {
            let e = queues.entry((r.pool.clone(), std::cmp::Reverse(r.priority))).or_insert_with(|| Queue {
                pool: r.pool.clone(),
                priority: r.priority,
                ..Queue::default()
            });
            if state == JobStatus::Queued {
                e.queued += 1
            } else {
                e.retry_scheduled += 1
            }
            e.oldest = Some(e.oldest.map_or(r.created_at, |o| o.min(r.created_at)));
        }
    }
    let list: WorkerList = ctx.api.get_query("/v1/workers", &WorkersQuery::default()).await?;
    let mut by_pool: BTreeMap<String, PoolWorkers> = BTreeMap::new();
    for w in workers_of(ctx, &list)? {
        let p =
            by_pool.entry(w.pool.clone()).or_insert_with(|| PoolWorkers { pool: w.pool.clone(), ..Default::default() });
        p.workers += 1;
        p.running += w.running.unwrap_or(0);
        p.concurrency += w.concurrency;
    }
    let out = PoolsOut { queues: queues.into_values().collect(), workers: by_pool.into_values().collect() };
    if ctx.out.json {
        return ctx.out.json(&out);
    }
    let mut t = ctx.out.table(&["POOL", "PRIORITY", "QUEUED", "RETRY WAIT", "OLDEST", "WORKERS", "BUSY"]);
    let mut pools_shown = std::collections::BTreeSet::new();
    for q in &out.queues {
        let w = out.workers.iter().find(|w| w.pool == q.pool);
        let first = pools_shown.insert(q.pool.clone());
        t.add_row(vec![
            Cell::new(&q.pool),
            Cell::new(q.priority),
            Cell::new(q.queued),
            Cell::new(q.retry_scheduled),
            Cell::new(q.oldest.map(ago).unwrap_or_else(|| "-".into())),
            Cell::new(if first { w.map_or("0".into(), |w| w.workers.to_string()) } else { String::new() }),
            Cell::new(if first {
                w.map_or("-".into(), |w| format!("{}/{}", w.running, w.concurrency))
            } else {
                String::new()
            }),
        ]);
    }
    for w in out.workers.iter().filter(|w| !pools_shown.contains(&w.pool)) {
        t.add_row(vec![
            Cell::new(&w.pool),
            Cell::new("-"),
            Cell::new(0),
            Cell::new(0),
            Cell::new("-"),
            Cell::new(w.workers),
            Cell::new(format!("{}/{}", w.running, w.concurrency)),
        ]);
    }
    if out.queues.is_empty() && out.workers.is_empty() {
        eprintln!("Nothing waits and no worker is live.");
    } else {
        ctx.out.print_table(&mut t);
    }
    Ok(())
}
