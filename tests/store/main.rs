#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The event store against a real nats-server, each test in its own namespace.

use fetchml_events::hash::ChainVerifier;
use fetchml_events::job::{JobCommand, JobEvent, JobRejection, JobSpec, JobStatus};
use fetchml_events::subject::Subjects;
use fetchml_events::{Actor, JobId, UserName};
use fetchml_eventstore::{CommandContext, EventStore, ExecuteError, StartAt, StoreError};
use fetchml_tests::{fresh_store, nats_url, unique_namespace};
use futures::StreamExt;

fn alice() -> UserName {
    UserName::parse("alice").unwrap()
}

fn ctx() -> CommandContext {
    CommandContext::new(Actor::User { name: alice() })
}

async fn queue(store: &EventStore, argv: &[&str]) -> (JobId, u64) {
    let id = JobId::new();
    let done = store
        .execute_job(id, JobCommand::Queue { owner: alice(), spec: JobSpec::command(argv.iter().copied()) }, &ctx())
        .await
        .unwrap();
    (id, done.seq)
}

#[tokio::test]
async fn append_then_load_round_trips() {
    let store = fresh_store().await;
    let (id, seq) = queue(&store, &["echo", "hi"]).await;
    let loaded = store.load_job(id).await.unwrap();
    assert_eq!(loaded.history.len(), 1);
    assert_eq!(loaded.history[0].0, seq);
    assert_eq!(loaded.state.as_ref().unwrap().status, JobStatus::Queued);
    match &loaded.history[0].1.payload {
        JobEvent::JobQueued { owner, spec } => {
            assert_eq!(owner, &alice());
            assert_eq!(spec.command, vec!["echo", "hi"]);
        }
        other => panic!("loaded {other:?}"),
    }
    assert_eq!(loaded.subject.unwrap(), store.subjects().job(&alice(), &JobSpec::command(["x"]).pool, id));
}

