//! The `ml` binary end to end: the real api, worker, NATS and Postgres, every
//! command in human and `--json` mode, its exit codes, login and the config
//! file, watching over the WebSocket (and across a dropped connection), TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod tls;

use fetchml_api_types::{
    BatchAnswer, BatchItem, DryRun, EventList, Experiment, JobAnswer, LogLine, Submitted, WorkerList,
};
use fetchml_tests::app::{spawn_app, spawn_worker};
use helpers::{Ml, progress_job};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;

fn full(v: &Value) -> fetchml_api_types::JobView {
    match serde_json::from_value::<JobAnswer>(v.clone()).unwrap() {
        JobAnswer::Full(j) => *j,
        JobAnswer::Summary(_) => panic!("expected the full view: {v}"),
    }
}

#[tokio::test]
async fn a_job_is_queued_waited_for_and_read_back_in_human_and_json_mode() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let ml = Ml::new(&app, "alice");
    let script = r#"echo hello-from-the-job; echo '##fetchml {"metric": "loss", "value": 0.5, "step": 1}'"#;
    let queued =
        ml.run(&["submit", "--json", "--experiment", "cli-e1", "--tag", "run=one", "--shell", "--", script]).await.ok();
    let submitted: Submitted = serde_json::from_str(&queued.stdout).unwrap();
    let id = submitted.id.to_string();

    // --wait: quiet, the outcome on stderr, the job's exit code.
    let waited = ml.run(&["wait", &id]).await;
    assert_eq!(waited.code, 0, "{waited:?}");
    assert!(waited.stderr.contains("succeeded"), "{waited:?}");

    let status = ml.run(&["status", &id]).await.ok();
    for want in ["succeeded", "alice", "cli-e1", "run=one", "metric loss", "0.5", "exit 0"] {
        assert!(status.stdout.contains(want), "status lacks {want:?}: {}", status.stdout);
    }
    let job = full(&ml.run(&["status", "--json", &id]).await.ok().json());
    assert_eq!(job.id.to_string(), id);
    assert_eq!(job.spec.tags["run"], "one");
    assert_eq!(job.metrics["loss"].value, 0.5);

    let history = ml.run(&["history", &id]).await.ok();
    for want in ["job_queued", "job_started", "job_succeeded", "user alice", "SEQ"] {
        assert!(history.stdout.contains(want), "history lacks {want:?}: {}", history.stdout);
    }
    let events: EventList = serde_json::from_str(&ml.run(&["history", "--json", &id]).await.ok().stdout).unwrap();
    let kinds: Vec<&str> = events.items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["job_queued", "job_started", "job_succeeded"]);

    let logs = ml.run(&["logs", &id]).await.ok();
    assert_eq!(logs.stdout.trim(), "hello-from-the-job");
    let lines = ml.run(&["logs", "--json", "--tail", "1", &id]).await.ok().json_lines();
    assert_eq!(lines.len(), 1);
    let line: LogLine = serde_json::from_value(lines[0].clone()).unwrap();
    assert_eq!(line.line, "hello-from-the-job");
    let since = ml.run(&["logs", "--since", "2000-01-01T00:00:00Z", &id]).await.ok();
    assert!(since.stdout.contains("hello-from-the-job"));
    let future = ml.run(&["logs", "--since", "2999-01-01T00:00:00Z", &id]).await.ok();
    assert_eq!(future.stdout, "");
    let followed = ml.run(&["logs", "-f", &id]).await.ok();
    assert_eq!(followed.stdout.trim(), "hello-from-the-job");

    // The list is read from the read model: await the job's last state there.
    let items = ml
        .list_until(&["--experiment", "cli-e1", "--state", "succeeded"], |items| {
            items.iter().any(|i| i["id"] == id.as_str())
        })
        .await;
    assert_eq!(items.len(), 1);
    let table = ml.run(&["list", "--state", "succeeded"]).await.ok();
    assert!(table.stdout.starts_with("ID"), "{}", table.stdout);
    assert!(table.stdout.contains(&id) && table.stdout.contains("loss=0.5"), "{}", table.stdout);
    let none = ml.run(&["list", "--json", "--state", "failed"]).await.ok().json();
    assert_eq!(none["items"], serde_json::json!([]));
    let as_of = ml.run(&["list", "--json", "--as-of-seq", &submitted.seq.to_string()]).await.ok().json();
    assert_eq!(as_of["items"][0]["state"], "queued", "{as_of}");
}

