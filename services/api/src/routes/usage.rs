//! Usage accounting: what jobs' attempts held and for how long, summed per
//! user, group, pool and day (read model `usage_daily`; see
//! `fetchml_projections::usage`). Whose usage: [`crate::policy::usage_scope`].
//!
//! Groups come from the scheduling settings at query time: the read model
//! keeps rows per owner, so a change of membership regroups past usage too,
//! as fair share would see it.

use crate::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::policy;
use crate::routes::body::Params;
use crate::routes::jobs::read_your_writes;
use axum::Json;
use axum::extract::State;
use chrono::{Days, NaiveDate, Utc};
use fetchml_api_types::{ErrorBody, UsageDimension, UsageFigures, UsageQuery, UsageReport, UsageRow};
use fetchml_projections::queries::{UsageScope, UsageSums};
use std::collections::BTreeMap;

/// Days a report covers unless `since` says otherwise (with `until`).
const DEFAULT_DAYS: u64 = 30;
/// The longest period one report may cover, in days.
const MAX_DAYS: i64 = 3660;

/// `GET /v1/usage`.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("bearer" = [])), params(UsageQuery), responses(
    (status = 200, description = "Usage of ended attempts in the period, summed by `group_by`: the caller's own (`usage:read`), everyone's (`usage:read:all`), or per pool and day without users (`usage:read:summary`)", body = UsageReport),
    (status = 400, description = "`invalid_parameter`, `unknown_parameter`", body = ErrorBody),
    (status = 403, description = "`forbidden`: no usage permission, or `group_by` `user`/`group` with `usage:read:summary` only", body = ErrorBody),
    (status = 503, description = "`read_model_unavailable`, `not_caught_up`", body = ErrorBody),
))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    Params(q): Params<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let scope = state.auth.enforce(&caller, policy::usage_scope(&caller.principal), "usage")?;
    let group_by = dimensions(q.group_by.as_deref())?;
    let (since, until) = period(q.since, q.until, Utc::now().date_naive())?;
    let by_owner = group_by.iter().any(|d| matches!(d, UsageDimension::User | UsageDimension::Group));
    if by_owner && matches!(scope, UsageScope::Summary) {
        return Err(state.auth.deny(&caller, "usage:read:all", "usage", ApiError::Forbidden("usage:read:all")));
    }
    read_your_writes(&state, q.after_seq).await?;
    let by_pool = group_by.contains(&UsageDimension::Pool);
    let by_day = group_by.contains(&UsageDimension::Day);
    let read = fetchml_projections::queries::usage(&state.pg, &scope, since, until, by_owner, by_pool, by_day);
    let sums = state.pg_health.guard(read).await?;
    let (rows, total) = summarise(sums, &group_by, |user| state.scheduling.group_of(user).map(str::to_owned));
    Ok(Json(UsageReport { group_by, rows, since, total, until }))
}

/// `group_by` as given: comma-separated dimensions, each once, in the
/// canonical order (`user`, `group`, `pool`, `day`); absent means `day`.
fn dimensions(raw: Option<&str>) -> Result<Vec<UsageDimension>, ApiError> {
    let Some(raw) = raw else { return Ok(vec![UsageDimension::Day]) };
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = UsageDimension::parse(part).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("group_by: {part:?} is not a dimension (user, group, pool, day)"),
            )
        })?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

/// The period asked for, both days inclusive.
fn period(
    since: Option<NaiveDate>,
    until: Option<NaiveDate>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let until = until.unwrap_or(today);
    // Checked: `until` may be the first day chrono can hold.
    let since = since.unwrap_or_else(|| until.checked_sub_days(Days::new(DEFAULT_DAYS - 1)).unwrap_or(NaiveDate::MIN));
    if since > until {
        return Err(ApiError::bad_request("invalid_parameter", "since: after until"));
    }
    if (until - since).num_days() >= MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("since: more than {MAX_DAYS} days before until"),
        ));
    }
    Ok((since, until))
}

fn seconds(us: i64) -> f64 {
    us as f64 / 1e6
}

fn add(t: &mut UsageFigures, s: &UsageSums) {
    t.attempts = t.attempts.saturating_add(s.attempts.max(0) as u64);
    t.cpu_seconds += seconds(s.cpu_us);
    t.gpu_seconds += seconds(s.gpu_us);
    t.memory_mb_seconds = t.memory_mb_seconds.saturating_add(s.memory_mb_s.max(0) as u64);
    t.slot_seconds += seconds(s.slot_us);
}

