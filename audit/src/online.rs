//! The adapters over the live log: verification, export and the checkpoint
//! writer.

use crate::AuditError;
use crate::chain::{Chain, parse_entry};
use crate::checkpoint::{Keyring, PublicKey, SigningKey, StoredCheckpoint};
use crate::export::{Line, Manifest};
use crate::verify::{Item, Verdict, Verifier, checkpoint_subject};
use bytes::Bytes;
use fetchml_eventstore::{EventStore, StartAt, StoreError};
use futures::{Stream, StreamExt};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where an online verification starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// Sequence 1: everything is checked.
    Start,
    /// The latest checkpoint, if its signature holds under the trusted keys
    /// (else from the start): what is before it is taken on its signature.
    LatestCheckpoint,
}

/// Replays the namespace's log up to its last sequence at the call.
pub async fn verify_store(store: &EventStore, keys: Keyring, from: From) -> Result<Verdict, AuditError> {
    let ns = store.subjects().namespace().to_string();
    let last = store.last_sequence().await?;
    let mut verifier = Verifier::new(&ns, keys.clone());
    if from == From::LatestCheckpoint
        && let Some(ev) = store.last_on_subject(&checkpoint_subject(&ns)).await?
        && let Ok(cp) = StoredCheckpoint::parse(&ev.payload)
        && let Some(key) = keys.get(&cp.checkpoint.key_id)
        && Keyring::signature_holds(key, &cp.checkpoint, &cp.signature)
        && let Some(head) = parse_entry(&cp.checkpoint.head)
        && cp.checkpoint.namespace == ns
    {
        verifier = Verifier::resume(&ns, keys, cp.checkpoint.seq, head, true);
    }
    let start = verifier.expected();
    if last < start {
        return Ok(verifier.verdict(None));
    }
    let mut events = store.read(&store.subjects().all_events(), StartAt::Sequence(start)).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let item = Item { seq: ev.seq, subject: &ev.subject, bytes: &ev.payload, recorded_entry: None, next_seq: None };
        if let Err(b) = verifier.check(&item) {
            return Ok(verifier.verdict(Some(b)));
        }
        if ev.seq >= last {
            break;
        }
    }
    Ok(verifier.verdict(None))
}

/// Lines of an export are sent in chunks of about this many bytes.
const CHUNK: usize = 64 * 1024;

/// The export of sequences `from..=to` (`to` `None`: the last at the call) as
/// JSON Lines, in chunks. Memory is bounded: a reader task fills a small
/// channel that the consumer drains.
pub async fn export(
    store: &EventStore,
    keys: Vec<PublicKey>,
    from: u64,
    to: Option<u64>,
) -> Result<impl Stream<Item = Result<Bytes, AuditError>> + Send + 'static + use<>, AuditError> {
    let last = store.last_sequence().await?;
    let from = from.max(1);
    let to = to.unwrap_or(last).min(last);
    let ns = store.subjects().namespace().to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, AuditError>>(8);
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(e) = write_export(&store, &ns, keys, from, to, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

async fn write_export(
    store: &EventStore,
    ns: &str,
    keys: Vec<PublicKey>,
    from: u64,
    to: u64,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, AuditError>>,
) -> Result<(), AuditError> {
    let mut chain = Chain::new();
    let mut buf = Vec::with_capacity(CHUNK * 2);
    let mut events = 0u64;
    let send = |buf: &mut Vec<u8>| {
        let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(CHUNK * 2)));
        async move { tx.send(Ok(chunk)).await.map_err(|_| AuditError::Invalid("export reader went away".into())) }
    };
    let manifest = |chain: &Chain| Line::Manifest(Manifest::new(ns, from, to, &chain.head(), keys.clone())).to_line();
    let mut manifest_sent = false;
    if to >= from {
        // From sequence 1 on, to know the entry before `from`; lines only
        // from `from` on.
        let mut reader = store.read(&store.subjects().all_events(), StartAt::Beginning).await?;
        while let Some(ev) = reader.next().await {
            let ev = ev?;
            if ev.seq != chain.seq() + 1 {
                return Err(AuditError::Store(StoreError::Invalid(format!(
                    "the log skips from sequence {} to {}",
                    chain.seq(),
                    ev.seq
                ))));
            }
            if ev.seq == from {
                buf.extend(manifest(&chain)?);
                manifest_sent = true;
            }
            let entry = chain.push(ev.seq, &ev.payload);
            if ev.seq >= from {
                buf.extend(Line::event(ev.seq, &ev.subject, &ev.payload, &entry).to_line()?);
                events += 1;
                if buf.len() >= CHUNK {
                    send(&mut buf).await?;
                }
            }
            if ev.seq >= to {
                break;
            }
        }
    }
    if !manifest_sent {
        buf.extend(manifest(&chain)?);
    }
    buf.extend(Line::End { to_seq: to.max(from - 1), events, head: hex::encode(chain.head()) }.to_line()?);
    send(&mut buf).await
}