#[tokio::test]
async fn every_queue_flag_reaches_the_spec_and_a_dry_run_queues_nothing() {
    let app = spawn_app().await;
    let ml = Ml::new(&app, "alice");
    ml.run(&["whoami"]).await.ok();
    // The key's first use is recorded on alice's audit chain in the
    // background: wait for that event, so that `before` counts it (read
    // before it landed, the log grew under the dry runs without them).
    let ns = fetchml_events::ids::Namespace::parse(app.settings.nats.namespace.clone()).unwrap();
    let store = fetchml_tests::store_at(&app.settings.nats.url, ns).await;
    let mut chain =
        store.read(&store.subjects().user("alice"), fetchml_eventstore::StartAt::Sequence(1)).await.unwrap();
    let recorded = tokio::time::timeout(std::time::Duration::from_secs(10), futures::StreamExt::next(&mut chain)).await;
    assert!(matches!(recorded, Ok(Some(Ok(_)))), "alice's authentication is recorded");
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("job.env");
    std::fs::write(&env_file, "# a comment\nexport FROM_FILE=\"yes\"\nBOTH=file\n").unwrap();
    let spec_file = dir.path().join("job.yaml");
    std::fs::write(&spec_file, "command: [python, train.py]\npool: cpu\npriority: 2\ntags: {team: vision}\n").unwrap();
    let (_, before) = app.get("/readyz").await;

    let args = [
        "queue",
        "--json",
        "--dry-run",
        "--from-file",
        spec_file.to_str().unwrap(),
        "--pool",
        "gpu",
        "--label",
        "a100",
        "--label",
        "ib",
        "--cpus",
        "8",
        "--memory",
        "16G",
        "--gpus",
        "2",
        "--priority",
        "9",
        "--timeout",
        "2h30m",
        "--retries",
        "4",
        "--retry-on",
        "infrastructure,code",
        "--experiment",
        "exp",
        "--tag",
        "lr=0.1",
        "--env",
        "BOTH=flag",
        "--env-file",
        env_file.to_str().unwrap(),
        "--workdir",
        "proj",
        "--executor",
        "podman",
        "--image",
        "docker.io/library/python:3.12",
        "--idempotency-key",
        "k1",
    ];
    let dry: DryRun = serde_json::from_str(&ml.run(&args).await.ok().stdout).unwrap();
    let s = &dry.spec;
    assert!(dry.dry_run);
    assert_eq!(s.command, ["python", "train.py"]);
    assert_eq!(s.pool.as_str(), "gpu");
    assert_eq!(s.labels, ["a100", "ib"]);
    assert_eq!((s.resources.cpus, s.resources.memory_mb, s.resources.gpus), (Some(8), Some(16384), 2));
    assert_eq!(s.priority, 9);
    assert_eq!(s.timeout_secs, Some(9000));
    assert_eq!(s.retry.max_attempts, 5);
    assert_eq!(serde_json::to_value(&s.retry.retry_on).unwrap(), serde_json::json!(["infrastructure", "code"]));
    assert_eq!(s.experiment.as_deref(), Some("exp"));
    assert_eq!(s.tags["team"], "vision");
    assert_eq!(s.tags["lr"], "0.1");
    assert_eq!(s.env["BOTH"], "flag");
    assert_eq!(s.env["FROM_FILE"], "yes");
    assert_eq!(s.working_dir.as_deref(), Some("proj"));
    assert_eq!(s.image.as_deref(), Some("docker.io/library/python:3.12"));
    // Human mode: the spec as YAML on stdout, the verdict on stderr.
    let human = ml.run(&["queue", "--dry-run", "--shell", "--", "echo", "hi"]).await.ok();
    assert!(human.stdout.contains("shell: true"), "{human:?}");
    assert!(human.stderr.contains("nothing was queued"), "{human:?}");
    // The server refuses what it would refuse at a real submit.
    let bad = ml.run(&["queue", "--dry-run", "--priority", "42", "--", "x"]).await;
    assert_eq!(bad.code, 6, "{bad:?}");
    assert!(bad.stderr.contains("out_of_range") && bad.stderr.contains("priority"), "{bad:?}");

    let (_, after) = app.get("/readyz").await;
    assert_eq!(before["last_seq"], after["last_seq"], "a dry run stores nothing");
    let (_, list) = app.get(&format!("/v1/jobs?after_seq={}", after["last_seq"])).await;
    assert_eq!(list["items"], serde_json::json!([]));
}

