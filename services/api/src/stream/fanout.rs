//! Live subscriptions shared between connections. A thousand dashboards
//! following one job live would otherwise be a thousand JetStream consumers
//! reading the same messages, and a thousand JSON parses and renders of each
//! message. Subscriptions that start `live` with the same stream and filters
//! share one consumer (a hub), which parses and renders each message once per
//! view (full or redacted) into the item text every connection's frame is put
//! together from (`frames`).
//!
//! The hub hands messages on in batches: everything its consumer has ready
//! when it gets to read (at most [`MAX_BATCH`]), so under load a follower is
//! woken once per batch, not once per message, and the batch sizes grow with
//! the load instead of the wake-ups.
//!
//! Each follower has its own bounded queue, counted in messages. The hub
//! hands every batch to every queue in stream order; when a queue has no room
//! it waits for it at most the send timeout (this one wait delays the hub's
//! other followers too), and a follower still full then is cut off as a slow
//! client is (`lagged` with where to resume, then 4008), so one slow client
//! costs the others at most one send timeout. Replays (`from` a sequence, a
//! time or the beginning) and experiment subscriptions keep one consumer each:
//! they start at different points, or filter per connection.

use super::protocol::StreamKind;
use fetchml_eventstore::{EventStore, StartAt, StoreError, StoredEvent};
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// The most messages the hub hands on in one batch.
pub const MAX_BATCH: usize = 256;

type HubKey = (String, Vec<String>);

/// The hubs of one api process, by stream and filters.
pub struct Fanout {
    store: EventStore,
    hubs: Mutex<HashMap<HubKey, Weak<Hub>>>,
    /// Each follower's queue.
    queue: usize,
    /// How long the hub waits for a full queue before cutting its follower off.
    patience: Duration,
}

/// One shared consumer; it stops when its last follower drops it.
pub struct Hub {
    pub stream: StreamKind,
    followers: Mutex<Followers>,
    stop: CancellationToken,
}

struct Followers {
    /// The last sequence handed on (or the stream's last when it started).
    last: u64,
    next_id: u64,
    slots: Vec<Slot>,
}

struct Slot {
    id: u64,
    tx: mpsc::UnboundedSender<Batch>,
    /// Free places in the follower's queue, in messages (the channel itself
    /// is unbounded: this bounds it).
    room: Arc<Semaphore>,
    cut: Arc<AtomicBool>,
}

/// Messages handed on together, in stream order.
pub type Batch = Arc<Vec<Shared>>;

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One message, rendered at most once per view.
pub struct Shared {
    pub seq: u64,
    event: StoredEvent,
    full: OnceLock<Option<Arc<str>>>,
    redacted: OnceLock<Option<Arc<str>>>,
}

/// A follower of a hub; leaves it when dropped.
pub struct Follower {
    pub hub: Arc<Hub>,
    pub rx: mpsc::UnboundedReceiver<Batch>,
    /// Give back a batch's places once it is handed on ([`Follower::done`]).
    room: Arc<Semaphore>,
    /// Set when the hub gave up on this follower (its queue stayed full).
    cut: Arc<AtomicBool>,
    id: u64,
    /// Where to resume if nothing was delivered yet: the first sequence this
    /// follower could have been given.
    pub joined_at: u64,
}

impl Follower {
    /// Whether the hub cut this follower off for being too slow.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// The follower has handed `batch` on: its places in the queue are free.
    pub fn done(&self, batch: &Batch) {
        self.room.add_permits(batch.len());
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut f = self.hub.followers.lock().unwrap_or_else(|p| p.into_inner());
        f.slots.retain(|s| s.id != self.id);
    }
}

impl Fanout {
    pub fn new(store: EventStore, queue: usize, patience: Duration) -> Self {
        // A batch must fit in an empty queue.
        Self { store, hubs: Mutex::new(HashMap::new()), queue: queue.max(MAX_BATCH), patience }
    }

    /// Follows `filters` of `stream` live, through the hub that already does
    /// so or a new one.
    pub async fn follow(&self, kind: StreamKind, stream: &str, filters: &[String]) -> Result<Follower, StoreError> {
        let key = (stream.to_owned(), filters.to_vec());
        if let Some(hub) = self.live_hub(&key) {
            return Ok(self.join(hub));
        }
        // The position before the consumer starts: nothing after it is missed.
        let last = self.store.stream_last_sequence(stream).await?;
        let reader = self.store.read_stream(stream, filters.to_vec(), StartAt::New).await?;
        let hub = Arc::new(Hub {
            stream: kind,
            followers: Mutex::new(Followers { last, next_id: 0, slots: Vec::new() }),
            stop: CancellationToken::new(),
        });
        {
            let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
            // Another connection made the same hub meanwhile: use theirs
            // (ours stops as it is dropped).
            if let Some(theirs) = hubs.get(&key).and_then(Weak::upgrade) {
                drop(hubs);
                return Ok(self.join(theirs));
            }
            hubs.retain(|_, h| h.strong_count() > 0);
            hubs.insert(key, Arc::downgrade(&hub));
        }
        tokio::spawn(forward(reader, Arc::downgrade(&hub), hub.stop.clone(), self.patience, self.queue.min(MAX_BATCH)));
        Ok(self.join(hub))
    }