#[tokio::test]
async fn a_load_spanning_several_batches_returns_every_event_in_order() {
    let store = fresh_store().await;
    // Interleave two filters' events so each batch skips the other's.
    let n = fetchml_eventstore::LOAD_BATCH * 2 + 7;
    let pool = JobSpec::command(["x"]).pool;
    let (mine, other) =
        (store.subjects().job(&alice(), &pool, JobId::new()), store.subjects().job(&alice(), &pool, JobId::new()));
    let mut seqs = Vec::new();
    for i in 0..n {
        let js = store.jetstream();
        let ack = js.publish(mine.clone(), format!("{{\"i\":{i}}}").into()).await.unwrap().await.unwrap();
        js.publish(other.clone(), "{}".into()).await.unwrap().await.unwrap();
        seqs.push(ack.sequence);
    }
    let loaded = store.load(&mine).await.unwrap();
    assert_eq!(loaded.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    for (i, e) in loaded.iter().enumerate() {
        assert_eq!(e.subject, mine);
        assert_eq!(&e.payload[..], format!("{{\"i\":{i}}}").as_bytes());
    }
    let nobody = fetchml_events::UserName::parse("nobody").unwrap();
    assert!(store.load(&store.subjects().job_events_of_owner(&nobody)).await.unwrap().is_empty());
}

#[tokio::test]
async fn loading_an_unknown_job_finds_nothing() {
    let store = fresh_store().await;
    let loaded = store.load_job(JobId::new()).await.unwrap();
    assert!(loaded.state.is_none() && loaded.history.is_empty());
}

#[tokio::test]
async fn two_appends_at_the_same_expected_sequence_one_wins() {
    let store = fresh_store().await;
    // On a fresh subject (expected 0) and on one with history.
    let subject = store.subjects().job(&alice(), &JobSpec::command(["x"]).pool, JobId::new());
    let (a, b) = tokio::join!(
        store.append(&subject, 0, "m-a", b"{}".to_vec()),
        store.append(&subject, 0, "m-b", b"{}".to_vec()),
    );
    let (ok, err) = match (a, b) {
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => (x, e),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert!(matches!(err, StoreError::Conflict { expected: 0, .. }), "{err:?}");
    let (c, d) = tokio::join!(
        store.append(&subject, ok.seq, "m-c", b"{}".to_vec()),
        store.append(&subject, ok.seq, "m-d", b"{}".to_vec()),
    );
    assert_eq!([c.is_ok(), d.is_ok()].iter().filter(|x| **x).count(), 1, "{c:?} {d:?}");
    let loser = if c.is_ok() { d } else { c };
    assert!(matches!(loser, Err(StoreError::Conflict { .. })));
}

#[tokio::test]
async fn concurrent_commands_on_one_job_are_serialised_by_the_aggregate() {
    let store = fresh_store().await;
    let (id, _) = queue(&store, &["true"]).await;
    let w1 = fetchml_events::WorkerId::new();
    let w2 = fetchml_events::WorkerId::new();
    let (c1, c2) = (ctx(), ctx());
    let (a, b) = tokio::join!(
        store.execute_job(
            id,
            JobCommand::Start { attempt: 1, worker: w1, at: chrono::Utc::now(), placement: Default::default() },
            &c1
        ),
        store.execute_job(
            id,
            JobCommand::Start { attempt: 1, worker: w2, at: chrono::Utc::now(), placement: Default::default() },
            &c2
        ),
    );
    // Exactly one start; the loser re-decided and was refused by the aggregate.
    let rejected =
        [&a, &b].iter().filter(|r| matches!(r, Err(ExecuteError::Rejected(JobRejection::NotStartable { .. })))).count();
    assert_eq!(rejected, 1, "{a:?} {b:?}");
    assert_eq!(store.load_job(id).await.unwrap().history.len(), 2);
}

#[tokio::test]
async fn the_same_message_id_is_stored_once() {
    let store = fresh_store().await;
    let subject = store.subjects().job(&alice(), &JobSpec::command(["x"]).pool, JobId::new());
    let first = store.append(&subject, 0, "cmd-1", b"{}".to_vec()).await.unwrap();
    // The retry still says "expected 0" although the subject now has an event:
    // deduplication must win over the sequence check.
    let again = store.append(&subject, 0, "cmd-1", b"{}".to_vec()).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.seq, again.seq);
    assert_eq!(store.load(&subject).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_retried_command_is_stored_once_and_answered_the_same() {
    let store = fresh_store().await;
    let id = JobId::new();
    let c = ctx();
    let cmd = JobCommand::Queue { owner: alice(), spec: JobSpec::command(["true"]) };
    let first = store.execute_job(id, cmd.clone(), &c).await.unwrap();
    let retry = store.execute_job(id, cmd, &c).await.unwrap();
    assert!(!first.duplicate && retry.duplicate);
    assert_eq!(first.seq, retry.seq);
    assert_eq!(store.load_job(id).await.unwrap().history.len(), 1);
}

#[tokio::test]
async fn the_events_stream_refuses_delete_and_purge() {
    let store = fresh_store().await;
    let (_, seq) = queue(&store, &["true"]).await;
    let stream = store.jetstream().get_stream(store.subjects().events_stream()).await.unwrap();
    assert!(stream.delete_message(seq).await.is_err(), "delete was allowed");
    assert!(stream.purge().await.is_err(), "purge was allowed");
    assert_eq!(store.last_sequence().await.unwrap(), seq);
}

#[tokio::test]
async fn opening_twice_is_idempotent_and_a_conflicting_stream_is_reported() {
    let store = fresh_store().await;
    let client = fetchml_eventstore::connect(&nats_url(), "t").await.unwrap();
    EventStore::open(client.clone(), store.subjects().clone(), &fetchml_tests::test_stream_settings()).await.unwrap();

    let ns = unique_namespace();
    let subjects = Subjects::new(ns);
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: subjects.events_stream(),
        subjects: vec![subjects.all_events()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = EventStore::open(client, subjects.clone(), &fetchml_tests::test_stream_settings()).await.err().unwrap();
    assert!(matches!(err, StoreError::StreamConflict { field: "deny_delete/deny_purge", .. }), "{err}");
    // It was reported, not changed.
    let info = js.get_stream(subjects.events_stream()).await.unwrap().get_info().await.unwrap();
    assert!(!info.config.deny_delete);
    js.delete_stream(subjects.events_stream()).await.unwrap();
}

#[tokio::test]
async fn reading_from_a_sequence_or_a_time_then_following() {
    let store = fresh_store().await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(queue(&store, &["true"]).await.1);
    }
    let filter = store.subjects().all_events();
    let mut from_second = store.read(&filter, StartAt::Sequence(seqs[1])).await.unwrap();
    assert_eq!(from_second.next().await.unwrap().unwrap().seq, seqs[1]);
    assert_eq!(from_second.next().await.unwrap().unwrap().seq, seqs[2]);
    // Then it follows: a new append arrives on the same read.
    let (_, fourth) = queue(&store, &["true"]).await;
    assert_eq!(from_second.next().await.unwrap().unwrap().seq, fourth);

    let loaded = store.load(&filter).await.unwrap();
    let t = loaded[2].decode::<JobEvent>().unwrap().occurred_at;
    let mut by_time = store.read(&filter, StartAt::Time(t - chrono::Duration::milliseconds(1))).await.unwrap();
    let first = by_time.next().await.unwrap().unwrap();
    assert!(first.seq <= seqs[2]);
}

#[tokio::test]
async fn every_appended_event_links_to_its_predecessor() {
    let store = fresh_store().await;
    let (id, _) = queue(&store, &["true"]).await;
    store
        .execute_job(
            id,
            JobCommand::Start {
                attempt: 1,
                worker: fetchml_events::WorkerId::new(),
                at: chrono::Utc::now(),
                placement: Default::default(),
            },
            &ctx(),
        )
        .await
        .unwrap();
    store.execute_job(id, JobCommand::Cancel { reason: "test".into() }, &ctx()).await.unwrap();
    let mut v = ChainVerifier::new();
    for e in store.load(&store.subjects().all_events()).await.unwrap() {
        v.check(e.seq, &e.json().unwrap()).unwrap();
    }
    assert_eq!(v.checked(), 3);
}

/// The job index holds unfinished jobs only (its size follows the backlog),
/// keeps every job's experiment, and folds a finished job that is queued again
/// onto its history read back from the log.
#[tokio::test]
async fn the_job_index_lets_finished_jobs_go_and_takes_a_requeued_one_back() {
    use fetchml_events::WorkerId;
    let store = fresh_store().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let index = fetchml_eventstore::JobIndex::spawn(store.clone(), stop.clone());
    let within = std::time::Duration::from_secs(10);
    let id = JobId::new();
    let mut spec = JobSpec::command(["true"]);
    spec.experiment = Some("exp1".into());
    let queued = store.execute_job(id, JobCommand::Queue { owner: alice(), spec }, &ctx()).await.unwrap();
    assert!(index.wait_for(queued.seq, within).await);
    let first = index.get(id).unwrap();
    assert_eq!(first.state.status, JobStatus::Queued);

    let at = chrono::Utc::now();
    let start = JobCommand::Start { attempt: 1, worker: WorkerId::new(), at, placement: Default::default() };
    store.execute_job(id, start, &ctx()).await.unwrap();
    // Cancelled (a succeeded job cannot be queued again).
    let finished = store.execute_job(id, JobCommand::Cancel { reason: "stop".into() }, &ctx()).await.unwrap();
    assert!(index.wait_for(finished.seq, within).await);
    assert!(index.get(id).is_none(), "a finished job leaves the index");
    assert!(index.select(|_| true).is_empty());
    assert_eq!(index.experiment_of(id).as_deref(), Some("exp1"));
    assert_eq!(index.subject_of(id).as_deref(), Some(first.subject.as_str()), "where a finished job's events are");

    let again = store.execute_job(id, JobCommand::Retry { reason: "again".into() }, &ctx()).await.unwrap();
    assert!(index.wait_for(again.seq, within).await);
    let back = index.get(id).expect("a requeued job is back in the index");
    let log = store.load_job(id).await.unwrap();
    assert_eq!(Some(&back.state), log.state.as_ref(), "folded from the whole history");
    assert_eq!(back.state.status, JobStatus::Queued);
    assert_eq!(back.created_at, first.created_at);
    assert_eq!(back.last_seq, again.seq);
    stop.cancel();
}

/// `n` new jobs queued; their sequences in order.
async fn queue_many(store: &EventStore, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for _ in 0..n {
        seqs.push(queue(store, &["true"]).await.1);
    }
    seqs
}

/// The next `n` sequences a feed hands out (bounded wait for each).
async fn take(feed: &mut fetchml_eventstore::EventFeed, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(20), feed.next())
            .await
            .expect("an event within 20 s")
            .expect("the feed goes on")
            .expect("no error");
        out.push(ev.seq);
    }
    out
}

#[tokio::test]
async fn a_shared_delivery_gives_every_follower_the_log_from_its_own_point_without_gap_or_duplicate() {
    use fetchml_eventstore::LogTap;
    let store = fresh_store().await;
    let before = queue_many(&store, 20).await;
    // A tiny buffer, so that a follower that does not read falls behind it.
    let tap = LogTap::with_buffer(store.clone(), 8);
    let stop = fetchml_tests::CancellationToken::new();
    let mut from_start = tap.follow(1);
    let mut idle = tap.follow(1);
    tap.start(stop.clone());
    assert_eq!(take(&mut from_start, 20).await, before, "a follower from the start sees the whole log in order");

    // A follower that asks after the start, from the middle, catches up on
    // its own and then shares the tap.
    let mut late = tap.follow(before[10]);
    assert_eq!(take(&mut late, 10).await, before[10..]);
    let after = queue_many(&store, 30).await;
    assert_eq!(take(&mut from_start, 30).await, after);
    assert_eq!(take(&mut late, 30).await, after, "the late follower switched to the tap with no gap");

    // The idle follower's buffer overflowed long ago (50 events, 8 held): it
    // reads on its own and rejoins; still every event once, in order.
    let all: Vec<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(take(&mut idle, 50).await, all, "the lagging follower lost nothing");
    let more = queue_many(&store, 5).await;
    assert_eq!(take(&mut idle, 5).await, more);
    assert_eq!(take(&mut from_start, 5).await, more);
    stop.cancel();
}
