//! `ml experiments`, `ml experiment NAME`, `ml compare JOB JOB...`.

use super::jobs::{fetch_list, rows, shell_words};
use super::{Ctx, job_id};
use crate::cli::{CompareArgs, ExperimentArgs};
use crate::error::{CliError, Result};
use crate::output::{ago, num};
use comfy_table::Cell;
use fetchml_api_types::{Experiment, ExperimentList, JobAnswer, JobRow, JobsAnswer, ListJobsQuery};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A path segment, percent-encoded (experiment names are free text).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(ctx: &Ctx, v: &Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| CliError::Protocol { url: ctx.api.base.clone(), cause: format!("{what}: {e}") })
}

/// `last [min..max]` per metric.
fn ranges(e: &Experiment) -> String {
    e.metrics
        .iter()
        .map(|(k, m)| format!("{k}={} [{}..{}]", num(m.last), num(m.min), num(m.max)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn list(ctx: &Ctx) -> Result<()> {
    let list: ExperimentList = ctx.api.get("/v1/experiments").await?;
    if ctx.out.json {
        return ctx.out.json(&list);
    }
    let mut t = ctx.out.table(&[
        "NAME",
        "JOBS",
        "WAITING",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "UPDATED",
        "METRICS (last [min..max])",
    ]);
    for v in &list.items {
        let e: Experiment = decode(ctx, v, "an experiment")?;
        t.add_row(vec![
            Cell::new(&e.name),
            Cell::new(e.jobs),
            Cell::new(e.waiting),
            Cell::new(e.running),
            Cell::new(e.succeeded),
            Cell::new(e.failed),
            Cell::new(e.cancelled),
            Cell::new(e.updated_at.map(ago).unwrap_or_else(|| "-".into())),
            Cell::new(ranges(&e)),
        ]);
    }
    if list.items.is_empty() {
        eprintln!("No experiments.");
    } else {
        ctx.out.print_table(&mut t);
    }
    Ok(())
}

/// `ml experiment NAME --json`.
#[derive(Serialize)]
struct ExperimentOut {
    experiment: Experiment,
    /// The experiment's jobs (rows of `GET /v1/jobs`), in the order shown.
    runs: Vec<JobRow>,
}

pub async fn show(ctx: &Ctx, a: &ExperimentArgs) -> Result<()> {
    let e: Experiment = ctx.api.get(&format!("/v1/experiments/{}", segment(&a.name))).await?;
    let q = ListJobsQuery { experiment: Some(a.name.clone()), limit: Some(500), ..ListJobsQuery::default() };
    let JobsAnswer::Page(page) = fetch_list(ctx, q, true).await? else {
        return Err(CliError::Protocol { url: ctx.api.base.clone(), cause: "expected a page".into() });
    };
    let mut runs = rows(&page, ctx)?;
    if let Some(sort) = &a.sort {
        let (metric, desc) = match sort.strip_prefix('-') {
            Some(m) => (m, true),
            None => (sort.as_str(), false),
        };
        if !runs.iter().any(|r| r.metrics.contains_key(metric)) && !runs.is_empty() {
            return Err(CliError::usage(format!(
                "--sort {sort}: no run of {} has a metric {metric:?} (it has: {})",
                a.name,
                e.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        // Runs without the metric go last, whatever the direction.
        runs.sort_by(|x, y| {
            let (vx, vy) = (x.metrics.get(metric).map(|m| m.value), y.metrics.get(metric).map(|m| m.value));
            match (vx, vy) {
                (Some(a), Some(b)) => {
                    let o = a.total_cmp(&b);
                    if desc { o.reverse() } else { o }
                }
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            }
        });
    }
    if ctx.out.json {
        return ctx.out.json(&ExperimentOut { experiment: e, runs });
    }
    println!(
        "{}: {} jobs ({} waiting, {} running, {} succeeded, {} failed, {} cancelled)",
        ctx.out.paint(&e.name, crate::output::BOLD),
        e.jobs,
        e.waiting,
        e.running,
        e.succeeded,
        e.failed,
        e.cancelled
    );
    let tag_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.tags.iter().flat_map(|t| t.keys())).collect();
    let metric_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
    let mut header: Vec<String> = vec!["ID".into(), "STATE".into()];
    header.extend(tag_keys.iter().map(|k| k.to_string()));
    header.extend(metric_keys.iter().map(|k| k.to_uppercase()));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = ctx.out.table(&header_refs);
    for r in &runs {
        let mut cells = vec![Cell::new(r.id), ctx.out.state_cell(r.state)];
        for k in &tag_keys {
            cells.push(Cell::new(r.tags.as_ref().and_then(|t| t.get(*k)).map(String::as_str).unwrap_or("-")));
        }
        for k in &metric_keys {
            cells.push(Cell::new(r.metrics.get(*k).map(|m| num(m.value)).unwrap_or_else(|| "-".into())));
        }
        t.add_row(cells);
    }
    ctx.out.print_table(&mut t);
    if !e.metrics.is_empty() {
        println!("metrics over all runs (last [min..max]): {}", ranges(&e));
    }
    Ok(())
}

/// One spec field of the compared jobs.
#[derive(Serialize)]
struct FieldRow {
    field: String,
    same: bool,
    values: Vec<Option<String>>,
}

/// One metric of the compared jobs (last values).
#[derive(Serialize)]
struct MetricRow {
    name: String,
    values: Vec<Option<f64>>,
}

/// `ml compare --json`.
#[derive(Serialize)]
struct CompareOut {
    jobs: Vec<JobAnswer>,
    fields: Vec<FieldRow>,
    metrics: Vec<MetricRow>,
}

/// A job as `field -> text`: its outcome and spec, nested fields dotted.
fn flatten(job: &JobAnswer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (head, spec) = match job {
        JobAnswer::Full(j) => {
            let mut v = serde_json::to_value(&j.spec).unwrap_or(Value::Null);
            if let Some(cmd) = v.get_mut("command") {
                *cmd = Value::String(shell_words(&j.spec.command));
            }
            (serde_json::json!({"state": j.state, "attempt": j.attempt, "exit_code": j.exit_code, "owner": j.owner}), v)
        }
        JobAnswer::Summary(j) => (
            serde_json::json!({"state": j.state, "attempt": j.attempt, "exit_code": j.exit_code}),
            serde_json::json!({"pool": j.pool, "priority": j.priority, "labels": j.labels,
                "experiment": j.experiment, "resources": j.resources}),
        ),
    };
    walk("", &head, &mut out);
    walk("", &spec, &mut out);
    out
}

fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), "-".into());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

pub async fn compare(ctx: &Ctx, a: &CompareArgs) -> Result<()> {
    let mut jobs = Vec::new();
    for j in &a.jobs {
        let id = job_id(j)?;
        jobs.push(ctx.api.get::<JobAnswer>(&format!("/v1/jobs/{id}")).await?);
    }
    let flat: Vec<BTreeMap<String, String>> = jobs.iter().map(flatten).collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    let fields: Vec<FieldRow> = keys
        .into_iter()
        .map(|k| {
            let values: Vec<Option<String>> = flat.iter().map(|f| f.get(k).cloned()).collect();
            let same = values.windows(2).all(|w| w[0] == w[1]);
            FieldRow { field: k.clone(), same, values }
        })
        .collect();
    let metrics_of = |j: &JobAnswer| match j {
        JobAnswer::Full(v) => v.metrics.clone(),
        JobAnswer::Summary(v) => v.metrics.clone(),
    };
    let all_metrics: Vec<_> = jobs.iter().map(metrics_of).collect();
    let names: BTreeSet<&String> = all_metrics.iter().flat_map(|m| m.keys()).collect();
    let metrics: Vec<MetricRow> = names
        .into_iter()
        .map(|n| MetricRow { name: n.clone(), values: all_metrics.iter().map(|m| m.get(n).map(|x| x.value)).collect() })
        .collect();
    if ctx.out.json {
        return ctx.out.json(&CompareOut { jobs, fields, metrics });
    }
    let mut header = vec!["FIELD".to_owned()];
    header.extend(a.jobs.iter().map(|j| j.chars().take(8).collect::<String>()));
    let refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = ctx.out.table(&refs);
    let mut hidden = 0;
    for f in &fields {
        if f.same && !a.all {
            hidden += 1;
            continue;
        }
        let mut cells = vec![Cell::new(&f.field)];
        cells.extend(f.values.iter().map(|v| Cell::new(v.as_deref().unwrap_or("-"))));
        t.add_row(cells);
    }
    for m in &metrics {
        let mut cells = vec![Cell::new(format!("metric {}", m.name))];
        cells.extend(m.values.iter().map(|v| Cell::new(v.map(num).unwrap_or_else(|| "-".into()))));
        t.add_row(cells);
    }
    ctx.out.print_table(&mut t);
    if hidden > 0 {
        eprintln!("{hidden} fields are the same in every job (--all shows them).");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_one_path_segment() {
        assert_eq!(segment("res net/2"), "res%20net%2F2");
        assert_eq!(segment("a-b_c.d~"), "a-b_c.d~");
    }
}