#[tokio::test]
async fn watch_shows_progress_and_metrics_and_exits_with_the_jobs_outcome() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let ml = Ml::new(&app, "alice");

    // A failing job, queued and watched in one command: its own exit code.
    let failed = ml.run(&["queue", "--watch", "--shell", "--", &progress_job(3, "0.5")]).await;
    assert_eq!(failed.code, 3, "{failed:?}");
    for want in
        ["progress 50%", "metric loss=0.25 (step 3)", "| step-one", "job_started", "job_failed", "failed (exit 3"]
    {
        assert!(failed.stdout.contains(want), "watch lacks {want:?}: {}", failed.stdout);
    }

    let ok = ml.queue(&["--shell", "--", &progress_job(0, "0.5")]).await;
    let watched = ml.run(&["watch", &ok]).await;
    assert_eq!(watched.code, 0, "{watched:?}");
    for want in ["progress 50%", "progress 100%", "metric loss=0.25", "| step-one", "job_succeeded"] {
        assert!(watched.stdout.contains(want), "watch lacks {want:?}: {}", watched.stdout);
    }
    assert!(watched.stdout.trim_end().lines().last().unwrap().contains("succeeded"), "{}", watched.stdout);

    // --json: the stream's messages, then the result.
    let lines = ml.run(&["watch", "--json", &ok]).await.ok().json_lines();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["subject_kind"].as_str()).collect();
    assert!(kinds.contains(&"percent") && kinds.contains(&"metric") && kinds.contains(&"job_succeeded"), "{kinds:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["job"]["state"], "succeeded");

    // A job without an exit code of its own: cancelled (9).
    let long = ml.queue(&["--executor", "sleep", "--", "600000"]).await;
    ml.run(&["cancel", "--reason", "enough", &long]).await.ok();
    let cancelled = ml.run(&["wait", &long]).await;
    assert_eq!(cancelled.code, 9, "{cancelled:?}");
}

#[tokio::test]
async fn a_dropped_stream_during_watch_resumes_with_nothing_missed_or_repeated() {
    let mut app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let ml = Ml::new(&app, "alice");
    let script = r###"for i in $(seq 1 30); do echo "line $i"; echo "##fetchml {\"percent\": $((i * 100 / 30))}"; sleep 0.1; done"###;
    let id = ml.queue(&["--shell", "--", script]).await;

    let mut child = ml.command(&["watch", "--json", &id]).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = tokio::io::BufReader::new(stdout);
    let mut lines: Vec<Value> = Vec::new();
    // Once the job's first line arrived, the api goes away and comes back.
    use tokio::io::AsyncBufReadExt as _;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), reader.read_line(&mut buf))
            .await
            .expect("watch prints within 60 s")
            .unwrap();
        assert!(n > 0, "watch ended before the first log line");
        let v: Value = serde_json::from_str(&buf).unwrap();
        let first_log = v["subject_kind"] == "log";
        lines.push(v);
        if first_log {
            break;
        }
    }
    app.restart().await;
    loop {
        buf.clear();
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), reader.read_line(&mut buf))
            .await
            .expect("watch goes on within 60 s")
            .unwrap();
        if n == 0 {
            break;
        }
        lines.push(serde_json::from_str(&buf).unwrap());
    }
    let status = child.wait_with_output().await.unwrap();
    assert_eq!(status.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("stream lost") && stderr.contains("stream resumed"), "the watch did reconnect: {stderr}");

    let logs: Vec<&str> =
        lines.iter().filter(|l| l["subject_kind"] == "log").map(|l| l["data"]["line"].as_str().unwrap()).collect();
    let want: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(logs, want, "every log line once, in order");
    for stream in ["events", "progress"] {
        let seqs: Vec<u64> =
            lines.iter().filter(|l| l["stream"] == stream).map(|l| l["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{stream} sequences strictly increase: {seqs:?}");
    }
    let events: Vec<&str> =
        lines.iter().filter(|l| l["stream"] == "events").map(|l| l["subject_kind"].as_str().unwrap()).collect();
    assert_eq!(events, ["job_queued", "job_started", "job_succeeded"]);
    assert_eq!(lines.last().unwrap()["job"]["state"], "succeeded");
}

