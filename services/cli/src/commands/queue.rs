//! `ml queue`: one job, a batch file, or a grid sweep. The spec is built from
//! `--from-file` (YAML or JSON, the api's own `JobSpec`), then the flags
//! override it; the api validates it (with `--dry-run` it only validates).

use super::{Ctx, key_value};
use crate::cli::{Executor, QueueArgs, RetryOn};
use crate::error::{CliError, Result};
use fetchml_api_types::{BatchAnswer, BatchItem, BatchRequest, DryRun, Submitted};
use fetchml_events::ids::PoolName;
use fetchml_events::job::{ExecutorKind, FailureClass, JobSpec};
use serde_json::Value;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::Path;

/// Most jobs one grid or batch may hold (the api's batch limit).
const MAX_JOBS: usize = 1000;

pub async fn run(ctx: &Ctx, args: &QueueArgs) -> Result<u8> {
    let specs = specs(args)?;
    let many = args.batch.is_some() || !args.grid.is_empty();
    if args.dry_run {
        return dry_run(ctx, &specs, many).await;
    }
    let ids: Vec<String> = if many {
        let key = match &args.idempotency_key {
            Some(k) => k.clone(),
            None => derived_key(&specs)?,
        };
        let request = BatchRequest { jobs: specs.iter().map(to_value).collect::<Result<_>>()? };
        let answer: BatchAnswer =
            ctx.api.post("/v1/jobs/batch", Some(&request), &[("Idempotency-Key", key.clone())]).await?;
        if ctx.out.json {
            ctx.out.json(&answer)?;
        }
        let mut ids = Vec::new();
        let mut again = 0;
        for item in &answer.jobs {
            if let BatchItem::Stored(s) = item {
                again += usize::from(s.duplicate);
                ids.push(s.id.to_string());
                if !ctx.out.json {
                    println!("{}", s.id);
                }
            }
        }
        eprintln!(
            "Queued {} jobs{} (idempotency key {key}).",
            ids.len() - again,
            if again > 0 { format!(", {again} already queued before") } else { String::new() }
        );
        ids
    } else {
        let extra: Vec<(&str, String)> = args.idempotency_key.iter().map(|k| ("Idempotency-Key", k.clone())).collect();
        let spec = specs.first().ok_or_else(|| CliError::usage("nothing to queue"))?;
        let answer: Submitted = ctx.api.post("/v1/jobs", Some(spec), &extra).await?;
        if ctx.out.json {
            ctx.out.json(&answer)?;
        } else {
            println!("{}", answer.id);
        }
        if ctx.out.stderr_tty && !args.watch && !args.wait {
            let what = if answer.duplicate { "Already queued (same idempotency key)" } else { "Queued" };
            eprintln!("{what}: {} in pool {}. Follow it with: ml watch {}", answer.id, spec.pool, answer.id);
        }
        vec![answer.id.to_string()]
    };
    if args.watch || args.wait {
        let mode = if args.watch { super::watch::Mode::Live } else { super::watch::Mode::Quiet };
        return super::watch::run(ctx, &ids, mode, 5).await;
    }
    Ok(crate::error::code::OK)
}

async fn dry_run(ctx: &Ctx, specs: &[JobSpec], many: bool) -> Result<u8> {
    let mut checked = Vec::with_capacity(specs.len());
    for spec in specs {
        let d: DryRun = ctx.api.post("/v1/jobs?dry_run=true", Some(spec), &[]).await?;
        checked.push(d);
    }
    if ctx.out.json {
        if many { ctx.out.json(&checked)? } else { ctx.out.json(&checked[0])? }
    } else {
        for d in &checked {
            let yaml = serde_yaml_ng::to_string(&d.spec).map_err(|e| CliError::local("YAML output", e))?;
            if many {
                println!("---");
            }
            print!("{yaml}");
        }
    }
    eprintln!(
        "The api accepts {}; nothing was queued (--dry-run).",
        if many { format!("all {} jobs", checked.len()) } else { "this job".into() }
    );
    Ok(crate::error::code::OK)
}

fn to_value(spec: &JobSpec) -> Result<Value> {
    serde_json::to_value(spec).map_err(|e| CliError::local("job spec", e))
}

