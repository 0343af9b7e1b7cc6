//! `GET /v1/audit`: the log itself, every family, for whoever holds
//! `audit:read`. Read from JetStream, not from a read model: the trail an
//! auditor reads is the system of record, strongly consistent with every
//! acknowledged command, and readable while Postgres is down.
//!
//! Filters that the subjects carry (family, aggregate) are applied by the
//! server; the others (actor, type, outcome, time) per event. One request
//! reads a bounded stretch of the log ([`SCAN_BUDGET`] events), so a filter
//! that matches rarely answers a short page with a `next` cursor instead of
//! scanning the whole log at once; `newest` first reads the log backwards in
//! windows of [`WINDOW`] events.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::body::Params;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use fetchml_api_types::{
    AuditEntry, AuditOrder, AuditOutcome, AuditPage, AuditQuery, DEFAULT_AUDIT_LIMIT, ErrorBody, MAX_AUDIT_LIMIT,
};
use fetchml_eventstore::{StartAt, StoredEvent};
use futures::StreamExt;
use serde_json::Value;

/// Events read per window when reading newest first.
const WINDOW: u64 = 1000;
/// Most events one request reads.
const SCAN_BUDGET: u64 = 20_000;

/// The event families: the token after `<ns>.ev.` in a subject.
const FAMILIES: &[&str] = &["job", "user", "worker", "pool", "audit"];

/// The filters applied per event.
struct Filter {
    actor: Option<String>,
    kind: Option<String>,
    outcome: Option<AuditOutcome>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    /// For families whose subjects do not name the aggregate last.
    aggregate: Option<String>,
}