#[tokio::test]
async fn login_stores_a_private_session_and_logout_revokes_it() {
    let app = spawn_app().await;
    let mut ml = Ml::new(&app, "alice");
    let key = ml.key.take().unwrap();

    // No credential at all: the auth code and what to do.
    let none = ml.run(&["whoami"]).await;
    assert_eq!(none.code, 4, "{none:?}");
    assert!(none.stderr.contains("ml login"), "{none:?}");

    let login = ml.run_stdin(&["login"], &format!("{key}\n")).await.ok();
    assert!(login.stderr.contains("Logged in") && login.stderr.contains("alice"), "{login:?}");
    let path = ml.config_file();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config file is private");
    let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(stored.contains("token: fms_"), "a session token is stored");
    assert!(!stored.contains(&key), "the key itself is not stored");
    let token = stored.lines().find_map(|l| l.trim().strip_prefix("token: ")).unwrap().to_owned();
    assert!(!login.stdout.contains(&token) && !login.stderr.contains(&token) && !login.stderr.contains(&key));

    let me = ml.run(&["whoami", "--json"]).await.ok().json();
    assert_eq!(me["user"], "alice");
    let human = ml.run(&["whoami"]).await.ok();
    assert!(human.stdout.contains("alice (researcher)") && human.stdout.contains("session:"), "{human:?}");

    // A second profile for another identity; the profile holds its api.
    let bob = ml.run_stdin(&["login", "--json", "--profile", "bob", "--with-key-stdin"], &key_of_bob()).await.ok();
    assert_eq!(bob.json()["user"], "bob");
    assert!(!bob.stdout.contains("fms_"), "{bob:?}");
    let mut no_api = ml.command(&["--profile", "bob", "whoami", "--json"]);
    no_api.env_remove("FETCHML_API");
    assert_eq!(ml.run_with(no_api, None).await.ok().json()["user"], "bob");
    let missing = ml.run(&["--profile", "nobody", "whoami"]).await;
    assert_eq!(missing.code, 4, "{missing:?}");

    let logout = ml.run(&["logout"]).await.ok();
    assert!(logout.stderr.contains("revoked"), "{logout:?}");
    assert!(!std::fs::read_to_string(&path).unwrap().contains(&token), "the token is gone from the file");
    let after = ml.run(&["whoami"]).await;
    assert_eq!(after.code, 4, "{after:?}");
    // The api refuses the revoked token too.
    ml.key = Some(token.clone());
    let revoked = ml.run(&["whoami"]).await;
    assert_eq!(revoked.code, 4, "{revoked:?}");
    assert!(revoked.stderr.contains("401") && revoked.stderr.contains("ml login"), "{revoked:?}");
    assert!(!revoked.stderr.contains(&token));
    ml.key = None;

    // A stored session past its expiry: log in again, before any request.
    let expired =
        format!("profiles:\n  default:\n    api: {}\n    token: fms_x\n    expires_at: 2001-01-01T00:00:00Z\n", ml.api);
    std::fs::write(&path, expired).unwrap();
    let old = ml.run(&["whoami"]).await;
    assert_eq!(old.code, 4, "{old:?}");
    assert!(old.stderr.contains("expired") && old.stderr.contains("ml login"), "{old:?}");
}

fn key_of_bob() -> String {
    format!("{}\n", fetchml_tests::app::key_of("bob"))
}

#[tokio::test]
async fn bad_input_gets_a_clear_message_and_a_nonzero_code() {
    let app = spawn_app().await;
    let ml = Ml::new(&app, "alice");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["status", "not-a-job"], 2, "not a job id"),
        (&["queue"], 2, "no command"),
        (&["queue", "--env", "NOEQUALS", "--", "x"], 2, "KEY=VALUE"),
        (&["queue", "--memory", "lots", "--", "x"], 2, "--memory"),
        (&["queue", "--from-file", "/nonexistent/job.yaml"], 2, "cannot read"),
        (&["queue", "--grid", "lr", "--", "x"], 2, "--grid"),
        (&["list", "--since", "whenever"], 2, "--since"),
        (&["frobnicate"], 2, "unrecognized subcommand"),
        (&["status", "01a20adb-3701-713e-9175-763a289b5a9f"], 3, "job_not_found"),
        (&["experiment", "no-such-experiment"], 3, "experiment_not_found"),
        (&["queue", "--", ""], 6, "422"),
    ];
    for (args, code, says) in cases {
        let r = ml.run(args).await;
        assert_eq!(r.code, *code, "{args:?}: {r:?}");
        assert!(r.stderr.contains(says), "{args:?} should say {says:?}: {r:?}");
        assert!(!r.stderr.contains("panicked") && !r.stderr.contains("backtrace"), "{r:?}");
        assert_eq!(r.stdout, "", "{args:?}: errors go to stderr");
    }
}

