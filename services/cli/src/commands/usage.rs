//! `ml usage`: what ended attempts held, summed by the dimensions asked for.

use super::Ctx;
use crate::cli::UsageArgs;
use crate::error::Result;
use crate::output::{num, opt};
use comfy_table::Cell;
use fetchml_api_types::{UsageDimension, UsageQuery, UsageReport};

/// Seconds as hours, the unit usage is read in.
fn hours(s: f64) -> String {
    num(s / 3600.0)
}

pub async fn show(ctx: &Ctx, a: &UsageArgs) -> Result<()> {
    let q = UsageQuery { since: a.since, until: a.until, group_by: Some(a.by.clone()), after_seq: None };
    let report: UsageReport = ctx.api.get_query("/v1/usage", &q).await?;
    if ctx.out.json {
        return ctx.out.json(&report);
    }
    let dims: Vec<&str> = report.group_by.iter().map(|d| d.as_str()).collect();
    let mut header: Vec<String> = dims.iter().map(|d| d.to_uppercase()).collect();
    header.extend(["ATTEMPTS", "SLOT-H", "GPU-H", "CPU-H", "MEM-GB-H"].map(String::from));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = ctx.out.table(&header);
    let figures = |attempts: u64, slot: f64, gpu: f64, cpu: f64, mem_mb_s: u64| {
        [attempts.to_string(), hours(slot), hours(gpu), hours(cpu), hours(mem_mb_s as f64 / 1024.0)].map(Cell::new)
    };
    for r in &report.rows {
        let mut cells: Vec<Cell> = report
            .group_by
            .iter()
            .map(|d| {
                Cell::new(match d {
                    UsageDimension::User => opt(r.user.as_deref()),
                    UsageDimension::Group => opt(r.group.as_deref()),
                    UsageDimension::Pool => opt(r.pool.as_deref()),
                    UsageDimension::Day => opt(r.day),
                })
            })
            .collect();
        cells.extend(figures(r.attempts, r.slot_seconds, r.gpu_seconds, r.cpu_seconds, r.memory_mb_seconds));
        t.add_row(cells);
    }
    if report.rows.len() > 1 {
        let tt = &report.total;
        let mut cells: Vec<Cell> =
            report.group_by.iter().enumerate().map(|(i, _)| Cell::new(if i == 0 { "TOTAL" } else { "" })).collect();
        cells.extend(figures(tt.attempts, tt.slot_seconds, tt.gpu_seconds, tt.cpu_seconds, tt.memory_mb_seconds));
        t.add_row(cells);
    }
    if report.rows.is_empty() {
        eprintln!("No usage from {} to {}.", report.since, report.until);
    } else {
        ctx.out.print_table(&mut t);
    }
    Ok(())
}
