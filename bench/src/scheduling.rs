//! The scheduler's figures (issue 16): what a large backlog costs it, and
//! whether fair share lets a second user through a first one's sweep.

use super::{
    CpuSplit, Env, Proc, Report, count_events, cpu_secs, pct, stored_messages, subjects_of, submit_batches, submit_many,
};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Users the scheduling sections queue as (the users file holds their keys).
pub const USERS: usize = 50;

pub fn user_name(i: usize) -> String {
    format!("user{i:02}")
}

/// Asks the namespace's scheduler for its counters (`Query::Stats`).
pub async fn stats(env: &Env, ns: &str) -> anyhow::Result<Value> {
    let subject = subjects_of(ns)?.scheduler_query();
    let reply = env.client.request(subject, r#""stats""#.into()).await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// Asks the scheduler for its counters every `every` until `done` says yes
/// (the bench has no event for "the board holds them" or "they finished").
/// Returns the answer and how many requests it took (each moves 4 broker
/// messages: the request and the reply, each in and out).
async fn until_stats(
    env: &Env,
    ns: &str,
    every: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<(Value, u64)> {
    let t0 = Instant::now();
    let mut asked = 0;
    loop {
        asked += 1;
        if let Ok(s) = stats(env, ns).await
            && done(&s)
        {
            return Ok((s, asked));
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(900), "{what}: not within 900 s");
        tokio::time::sleep(every).await;
    }
}

/// Waits until the scheduler has folded the log up to `seq` and holds no
/// unfinished job: every job queued at or before `seq` has finished. Cheaper
/// than reading every event back while jobs run (`count_events`), which on a
/// loaded machine is load of its own. Returns how many requests it made.
pub async fn until_all_finished_after(env: &Env, ns: &str, seq: u64) -> anyhow::Result<u64> {
    let done = |s: &Value| s["seen"].as_u64().is_some_and(|v| v >= seq) && s["unfinished"].as_u64() == Some(0);
    Ok(until_stats(env, ns, Duration::from_millis(20), "jobs finishing", done).await?.1)
}

/// Waits until the scheduler's board holds at most `unfinished` jobs, asking
/// every 20 ms (reading every event of the log to count completions, as the
/// bench once did, fell seconds behind at a few thousand jobs a second and
/// understated the rate). Returns how many requests it made.
pub async fn until_finished_down_to(env: &Env, ns: &str, unfinished: u64) -> anyhow::Result<u64> {
    let done = |s: &Value| s["unfinished"].as_u64().is_some_and(|u| u <= unfinished);
    Ok(until_stats(env, ns, Duration::from_millis(20), "jobs finishing", done).await?.1)
}

/// Waits until the scheduler answers, leads and has folded `unfinished` jobs.
async fn until_board_holds(env: &Env, ns: &str, unfinished: u64) -> anyhow::Result<Value> {
    let done = |s: &Value| s["leading"].as_bool() == Some(true) && s["unfinished"].as_u64().unwrap_or(0) >= unfinished;
    Ok(until_stats(env, ns, Duration::from_millis(100), "the scheduler taking the jobs", done).await?.0)
}

/// A backlog of `n` waiting jobs from [`USERS`] users: the standalone
/// scheduler's memory per waiting job, its time per decision, and end to end
/// (the same submit as the `e2e` section, four workers) on top of it.
pub async fn backlog(env: &Env, r: &mut Report, n: usize, e2e_n: usize, job_root: &Path) -> anyhow::Result<()> {
    let ns = "bbacklog";
    // The api without its scheduler, so that the scheduler's memory is a
    // process of its own to read.
    let (api, url) = env.api_with(ns, &[("FETCHML_API__EMBEDDED_SCHEDULER", "false")]).await;
    let sched = env.scheduler(ns);
    until_board_holds(env, ns, 0).await?;
    let rss_empty = sched.rss_kib();
    let per_user = n / USERS;
    let t0 = Instant::now();
    let submits = env.user_keys.iter().map(|key| {
        let url = url.clone();
        async move { submit_batches(key, &url, per_user, 1000, 1, json!({"executor": "noop", "command": []})).await }
    });
    for res in futures::future::join_all(submits).await {
        res?;
    }
    let queued = per_user * USERS;
    let before = until_board_holds(env, ns, queued as u64).await?;
    let fold_secs = t0.elapsed().as_secs_f64();
    let rss_full = sched.rss_kib();
    r.add(&format!("backlog: {queued} jobs of {USERS} users queued and on the board"), fold_secs, "s", None);
    r.add(
        "backlog: scheduler memory per waiting job",
        (rss_full.saturating_sub(rss_empty) * 1024) as f64 / queued as f64,
        "bytes",
        None,
    );
    r.add("backlog: scheduler RSS with the backlog", rss_full as f64 / 1024.0, "MiB", None);
    // The read models fold the backlog's 100 000 `job_queued` well after the
    // board does. Timing end to end before they have would charge that
    // catch-up (the api's projector and Postgres, a few seconds of both
    // cores) to the jobs run on top of the backlog, which is the cost of the
    // burst that made the backlog, not of the backlog waiting (BENCHMARKS.md,
    // eighteenth session). The wait itself is reported.
    super::until_projected(env, ns, &url).await?;
    r.add("backlog: read models hold the backlog", t0.elapsed().as_secs_f64(), "s", None);

    let workers: Vec<Proc> = (0..4).map(|_| env.worker(ns, 32, job_root)).collect();
    // Jobs completed, any user's, while the e2e section's submit runs on top:
    // done when as many have finished as were submitted.
    let t0 = Instant::now();
    let (cpu_before, sched_before) = (CpuSplit::now(&api, &workers, env), cpu_secs(sched.0.id()));
    let stored_before = stored_messages(&env.client, ns).await?;
    submit_many(&env.key, &url, e2e_n, 64, json!({"executor": "noop", "command": []})).await;
    until_finished_down_to(env, ns, num(&before, "unfinished") as u64).await?;
    let secs = t0.elapsed().as_secs_f64();
    // Completed in the window, from the log itself: every no-op job that ran
    // added a start and an end to the submitted jobs' `job_queued`.
    let added = stored_messages(&env.client, ns).await? - stored_before;
    let completed = (added.saturating_sub(e2e_n as u64) / 2).max(1) as usize;
    let rate = completed as f64 / secs;
    CpuSplit::now(&api, &workers, env).report(&cpu_before, completed, "with the backlog", r);
    r.add(
        "  CPU per job, with the backlog: scheduler",
        (cpu_secs(sched.0.id()) - sched_before) * 1e6 / completed as f64,
        "µs",
        None,
    );
    let after = stats(env, ns).await?;
    r.add(
        "backlog: end to end with the backlog, 4 workers",
        rate,
        "jobs/s",
        env.e2e_4.get().map(|&v| ("empty queue", v)),
    );
    let decisions = num(&after, "decisions") - num(&before, "decisions");
    let busy = num(&after, "busy_nanos") - num(&before, "busy_nanos");
    let passes = num(&after, "busy_passes") - num(&before, "busy_passes");
    r.add("backlog: scheduler time per decision", busy / decisions.max(1.0) / 1000.0, "µs", None);
    r.add("backlog: decisions per planning pass", decisions / passes.max(1.0), "", None);
    r.add("backlog: longest planning pass", num(&after, "max_pass_nanos") / 1e6, "ms", None);

    // The same submit once the backlog has drained, on the same processes:
    // the empty-queue figure above was measured minutes earlier with the
    // scheduler inside the api, and the host's speed drifts by a quarter
    // between phases (BENCHMARKS.md, sixteenth session), so the ratio is
    // also given against a reference taken right after, in the same set-up.
    until_finished_down_to(env, ns, 0).await?;
    // As before the backlog's phase: the read models first fold the
    // backlog's starts and ends, so neither phase pays for the other's.
    super::until_projected(env, ns, &url).await?;
    let t0 = Instant::now();
    let cpu_before = CpuSplit::now(&api, &workers, env);
    submit_many(&env.key, &url, e2e_n, 64, json!({"executor": "noop", "command": []})).await;
    until_finished_down_to(env, ns, 0).await?;
    let empty = e2e_n as f64 / t0.elapsed().as_secs_f64();
    CpuSplit::now(&api, &workers, env).report(&cpu_before, e2e_n, "backlog drained", r);
    r.add("backlog: end to end once it drained, same processes", empty, "jobs/s", None);
    r.add("backlog: end to end with the backlog, against the drained queue", rate, "jobs/s", Some(("drained", empty)));
    drop(workers);
    drop(sched);
    drop(api);
    Ok(())
}

/// Issue 16's two-user case: the first user queues `first` jobs, the second
/// `second` a second later; how many starts after the second user's submit
/// until its last job started (goal: within 250 for 20 000 / 100).
pub async fn fair_share(env: &Env, r: &mut Report, first: usize, second: usize, job_root: &Path) -> anyhow::Result<()> {
    let ns = "bfair";
    let (api, url) = env.api(ns).await;
    let workers: Vec<Proc> = (0..4).map(|_| env.worker(ns, 32, job_root)).collect();
    until_board_holds(env, ns, 0).await?;
    let (alice, bob) = (&env.user_keys[0], &env.user_keys[1]);
    let done = count_events(&env.client, ns, "job_succeeded", first + second);
    let spec = json!({"executor": "noop", "command": []});
    let sweep = {
        let (alice, url, spec) = (alice.clone(), url.clone(), spec.clone());
        tokio::spawn(async move { submit_batches(&alice, &url, first, 1000, 1, spec).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    submit_batches(bob, &url, second, second.min(1000), 1, spec).await?;
    sweep.await??;
    done.await??;

    // The log's order of starts, after the last of the second user's
    // `job_queued` (its submit's end).
    let subjects = subjects_of(ns)?;
    let js = jetstream::new(env.client.clone());
    let stream = js.get_stream(subjects.events_stream()).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig { filter_subject: subjects.all_job_events(), ..Default::default() })
        .await?;
    let mut msgs = consumer.messages().await?;
    let second_user = super::scheduling::user_name(1);
    let (mut starts, mut last_queued, mut succeeded) = (Vec::new(), 0u64, 0usize);
    while succeeded < first + second {
        let m = msgs.next().await.ok_or_else(|| anyhow::anyhow!("log ended"))??;
        let seq = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        // `<ns>.ev.job.<owner>.<pool>.<id>`
        let owner = m.subject.split('.').nth(3).unwrap_or_default().to_owned();
        let text = String::from_utf8_lossy(&m.payload);
        if text.contains("\"type\":\"job_queued\"") && owner == second_user {
            last_queued = seq;
        } else if text.contains("\"type\":\"job_started\"") {
            starts.push((seq, owner == second_user));
        } else if text.contains("\"type\":\"job_succeeded\"") {
            succeeded += 1;
        }
    }
    let after: Vec<bool> = starts.iter().filter(|(s, _)| *s > last_queued).map(|(_, b)| *b).collect();
    let before = starts.iter().filter(|(s, b)| *s <= last_queued && *b).count();
    let last = after.iter().rposition(|b| *b).map(|i| i + 1).unwrap_or(0);
    r.add(
        &format!("fair share: starts until the 2nd user's last ({first} then {second})"),
        last as f64,
        "starts",
        None,
    );
    r.add("fair share: 2nd user's jobs started before its submit ended", before as f64, "jobs", None);
    let mut gaps: Vec<f64> = Vec::new();
    let mut run = 0.0;
    for b in &after[..last] {
        if *b {
            gaps.push(run);
            run = 0.0;
        } else {
            run += 1.0;
        }
    }
    gaps.sort_by(|a, b| a.total_cmp(b));
    r.add("fair share: 1st user's starts between two of the 2nd's, p99", pct(&gaps, 0.99), "starts", None);
    drop(workers);
    drop(api);
    Ok(())
}