/// `GET /v1/audit`.
#[tracing::instrument(skip_all)]
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery), responses(
    (status = 200, description = "A page of the log, every family, newest or oldest first", body = AuditPage),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden`: no `audit:read`", body = ErrorBody),
    (status = 503, description = "`event_store_unavailable`", body = ErrorBody),
))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    state.auth.require(&caller, "audit:read", "audit")?;
    let bad = |msg: String| ApiError::bad_request("invalid_parameter", msg);
    let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
        return Err(bad(format!("limit: between 1 and {MAX_AUDIT_LIMIT}")));
    }
    if let Some(f) = &q.family
        && !FAMILIES.contains(&f.as_str())
    {
        return Err(bad(format!("family: one of {}", FAMILIES.join(", "))));
    }
    for (name, v) in [("actor", &q.actor), ("aggregate", &q.aggregate), ("type", &q.kind)] {
        if let Some(v) = v
            && (v.is_empty()
                || v.len() > 200
                || v.contains(|c: char| c.is_control() || c == '.' || c == '*' || c == '>'))
        {
            return Err(bad(format!("{name}: 1-200 characters, no control characters, '.', '*' or '>'")));
        }
    }
    let head = state.store.last_sequence().await?;
    if q.cursor.is_some_and(|c| c > head.saturating_add(1)) {
        return Err(bad("cursor: beyond the log's last sequence".into()));
    }
    let subjects = state.store.subjects();
    // What the server can filter by subject: a family, and the aggregate
    // where the family's subjects end with it.
    let subject = match (q.family.as_deref(), q.aggregate.as_deref()) {
        (Some("user"), Some(a)) => subjects.user(a),
        (Some("job"), Some(a)) => match a.parse() {
            Ok(id) => subjects.job_by_id(id),
            Err(_) => return Err(bad("aggregate: a job id (lowercase hyphenated UUID) for family job".into())),
        },
        (Some(f), _) => format!("{}.ev.{f}.>", subjects.namespace()),
        (None, _) => subjects.all_events(),
    };
    let filter = Filter {
        actor: q.actor,
        kind: q.kind,
        outcome: q.outcome,
        since: q.since,
        until: q.until,
        aggregate: q.aggregate,
    };
    let (items, next) = match q.order.unwrap_or_default() {
        AuditOrder::Newest => newest_first(&state, &subject, &filter, head, q.cursor, limit).await?,
        AuditOrder::Oldest => oldest_first(&state, &subject, &filter, head, q.cursor, limit).await?,
    };
    Ok(Json(AuditPage { items, next, head }))
}

/// Entries below `cursor` (or from the head), newest first.
async fn newest_first(
    state: &AppState,
    subject: &str,
    filter: &Filter,
    head: u64,
    cursor: Option<u64>,
    limit: usize,
) -> Result<(Vec<AuditEntry>, Option<u64>), ApiError> {
    let mut items = Vec::new();
    let mut hi = cursor.map_or(head, |c| c.saturating_sub(1)).min(head);
    let mut scanned = 0;
    while hi >= 1 && scanned < SCAN_BUDGET {
        let lo = hi.saturating_sub(WINDOW - 1).max(1);
        let mut window = Vec::new();
        read_range(state, subject, StartAt::Sequence(lo), hi, &mut |ev| {
            if let Some(e) = entry(ev, filter) {
                window.push(e);
            }
            true
        })
        .await?;
        scanned += hi - lo + 1;
        for e in window.into_iter().rev() {
            if items.len() == limit {
                // More in this window: continue below the last one given.
                let next = items.last().map(|l: &AuditEntry| l.seq);
                return Ok((items, next));
            }
            items.push(e);
        }
        hi = lo - 1;
    }
    // Stopped by the budget or the log's start.
    Ok((items, (hi >= 1).then_some(hi + 1)))
}

/// Entries above `cursor` (or from `since`, or the start), oldest first.
async fn oldest_first(
    state: &AppState,
    subject: &str,
    filter: &Filter,
    head: u64,
    cursor: Option<u64>,
    limit: usize,
) -> Result<(Vec<AuditEntry>, Option<u64>), ApiError> {
    let start = match (cursor, filter.since) {
        (Some(c), _) => StartAt::Sequence(c + 1),
        (None, Some(t)) => StartAt::Time(t),
        (None, None) => StartAt::Sequence(1),
    };
    if matches!(start, StartAt::Sequence(s) if s > head) {
        return Ok((Vec::new(), None));
    }
    let mut items = Vec::new();
    let (mut last, mut scanned) = (0, 0);
    read_range(state, subject, start, head, &mut |ev| {
        last = ev.seq;
        scanned += 1;
        if let Some(e) = entry(ev, filter) {
            items.push(e);
        }
        items.len() < limit && scanned < SCAN_BUDGET
    })
    .await?;
    let more = last < head && (items.len() == limit || scanned >= SCAN_BUDGET);
    Ok((items, more.then_some(last)))
}

/// Reads events of `subject` from `start` up to sequence `to`, handing each
/// to `each` until it answers `false`. Stops at `to` without waiting for
/// events that are not stored yet.
async fn read_range(
    state: &AppState,
    subject: &str,
    start: StartAt,
    to: u64,
    each: &mut (dyn FnMut(&StoredEvent) -> bool + Send),
) -> Result<(), ApiError> {
    // A read waits for new events once it has delivered the stored ones; it
    // ends at the last matching event (`pending` 0) or at `to`. Only the
    // first event needs a check that there is one at all.
    let start = match start {
        StartAt::Sequence(from) => match state.store.next_on_subject(subject, from).await? {
            Some(first) if first <= to => StartAt::Sequence(first),
            _ => return Ok(()),
        },
        StartAt::Time(t) => {
            // Nothing stored since `t`: nothing to wait for.
            match state.store.stored_at(to).await? {
                Some(last) if last >= t => StartAt::Time(t),
                _ => return Ok(()),
            }
        }
        other => other,
    };
    let stream = state.store.subjects().events_stream();
    let mut events = state.store.read_stream(&stream, vec![subject.to_owned()], start).await?;
    // From a time, the first matching event may be one not stored yet: bounded.
    let first = tokio::time::timeout(std::time::Duration::from_secs(1), events.next());
    let Ok(mut next) = first.await else { return Ok(()) };
    while let Some(ev) = next {
        let ev = ev?;
        if ev.seq > to || !each(&ev) || ev.seq == to || ev.pending == Some(0) {
            return Ok(());
        }
        next = events.next().await;
    }
    Ok(())
}

/// The entry of `ev`, if it passes `filter`.
fn entry(ev: &StoredEvent, filter: &Filter) -> Option<AuditEntry> {
    let v: Value = serde_json::from_slice(&ev.payload).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let kind = text("type");
    let outcome = if matches!(kind.as_str(), "authentication_failed" | "access_denied") {
        AuditOutcome::Refused
    } else {
        AuditOutcome::Accepted
    };
    let actor = v.get("actor").cloned().unwrap_or(Value::Null);
    // Checkpoints (family `audit`) are not envelopes: their time and body
    // are the checkpoint's own.
    let at = v.get("occurred_at").or_else(|| v.pointer("/checkpoint/time"));
    let occurred_at: DateTime<Utc> = at.and_then(Value::as_str)?.parse().ok()?;
    let aggregate_id = match v.get("aggregate_id") {
        Some(_) => text("aggregate_id"),
        None => ev.subject.rsplit('.').next().unwrap_or_default().to_owned(),
    };
    let actor_name = ["name", "id", "component"].iter().find_map(|k| actor.get(*k).and_then(Value::as_str));
    let pass = filter.kind.as_ref().is_none_or(|k| *k == kind)
        && filter.outcome.is_none_or(|o| o == outcome)
        && filter.actor.as_deref().is_none_or(|a| actor_name == Some(a))
        && filter.aggregate.as_ref().is_none_or(|a| *a == aggregate_id)
        && filter.since.is_none_or(|t| occurred_at >= t)
        && filter.until.is_none_or(|t| occurred_at < t);
    if !pass {
        return None;
    }
    let family = ev.subject.split('.').nth(2).unwrap_or_default().to_owned();
    let payload = v.get("payload").cloned().unwrap_or_else(|| v.clone());
    let source = payload.get("source").and_then(Value::as_str).map(str::to_owned);
    Some(AuditEntry {
        actor,
        aggregate_id,
        correlation_id: text("correlation_id"),
        family,
        hash: text("hash"),
        occurred_at,
        outcome,
        payload,
        seq: ev.seq,
        source,
        kind,
    })
}