/// The read model's sums (per owner when grouped by user or group) as rows
/// of the dimensions asked for, and their total.
fn summarise(
    sums: Vec<UsageSums>,
    group_by: &[UsageDimension],
    group_of: impl Fn(&str) -> Option<String>,
) -> (Vec<UsageRow>, UsageFigures) {
    let has = |d| group_by.contains(&d);
    // Integers until the end: one owner's sums per group are added exactly.
    type Key = (Option<String>, Option<String>, Option<String>, Option<NaiveDate>);
    let mut rows: BTreeMap<Key, UsageSums> = BTreeMap::new();
    for s in sums {
        let group = if has(UsageDimension::Group) { s.owner.as_deref().and_then(&group_of) } else { None };
        let user = if has(UsageDimension::User) { s.owner.clone() } else { None };
        let pool = if has(UsageDimension::Pool) { s.pool.clone() } else { None };
        let day = if has(UsageDimension::Day) { s.day } else { None };
        let key = (user, group, pool, day);
        let r = rows.entry(key).or_insert(UsageSums {
            owner: None,
            pool: None,
            day: None,
            attempts: 0,
            slot_us: 0,
            gpu_us: 0,
            cpu_us: 0,
            memory_mb_s: 0,
        });
        r.attempts = r.attempts.saturating_add(s.attempts);
        r.slot_us = r.slot_us.saturating_add(s.slot_us);
        r.gpu_us = r.gpu_us.saturating_add(s.gpu_us);
        r.cpu_us = r.cpu_us.saturating_add(s.cpu_us);
        r.memory_mb_s = r.memory_mb_s.saturating_add(s.memory_mb_s);
    }
    let mut total = UsageFigures::default();
    let rows = rows
        .into_iter()
        .map(|((user, group, pool, day), s)| {
            add(&mut total, &s);
            let mut f = UsageFigures::default();
            add(&mut f, &s);
            UsageRow {
                attempts: f.attempts,
                cpu_seconds: f.cpu_seconds,
                day,
                gpu_seconds: f.gpu_seconds,
                group,
                memory_mb_seconds: f.memory_mb_seconds,
                pool,
                slot_seconds: f.slot_seconds,
                user,
            }
        })
        .collect();
    (rows, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(owner: &str, pool: &str, slot_us: i64) -> UsageSums {
        UsageSums {
            owner: Some(owner.into()),
            pool: Some(pool.into()),
            day: None,
            attempts: 1,
            slot_us,
            gpu_us: 2 * slot_us,
            cpu_us: 0,
            memory_mb_s: 5,
        }
    }

    #[test]
    fn group_by_is_a_set_of_known_dimensions() {
        use UsageDimension::*;
        assert_eq!(dimensions(None).unwrap(), [Day]);
        assert_eq!(dimensions(Some("")).unwrap(), []);
        assert_eq!(dimensions(Some("day, user,day,pool")).unwrap(), [User, Pool, Day]);
        let e = dimensions(Some("user,owner")).unwrap_err();
        assert_eq!(e.status_and_code().1, "invalid_parameter");
    }

    #[test]
    fn the_period_defaults_to_thirty_days_and_must_be_in_order() {
        let d = |s: &str| s.parse::<NaiveDate>().unwrap();
        let today = d("2026-11-30");
        assert_eq!(period(None, None, today).unwrap(), (d("2026-11-01"), today));
        assert_eq!(period(Some(today), Some(today), today).unwrap(), (today, today));
        assert!(period(Some(d("2026-12-01")), None, today).is_err());
        assert!(period(Some(d("1900-01-01")), None, today).is_err());
        assert_eq!(period(None, Some(NaiveDate::MIN), today).unwrap(), (NaiveDate::MIN, NaiveDate::MIN));
    }

    #[test]
    fn groups_sum_their_members_and_users_in_none_are_null() {
        let group_of = |u: &str| (u == "alice" || u == "carol").then(|| "vision".to_owned());
        let input = vec![sums("alice", "gpu", 1_000_000), sums("bob", "gpu", 500_000), sums("carol", "gpu", 250_000)];
        let (rows, total) = summarise(input, &[UsageDimension::Group], group_of);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].group.as_deref(), rows[0].slot_seconds, rows[0].attempts), (None, 0.5, 1));
        assert_eq!((rows[1].group.as_deref(), rows[1].slot_seconds, rows[1].gpu_seconds), (Some("vision"), 1.25, 2.5));
        assert!(rows.iter().all(|r| r.user.is_none() && r.pool.is_none()));
        assert_eq!((total.attempts, total.slot_seconds, total.memory_mb_seconds), (3, 1.75, 15));
    }
}