#[tokio::test]
async fn an_analyst_cancelling_is_told_it_is_forbidden() {
    let app = spawn_app().await;
    let alice = Ml::new(&app, "alice");
    let ana = Ml::new(&app, "ana");
    let id = alice.queue(&["--executor", "sleep", "--", "600000"]).await;
    let refused = ana.run(&["cancel", &id]).await;
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("403") && refused.stderr.contains("forbidden"), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 2, "the error and a hint: {refused:?}");
    // What an analyst may do: the summary.
    let seen = ana.run(&["status", "--json", &id]).await.ok().json();
    assert!(seen.get("spec").is_none(), "no command line for an analyst: {seen}");
    let human = ana.run(&["status", &id]).await.ok();
    assert!(human.stdout.contains("queued"), "{human:?}");
    // The owner may; twice is refused as a conflict.
    let cancelled = alice.run(&["cancel", "--json", &id]).await.ok().json();
    assert_eq!(cancelled[0]["id"], id.as_str());
    // An analyst may watch it (events and metrics, no logs): cancelled is 9.
    let watched = ana.run(&["watch", &id]).await;
    assert_eq!(watched.code, 9, "{watched:?}");
    assert!(watched.stdout.contains("job_cancelled"), "{watched:?}");
    let again = alice.run(&["cancel", &id]).await;
    assert_eq!(again.code, 6, "{again:?}");
    assert!(again.stderr.contains("job_terminal"), "{again:?}");
    let retried = alice.run(&["retry", &id]).await.ok();
    assert!(retried.stdout.contains("queued again"), "{retried:?}");
    alice.run(&["cancel", &id]).await.ok();
    let again = alice.run(&["retry", "--json", "--reason", "once more", &id]).await.ok().json();
    assert!(again[0]["seq"].as_u64().unwrap() > cancelled[0]["seq"].as_u64().unwrap(), "{again}");
}

#[tokio::test]
async fn list_watch_redraws_when_a_job_changes() {
    use tokio::io::AsyncBufReadExt as _;
    let app = spawn_app().await;
    let ml = Ml::new(&app, "alice");
    let mut child = ml.command(&["list", "--watch", "--json"]).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["items"], serde_json::json!([]), "the table as it is");
    // The first table is drawn once the stream is subscribed: a job queued
    // now is in a later one (redrawn once the change is in the read model).
    let id = ml.queue(&["--executor", "noop", "--pool", "nowhere", "--", "x"]).await;
    for _ in 0..50 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("a redraw within 30 s")
            .unwrap()
            .unwrap();
        let page: Value = serde_json::from_str(&line).unwrap();
        if page["items"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str()) {
            child.kill().await.unwrap();
            return;
        }
    }
    panic!("the queued job never showed in the live list");
}

