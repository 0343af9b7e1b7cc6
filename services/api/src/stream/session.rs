//! One stream session, independent of the transport: it takes a sink and a
//! stream of frames, so it is tested without sockets, and `ws.rs` adapts it to
//! axum's WebSocket.
//!
//! Delivery: each subscription is one ordered JetStream consumer, so replay
//! turns into the live tail with no gap and no duplicate, in stream order.
//! Every message carries its stream and sequence; a client resumes after a
//! reconnect with `from: {"seq": last_seen + 1}`.
//!
//! Backpressure: subscriptions feed one bounded buffer per connection, waiting
//! on it at most the send timeout (which slows only their own consumer). If it
//! stays full that long (the client reads too slowly), or any write (a message,
//! a reply such as `pong`, the server's ping) cannot finish within the send
//! timeout, the session stops its subscriptions, tells the client where each
//! one should resume (`lagged`: right after the last message handed to the
//! socket), and closes with 4008. A client that keeps sending pings but does
//! not read is such a client. Other connections are not affected: nothing here
//! waits on another client.
//!
//! A frame far over the message limit (refused by the transport) closes the
//! connection with 1009.

use super::frames::{BatchFrame, SubFrames};
use super::plan::Plan;
use super::protocol::{ClientMsg, From, PROTOCOL_VERSION, ServerMsg, StreamKind, close};
use crate::AppState;
use crate::auth::Caller;
use fetchml_eventstore::StartAt;
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A frame from the client.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary,
    Ping,
    Pong,
    /// A frame over the transport's hard limit (the connection cannot go on).
    TooLarge,
    Close,
}

/// A frame to the client.
#[derive(Debug, PartialEq)]
pub enum Outbound {
    Text(String),
    Ping,
    Close(u16, String),
}

/// Limits of one connection (see `stream.*` in the settings).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_subscriptions: usize,
    /// Messages buffered per connection before the client counts as too slow.
    pub buffer: usize,
    pub send_timeout: Duration,
    pub ping_every: Duration,
    pub idle_timeout: Duration,
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_subscriptions: 32,
            buffer: 4096,
            send_timeout: Duration::from_secs(5),
            ping_every: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_message_bytes: 64 * 1024,
        }
    }
}

/// What a subscription puts in its connection's ordered buffer.
enum Outgoing {
    /// A frame as it is (the `subscribed` confirmation).
    Notice { sub: Arc<SubFrames>, text: String },
    /// One message: its item text, shared with every other follower.
    Item { sub: Arc<SubFrames>, seq: u64, item: Arc<str> },
}

impl Outgoing {
    fn sub(&self) -> &Arc<SubFrames> {
        match self {
            Outgoing::Notice { sub, .. } | Outgoing::Item { sub, .. } => sub,
        }
    }

    /// The message's sequence (0 for a notice).
    fn seq(&self) -> u64 {
        match self {
            Outgoing::Notice { .. } => 0,
            Outgoing::Item { seq, .. } => *seq,
        }
    }
}

/// The most buffered messages written in one go (then flushed).
const MAX_PER_WRITE: usize = 1024;

/// A frame ready to write, and the first and last message of its
/// subscription it carries (none for a notice).
type Ready = (String, Option<(Arc<SubFrames>, u64, u64)>);

