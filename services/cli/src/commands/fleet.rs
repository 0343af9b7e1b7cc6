//! `ml workers` and `ml pools`: the fleet and what waits for it.

use super::Ctx;
use crate::cli::{PoolAction, PoolsArgs, WorkerAction, WorkersArgs};
use crate::error::{CliError, Result};
use crate::output::{ago, opt};
use comfy_table::Cell;
use fetchml_api_types::{CommandAccepted, PoolList, ReasonRequest, Worker, WorkerList, WorkersQuery};

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
    if let Some(WorkerAction::Drain { id, reason }) = &a.action {
        let body = reason.clone().map(|r| ReasonRequest { reason: Some(r) });
        let accepted: CommandAccepted = ctx.api.post(&format!("/v1/workers/{id}/drain"), body.as_ref(), &[]).await?;
        if ctx.out.json {
            return ctx.out.json(&accepted);
        }
        eprintln!("Worker {id} drains: it finishes what runs and takes nothing new (event {}).", accepted.seq);
        return Ok(());
    }
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

/// `ml pools`: the scheduler's view of each pool (`GET /v1/pools`), or
/// pause/resume one.
pub async fn pools(ctx: &Ctx, a: &PoolsArgs) -> Result<()> {
    if let Some(action) = &a.action {
        let (path, reason, done) = match action {
            PoolAction::Pause { pool, reason } => (format!("/v1/pools/{pool}/pause"), reason.clone(), "paused"),
            PoolAction::Resume { pool } => (format!("/v1/pools/{pool}/resume"), None, "resumed"),
        };
        let body = reason.map(|r| ReasonRequest { reason: Some(r) });
        let accepted: CommandAccepted = ctx.api.post(&path, body.as_ref(), &[]).await?;
        if ctx.out.json {
            return ctx.out.json(&accepted);
        }
        eprintln!("Pool {done} (event {}).", accepted.seq);
        return Ok(());
    }
    let list: PoolList = ctx.api.get("/v1/pools").await?;
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    if list.items.is_empty() {
        eprintln!("Nothing waits and no worker is live.");
        return Ok(());
    }
    let mut t = ctx.out.table(&[
        "POOL",
        "WAITING",
        "BY PRIORITY",
        "OLDEST WAIT",
        "RUNNING",
        "WORKERS",
        "FREE SLOTS",
        "GPUS FREE",
    ]);
    for p in &list.items {
        let by_prio: Vec<String> = p.waiting_by_priority.iter().rev().map(|(prio, n)| format!("{prio}:{n}")).collect();
        let workers = if p.draining_workers > 0 {
            format!("{} ({} draining)", p.workers, p.draining_workers)
        } else {
            p.workers.to_string()
        };
        t.add_row(vec![
            Cell::new(if p.paused { format!("{} (paused)", p.pool) } else { p.pool.clone() }),
            Cell::new(p.waiting),
            Cell::new(if by_prio.is_empty() { "-".into() } else { by_prio.join(" ") }),
            Cell::new(p.oldest_wait_secs.map(|s| format!("{s:.0}s")).unwrap_or_else(|| "-".into())),
            Cell::new(p.running + p.assigned),
            Cell::new(workers),
            Cell::new(p.free_slots),
            Cell::new(if p.gpus == 0 { "-".into() } else { format!("{}/{}", p.free_gpus, p.gpus) }),
        ]);
    }
    ctx.out.print_table(&mut t);
    Ok(())
}