#[tokio::test]
async fn an_unreachable_server_gives_one_line_and_the_documented_code() {
    let port = fetchml_tests::free_port();
    let ml = Ml {
        api: format!("http://127.0.0.1:{port}"),
        key: Some("fml_00000000_x".into()),
        home: tempfile::tempdir().unwrap(),
        extra_env: Vec::new(),
    };
    for args in [
        &["status", "01a20adb-3701-713e-9175-763a289b5a9f"][..],
        &["list"],
        &["watch", "01a20adb-3701-713e-9175-763a289b5a9f"],
    ] {
        let r = ml.run(args).await;
        assert_eq!(r.code, 7, "{args:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
        assert!(r.stderr.contains("cannot reach the fetchml api") && r.stderr.contains(&port.to_string()), "{r:?}");
        assert!(!r.stderr.contains("fml_00000000_x"), "no key in messages");
    }
    let bad_url = Ml { api: "ftp://nowhere".into(), ..ml };
    let r = bad_url.run(&["list"]).await;
    assert_eq!(r.code, 2, "{r:?}");
}

#[tokio::test]
async fn a_two_by_two_grid_queues_four_jobs_once_even_when_run_twice() {
    let app = spawn_app().await;
    let ml = Ml::new(&app, "alice");
    let grid = [
        "queue",
        "--json",
        "--grid",
        "lr=0.1,0.01",
        "--grid",
        "bs=32,64",
        "--experiment",
        "sweep",
        "--executor",
        "noop",
        "--",
        "train",
        "--lr",
        "{lr}",
        "--bs",
        "{bs}",
    ];
    let first: BatchAnswer = serde_json::from_str(&ml.run(&grid).await.ok().stdout).unwrap();
    let second: BatchAnswer = serde_json::from_str(&ml.run(&grid).await.ok().stdout).unwrap();
    let ids = |a: &BatchAnswer| -> Vec<(String, bool)> {
        a.jobs
            .iter()
            .map(|j| match j {
                BatchItem::Stored(s) => (s.id.to_string(), s.duplicate),
                BatchItem::Failed(f) => panic!("not stored: {f:?}"),
            })
            .collect()
    };
    let (a, b) = (ids(&first), ids(&second));
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|(_, dup)| !dup) && b.iter().all(|(_, dup)| *dup), "{a:?} {b:?}");
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    // An explicit key, twice: once more four jobs, once.
    let keyed = [&grid[..], &["--idempotency-key", "sweep-2"]].concat();
    let k1: BatchAnswer = serde_json::from_str(&ml.run(&keyed).await.ok().stdout).unwrap();
    let k2: BatchAnswer = serde_json::from_str(&ml.run(&keyed).await.ok().stdout).unwrap();
    assert_ne!(ids(&k1)[0].0, a[0].0);
    assert_eq!(ids(&k1), ids(&k2).into_iter().map(|(id, _)| (id, false)).collect::<Vec<_>>());

    let runs = ml.list_until(&["--experiment", "sweep"], |items| items.len() == 8).await;
    let mut combos: Vec<String> = runs
        .iter()
        .map(|r| format!("{}/{}", r["tags"]["lr"].as_str().unwrap(), r["tags"]["bs"].as_str().unwrap()))
        .collect();
    combos.sort();
    combos.dedup();
    assert_eq!(combos, ["0.01/32", "0.01/64", "0.1/32", "0.1/64"]);
    let job = full(&ml.run(&["status", "--json", &a[1].0]).await.ok().json());
    assert_eq!(job.spec.command, ["train", "--lr", "0.1", "--bs", "64"]);
    assert_eq!(job.spec.env["FETCHML_PARAM_BS"], "64");

    // A batch file: one spec per line, the flags over each, queued once.
    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("jobs.jsonl");
    std::fs::write(&batch, "{\"command\": [\"a\"]}\n\n{\"command\": [\"b\"], \"tags\": {\"n\": \"2\"}}\n").unwrap();
    let args = ["queue", "--batch", batch.to_str().unwrap(), "--executor", "noop", "--experiment", "batch"];
    let once = ml.run(&args).await.ok();
    let twice = ml.run(&args).await.ok();
    assert_eq!(once.stdout.lines().count(), 2, "{once:?}");
    assert_eq!(once.stdout, twice.stdout, "the same two jobs");
    assert!(once.stderr.contains("Queued 2 jobs") && twice.stderr.contains("2 already queued"), "{twice:?}");
    let b = full(&ml.run(&["status", "--json", once.stdout.lines().nth(1).unwrap()]).await.ok().json());
    assert_eq!((b.spec.command[0].as_str(), b.spec.tags["n"].as_str()), ("b", "2"));
    assert_eq!(b.spec.experiment.as_deref(), Some("batch"));

    // The experiment's views.
    let exps = ml.run(&["experiments"]).await.ok();
    assert!(exps.stdout.contains("sweep"), "{exps:?}");
    let listed = ml.run(&["experiments", "--json"]).await.ok().json();
    let sweep = listed["items"].as_array().unwrap().iter().find(|e| e["name"] == "sweep").unwrap();
    let e: Experiment = serde_json::from_value(sweep.clone()).unwrap();
    assert_eq!((e.name.as_str(), e.jobs), ("sweep", 8));
    let one = ml.run(&["experiment", "sweep"]).await.ok();
    assert!(one.stdout.contains("sweep: 8 jobs") && one.stdout.contains("lr") && one.stdout.contains("bs"), "{one:?}");
    let one = ml.run(&["experiment", "--json", "sweep"]).await.ok().json();
    assert_eq!(one["runs"].as_array().unwrap().len(), 8);

    // Two runs compared: the differing fields, not the shared ones.
    let cmp = ml.run(&["compare", &a[0].0, &a[3].0]).await.ok();
    assert!(cmp.stdout.contains("tags.lr") && cmp.stdout.contains("command"), "{cmp:?}");
    assert!(!cmp.stdout.contains("pool"), "same fields are hidden: {cmp:?}");
    let cmp = ml.run(&["compare", "--json", &a[0].0, &a[3].0]).await.ok().json();
    let lr = cmp["fields"].as_array().unwrap().iter().find(|f| f["field"] == "tags.lr").unwrap();
    assert_eq!(lr["values"], serde_json::json!(["0.1", "0.01"]));
    assert_eq!(lr["same"], false);
}