/// When the checkpoint writer writes.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    /// After this many new events...
    pub every_events: u64,
    /// ...or this long after the first uncovered one, whichever comes first.
    pub every: Duration,
}

/// Follows the log and appends a signed checkpoint every
/// `policy.every_events` events or `policy.every`, whichever comes first, and
/// only when events are not yet covered. Safe with several api processes: the
/// append expects the checkpoint subject's last sequence, so of two writers
/// racing for the same checkpoint one wins and the other sees it.
pub async fn run_checkpointer(store: EventStore, key: SigningKey, policy: CheckpointPolicy, stop: CancellationToken) {
    let mut backoff = fetchml_eventstore::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match checkpoint_loop(&store, &key, &policy, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "audit checkpoint writer restarting");
                if !backoff.wait(&stop).await {
                    return;
                }
            }
        }
    }
}

async fn checkpoint_loop(
    store: &EventStore,
    key: &SigningKey,
    policy: &CheckpointPolicy,
    stop: &CancellationToken,
) -> Result<(), AuditError> {
    let ns = store.subjects().namespace().to_string();
    let subject = checkpoint_subject(&ns);
    let mut reader = store.read(&store.subjects().all_events(), StartAt::Beginning).await?;
    let mut chain = Chain::new();
    let mut last_checkpoint_seq = 0u64;
    let mut uncovered = 0u64;
    let mut caught_up = store.last_sequence().await? == 0;
    let mut oldest_uncovered: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(policy.every.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ev = reader.next() => {
                let Some(ev) = ev else { return Err(AuditError::Invalid("event log read ended".into())) };
                let ev = ev?;
                if ev.seq != chain.seq() + 1 {
                    return Err(AuditError::Invalid(format!("log skips from {} to {}", chain.seq(), ev.seq)));
                }
                chain.push(ev.seq, &ev.payload);
                if ev.subject == subject {
                    last_checkpoint_seq = ev.seq;
                    let covers = StoredCheckpoint::parse(&ev.payload).map(|c| c.checkpoint.seq).unwrap_or(0);
                    uncovered = ev.seq.saturating_sub(covers + 1);
                    if uncovered == 0 {
                        oldest_uncovered = None;
                    }
                } else {
                    uncovered += 1;
                    oldest_uncovered.get_or_insert_with(tokio::time::Instant::now);
                }
                caught_up = ev.pending == Some(0);
                caught_up && uncovered >= policy.every_events
            }
            _ = tick.tick() => caught_up && uncovered > 0
                && oldest_uncovered.is_none_or(|t| t.elapsed() >= policy.every),
        };
        if !due {
            continue;
        }
        let cp = key.checkpoint(&ns, chain.seq(), &chain.head(), chrono::Utc::now())?;
        let msg_id = format!("audit-checkpoint-{}", chain.seq());
        match store.append(&subject, last_checkpoint_seq, &msg_id, cp.to_bytes()?).await {
            Ok(a) => {
                tracing::debug!(seq = a.seq, covers = chain.seq(), "audit checkpoint written");
                uncovered = 0;
                oldest_uncovered = None;
            }
            // Another api wrote this checkpoint first; its event is on the way.
            Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