/// Puts `first` and whatever else the buffer holds (at most
/// [`MAX_PER_WRITE`] in all) into frames, in order: a subscription that takes
/// batches gets one `messages` frame for its run of messages (or more, each
/// at most `max_bytes` long), placed where its first message was; the others
/// one `message` frame each. Only the order within a subscription is kept
/// (the protocol promises no other).
fn frames_of(first: Outgoing, rx: &mut mpsc::Receiver<Outgoing>, max_bytes: usize) -> Vec<Ready> {
    enum Slot {
        Done(Ready),
        Open(Arc<SubFrames>, BatchFrame),
    }
    let mut slots: Vec<Slot> = Vec::new();
    // The open batch of each subscription (by its instance: a resubscription
    // under the same id after an unsubscribe is another one).
    let mut open: HashMap<*const SubFrames, usize> = HashMap::new();
    let mut next = Some(first);
    let mut n = 0;
    while let Some(o) = next.take() {
        match o {
            Outgoing::Notice { text, .. } => slots.push(Slot::Done((text, None))),
            Outgoing::Item { sub, seq, item } if !sub.batch => {
                let text = sub.single(&item);
                slots.push(Slot::Done((text, Some((sub, seq, seq)))));
            }
            Outgoing::Item { sub, seq, item } => {
                let key = Arc::as_ptr(&sub);
                let pushed = match open.get(&key).map(|&i| &mut slots[i]) {
                    Some(Slot::Open(_, b)) => b.try_push(seq, &item, max_bytes),
                    _ => false,
                };
                if !pushed {
                    open.insert(key, slots.len());
                    slots.push(Slot::Open(sub.clone(), BatchFrame::new(&sub, seq, &item)));
                }
            }
        }
        n += 1;
        if n < MAX_PER_WRITE {
            next = rx.try_recv().ok();
        }
    }
    slots
        .into_iter()
        .map(|s| match s {
            Slot::Done(r) => r,
            Slot::Open(sub, b) => {
                let (first, last) = (b.first_seq, b.last_seq);
                (b.finish(), Some((sub, first, last)))
            }
        })
        .collect()
}

/// One open subscription.
struct Sub {
    frames: Arc<SubFrames>,
    stop: CancellationToken,
    stream: StreamKind,
    /// Where to resume if nothing was delivered yet (`None`: unknown, `live`
    /// and time starts).
    start: Option<u64>,
    /// The last message handed to the socket.
    delivered: Option<u64>,
}

/// A subscription fell behind: it stopped at `seq` (not delivered).
struct Lag {
    sub: String,
    seq: u64,
}

/// Runs the session until the client leaves, `shutdown` fires, or the client
/// is cut off.
pub async fn run<S, R>(
    state: AppState,
    caller: Caller,
    limits: Limits,
    mut sink: S,
    mut inbound: R,
    shutdown: CancellationToken,
) where
    S: Sink<Outbound> + Unpin,
    R: Stream<Item = Inbound> + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Outgoing>(limits.buffer.max(1));
    let (lag_tx, mut lag_rx) = mpsc::unbounded_channel::<Lag>();
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let hello = ServerMsg::Hello {
        protocol: PROTOCOL_VERSION,
        user: caller.name().to_string(),
        max_subscriptions: limits.max_subscriptions,
        max_message_bytes: limits.max_message_bytes,
    };
    if sink.send(Outbound::Text(hello.to_text())).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval(limits.ping_every);
    ping.tick().await;
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    let mut lags: Vec<Lag> = Vec::new();
    // A session outlives no revocation of the credential it was opened with.
    let revoked = state.auth.revoked(&caller);
    tokio::pin!(revoked);
    // Set when we send a close frame: how long to wait for the client's.
    let mut closed_by_us: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = &mut revoked => {
                let _ = tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Close(close::REVOKED, "credentials revoked".into()))).await;
                closed_by_us = Some(limits.send_timeout);
                break;
            }
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Close(close::GOING_AWAY, "server shutting down".into()))).await;
                closed_by_us = Some(limits.send_timeout);
                break;
            }
            frame = inbound.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                let reply = match frame {
                    None | Some(Inbound::Close) => break,
                    Some(Inbound::TooLarge) => {
                        let reason = format!("frames over {} bytes are refused", limits.max_message_bytes.saturating_mul(16));
                        let _ = tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Close(close::TOO_BIG, reason))).await;
                        closed_by_us = Some(limits.send_timeout);
                        break;
                    }
                    Some(Inbound::Ping) | Some(Inbound::Pong) => None,
                    Some(Inbound::Binary) => Some(ServerMsg::error(None, "binary_not_supported", "send JSON text frames")),
                    Some(Inbound::Text(t)) => handle_client(&state, &caller, &limits, &t, &mut subs, &tx, &lag_tx).await,
                };
                if let Some(r) = reply {
                    match tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Text(r.to_text()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        // A client that sends (pings, say) but does not read
                        // is a slow client like any other.
                        Err(_) => {
                            closed_by_us = Some(cut_off(&mut sink, &limits, &mut subs, &mut rx, &mut lag_rx, lags).await);
                            break;
                        }
                    }
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { continue };
                // Write what is waiting in one go and flush once: a flush per
                // message would cap a connection far below what NATS delivers.
                // A message counts as delivered once handed to the socket.
                let mut frames = frames_of(out, &mut rx, limits.max_message_bytes);
                let write = async {
                    for (text, carries) in frames.iter_mut() {
                        sink.feed(Outbound::Text(std::mem::take(text))).await.map_err(|_| ())?;
                        if let Some((sub, _, last)) = carries {
                            handed_over(&mut subs, sub, *last);
                        }
                    }
                    sink.flush().await.map_err(|_| ())
                };
                match tokio::time::timeout(limits.send_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(())) => break,
                    // The client does not read: what was being written may or
                    // may not arrive; resume from after the last one handed
                    // over, or (none yet) from the first one taken for this
                    // write: it has left the buffer `cut_off` reads.
                    Err(_) => {
                        lags.extend(frames.iter().filter_map(|(_, c)| {
                            c.as_ref().map(|(sub, first, _)| Lag { sub: sub.id.clone(), seq: *first })
                        }));
                        closed_by_us = Some(cut_off(&mut sink, &limits, &mut subs, &mut rx, &mut lag_rx, lags).await);
                        break;
                    }
                }
            }
            lag = lag_rx.recv() => {
                if let Some(l) = lag {
                    lags.push(l);
                    closed_by_us = Some(cut_off(&mut sink, &limits, &mut subs, &mut rx, &mut lag_rx, lags).await);
                    break;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Ping)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        closed_by_us = Some(cut_off(&mut sink, &limits, &mut subs, &mut rx, &mut lag_rx, lags).await);
                        break;
                    }
                }
            }
            _ = &mut idle => {
                let _ = tokio::time::timeout(limits.send_timeout, sink.send(Outbound::Close(close::IDLE, "idle".into()))).await;
                closed_by_us = Some(limits.send_timeout);
                break;
            }
        }
    }
    for (_, sub) in subs {
        sub.stop.cancel();
    }
    if let Some(within) = closed_by_us {
        await_client_close(&mut inbound, within).await;
    }
}