#[tokio::test]
async fn workers_pools_completions_man_and_help() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let ml = Ml::new(&app, "alice");
    let list: WorkerList = fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        let r = ml.run(&["workers", "--json"]).await.ok();
        let l: WorkerList = serde_json::from_str(&r.stdout).unwrap();
        (!l.items.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(list.items[0]["pool"], "default");
    let table = ml.run(&["workers"]).await.ok();
    assert!(table.stdout.contains("default") && table.stdout.contains("/4"), "{table:?}");
    // The recorded fleet is read from the read model: it follows the log.
    let history = fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        let r = ml.run(&["workers", "--history"]).await.ok();
        r.stdout.contains("running").then_some(r)
    })
    .await;
    assert!(history.stdout.contains("STATE") && history.stdout.contains("default"), "{history:?}");

    // A job no worker serves waits in its pool.
    ml.queue(&["--pool", "nowhere", "--priority", "7", "--executor", "noop", "--", "x"]).await;
    let pools = fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        let p = ml.run(&["pools", "--json"]).await.ok().json();
        let nowhere = p["items"].as_array()?.iter().find(|p| p["pool"] == "nowhere")?.clone();
        (nowhere["waiting"] == 1).then_some(p)
    })
    .await;
    let items = pools["items"].as_array().unwrap();
    let nowhere = items.iter().find(|p| p["pool"] == "nowhere").unwrap();
    assert_eq!(nowhere["waiting_by_priority"]["7"], 1, "{pools}");
    assert_eq!(nowhere["workers"], 0);
    let default = items.iter().find(|p| p["pool"] == "default").unwrap();
    assert_eq!((default["workers"].as_u64(), default["free_slots"].as_u64()), (Some(1), Some(4)), "{pools}");
    let human = ml.run(&["queue-depth"]).await.ok();
    assert!(human.stdout.contains("nowhere") && human.stdout.contains("7:1"), "{human:?}");
    // Pausing is for admins; a researcher is told so.
    let refused = ml.run(&["pools", "pause", "nowhere"]).await;
    assert_eq!(refused.code, 5, "forbidden exits 5: {refused:?}");
    let root = Ml::new(&app, "root");
    root.run(&["pools", "pause", "nowhere", "--reason", "maintenance"]).await.ok();
    let paused = root.run(&["pools"]).await.ok();
    assert!(paused.stdout.contains("nowhere (paused)"), "{paused:?}");
    root.run(&["pools", "resume", "nowhere"]).await.ok();
    let worker_id = list.items[0]["id"].as_str().unwrap().to_owned();
    root.run(&["workers", "drain", &worker_id]).await.ok();

    let bash = ml.run(&["completions", "bash"]).await.ok();
    assert!(bash.stdout.contains("_ml()") && bash.stdout.contains("--idempotency-key"));
    for shell in ["zsh", "fish"] {
        assert!(ml.run(&["completions", shell]).await.ok().stdout.contains("queue"));
    }
    let man = ml.run(&["man"]).await.ok();
    assert!(
        man.stdout.contains(".TH ml") && man.stdout.contains("queue"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    let help = ml.run(&["--help"]).await.ok();
    for want in ["Exit codes:", "FETCHML_API_KEY", "Examples:", "ml queue --grid"] {
        assert!(help.stdout.contains(want), "--help lacks {want:?}");
    }
    let no_color = ml.run(&["list", "--color", "always"]).await.ok();
    assert!(no_color.stdout.contains("\u{1b}["), "--color always colours even without a terminal");
    let plain = ml.run(&["list"]).await.ok();
    assert!(!plain.stdout.contains('\u{1b}'), "no colour without a terminal");
}

#[tokio::test]
async fn an_experiments_runs_sort_by_a_metric_either_way() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let ml = Ml::new(&app, "alice");
    let mut ids = Vec::new();
    for loss in ["0.5", "0.2", "0.9"] {
        let script = format!(r#"echo '##fetchml {{"metric": "loss", "value": {loss}, "step": 1}}'"#);
        let q = ml.run(&["queue", "--json", "--wait", "--experiment", "sorted", "--shell", "--", &script]).await.ok();
        let s: Submitted = serde_json::from_str(q.stdout.lines().next().unwrap()).unwrap();
        ids.push(s.id.to_string());
    }
    let order = |v: Value| -> Vec<String> {
        v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
    };
    let asc = ml
        .list_until(&["--experiment", "sorted"], |items| {
            items.iter().filter(|j| j["state"] == "succeeded").count() == 3
        })
        .await;
    assert_eq!(asc.len(), 3);
    let up = order(ml.run(&["experiment", "--json", "--sort", "loss", "sorted"]).await.ok().json());
    assert_eq!(up, [ids[1].clone(), ids[0].clone(), ids[2].clone()]);
    let down = order(ml.run(&["experiment", "--json", "--sort", "-loss", "sorted"]).await.ok().json());
    assert_eq!(down, [ids[2].clone(), ids[0].clone(), ids[1].clone()]);
    let human = ml.run(&["experiment", "--sort", "loss", "sorted"]).await.ok();
    let first_row = human.stdout.lines().find(|l| l.contains("0.2") || l.contains("0.5") || l.contains("0.9")).unwrap();
    assert!(first_row.contains("0.2"), "{}", human.stdout);
    let missing = ml.run(&["experiment", "--sort", "accuracy", "sorted"]).await;
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("no run of sorted has a metric \"accuracy\""), "{missing:?}");
}

