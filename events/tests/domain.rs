#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is a test failure

//! The Job aggregate, tested given/when/then without any I/O, plus the stored-v1
//! fixture that pins the upcast path and the hash chain.

use fetchml_events::hash::{BrokenLink, ChainVerifier, GENESIS};
use fetchml_events::job::{
    FailureClass, Job, JobCommand, JobEvent, JobRejection, JobSpec, JobStatus, Outcome, decide, evolve, fold,
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
    JobEvent::JobStarted { attempt, worker: w }
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
    assert_eq!(given([queued()]).when(JobCommand::Start { attempt: 1, worker: w }).unwrap(), vec![started(1, w)]);
    assert!(matches!(
        given([queued()]).when(JobCommand::Start { attempt: 2, worker: w }),
        Err(JobRejection::StaleAttempt { current: 0, got: 2 })
    ));
}

#[test]
fn a_running_job_cannot_start_again() {
    let w = WorkerId::new();
    let r = given([queued(), started(1, w)]).when(JobCommand::Start { attempt: 2, worker: w });
    assert!(matches!(r, Err(JobRejection::NotStartable { status: JobStatus::Running, .. })));
}

#[test]
fn a_late_report_from_an_old_attempt_is_fenced_out() {
    let w = WorkerId::new();
    // Attempt 2 is the current one (as if attempt 1 had been superseded).
    let mut state = fold(&[queued(), started(1, w)]).unwrap();
    state.attempt = 2;
    let r = decide(Some(&state), JobCommand::Finish { attempt: 1, outcome: Outcome::Succeeded });
    assert_eq!(r, Err(JobRejection::StaleAttempt { current: 2, got: 1 }));
}

#[test]
fn a_finished_job_takes_no_second_terminal_event() {
    let w = WorkerId::new();
    let h = [queued(), started(1, w), JobEvent::JobSucceeded { attempt: 1, exit_code: 0 }];
    assert_eq!(
        given(h.clone()).when(JobCommand::Finish { attempt: 1, outcome: Outcome::Succeeded }),
        Err(JobRejection::AlreadyTerminal(JobStatus::Succeeded))
    );
    assert_eq!(
        given(h).when(JobCommand::Cancel { reason: "x".into() }),
        Err(JobRejection::AlreadyTerminal(JobStatus::Succeeded))
    );
}

#[test]
fn a_cancelled_job_never_starts() {
    let r = given([queued(), JobEvent::JobCancelled { reason: "user".into() }])
        .when(JobCommand::Start { attempt: 1, worker: WorkerId::new() });
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
    };
    let job = fold(&[queued(), started(1, w), failed]).unwrap();
    assert_eq!((job.status, job.exit_code, job.failure_class), (JobStatus::Failed, Some(3), Some(FailureClass::Code)));
    assert_eq!(job.version, 3);
}

// ---- property: no command sequence drives a job through an illegal transition

fn arb_command() -> impl Strategy<Value = JobCommand> {
    let w = WorkerId::from_uuid(uuid::Uuid::from_u128(7));
    prop_oneof![
        Just(JobCommand::Queue { owner: UserName::parse("alice").unwrap(), spec: JobSpec::command(["true"]) }),
        (0u32..4).prop_map(move |a| JobCommand::Start { attempt: a, worker: w }),
        (0u32..4, any::<bool>()).prop_map(|(a, ok)| JobCommand::Finish {
            attempt: a,
            outcome: if ok {
                Outcome::Succeeded
            } else {
                Outcome::Failed { exit_code: Some(1), signal: None, class: FailureClass::Code, reason: "x".into() }
            },
        }),
        Just(JobCommand::Cancel { reason: "r".into() }),
    ]
}

fn legal(before: Option<&Job>, event: &JobEvent) -> bool {
    match (before, event) {
        (None, JobEvent::JobQueued { .. }) => true,
        (None, _) | (Some(_), JobEvent::JobQueued { .. }) => false,
        (Some(j), _) if j.status.is_terminal() => false,
        (Some(j), JobEvent::JobStarted { attempt, .. }) => j.status == JobStatus::Queued && *attempt == j.attempt + 1,
        (Some(j), JobEvent::JobSucceeded { attempt, .. } | JobEvent::JobFailed { attempt, .. }) => {
            j.status == JobStatus::Running && *attempt == j.attempt
        }
        (Some(_), JobEvent::JobCancelled { .. }) => true,
    }
}

proptest! {
    #[test]
    fn no_command_sequence_makes_an_illegal_history(cmds in proptest::collection::vec(arb_command(), 0..40)) {
        let mut state: Option<Job> = None;
        let mut history: Vec<JobEvent> = Vec::new();
        let mut terminal_events = 0;
        for cmd in cmds {
            if let Ok(events) = decide(state.as_ref(), cmd) {
                for e in &events {
                    prop_assert!(legal(state.as_ref(), e), "illegal {e:?} after {state:?}");
                    let before = state.as_ref().map(|j| j.status.is_terminal()).unwrap_or(false);
                    state = evolve(state, e);
                    let after = state.as_ref().map(|j| j.status.is_terminal()).unwrap_or(false);
                    if !before && after { terminal_events += 1; }
                    history.push(e.clone());
                }
            }
        }
        prop_assert!(terminal_events <= 1);
        // evolve after decide is consistent: refolding the history gives the same state.
        prop_assert_eq!(fold(&history), state.clone());
        if let Some(j) = &state { prop_assert_eq!(j.version as usize, history.len()); }
    }
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
    let events = [queued(), started(1, w), JobEvent::JobSucceeded { attempt: 1, exit_code: 0 }];
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
