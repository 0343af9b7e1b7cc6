//! Usage accounting end to end: real jobs of every ending (success, retries
//! then dead letter, cancel while running, timeout) through the api and a
//! worker; `GET /v1/usage` must equal the sum over attempts computed here
//! from each job's own events, per owner, pool and day, and each role must
//! see only what it may.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use fetchml_tests::app::{TestApp, spawn_app, spawn_worker, spawn_worker_with};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const TERMINAL: [&str; 5] = ["job_succeeded", "job_failed", "job_timed_out", "job_dead_lettered", "job_cancelled"];

/// `(owner, pool, day)` → `[attempts, slot µs, gpu µs, cpu µs, memory MB-s]`.
type Expected = BTreeMap<(String, String, NaiveDate), [i64; 5]>;

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap()
}

/// Adds one attempt, held from `start` to `end`, to `out`: each UTC day gets
/// its part (computed here from calendar days, independently of the
/// projector's own split).
#[allow(clippy::too_many_arguments)]
fn add_attempt(
    out: &mut Expected,
    owner: &str,
    pool: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    gpus: i64,
    cpus: i64,
    mem: i64,
) {
    let (start, end) = (micros(start), micros(end).max(micros(start)));
    let mut first = true;
    let mut day = start.date_naive();
    loop {
        let day_start = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
        let day_end = day_start + TimeDelta::days(1);
        let from = start.max(day_start);
        let to = end.min(day_end);
        let us = (to - from).num_microseconds().unwrap().max(0);
        let e = out.entry((owner.to_owned(), pool.to_owned(), day)).or_default();
        e[0] += i64::from(first);
        e[1] += us;
        e[2] += us * gpus;
        e[3] += us * cpus;
        e[4] += (i128::from(us) * i128::from(mem) / 1_000_000) as i64;
        first = false;
        if end <= day_end {
            return;
        }
        day = day.succ_opt().unwrap();
    }
}

/// The usage of one job's attempts, from its events alone.
fn attempts_of(events: &[Value], out: &mut Expected) -> usize {
    let queued = &events[0]["payload"];
    let owner = queued["owner"].as_str().unwrap();
    let spec = &queued["spec"];
    let pool = spec["pool"].as_str().unwrap();
    let res = &spec["resources"];
    let mut open: Option<(DateTime<Utc>, i64, i64, i64)> = None;
    let mut n = 0;
    for e in events {
        let at: DateTime<Utc> = e["occurred_at"].as_str().unwrap().parse().unwrap();
        match e["type"].as_str().unwrap() {
            "job_started" => {
                let p = &e["payload"]["placement"];
                // No placement recorded: what the spec asked for.
                let held = if p.is_null() || p == &json!({}) {
                    (
                        res["gpus"].as_i64().unwrap_or(0),
                        res["cpus"].as_i64().unwrap_or(1),
                        res["memory_mb"].as_i64().unwrap_or(0),
                    )
                } else {
                    (
                        p["gpus"].as_array().map_or(0, |g| g.len() as i64),
                        p["cpus"].as_i64().unwrap_or(0),
                        p["memory_mb"].as_i64().unwrap_or(0),
                    )
                };
                open = Some((at, held.0, held.1, held.2));
            }
            "job_succeeded"
            | "job_retry_scheduled"
            | "job_failed"
            | "job_timed_out"
            | "job_dead_lettered"
            | "job_cancelled" => {
                if let Some((start, g, c, m)) = open.take() {
                    add_attempt(out, owner, pool, start, at, g, c, m);
                    n += 1;
                }
            }
            _ => {}
        }
    }
    assert!(open.is_none(), "an attempt still runs: {events:?}");
    n
}

/// `GET /v1/usage` rows as the same map (figures back in µs).
fn rows_of(report: &Value) -> Expected {
    let mut out = Expected::new();
    for r in report["rows"].as_array().unwrap() {
        let us = |k: &str| (r[k].as_f64().unwrap() * 1e6).round() as i64;
        let key = (
            r["user"].as_str().unwrap_or("").to_owned(),
            r["pool"].as_str().unwrap_or("").to_owned(),
            r["day"].as_str().map_or(NaiveDate::MIN, |d| d.parse().unwrap()),
        );
        let figures = [
            r["attempts"].as_i64().unwrap(),
            us("slot_seconds"),
            us("gpu_seconds"),
            us("cpu_seconds"),
            r["memory_mb_seconds"].as_i64().unwrap(),
        ];
        assert!(out.insert(key, figures).is_none(), "a row twice: {report}");
    }
    out
}

/// `e` summed over the dimensions left out (their key part blanked).
fn project(e: &Expected, user: bool, pool: bool, day: bool) -> Expected {
    let mut out = Expected::new();
    for ((u, p, d), f) in e {
        let key = (
            if user { u.clone() } else { String::new() },
            if pool { p.clone() } else { String::new() },
            if day { *d } else { NaiveDate::MIN },
        );
        let t = out.entry(key).or_default();
        for i in 0..5 {
            t[i] += f[i];
        }
    }
    out
}