/// The idempotency key of a batch or grid: a digest of what it asks, so
/// that running the same sweep again queues nothing new.
fn derived_key(specs: &[JobSpec]) -> Result<String> {
    let text = serde_json::to_string(specs).map_err(|e| CliError::local("job spec", e))?;
    Ok(format!("ml-{}", &hex::encode(sha2::Sha256::digest(text.as_bytes()))[..32]))
}

/// Every spec the command line asks for.
pub fn specs(args: &QueueArgs) -> Result<Vec<JobSpec>> {
    if let Some(path) = &args.batch {
        let text = read(path)?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .map_err(|e| CliError::usage(format!("{}:{}: not a JSON object: {e}", path.display(), n + 1)))?;
            out.push(apply(args, base(v, args, &format!("{}:{}", path.display(), n + 1))?)?);
        }
        if out.is_empty() {
            return Err(CliError::usage(format!("{}: no job spec in it", path.display())));
        }
        if out.len() > MAX_JOBS {
            return Err(CliError::usage(format!("{}: {} jobs; at most {MAX_JOBS} at once", path.display(), out.len())));
        }
        return Ok(out);
    }
    let file = match &args.from_file {
        Some(path) => serde_yaml_ng::from_str::<Value>(&read(path)?)
            .map_err(|e| CliError::usage(format!("{}: not YAML or JSON: {e}", path.display())))?,
        None => Value::Object(Default::default()),
    };
    let what = args.from_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the job".into());
    let spec = apply(args, base(file, args, &what)?)?;
    if args.grid.is_empty() {
        return Ok(vec![spec]);
    }
    grid(&spec, &args.grid)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))
}

/// A spec from a file's object, with the command line's command when it has one.
fn base(mut v: Value, args: &QueueArgs, what: &str) -> Result<JobSpec> {
    let Value::Object(map) = &mut v else {
        return Err(CliError::usage(format!("{what}: a job spec is an object (command:, pool:, ...)")));
    };
    if !args.command.is_empty() {
        map.insert("command".into(), Value::from(args.command.clone()));
    }
    if !map.contains_key("command") {
        return Err(CliError::usage("no command: put it after `--` (ml queue -- python train.py) or in --from-file"));
    }
    serde_json::from_value(v).map_err(|e| CliError::usage(format!("{what}: not a job spec: {e}")))
}

/// The flags, over the spec.
fn apply(args: &QueueArgs, mut s: JobSpec) -> Result<JobSpec> {
    if let Some(p) = &args.pool {
        s.pool = PoolName::parse(p.as_str()).map_err(|e| CliError::usage(format!("--pool {p:?}: {e}")))?;
    }
    if !args.labels.is_empty() {
        s.labels = args.labels.clone();
    }
    if let Some(c) = args.cpus {
        s.resources.cpus = Some(c);
    }
    if let Some(m) = &args.memory {
        s.resources.memory_mb = Some(memory_mb(m)?);
    }
    if let Some(g) = args.gpus {
        s.resources.gpus = g;
    }
    if let Some(p) = args.priority {
        s.priority = p;
    }
    if let Some(t) = &args.timeout {
        s.timeout_secs = Some(seconds(t)?);
    }
    if let Some(r) = args.retries {
        s.retry.max_attempts = r.saturating_add(1);
    }
    if !args.retry_on.is_empty() {
        s.retry.retry_on = args
            .retry_on
            .iter()
            .map(|r| match r {
                RetryOn::Infrastructure => FailureClass::Infrastructure,
                RetryOn::Code => FailureClass::Code,
                RetryOn::Resource => FailureClass::Resource,
                RetryOn::Unknown => FailureClass::Unknown,
            })
            .collect();
    }
    if let Some(e) = &args.experiment {
        s.experiment = Some(e.clone());
    }
    for t in &args.tags {
        let (k, v) = key_value("--tag", t)?;
        s.tags.insert(k.to_owned(), v.to_owned());
    }
    for f in &args.env_file {
        for (k, v) in env_file(f)? {
            s.env.insert(k, v);
        }
    }
    for e in &args.env {
        let (k, v) = key_value("--env", e)?;
        s.env.insert(k.to_owned(), v.to_owned());
    }
    if let Some(w) = &args.workdir {
        s.working_dir = Some(w.clone());
    }
    if let Some(x) = args.executor {
        s.executor = match x {
            Executor::Process => ExecutorKind::Process,
            Executor::Podman => ExecutorKind::Podman,
            Executor::Noop => ExecutorKind::Noop,
            Executor::Sleep => ExecutorKind::Sleep,
            Executor::Fail => ExecutorKind::Fail,
        };
    }
    if let Some(i) = &args.image {
        s.image = Some(i.clone());
    }
    if args.shell {
        s.shell = true;
    }
    Ok(s)
}

