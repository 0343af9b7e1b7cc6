//! `ml audit`: the trail as an auditor reads it (`list`), its keys, an export
//! to a file, and its verification: of an export with no server at all (the
//! same verifier as `fetchml audit verify`), or of the live log by the api.

use super::Ctx;
use crate::cli::{AuditExportArgs, AuditListArgs, AuditVerifyArgs};
use crate::error::{CliError, Result, code};
use crate::output::opt;
use comfy_table::Cell;
use fetchml_api_types::{AuditExportQuery, AuditOrder, AuditPage, AuditQuery, AuditVerifyQuery, VerifyFrom};
use http_body_util::BodyExt;
use std::io::Write;

pub async fn list(ctx: &Ctx, a: &AuditListArgs) -> Result<()> {
    let mut q = AuditQuery {
        family: a.family.clone(),
        actor: a.actor.clone(),
        aggregate: a.aggregate.clone(),
        kind: a.kind.clone(),
        outcome: a.refused.then_some(fetchml_api_types::AuditOutcome::Refused),
        since: a.since,
        until: a.until,
        order: a.oldest.then_some(AuditOrder::Oldest),
        limit: Some(a.limit),
        cursor: a.cursor,
    };
    let mut pages = Vec::new();
    loop {
        let page: AuditPage = ctx.api.get_query("/v1/audit", &q).await?;
        let next = page.next;
        let enough = pages.iter().map(|p: &AuditPage| p.items.len()).sum::<usize>() + page.items.len() >= a.limit;
        pages.push(page);
        // One page unless --all; a short page with a `next` means the api
        // read its bounded stretch of the log: follow it for a full page.
        match next {
            Some(n) if a.all || !enough => q.cursor = Some(n),
            _ => break,
        }
    }
    if ctx.out.json {
        let items: Vec<_> = pages.iter().flat_map(|p| p.items.iter()).collect();
        let next = pages.last().and_then(|p| p.next);
        return ctx.out.json(&serde_json::json!({"items": items, "next": next}));
    }
    let mut t = ctx.out.table(&["SEQ", "TIME", "FAMILY", "TYPE", "ACTOR", "OUTCOME", "SOURCE", "AGGREGATE"]);
    for e in pages.iter().flat_map(|p| p.items.iter()) {
        let actor = ["name", "id", "component"].iter().find_map(|k| e.actor.get(*k).and_then(|v| v.as_str()));
        t.add_row(vec![
            Cell::new(e.seq),
            Cell::new(e.occurred_at.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S")),
            Cell::new(&e.family),
            Cell::new(&e.kind),
            Cell::new(opt(actor)),
            Cell::new(format!("{:?}", e.outcome).to_lowercase()),
            Cell::new(opt(e.source.as_deref())),
            Cell::new(&e.aggregate_id),
        ]);
    }
    ctx.out.print_table(&mut t);
    if let Some(n) = pages.last().and_then(|p| p.next) {
        eprintln!("more: ml audit list --cursor {n} (or --all)");
    }
    Ok(())
}

pub async fn keys(ctx: &Ctx) -> Result<()> {
    let keys: serde_json::Value = ctx.api.get("/v1/audit/keys").await?;
    // The answer is what `--keys FILE` reads: print it as is.
    ctx.out.json(&keys)
}

pub async fn export(ctx: &Ctx, a: &AuditExportArgs) -> Result<()> {
    let q = AuditExportQuery { from_seq: a.from, to_seq: a.to };
    let mut body = ctx.api.stream("/v1/audit/export", &q).await?;
    let mut sink: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| CliError::local(p.display().to_string(), e))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ctx.api.transport(&e))?;
        let Ok(chunk) = frame.into_data() else { continue };
        bytes += chunk.len() as u64;
        sink.write_all(&chunk).map_err(|e| CliError::local("the export", e))?;
    }
    sink.flush().map_err(|e| CliError::local("the export", e))?;
    if let Some(p) = &a.out {
        eprintln!(
            "exported {bytes} bytes to {}; verify with: ml audit verify --file {} --keys KEYS.json",
            p.display(),
            p.display()
        );
    }
    Ok(())
}

/// 0 when intact, [`code::BROKEN`] when not.
pub async fn verify(ctx: &Ctx, a: &AuditVerifyArgs) -> Result<u8> {
    let verdict = match &a.file {
        Some(file) => offline(a, file)?,
        None => {
            let q = AuditVerifyQuery { from: a.from_checkpoint.then_some(VerifyFrom::Checkpoint) };
            let v: serde_json::Value = ctx.api.get_query("/v1/audit/verify", &q).await?;
            let intact = v.get("intact").and_then(serde_json::Value::as_bool).unwrap_or(false);
            let summary = v.get("summary").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
            (intact, summary, v)
        }
    };
    let (intact, summary, v) = verdict;
    if ctx.out.json {
        ctx.out.json(&v)?;
    } else {
        println!("{summary}");
    }
    Ok(if intact { code::OK } else { code::BROKEN })
}

/// Verifies an export file with only the keys named on the command line.
fn offline(a: &AuditVerifyArgs, file: &std::path::Path) -> Result<(bool, String, serde_json::Value)> {
    let mut ring = fetchml_audit::Keyring::default();
    for k in &a.public_keys {
        ring.add(
            fetchml_audit::PublicKey::parse_arg(k).map_err(|e| CliError::usage(format!("--public-key {k}: {e}")))?,
        );
    }
    if let Some(path) = &a.keys {
        let text = std::fs::read_to_string(path).map_err(|e| CliError::local(path.display().to_string(), e))?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CliError::usage(format!("{}: not JSON: {e}", path.display())))?;
        let listed = answer.get("keys").and_then(|k| k.as_array()).ok_or_else(|| {
            CliError::usage(format!("{}: no \"keys\" list (save `ml audit keys` into it)", path.display()))
        })?;
        for k in listed {
            let field = |name: &str| k.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            ring.add(
                fetchml_audit::PublicKey::new(field("id"), field("public_key"))
                    .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?,
            );
        }
    }
    if ring.keys().is_empty() {
        return Err(CliError::usage(
            "name the keys you trust with --public-key ID=HEX or --keys FILE (an export's own keys are not trusted)",
        ));
    }
    let input = std::fs::File::open(file).map_err(|e| CliError::local(file.display().to_string(), e))?;
    let verdict = fetchml_audit::export::verify_export(std::io::BufReader::new(input), ring)
        .map_err(|e| CliError::local(file.display().to_string(), e))?;
    let mut v = serde_json::to_value(&verdict).unwrap_or_default();
    v["summary"] = serde_json::Value::String(verdict.to_string());
    Ok((verdict.intact, verdict.to_string(), v))
}