/// The end of the closing handshake: after our close frame, reads (and drops)
/// what the client still sends until its own close frame, for at most
/// `within`. A socket closed with the client's frames unread (its pings, say)
/// is reset, and the reset can destroy our last frames (`lagged`, the close
/// code) before the client has read them.
async fn await_client_close<R: Stream<Item = Inbound> + Unpin>(inbound: &mut R, within: Duration) {
    let drain = async {
        while let Some(frame) = inbound.next().await {
            if matches!(frame, Inbound::Close) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

/// Notes that subscription `sub`'s message `seq` was handed to the socket
/// (unless the subscription has ended since; a new one under the same id is
/// another instance).
fn handed_over(subs: &mut HashMap<String, Sub>, sub: &Arc<SubFrames>, seq: u64) {
    if let Some(s) = subs.get_mut(&sub.id)
        && Arc::ptr_eq(&s.frames, sub)
    {
        s.delivered = Some(seq);
    }
}

/// Stops every subscription, tells the client where each should resume
/// (right after the last message handed to the socket; else the earliest one
/// not delivered; else where it started), and closes with 4008. Returns how
/// long to wait for the client's close.
async fn cut_off<S: Sink<Outbound> + Unpin>(
    sink: &mut S,
    limits: &Limits,
    subs: &mut HashMap<String, Sub>,
    rx: &mut mpsc::Receiver<Outgoing>,
    lag_rx: &mut mpsc::UnboundedReceiver<Lag>,
    lags: Vec<Lag>,
) -> Duration {
    metrics::counter!(fetchml_runtime::metrics::STREAM_LAGGED).increment(1);
    // The earliest undelivered sequence of each subscription.
    let mut pending: HashMap<String, u64> = HashMap::new();
    let mut note = |sub: String, seq: u64| {
        if seq > 0 {
            let e = pending.entry(sub).or_insert(seq);
            *e = (*e).min(seq);
        }
    };
    rx.close();
    while let Ok(o) = rx.try_recv() {
        note(o.sub().id.clone(), o.seq());
    }
    while let Ok(l) = lag_rx.try_recv() {
        note(l.sub, l.seq);
    }
    for l in lags {
        note(l.sub, l.seq);
    }
    let mut resume: BTreeMap<String, (StreamKind, u64)> = BTreeMap::new();
    for (id, sub) in subs.drain() {
        sub.stop.cancel();
        let from = sub.delivered.map(|d| d + 1).or_else(|| pending.get(&id).copied()).or(sub.start);
        if let Some(seq) = from {
            resume.insert(id, (sub.stream, seq));
        }
    }
    // The socket may be full: the notices queue behind the data already
    // written and get out when the client reads again, if it does so within
    // the idle timeout. The subscriptions are gone already; only the socket waits.
    let farewell = async {
        for (sub, (stream, seq)) in resume {
            sink.send(Outbound::Text(ServerMsg::Lagged { sub, stream, resume_from: seq }.to_text())).await.ok()?;
        }
        sink.send(Outbound::Close(close::TOO_SLOW, "too slow: resume from the lagged sequence".into())).await.ok()
    };
    let _ = tokio::time::timeout(limits.idle_timeout, farewell).await;
    // How long the caller then waits for the client's own close frame.
    limits.idle_timeout
}

async fn handle_client(
    state: &AppState,
    caller: &Caller,
    limits: &Limits,
    text: &str,
    subs: &mut HashMap<String, Sub>,
    tx: &mpsc::Sender<Outgoing>,
    lag_tx: &mpsc::UnboundedSender<Lag>,
) -> Option<ServerMsg> {
    if text.len() > limits.max_message_bytes {
        return Some(ServerMsg::error(
            None,
            "message_too_large",
            format!("at most {} bytes", limits.max_message_bytes),
        ));
    }
    let msg: ClientMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return Some(ServerMsg::error(None, "invalid_message", e.to_string())),
    };
    match msg {
        ClientMsg::Ping {} => Some(ServerMsg::Pong {}),
        ClientMsg::Unsubscribe { id } => match subs.remove(&id) {
            Some(sub) => {
                sub.stop.cancel();
                Some(ServerMsg::Unsubscribed { id })
            }
            None => Some(ServerMsg::error(Some(id), "unknown_subscription", "no such subscription")),
        },
        ClientMsg::Subscribe { id, stream, target, from, kinds, batch } => {
            if id.is_empty() || id.len() > 64 {
                return Some(ServerMsg::error(Some(id), "invalid_id", "subscription ids are 1-64 characters"));
            }
            if subs.contains_key(&id) {
                return Some(ServerMsg::error(Some(id), "duplicate_subscription", "that id is in use"));
            }
            if subs.len() >= limits.max_subscriptions {
                return Some(ServerMsg::error(
                    Some(id),
                    "too_many_subscriptions",
                    format!("at most {}", limits.max_subscriptions),
                ));
            }
            let plan = match Plan::make(state, caller, stream, &target, kinds.as_deref()).await {
                Ok(p) => p,
                Err(r) => {
                    if let Some(p) = r.permission {
                        let _ =
                            state.auth.deny(caller, p, &format!("stream/{target:?}"), crate::ApiError::Forbidden(p));
                    }
                    return Some(ServerMsg::error(Some(id), r.code, r.message));
                }
            };
            let (start, first) = match from {
                From::Beginning => (StartAt::Beginning, Some(1)),
                From::Live => (StartAt::New, None),
                From::Seq(s) => (StartAt::Sequence(s), Some(s.max(1))),
                From::Time(t) => (StartAt::Time(t), None),
            };
            // Live subscriptions that filter nothing per connection share one
            // consumer with every other connection following the same thing.
            let shared = matches!(from, From::Live) && plan.experiment.is_none();
            let source = if shared {
                match state.fanout.follow(plan.stream, &plan.stream_name, &plan.filters).await {
                    Ok(f) => Source::Shared(f),
                    Err(e) => return Some(ServerMsg::error(Some(id), "unavailable", e.to_string())),
                }
            } else {
                match state.store.read_stream(&plan.stream_name, plan.filters.clone(), start).await {
                    Ok(e) => Source::Own(Box::new(e)),
                    Err(e) => return Some(ServerMsg::error(Some(id), "unavailable", e.to_string())),
                }
            };
            let stop = CancellationToken::new();
            let frames = Arc::new(SubFrames::new(&id, stream, batch));
            subs.insert(
                id.clone(),
                Sub { frames: frames.clone(), stop: stop.clone(), stream, start: first, delivered: None },
            );
            // The confirmation goes through the same ordered buffer as the
            // messages, so it always comes first.
            let confirm = ServerMsg::Subscribed { id: id.clone(), stream }.to_text();
            if tx.try_send(Outgoing::Notice { sub: frames.clone(), text: confirm }).is_err() {
                let _ = lag_tx.send(Lag { sub: id.clone(), seq: 0 });
            }
            match source {
                Source::Own(events) => tokio::spawn(
                    pump(state.clone(), plan, frames, events, tx.clone(), lag_tx.clone(), stop, limits.send_timeout)
                        .in_current_span(),
                ),
                Source::Shared(follower) => tokio::spawn(
                    pump_shared(plan.redact, frames, follower, tx.clone(), lag_tx.clone(), stop, limits.send_timeout)
                        .in_current_span(),
                ),
            };
            None
        }
    }
}

/// Where a subscription's messages come from.
enum Source {
    /// A consumer of its own (replays, experiments).
    Own(Box<fetchml_eventstore::StreamReader>),
    /// A hub shared with the other live followers of the same thing.
    Shared(super::fanout::Follower),
}

/// [`pump`] for a shared live subscription: the hub's item texts, in its
/// batches. Falling more than the hub's queue behind is being too slow: cut
/// off, to resume from the first message not handed on.
#[allow(clippy::too_many_arguments)]
async fn pump_shared(
    redact: bool,
    sub: Arc<SubFrames>,
    mut follower: super::fanout::Follower,
    tx: mpsc::Sender<Outgoing>,
    lag_tx: mpsc::UnboundedSender<Lag>,
    stop: CancellationToken,
    patience: Duration,
) {
    let mut next_seq = follower.joined_at;
    let stream = follower.hub.stream;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = follower.rx.recv() => n,
        };
        let Some(batch) = next else {
            // The hub gave up on us (our queue stayed full), or stopped.
            if follower.was_cut() {
                let _ = lag_tx.send(Lag { sub: sub.id.clone(), seq: next_seq });
            }
            return;
        };
        for shared in batch.iter() {
            next_seq = shared.seq + 1;
            let Some(item) = shared.item(stream, redact) else { continue };
            let out = Outgoing::Item { sub: sub.clone(), seq: shared.seq, item: item.clone() };
            if !hand_on(&tx, &lag_tx, out, patience).await {
                return;
            }
        }
        follower.done(&batch);
    }
}

