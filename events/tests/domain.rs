#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The Job aggregate, tested given/when/then without any I/O, plus the stored-v1
//! fixture that pins the upcast path and the hash chain.

use chrono::{DateTime, Utc};
use fetchml_events::envelope::DomainEvent;
use fetchml_events::hash::{BrokenLink, ChainVerifier, GENESIS};
use fetchml_events::job::{
    FailureClass, Job, JobCommand, JobEvent, JobRejection, JobSpec, JobStatus, Metrics, Outcome, decide, evolve, fold,
};
use fetchml_events::{Actor, CommandId, Envelope, NewEvent, UserName, WorkerId};
use proptest::prelude::*;

/// given(events).when(cmd) → the decision.
struct Given(Vec<JobEvent>);

fn given(events: impl Into<Vec<JobEvent>>) -> Given {
    Given(events.into())
}

impl Given {
    fn when(self, cmd: JobCommand) -> Result<Vec<JobEvent>, JobRejection> {
        let state = fold(&self.0);
        decide(state.as_ref(), cmd)
    }
}

fn alice() -> UserName {
    UserName::parse("alice").unwrap()
}

fn queued() -> JobEvent {
    JobEvent::JobQueued { owner: alice(), spec: JobSpec::command(["echo", "hi"]) }
}

fn started(attempt: u32, w: WorkerId) -> JobEvent {
    JobEvent::JobStarted { attempt, worker: w, placement: Default::default() }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn start(attempt: u32, worker: WorkerId) -> JobCommand {
    JobCommand::Start { attempt, worker, at: t0(), placement: Default::default() }
}

fn finish(attempt: u32, outcome: Outcome) -> JobCommand {
    JobCommand::Finish { attempt, outcome, metrics: Metrics::new(), at: t0(), jitter_permille: 500 }
}

fn fail(class: FailureClass) -> Outcome {
    Outcome::Failed { exit_code: None, signal: Some(9), class, reason: "x".into() }
}

fn succeeded(attempt: u32) -> JobEvent {
    JobEvent::JobSucceeded { attempt, exit_code: 0, metrics: Metrics::new() }
}

#[test]
fn queueing_a_new_job_records_it() {
    let spec = JobSpec::command(["echo", "hi"]);
    let out = given([]).when(JobCommand::Queue { owner: alice(), spec: spec.clone() }).unwrap();
    assert_eq!(out, vec![JobEvent::JobQueued { owner: alice(), spec }]);
}

#[test]
fn queueing_an_existing_job_is_rejected() {
    let r = given([queued()]).when(JobCommand::Queue { owner: alice(), spec: JobSpec::command(["x"]) });
    assert_eq!(r, Err(JobRejection::AlreadyExists));
}

#[test]
fn queueing_an_invalid_spec_is_rejected_with_its_code() {
    let mut spec = JobSpec::command(["x"]);
    spec.priority = 0;
    let r = given([]).when(JobCommand::Queue { owner: alice(), spec }).unwrap_err();
    assert_eq!(r.code(), "out_of_range");
}

#[test]
fn the_first_start_must_be_attempt_one() {
    let w = WorkerId::new();
    assert_eq!(given([queued()]).when(start(1, w)).unwrap(), vec![started(1, w)]);
    assert!(matches!(given([queued()]).when(start(2, w)), Err(JobRejection::StaleAttempt { current: 0, got: 2 })));
}

#[test]
fn a_running_job_cannot_start_again() {
    let w = WorkerId::new();
    let r = given([queued(), started(1, w)]).when(start(2, w));
    assert!(matches!(r, Err(JobRejection::NotStartable { status: JobStatus::Running, .. })));
}

#[test]
fn a_late_report_from_an_old_attempt_is_fenced_out() {
    let w = WorkerId::new();
    // Attempt 2 is the current one (as if attempt 1 had been superseded).
    let mut state = fold(&[queued(), started(1, w)]).unwrap();
    state.attempt = 2;
    let r = decide(Some(&state), finish(1, Outcome::Succeeded));
    assert_eq!(r, Err(JobRejection::StaleAttempt { current: 2, got: 1 }));
}

#[test]
fn a_finished_job_takes_no_second_terminal_event() {
    let w = WorkerId::new();
    let h = [queued(), started(1, w), succeeded(1)];
    assert_eq!(
        given(h.clone()).when(finish(1, Outcome::Succeeded)),
        Err(JobRejection::AlreadyTerminal(JobStatus::Succeeded))
    );
    assert_eq!(
        given(h).when(JobCommand::Cancel { reason: "x".into() }),
        Err(JobRejection::AlreadyTerminal(JobStatus::Succeeded))
    );
}

#[test]
fn a_cancelled_job_never_starts() {
    let r = given([queued(), JobEvent::JobCancelled { reason: "user".into() }]).when(start(1, WorkerId::new()));
    assert_eq!(r, Err(JobRejection::AlreadyTerminal(JobStatus::Cancelled)));
}

#[test]
fn a_failure_keeps_exit_code_and_class() {
    let w = WorkerId::new();
    let failed = JobEvent::JobFailed {
        attempt: 1,
        exit_code: Some(3),
        signal: None,
        class: FailureClass::Code,
        reason: "exit status 3".into(),
        metrics: Metrics::new(),
    };
    let job = fold(&[queued(), started(1, w), failed]).unwrap();
    assert_eq!((job.status, job.exit_code, job.failure_class), (JobStatus::Failed, Some(3), Some(FailureClass::Code)));
    assert_eq!(job.version, 3);
}

// ---- property: no command sequence drives a job through an illegal transition

fn arb_command() -> impl Strategy<Value = JobCommand> {
    let w = WorkerId::from_uuid(uuid::Uuid::from_u128(7));
    let class = prop_oneof![
        Just(FailureClass::Infrastructure),
        Just(FailureClass::Code),
        Just(FailureClass::Resource),
        Just(FailureClass::Unknown)
    ];
    prop_oneof![
        Just(JobCommand::Queue { owner: UserName::parse("alice").unwrap(), spec: JobSpec::command(["true"]) }),
        (0u32..6, 0i64..200).prop_map(move |(a, dt)| JobCommand::Start {
            attempt: a,
            worker: w,
            at: t0() + chrono::Duration::seconds(dt),
            placement: Default::default()
        }),
        (0u32..6, proptest::option::of(class), 0u16..=1000).prop_map(|(a, c, j)| JobCommand::Finish {
            attempt: a,
            outcome: c.map(fail).unwrap_or(Outcome::Succeeded),
            metrics: Metrics::new(),
            at: t0(),
            jitter_permille: j,
        }),
        Just(JobCommand::Cancel { reason: "r".into() }),
        Just(JobCommand::Retry { reason: "r".into() }),
    ]
}

fn legal(before: Option<&Job>, event: &JobEvent) -> bool {
    let Some(j) = before else { return matches!(event, JobEvent::JobQueued { .. }) };
    match event {
        JobEvent::JobQueued { .. } => false,
        JobEvent::JobRequeued { .. } => j.status.is_terminal() && j.status != JobStatus::Succeeded,
        _ if j.status.is_terminal() => false,
        JobEvent::JobStarted { attempt, .. } => j.status.is_waiting() && *attempt == j.attempt + 1,
        JobEvent::JobCancelled { .. } => true,
        JobEvent::JobSucceeded { attempt, .. }
        | JobEvent::JobRetryScheduled { attempt, .. }
        | JobEvent::JobFailed { attempt, .. }
        | JobEvent::JobTimedOut { attempt, .. }
        | JobEvent::JobDeadLettered { attempt, .. } => j.status == JobStatus::Running && *attempt == j.attempt,
    }
}

proptest! {
    #[test]
    fn no_command_sequence_makes_an_illegal_history(cmds in proptest::collection::vec(arb_command(), 0..60)) {
        let mut state: Option<Job> = None;
        let mut history: Vec<JobEvent> = Vec::new();
        let mut terminal_in_run = 0;
        for cmd in cmds {
            if let Ok(events) = decide(state.as_ref(), cmd) {
                prop_assert_eq!(events.len(), 1, "one event per decision");
                for e in &events {
                    prop_assert!(legal(state.as_ref(), e), "illegal {:?} after {:?}", e, state);
                    if matches!(e, JobEvent::JobRequeued { .. }) { terminal_in_run = 0; }
                    if e.is_terminal() { terminal_in_run += 1; }
                    prop_assert!(terminal_in_run <= 1, "two terminal events in one run");
                    state = evolve(state, e);
                    let j = state.as_ref().unwrap();
                    prop_assert!(j.attempts_in_run <= j.spec.retry.max_attempts);
                    history.push(e.clone());
                }
            }
        }
        // evolve after decide is consistent: refolding the history gives the same state.
        prop_assert_eq!(fold(&history), state.clone());
        if let Some(j) = &state { prop_assert_eq!(j.version as usize, history.len()); }
    }
}

// ---- retries, timeouts, dead letters, manual retry

fn running(attempts: u32) -> Vec<JobEvent> {
    let w = WorkerId::new();
    let mut h = vec![queued()];
    for a in 1..=attempts {
        h.push(started(a, w));
        if a < attempts {
            h.push(JobEvent::JobRetryScheduled {
                attempt: a,
                exit_code: None,
                signal: Some(9),
                class: FailureClass::Infrastructure,
                reason: "lost".into(),
                not_before: t0(),
                metrics: Metrics::new(),
            });
        }
    }
    h
}

#[test]
fn an_infrastructure_failure_is_retried_after_a_backoff() {
    let out = given(running(1)).when(finish(1, fail(FailureClass::Infrastructure))).unwrap();
    match &out[0] {
        JobEvent::JobRetryScheduled { attempt: 1, not_before, .. } => {
            assert_eq!(*not_before, t0() + chrono::Duration::milliseconds(1000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_cannot_start_before_its_time() {
    let mut h = running(1);
    h.push(JobEvent::JobRetryScheduled {
        attempt: 1,
        exit_code: None,
        signal: None,
        class: FailureClass::Infrastructure,
        reason: "x".into(),
        not_before: t0() + chrono::Duration::seconds(5),
        metrics: Metrics::new(),
    });
    let w = WorkerId::new();
    assert!(matches!(given(h.clone()).when(start(2, w)), Err(JobRejection::NotYet(_))));
    let later = JobCommand::Start {
        attempt: 2,
        worker: w,
        at: t0() + chrono::Duration::seconds(5),
        placement: Default::default(),
    };
    assert_eq!(given(h).when(later).unwrap(), vec![started(2, w)]);
}

#[test]
fn exhausted_retries_dead_letter_the_job() {
    let out = given(running(3)).when(finish(3, fail(FailureClass::Infrastructure))).unwrap();
    assert!(matches!(out[0], JobEvent::JobDeadLettered { attempt: 3, class: FailureClass::Infrastructure, .. }));
}

#[test]
fn a_code_failure_is_not_retried_by_default() {
    let out = given(running(1)).when(finish(1, fail(FailureClass::Code))).unwrap();
    assert!(matches!(out[0], JobEvent::JobFailed { attempt: 1, class: FailureClass::Code, .. }));
}

#[test]
fn a_timeout_ends_as_timed_out() {
    let out = given(running(1)).when(finish(1, fail(FailureClass::Resource))).unwrap();
    assert!(matches!(out[0], JobEvent::JobTimedOut { attempt: 1, .. }));
}

#[test]
fn a_dead_lettered_job_can_be_retried_and_gets_a_fresh_budget() {
    let mut h = running(3);
    h.push(JobEvent::JobDeadLettered {
        attempt: 3,
        exit_code: None,
        signal: None,
        class: FailureClass::Infrastructure,
        reason: "x".into(),
        metrics: Metrics::new(),
    });
    let out = given(h.clone()).when(JobCommand::Retry { reason: "by hand".into() }).unwrap();
    h.extend(out);
    let job = fold(&h).unwrap();
    assert_eq!((job.status, job.attempts_in_run, job.attempt), (JobStatus::Queued, 0, 3));
    let w = WorkerId::new();
    assert_eq!(given(h).when(start(4, w)).unwrap(), vec![started(4, w)]);
}

#[test]
fn a_succeeded_or_running_job_cannot_be_retried() {
    let w = WorkerId::new();
    let r = given([queued(), started(1, w), succeeded(1)]).when(JobCommand::Retry { reason: "x".into() });
    assert_eq!(r, Err(JobRejection::NotRetryable(JobStatus::Succeeded)));
    let r = given([queued(), started(1, w)]).when(JobCommand::Retry { reason: "x".into() });
    assert_eq!(r, Err(JobRejection::NotRetryable(JobStatus::Running)));
}

#[test]
fn the_last_metric_values_land_in_the_state() {
    let mut metrics = Metrics::new();
    metrics.insert("loss".into(), fetchml_events::job::Metric { value: 0.25, step: Some(100) });
    let cmd = JobCommand::Finish { attempt: 1, outcome: Outcome::Succeeded, metrics, at: t0(), jitter_permille: 0 };
    let mut h = running(1);
    h.extend(given(h.clone()).when(cmd).unwrap());
    assert_eq!(fold(&h).unwrap().metrics["loss"].value, 0.25);
}

// ---- stored fixtures: the upcast path and the hash chain

const V1_FIXTURE: &str = include_str!("fixtures/job_queued_v1.json");

#[test]
fn a_stored_v1_job_queued_is_upcast_to_the_current_shape() {
    let env = Envelope::<JobEvent>::decode(V1_FIXTURE.as_bytes()).unwrap();
    assert_eq!(env.schema_version, 2);
    match env.payload {
        JobEvent::JobQueued { owner, spec } => {
            assert_eq!(owner.as_str(), "alice");
            assert_eq!(spec.timeout_secs, Some(3600));
            assert_eq!(spec.priority, 7);
            assert_eq!(spec.pool.as_str(), "gpu");
        }
        other => panic!("decoded {other:?}"),
    }
}

#[test]
fn the_stored_v1_fixture_still_verifies() {
    let v: serde_json::Value = serde_json::from_str(V1_FIXTURE).unwrap();
    ChainVerifier::new().check(1, &v).unwrap();
}

fn sealed_chain(n: usize) -> Vec<serde_json::Value> {
    let mut prev = GENESIS.to_owned();
    let mut out = Vec::new();
    let w = WorkerId::new();
    let events = [queued(), started(1, w), succeeded(1)];
    for (i, e) in events.into_iter().cycle().take(n).enumerate() {
        let env = Envelope::seal(
            NewEvent {
                aggregate_id: "job1".into(),
                aggregate_version: i as u64 + 1,
                occurred_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                actor: Actor::User { name: alice() },
                command_id: CommandId::new(),
                correlation_id: uuid::Uuid::nil(),
                payload: e,
            },
            &prev,
        )
        .unwrap();
        prev = env.hash.clone();
        out.push(serde_json::from_slice(&env.to_bytes().unwrap()).unwrap());
    }
    out
}

/// `payload` sealed as job1's first event, as a reader of the log gets it back.
fn first_event_as_stored(payload: JobEvent) -> serde_json::Value {
    let env = Envelope::seal(
        NewEvent {
            aggregate_id: "job1".into(),
            aggregate_version: 1,
            occurred_at: t0(),
            actor: Actor::User { name: alice() },
            command_id: CommandId::new(),
            correlation_id: uuid::Uuid::nil(),
            payload,
        },
        GENESIS,
    )
    .unwrap();
    serde_json::from_slice(&env.to_bytes().unwrap()).unwrap()
}

/// A metric like a training loss, 1.7546217903306627, was read back from the
/// stored bytes as the neighbouring double (serde_json parses floats fast but
/// not exactly unless built with `float_roundtrip`), so the verifier
/// recomputed another hash and reported a finished job's event as altered.
/// About one double in thirteen between 0 and 10 did that.
#[test]
fn a_finished_job_with_a_float_metric_verifies() {
    let metrics = [("loss".to_owned(), fetchml_events::job::Metric { value: 1.7546217903306627, step: Some(3) })];
    let stored = first_event_as_stored(JobEvent::JobSucceeded {
        attempt: 1,
        exit_code: 0,
        metrics: metrics.into_iter().collect(),
    });
    assert_eq!(stored["payload"]["metrics"]["loss"]["value"].as_f64(), Some(1.7546217903306627));
    assert_eq!(ChainVerifier::new().check(1, &stored), Ok(()));
}

proptest! {
    /// Sealing hashes the typed envelope as it is written (`hash_of`); a
    /// verifier hashes the JSON it reads back from the log. Whatever text an
    /// event carries, the two agree.
    #[test]
    fn a_sealed_event_verifies_whatever_it_carries(
        command in proptest::collection::vec(".*", 1..4),
        env in proptest::collection::btree_map(".*", ".*", 0..4),
        metrics in proptest::collection::btree_map(".*", (proptest::num::f64::ANY, proptest::option::of(any::<u64>())), 0..4),
        which in 0usize..2,
    ) {
        let mut spec = JobSpec::command(command);
        spec.env = env;
        let payload = if which == 0 {
            JobEvent::JobQueued { owner: alice(), spec }
        } else {
            let metrics = metrics.into_iter().map(|(k, (value, step))| (k, fetchml_events::job::Metric { value, step })).collect();
            JobEvent::JobSucceeded { attempt: 1, exit_code: 0, metrics }
        };
        let stored = first_event_as_stored(payload);
        prop_assert_eq!(ChainVerifier::new().check(1, &stored), Ok(()));
    }
}

#[test]
fn an_intact_chain_verifies() {
    let mut v = ChainVerifier::new();
    for (i, e) in sealed_chain(3).iter().enumerate() {
        v.check(i as u64 + 1, e).unwrap();
    }
    assert_eq!(v.checked(), 3);
}

#[test]
fn the_verifier_names_the_first_altered_event() {
    let mut chain = sealed_chain(3);
    chain[1]["payload"]["attempt"] = serde_json::json!(9);
    let mut v = ChainVerifier::new();
    v.check(1, &chain[0]).unwrap();
    assert!(matches!(v.check(2, &chain[1]), Err(BrokenLink::Altered { seq: 2, .. })));
}

#[test]
fn the_verifier_names_a_removed_event() {
    let chain = sealed_chain(3);
    let mut v = ChainVerifier::new();
    v.check(1, &chain[0]).unwrap();
    assert!(matches!(v.check(3, &chain[2]), Err(BrokenLink::Unlinked { seq: 3, .. })));
}

/// The dispatcher skips events by type before decoding them: the types it
/// keeps must be exactly those after which a job waits for a worker.
#[test]
fn the_types_that_ask_for_a_worker_are_those_that_leave_a_job_waiting() {
    let w = WorkerId::new();
    let then = |h: &[JobEvent], cmd: JobCommand| -> Vec<JobEvent> {
        let mut h = h.to_vec();
        h.extend(given(h.clone()).when(cmd).unwrap());
        h
    };
    let queued_h = vec![queued()];
    let running = then(&queued_h, start(1, w));
    let histories = [
        queued_h.clone(),
        running.clone(),
        then(&running, finish(1, Outcome::Succeeded)),
        then(&running, finish(1, fail(FailureClass::Infrastructure))),
        then(&running, finish(1, fail(FailureClass::Code))),
        then(&running, JobCommand::Cancel { reason: "r".into() }),
        then(&then(&running, JobCommand::Cancel { reason: "r".into() }), JobCommand::Retry { reason: "r".into() }),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for h in histories {
        let last = h.last().unwrap();
        let asks = JobEvent::ASKS_FOR_WORKER.contains(&last.event_type());
        assert_eq!(asks, fold(&h).unwrap().status.is_waiting(), "{}", last.event_type());
        // And the type is readable from the stored bytes alone.
        let env = Envelope::seal(
            NewEvent {
                aggregate_id: "j".into(),
                aggregate_version: h.len() as u64,
                occurred_at: t0(),
                actor: Actor::User { name: alice() },
                command_id: CommandId::new(),
                correlation_id: uuid::Uuid::nil(),
                payload: last.clone(),
            },
            GENESIS,
        )
        .unwrap();
        let bytes = env.to_bytes().unwrap();
        let peeked = fetchml_events::envelope::peek(&bytes).unwrap();
        assert_eq!(
            (peeked.event_type.as_ref(), peeked.aggregate_kind),
            (last.event_type(), fetchml_events::AggregateKind::Job)
        );
        seen.insert(last.event_type());
    }
    for t in JobEvent::ASKS_FOR_WORKER {
        assert!(seen.contains(t), "{t} not covered");
    }
}
