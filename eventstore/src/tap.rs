//! One delivery of the log, shared by every follower in a process.
//!
//! The api process follows the log three times over: the job index, the
//! scheduler and the projector each fold every event. Each with its own
//! consumer, the broker sends every event three times (BENCHMARKS.md counted
//! the followers as a third of a job's broker messages). A [`LogTap`] reads the
//! EVENTS stream once, with one ordered consumer, and hands each event to
//! every follower in the process through a bounded broadcast.
//!
//! **Starting points.** Followers that ask before [`LogTap::start`] share the
//! tap from their own sequence on: the tap begins at the lowest one asked for
//! (the index and the scheduler from 1, the projector from its checkpoint), and
//! each skips what it does not need. A follower that asks later, or falls
//! behind the broadcast's buffer (the projector while Postgres is down), reads
//! with a consumer of its own until it has reached events the tap holds for
//! it, then switches to the tap: no gap, no duplicate, and the extra delivery
//! lasts only while it catches up.
//!
//! A follower sees every event of the stream (no subject filter): the index
//! and the scheduler learn that they have caught up from `pending` on whatever
//! event comes last, which need not be one of theirs.

use crate::StoreError;
use crate::store::{EventStore, StartAt, StoredEvent};
use futures::{Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events held for followers that are a little behind. A follower further
/// behind than this reads on its own until it has caught up (see the header).
const BUFFER: usize = 16_384;

/// How long a reader may be quiet before it is checked against the log's end.
pub const STALL_CHECK: Duration = Duration::from_secs(5);

/// What a follower reads: events in log order, from where it asked.
pub type EventFeed = Pin<Box<dyn Stream<Item = Result<StoredEvent, StoreError>> + Send>>;

/// Where followers read the log: straight from the store (a consumer each),
/// or through a process's shared [`LogTap`].
#[derive(Clone)]
pub enum LogSource {
    Direct(Box<EventStore>),
    Tap(LogTap),
}

impl LogSource {
    /// Every event from `from` on, then the live tail. `filter` narrows a
    /// direct read on the server; through the tap every event comes (see the
    /// module header), so a follower must ignore what is not its own.
    pub async fn read(&self, filter: &str, from: u64) -> Result<EventFeed, StoreError> {
        match self {
            LogSource::Direct(store) => Ok(Box::pin(store.read(filter, StartAt::Sequence(from)).await?)),
            LogSource::Tap(tap) => Ok(tap.follow(from)),
        }
    }
}

#[derive(Clone)]
pub struct LogTap {
    inner: Arc<Inner>,
}

struct Inner {
    store: EventStore,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    /// Before start: the lowest sequence a follower asked for. `None` once started.
    pending_start: Mutex<Option<u64>>,
}

impl LogTap {
    pub fn new(store: EventStore) -> Self {
        Self::with_buffer(store, BUFFER)
    }

    /// A tap holding `events` for followers that are behind (a test makes it
    /// small to see a follower fall behind it and catch up on its own).
    pub fn with_buffer(store: EventStore, events: usize) -> Self {
        let (tx, _) = broadcast::channel(events.max(1));
        Self { inner: Arc::new(Inner { store, tx, pending_start: Mutex::new(Some(u64::MAX)) }) }
    }

    /// Starts reading the log, from the lowest sequence asked for so far
    /// (the tail if nobody asked), until `stop`.
    pub fn start(&self, stop: CancellationToken) {
        let from = {
            let mut g = self.inner.pending_start.lock().unwrap_or_else(|p| p.into_inner());
            let Some(from) = g.take() else { return };
            from
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut next = if from == u64::MAX { None } else { Some(from) };
            let mut backoff = crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            while !stop.is_cancelled() {
                let start = match next {
                    Some(seq) => StartAt::Sequence(seq),
                    None => match inner.store.last_sequence().await {
                        Ok(last) => StartAt::Sequence(last + 1),
                        Err(e) => {
                            tracing::warn!(error = %e, "log tap cannot find the tail; retrying");
                            if !backoff.wait(&stop).await {
                                return;
                            }
                            continue;
                        }
                    },
                };
                let all = inner.store.subjects().all_events();
                let mut events = match inner.store.read(&all, start).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "log tap cannot read the log; retrying");
                        if !backoff.wait(&stop).await {
                            return;
                        }
                        continue;
                    }
                };
                loop {
                    let item = tokio::select! {
                        _ = stop.cancelled() => return,
                        i = tokio::time::timeout(STALL_CHECK, events.next()) => i,
                    };
                    let item = match item {
                        Ok(item) => item,
                        // Quiet: fine if the log is, else the reader is stuck
                        // (seen once its stream's leader moved): read again.
                        Err(_) => match (inner.store.last_sequence().await, next) {
                            (Ok(last), Some(want)) if last >= want => {
                                tracing::warn!(want, last, "log tap stalled behind the log; reading again");
                                break;
                            }
                            _ => continue,
                        },
                    };
                    let Some(Ok(ev)) = item else { break };
                    backoff.reset();
                    next = Some(ev.seq + 1);
                    // No follower listening is fine: they read on their own.
                    let _ = inner.tx.send(Arc::new(ev));
                }
            }
        });
    }

    /// Every event from `from` on, then the live tail.
    pub fn follow(&self, from: u64) -> EventFeed {
        let from = from.max(1);
        let rx = self.inner.tx.subscribe();
        {
            let mut g = self.inner.pending_start.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(start) = g.as_mut() {
                // Not started: the tap will begin at or before `from`, and
                // `rx` sees everything it reads.
                *start = (*start).min(from);
                let f = Follower::tap(self.inner.store.clone(), self.inner.tx.clone(), from, rx);
                return Box::pin(futures::stream::unfold(f, Follower::step));
            }
        }
        let f = Follower::catching_up(self.inner.store.clone(), self.inner.tx.clone(), from, rx);
        Box::pin(futures::stream::unfold(f, Follower::step))
    }
}