#[tokio::test]
async fn usage_is_shown_per_user_and_pool_and_an_analyst_sees_no_users() {
    let app = spawn_app().await;
    let _worker = spawn_worker(&app.settings);
    let alice = Ml::new(&app, "alice");
    let id = alice.queue(&["--executor", "sleep", "--cpus", "2", "--", "200"]).await;
    assert_eq!(alice.run(&["wait", &id]).await.code, 0);
    // The read model follows the log: wait until it counts the attempt.
    let report = fetchml_tests::eventually(std::time::Duration::from_secs(30), || async {
        let r = alice.run(&["usage", "--json", "--by", "user,pool"]).await.ok().json();
        (r["total"]["attempts"] == 1).then_some(r)
    })
    .await;
    let row = &report["rows"][0];
    assert_eq!((row["user"].as_str(), row["pool"].as_str()), (Some("alice"), Some("default")), "{report}");
    let slot = row["slot_seconds"].as_f64().unwrap();
    assert!(slot >= 0.2, "{report}");
    assert!((row["cpu_seconds"].as_f64().unwrap() - 2.0 * slot).abs() < 1e-5, "{report}");
    let table = alice.run(&["usage", "--by", "user,pool"]).await.ok();
    for want in ["USER", "POOL", "SLOT-H", "GPU-H", "alice", "default"] {
        assert!(table.stdout.contains(want), "usage lacks {want:?}: {table:?}");
    }
    let ana = Ml::new(&app, "ana");
    let refused = ana.run(&["usage", "--by", "user"]).await;
    assert_eq!(refused.code, 5, "{refused:?}");
    assert!(refused.stderr.contains("forbidden"), "{refused:?}");
    let pools = ana.run(&["usage", "--by", "pool"]).await.ok();
    assert!(pools.stdout.contains("default") && !pools.stdout.contains("alice"), "{pools:?}");
    let bad = alice.run(&["usage", "--since", "yesterday"]).await;
    assert_ne!(bad.code, 0, "{bad:?}");
}