    fn live_hub(&self, key: &HubKey) -> Option<Arc<Hub>> {
        self.hubs.lock().unwrap_or_else(|p| p.into_inner()).get(key).and_then(Weak::upgrade)
    }

    fn join(&self, hub: Arc<Hub>) -> Follower {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(self.queue));
        let cut = Arc::new(AtomicBool::new(false));
        // Under the lock the hub hands messages on with: the follower gets
        // every message after `joined_at - 1`, and none before.
        let (id, joined_at) = {
            let mut f = hub.followers.lock().unwrap_or_else(|p| p.into_inner());
            let id = f.next_id;
            f.next_id += 1;
            f.slots.push(Slot { id, tx, room: room.clone(), cut: cut.clone() });
            (id, f.last + 1)
        };
        Follower { hub, rx, room, cut, id, joined_at }
    }
}

/// Hands the consumer's messages to every follower until the hub stops or
/// the consumer fails.
async fn forward(
    mut reader: fetchml_eventstore::StreamReader,
    hub: Weak<Hub>,
    stop: CancellationToken,
    patience: Duration,
    max_batch: usize,
) {
    let shared =
        |event: StoredEvent| Shared { seq: event.seq, event, full: OnceLock::new(), redacted: OnceLock::new() };
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = reader.next() => n,
        };
        let Some(Ok(event)) = next else { return };
        // Whatever else the consumer already holds goes in the same batch.
        let mut batch = vec![shared(event)];
        let mut failed = false;
        while batch.len() < max_batch {
            match reader.next().now_or_never() {
                Some(Some(Ok(event))) => batch.push(shared(event)),
                Some(_) => {
                    failed = true;
                    break;
                }
                None => break,
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        let n = batch.len();
        let batch: Batch = Arc::new(batch);
        let mut full = Vec::new();
        {
            let mut f = hub.followers.lock().unwrap_or_else(|p| p.into_inner());
            f.last = batch.last().map_or(f.last, |m| m.seq);
            for s in &f.slots {
                match s.room.try_acquire_many(n as u32) {
                    Ok(places) => {
                        places.forget();
                        // A follower gone meanwhile leaves with its Drop.
                        let _ = s.tx.send(batch.clone());
                    }
                    Err(_) => full.push((s.id, s.tx.clone(), s.room.clone(), s.cut.clone())),
                }
            }
        }
        if !full.is_empty() {
            // Wait for the full queues together, once; whoever is still full is cut.
            let waits = full.into_iter().map(|(id, tx, room, cut)| {
                let batch = batch.clone();
                async move {
                    match tokio::time::timeout(patience, room.acquire_many(n as u32)).await {
                        Ok(Ok(places)) => {
                            places.forget();
                            let _ = tx.send(batch);
                            None
                        }
                        _ => {
                            cut.store(true, Ordering::Release);
                            Some(id)
                        }
                    }
                }
            });
            let cut: Vec<u64> = futures::future::join_all(waits).await.into_iter().flatten().collect();
            if !cut.is_empty() {
                let mut f = hub.followers.lock().unwrap_or_else(|p| p.into_inner());
                f.slots.retain(|s| !cut.contains(&s.id));
            }
        }
        if failed {
            return;
        }
    }
}

impl Shared {
    /// The message's item text as a view shows it (`None`: not JSON, skipped).
    pub fn item(&self, stream: StreamKind, redact: bool) -> Option<&Arc<str>> {
        let cell = if redact { &self.redacted } else { &self.full };
        cell.get_or_init(|| {
            let mut v: serde_json::Value = serde_json::from_slice(&self.event.payload).ok()?;
            let kind = match stream {
                StreamKind::Events => v.get("type").and_then(serde_json::Value::as_str).unwrap_or("event").to_owned(),
                StreamKind::Progress => self.event.subject.rsplit('.').next().unwrap_or("progress").to_owned(),
            };
            if redact {
                super::plan::redact(&mut v);
            }
            let data = serde_json::value::to_raw_value(&v).ok()?;
            super::frames::item(self.seq, &kind, &data)
        })
        .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::protocol::ServerMsg;

    #[test]
    fn a_shared_item_makes_the_message_a_session_would_write() {
        let event = StoredEvent::new(
            42,
            "ns.progress.alice.j1.metric".into(),
            bytes::Bytes::from_static(br#"{"job_id":"j1","name":"loss","value":0.5,"step":3}"#),
            None,
        );
        let shared = Shared { seq: 42, event, full: OnceLock::new(), redacted: OnceLock::new() };
        let hub = Hub {
            stream: StreamKind::Progress,
            followers: Mutex::new(Followers { last: 0, next_id: 0, slots: Vec::new() }),
            stop: CancellationToken::new(),
        };
        let data: serde_json::Value =
            serde_json::from_str(r#"{"job_id":"j1","name":"loss","value":0.5,"step":3}"#).unwrap();
        let expected = ServerMsg::Message {
            sub: "p".into(),
            stream: StreamKind::Progress,
            seq: 42,
            subject_kind: "metric".into(),
            data,
        }
        .to_text();
        let item = shared.item(hub.stream, false).unwrap();
        assert_eq!(crate::stream::frames::SubFrames::new("p", hub.stream, false).single(item), expected);
        // Rendered once: the same text again.
        assert!(Arc::ptr_eq(item, shared.item(hub.stream, false).unwrap()));
    }
}