struct Follower {
    store: EventStore,
    tx: broadcast::Sender<Arc<StoredEvent>>,
    /// The next sequence this follower wants.
    next: u64,
    mode: Mode,
}

enum Mode {
    /// Reading the shared delivery: first what was `held` while catching up,
    /// then `rx`.
    Tap { rx: broadcast::Receiver<Arc<StoredEvent>>, held: VecDeque<Arc<StoredEvent>> },
    /// Reading with a consumer of its own, while `rx` collects what the tap
    /// delivers meanwhile; switches once the two meet.
    CatchingUp {
        own: Option<Box<crate::store::StreamReader>>,
        rx: broadcast::Receiver<Arc<StoredEvent>>,
        /// What the tap delivered that the follower has not reached yet.
        held: VecDeque<Arc<StoredEvent>>,
    },
}

impl Follower {
    fn tap(
        store: EventStore,
        tx: broadcast::Sender<Arc<StoredEvent>>,
        next: u64,
        rx: broadcast::Receiver<Arc<StoredEvent>>,
    ) -> Self {
        Self { store, tx, next, mode: Mode::Tap { rx, held: VecDeque::new() } }
    }

    fn catching_up(
        store: EventStore,
        tx: broadcast::Sender<Arc<StoredEvent>>,
        next: u64,
        rx: broadcast::Receiver<Arc<StoredEvent>>,
    ) -> Self {
        Self { store, tx, next, mode: Mode::CatchingUp { own: None, rx, held: VecDeque::new() } }
    }

    async fn step(mut self) -> Option<(Result<StoredEvent, StoreError>, Self)> {
        loop {
            let switch = match &mut self.mode {
                Mode::Tap { rx, held } => {
                    let ev = match held.pop_front() {
                        Some(ev) => ev,
                        None => match rx.recv().await {
                            Ok(ev) => ev,
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                tracing::info!(
                                    missed,
                                    from = self.next,
                                    "log follower fell behind the tap; reading on its own"
                                );
                                self.mode =
                                    Mode::CatchingUp { own: None, rx: self.tx.subscribe(), held: VecDeque::new() };
                                continue;
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    if ev.seq < self.next {
                        continue;
                    }
                    self.next = ev.seq + 1;
                    return Some((Ok((*ev).clone()), self));
                }
                Mode::CatchingUp { own, rx, held } => {
                    // Collect what the tap has delivered since the last step.
                    loop {
                        match rx.try_recv() {
                            Ok(ev) => held.push_back(ev),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => held.clear(),
                            Err(_) => break,
                        }
                    }
                    while held.front().is_some_and(|e| e.seq < self.next) {
                        held.pop_front();
                    }
                    // The follower has read everything before the first held
                    // event: the rest comes from the tap. (After a lag `held`
                    // starts later, and the own reader goes on until it meets it.)
                    if held.front().is_some_and(|e| e.seq == self.next) {
                        true
                    } else {
                        if own.is_none() {
                            let all = self.store.subjects().all_events();
                            match self
                                .store
                                .read_stream(
                                    &self.store.subjects().events_stream(),
                                    vec![all],
                                    StartAt::Sequence(self.next),
                                )
                                .await
                            {
                                Ok(r) => *own = Some(Box::new(r)),
                                Err(e) => return Some((Err(e), self)),
                            }
                        }
                        let Some(reader) = own.as_mut() else { continue };
                        match reader.next().await {
                            Some(Ok(ev)) => {
                                if ev.seq < self.next {
                                    continue;
                                }
                                self.next = ev.seq + 1;
                                return Some((Ok(ev), self));
                            }
                            Some(Err(e)) => {
                                *own = None;
                                return Some((Err(e), self));
                            }
                            None => {
                                *own = None;
                                return Some((Err(StoreError::Unavailable("log reader ended".into())), self));
                            }
                        }
                    }
                }
            };
            if switch {
                let placeholder = Mode::Tap { rx: self.tx.subscribe(), held: VecDeque::new() };
                if let Mode::CatchingUp { rx, held, .. } = std::mem::replace(&mut self.mode, placeholder) {
                    tracing::debug!(at = self.next, "log follower caught up; back on the shared delivery");
                    self.mode = Mode::Tap { rx, held };
                }
            }
        }
    }
}