async fn submit(app: &TestApp, client: &reqwest::Client, spec: Value) -> String {
    let r = client.post(app.url("/v1/jobs")).json(&spec).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn usage(app: &TestApp, user: &str, query: &str) -> (u16, Value) {
    let r = app.as_user(user).get(app.url(&format!("/v1/usage?{query}"))).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn usage_equals_the_sum_of_attempts_and_each_role_sees_its_share() {
    let app = spawn_app().await;
    let _w = spawn_worker(&app.settings);
    let _batch = spawn_worker_with(&app.settings, &[], &[("FETCHML_WORKER__POOL", "batch")]);
    let alice = app.as_user("alice");
    let bob = app.as_user("bob");
    let mut jobs = vec![
        submit(
            &app,
            &alice,
            json!({"executor": "sleep", "command": ["300"], "resources": {"cpus": 2, "memory_mb": 512}}),
        )
        .await,
        // Three attempts: two scheduled retries, then a dead letter.
        submit(
            &app,
            &alice,
            json!({"executor": "fail", "command": ["3"], "pool": "batch",
                "retry": {"max_attempts": 3, "backoff_initial_ms": 10, "retry_on": ["code"]}}),
        )
        .await,
        submit(&app, &alice, json!({"command": ["sleep", "5"], "timeout_secs": 1})).await,
        submit(&app, &bob, json!({"executor": "sleep", "command": ["200"], "resources": {"memory_mb": 2048}})).await,
    ];
    let cancelled = submit(&app, &alice, json!({"executor": "sleep", "command": ["60000"]})).await;
    app.until_state(&cancelled, "running").await;
    let r = alice.post(app.url(&format!("/v1/jobs/{cancelled}/cancel"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    jobs.push(cancelled);
    let root = app.as_user("root");
    let mut expected = Expected::new();
    let mut last_seq = 0;
    let mut attempts = 0;
    let mut endings = Vec::new();
    for id in &jobs {
        // As root: `until_terminal` reads as alice, who cannot see bob's job.
        let events = fetchml_tests::eventually(Duration::from_secs(90), || async {
            let r = root.get(app.url(&format!("/v1/jobs/{id}/events"))).send().await.unwrap();
            let events: Value = r.json().await.unwrap();
            let items = events["items"].as_array()?.clone();
            let last = items.last()?["type"].as_str()?.to_owned();
            TERMINAL.contains(&last.as_str()).then_some(items)
        })
        .await;
        last_seq = last_seq.max(events.iter().map(|e| e["seq"].as_u64().unwrap()).max().unwrap());
        attempts += attempts_of(&events, &mut expected);
        endings.push(events.last().unwrap()["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(endings, ["job_succeeded", "job_dead_lettered", "job_timed_out", "job_succeeded", "job_cancelled"]);
    assert_eq!(attempts, 7);
    let all = project(&expected, true, true, true);
    assert!(all.values().map(|f| f[3]).sum::<i64>() > 0 && all.values().map(|f| f[4]).sum::<i64>() > 0);

    // Admin: everyone, per owner, pool and day.
    let (s, report) = usage(&app, "root", &format!("group_by=day,pool,user&after_seq={last_seq}")).await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(rows_of(&report), all, "{report}");
    assert_eq!(report["group_by"], json!(["user", "pool", "day"]));
    assert_eq!(report["total"]["attempts"], 7);
    // Researchers: their own only, whatever they group by.
    for (user, n) in [("alice", 6), ("bob", 1)] {
        let (s, mine) = usage(&app, user, "group_by=user,pool,day").await;
        assert_eq!(s, 200, "{mine}");
        let want: Expected = all.iter().filter(|((u, _, _), _)| u == user).map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(rows_of(&mine), want, "{user}: {mine}");
        assert_eq!(mine["total"]["attempts"], n);
        let (_, total) = usage(&app, user, "group_by=").await;
        assert_eq!(total["rows"].as_array().unwrap().len(), 1);
        assert_eq!(total["total"]["attempts"], n);
    }
    // Analysts: everyone's, per pool and day, and never a user.
    let (s, pools) = usage(&app, "ana", "group_by=pool,day").await;
    assert_eq!(s, 200, "{pools}");
    assert_eq!(rows_of(&pools), project(&expected, false, true, true));
    assert!(!pools.to_string().contains("alice") && !pools.to_string().contains("bob"), "{pools}");
    for by in ["user", "group", "pool,user"] {
        let (s, refused) = usage(&app, "ana", &format!("group_by={by}")).await;
        assert_eq!((s, refused["error"]["code"].as_str()), (403, Some("forbidden")), "{by}: {refused}");
    }
    // The default groups by day; a bad dimension or period is refused.
    let (_, by_day) = usage(&app, "root", "").await;
    assert_eq!(rows_of(&by_day), project(&expected, false, false, true));
    for bad in ["group_by=owner", "since=2026-13-01", "since=2026-11-30&until=2026-11-01", "colour=red"] {
        let (s, e) = usage(&app, "root", bad).await;
        assert_eq!(s, 400, "{bad}: {e}");
        assert!(matches!(e["error"]["code"].as_str(), Some("invalid_parameter" | "unknown_parameter")), "{bad}: {e}");
    }
    // A period without the jobs' days has nothing.
    let (_, old) = usage(&app, "root", "since=2001-01-01&until=2001-01-31").await;
    assert_eq!((old["rows"].as_array().unwrap().len(), &old["total"]["attempts"]), (0, &json!(0)));
}