/// `512M`, `16G`, `1T`, `16GiB`; MiB without a unit.
pub fn memory_mb(s: &str) -> Result<u64> {
    let bad = || CliError::usage(format!("--memory {s:?}: expected a size like 512M or 16G"));
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit = t[digits..].trim().to_ascii_uppercase();
    let mult = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" | "M" => 1,
        "G" => 1024,
        "T" => 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// `90`, `90s`, `2h30m`: whole seconds.
pub fn seconds(s: &str) -> Result<u64> {
    if let Ok(n) = s.trim().parse::<u64>() {
        return Ok(n);
    }
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .map_err(|_| CliError::usage(format!("--timeout {s:?}: expected seconds or a duration like 90s, 2h30m")))
}

/// `KEY=VALUE` lines; `#` comments, blank lines and a leading `export` are
/// allowed; values may be quoted.
fn env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| CliError::usage(format!("{}:{}: expected KEY=VALUE", path.display(), n + 1)))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// One spec per combination of the grids' values, in order (the last grid
/// varies fastest).
fn grid(spec: &JobSpec, grids: &[String]) -> Result<Vec<JobSpec>> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for g in grids {
        let (name, values) = key_value("--grid", g)?;
        let values: Vec<String> = values.split(',').map(str::to_owned).collect();
        if values.iter().any(String::is_empty) {
            return Err(CliError::usage(format!("--grid {g:?}: an empty value")));
        }
        if axes.iter().any(|(n, _)| n == name) {
            return Err(CliError::usage(format!("--grid {name}: given twice")));
        }
        axes.push((name.to_owned(), values));
    }
    let total = axes.iter().try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len())).unwrap_or(usize::MAX);
    if total > MAX_JOBS {
        return Err(CliError::usage(format!("the grid makes {total} jobs; at most {MAX_JOBS} at once")));
    }
    let mut combos: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (name, values) in &axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(name.clone(), v.clone());
                    c
                })
            })
            .collect();
    }
    Ok(combos
        .into_iter()
        .map(|params| {
            let mut s = spec.clone();
            for (name, value) in &params {
                let hole = format!("{{{name}}}");
                for arg in &mut s.command {
                    *arg = arg.replace(&hole, value);
                }
                s.tags.insert(name.clone(), value.clone());
                s.env.insert(format!("FETCHML_PARAM_{}", env_name(name)), value.clone());
            }
            s
        })
        .collect())
}

/// A parameter's name as an environment variable's: upper case, `_` for
/// anything but letters and digits.
fn env_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_as_people_write_them() {
        assert_eq!(memory_mb("512").expect("mib"), 512);
        assert_eq!(memory_mb("512M").expect("m"), 512);
        assert_eq!(memory_mb("16G").expect("g"), 16384);
        assert_eq!(memory_mb("16GiB").expect("gib"), 16384);
        assert!(memory_mb("lots").is_err());
        assert_eq!(seconds("90").expect("s"), 90);
        assert_eq!(seconds("2h30m").expect("hm"), 9000);
        assert!(seconds("soon").is_err());
    }

    #[test]
    fn a_grid_is_the_cartesian_product_substituted_and_tagged() {
        let spec = JobSpec::command(["train", "--lr", "{lr}", "--bs={bs}"]);
        let jobs = grid(&spec, &["lr=0.1,0.01".into(), "bs=32,64".into()]).expect("grid");
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[1].command, ["train", "--lr", "0.1", "--bs=64"]);
        assert_eq!(jobs[2].tags["lr"], "0.01");
        assert_eq!(jobs[3].env["FETCHML_PARAM_BS"], "64");
        assert!(grid(&spec, &["lr=".into()]).is_err());
        assert_eq!(derived_key(&jobs).expect("key"), derived_key(&jobs).expect("key"));
    }
}