/// Puts one message in the connection's buffer, waiting at most `patience`
/// for room; `false` if the subscription must stop (the client is too slow,
/// and is told so, or the session has ended).
async fn hand_on(
    tx: &mpsc::Sender<Outgoing>,
    lag_tx: &mpsc::UnboundedSender<Lag>,
    out: Outgoing,
    patience: Duration,
) -> bool {
    // Room at once is the common case: no timer for it.
    let out = match tx.try_send(out) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(o)) => o,
    };
    match tx.send_timeout(out, patience).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(o)) => {
            let _ = lag_tx.send(Lag { sub: o.sub().id.clone(), seq: o.seq() });
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// Moves one subscription's messages into the connection's buffer.
#[allow(clippy::too_many_arguments)]
async fn pump(
    state: AppState,
    plan: Plan,
    sub: Arc<SubFrames>,
    mut events: impl Stream<Item = Result<fetchml_eventstore::StoredEvent, fetchml_eventstore::StoreError>> + Unpin,
    tx: mpsc::Sender<Outgoing>,
    lag_tx: mpsc::UnboundedSender<Lag>,
    stop: CancellationToken,
    patience: Duration,
) {
    let mut known = HashSet::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = events.next() => n,
        };
        let Some(Ok(ev)) = next else { return };
        let Some((subject_kind, data)) = plan.render(&state, &ev, &mut known) else { continue };
        let Some(item) = super::frames::item(ev.seq, &subject_kind, &data) else { continue };
        // Waiting here slows only this subscription's own consumer; a buffer
        // that stays full for the send timeout means the client is too slow.
        if !hand_on(&tx, &lag_tx, Outgoing::Item { sub: sub.clone(), seq: ev.seq, item }, patience).await {
            return;
        }
    }
}
