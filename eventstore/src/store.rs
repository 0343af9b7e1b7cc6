//! Appending to and reading from the EVENTS stream.

use crate::error::StoreError;
use crate::streams::{StreamSettings, ensure_streams};
use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::DirectGetErrorKind,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use fetchml_events::envelope::{AggregateKind, DomainEvent, Envelope, peek};
use fetchml_events::job::JobEvent;
use fetchml_events::subject::Subjects;
use futures::{Stream, StreamExt};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One event as stored: where it is and its bytes.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// The stream sequence: the event's global position in the log.
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    /// From a [`EventStore::read_stream`]: how many matching messages were
    /// still pending after this one when it was delivered (0: caught up).
    /// `None` where the read does not know.
    pub pending: Option<u64>,
    /// What is read from the bytes at most once: a tap hands one event to
    /// the index, the scheduler and the projector, which all fold every job
    /// event (two of those decodes were about a seventh of the api's CPU).
    /// Clones share it.
    read: Arc<ReadOnce>,
}

#[derive(Debug, Default)]
struct ReadOnce {
    kind: OnceLock<Option<AggregateKind>>,
    job: OnceLock<Result<Arc<Envelope<JobEvent>>, String>>,
}

impl StoredEvent {
    pub fn new(seq: u64, subject: String, payload: Bytes, pending: Option<u64>) -> Self {
        Self { seq, subject, payload, pending, read: Arc::default() }
    }

    /// The aggregate kind the envelope names (`None`: not an envelope), read
    /// by whichever holder asked first.
    pub fn kind(&self) -> Option<AggregateKind> {
        *self.read.kind.get_or_init(|| peek(&self.payload).map(|p| p.aggregate_kind))
    }

    /// The job event, decoded by whichever holder of this event (or a clone
    /// of it) asked first; as [`StoredEvent::decode`] otherwise.
    pub fn job_event(&self) -> Result<Arc<Envelope<JobEvent>>, StoreError> {
        self.read
            .job
            .get_or_init(|| {
                Envelope::<JobEvent>::decode(&self.payload)
                    .map(Arc::new)
                    .map_err(|e| format!("event at sequence {}: {e}", self.seq))
            })
            .clone()
            .map_err(StoreError::Invalid)
    }

    /// Decodes the envelope, upcasting old schema versions.
    pub fn decode<P: DomainEvent>(&self) -> Result<Envelope<P>, StoreError> {
        Envelope::<P>::decode(&self.payload)
            .map_err(|e| StoreError::Invalid(format!("event at sequence {}: {e}", self.seq)))
    }

    /// The stored JSON, as written.
    pub fn json(&self) -> Result<serde_json::Value, StoreError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| StoreError::Invalid(format!("event at sequence {} is not JSON: {e}", self.seq)))
    }
}

/// Most events one batched direct get returns.
pub const LOAD_BATCH: usize = 256;
/// How long a load waits for the server's answer.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream sequence of the stored event.
    pub seq: u64,
    /// The message id had been seen: nothing new was stored and `seq` is the
    /// original event's. A retried command is answered as if it were the first.
    pub duplicate: bool,
}

/// Where a read of the log starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    /// From this stream sequence, inclusive.
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
    /// Only events appended after the read starts.
    New,
}

/// The event store of one namespace.
#[derive(Clone)]
pub struct EventStore {
    js: jetstream::Context,
    subjects: Subjects,
    events: jetstream::stream::Stream<()>,
}

impl EventStore {
    /// Ensures the namespace's streams exist (see [`ensure_streams`]) and opens
    /// the store.
    pub async fn open(
        client: async_nats::Client,
        subjects: Subjects,
        settings: &StreamSettings,
    ) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        ensure_streams(&js, &subjects, settings).await?;
        let events = js.get_stream_no_info(subjects.events_stream()).await.map_err(StoreError::unavailable)?;
        Ok(Self { js, subjects, events })
    }

    /// [`EventStore::open`] for a process that may create the streams but not
    /// change existing ones (a worker: its NATS credentials may not update
    /// streams, and their limits are the api's to set).
    pub async fn open_as_client(
        client: async_nats::Client,
        subjects: Subjects,
        settings: &StreamSettings,
    ) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        crate::streams::ensure_streams_as(&js, &subjects, settings, false).await?;
        let events = js.get_stream_no_info(subjects.events_stream()).await.map_err(StoreError::unavailable)?;
        Ok(Self { js, subjects, events })
    }

    /// Opens the store of a namespace whose streams must already exist, and
    /// changes nothing on the server: for readers such as the verifier, which
    /// must not alter what it checks (not even stream limits).
    pub async fn open_existing(client: async_nats::Client, subjects: Subjects) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        let events = js.get_stream_no_info(subjects.events_stream()).await.map_err(StoreError::unavailable)?;
        // `get_stream_no_info` does not ask the server; this does, so a missing
        // stream is reported here rather than at the first read.
        events.get_info().await.map_err(|e| {
            StoreError::Unavailable(format!("no event log {} on this server: {e}", subjects.events_stream()))
        })?;
        Ok(Self { js, subjects, events })
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Appends one event to `subject`, expecting `expected_last_seq` to be the
    /// stream sequence of the subject's last event (0: the subject is empty).
    #[tracing::instrument(skip_all, fields(subject, expected_last_seq, msg_id))]
    pub async fn append(
        &self,
        subject: &str,
        expected_last_seq: u64,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<Appended, StoreError> {
        let msg = PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(msg_id)
            .expected_last_subject_sequence(expected_last_seq);
        let ack_future = self
            .js
            .send_publish(subject.to_owned(), msg)
            .await
            .map_err(|e| publish_error(e, subject, expected_last_seq))?;
        match ack_future.await {
            Ok(ack) => Ok(Appended { seq: ack.sequence, duplicate: ack.duplicate }),
            Err(e) => match publish_error(e, subject, expected_last_seq) {
                // Boxed: its two reads would otherwise make every append's
                // future (and so every caller's, which moves it whole when it
                // is spawned or boxed) kilobytes larger, for a rare path.
                conflict @ StoreError::Conflict { .. } => {
                    Box::pin(self.ours_after_all(subject, msg_id, conflict)).await
                }
                other => Err(other),
            },
        }
    }

    /// After a conflict: the server checks the expected sequence before
    /// deduplicating, so a retry whose first try was stored looks like a
    /// conflict. If the subject's last event carries our message id, it is
    /// ours; else the `conflict` stands.
    async fn ours_after_all(&self, subject: &str, msg_id: &str, conflict: StoreError) -> Result<Appended, StoreError> {
        if !self.last_msg_id_is(subject, msg_id).await? {
            return Err(conflict);
        }
        let last = self.events.direct_get_last_for_subject(subject).await.map_err(StoreError::unavailable)?;
        Ok(Appended { seq: last.sequence, duplicate: true })
    }

    async fn last_msg_id_is(&self, subject: &str, msg_id: &str) -> Result<bool, StoreError> {
        match self.events.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(m.headers.get(async_nats::header::NATS_MESSAGE_ID).is_some_and(|v| v.as_str() == msg_id)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(false),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// Every event on subjects matching `filter`, in stream order. Meant for one
    /// aggregate's history (a handful of events): batched direct gets (one
    /// request and round trip for up to [`LOAD_BATCH`] events), no consumer
    /// state on the server.
    #[tracing::instrument(skip_all, fields(filter))]
    pub async fn load(&self, filter: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        let mut next = 1u64;
        loop {
            let (batch, more) = self.direct_batch(filter, next).await?;
            if let Some(last) = batch.last() {
                next = last.seq + 1;
            }
            let got = batch.len();
            out.extend(batch);
            if !more || got == 0 {
                return Ok(out);
            }
        }
    }

    /// One batched direct get (NATS ≥ 2.11, ADR-31): up to [`LOAD_BATCH`]
    /// messages on subjects matching `filter` from sequence `from` on, and
    /// whether more are stored. The server answers with the messages, then an
    /// end-of-batch status (204), or 404 when nothing matches.
    async fn direct_batch(&self, filter: &str, from: u64) -> Result<(Vec<StoredEvent>, bool), StoreError> {
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(StoreError::unavailable)?;
        let request = serde_json::json!({ "seq": from, "next_by_subj": filter, "batch": LOAD_BATCH });
        let body = Bytes::from(request.to_string());
        client
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{}", self.subjects.events_stream()), inbox, body)
            .await
            .map_err(StoreError::unavailable)?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(StoreError::Unavailable("connection closed during a load".into())),
                Err(_) => return Err(StoreError::TimedOut(LOAD_TIMEOUT)),
            };
            let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
            match msg.status.map(|s| s.as_u16()) {
                // End of batch: whether more matching messages follow.
                Some(204) => {
                    // Without the count, a full batch may have more behind it.
                    let more = match header("Nats-Num-Pending").and_then(|v| v.parse::<u64>().ok()) {
                        Some(pending) => pending > 0,
                        None => out.len() >= LOAD_BATCH,
                    };
                    return Ok((out, more));
                }
                Some(404) => return Ok((out, false)),
                Some(400) => return Err(StoreError::Invalid(format!("invalid subject filter {filter:?}"))),
                Some(code) => {
                    return Err(StoreError::Unavailable(format!(
                        "direct get answered {code} {}",
                        msg.description.unwrap_or_default()
                    )));
                }
                None => {
                    let seq = header("Nats-Sequence").and_then(|v| v.parse::<u64>().ok());
                    let (Some(seq), Some(subject)) = (seq, header("Nats-Subject")) else {
                        return Err(StoreError::Unavailable("direct get reply without sequence or subject".into()));
                    };
                    out.push(StoredEvent::new(seq, subject, msg.payload, None));
                }
            }
        }
    }

    /// Reads events matching `filter` from `start` on, then follows new ones.
    /// The stream never ends by itself; drop it to stop. Ordered: no gaps and no
    /// duplicates, recreated transparently by the client if the server restarts.
    pub async fn read(
        &self,
        filter: &str,
        start: StartAt,
    ) -> Result<impl Stream<Item = Result<StoredEvent, StoreError>> + use<>, StoreError> {
        self.read_stream(&self.subjects.events_stream(), vec![filter.to_owned()], start).await
    }

    /// The last event stored on exactly `subject`, if any.
    pub async fn last_on_subject(&self, subject: &str) -> Result<Option<StoredEvent>, StoreError> {
        match self.events.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(StoredEvent::new(m.sequence, m.subject.to_string(), m.payload, None))),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// Reads `stream` (the EVENTS or PROGRESS stream of this namespace) for
    /// subjects matching any of `filters`, from `start` on, then follows it.
    /// Ordered: no gaps, no duplicates; replay turns into the live tail with no
    /// seam because it is one consumer.
    pub async fn read_stream(
        &self,
        stream: &str,
        filters: Vec<String>,
        start: StartAt,
    ) -> Result<StreamReader, StoreError> {
        let deliver_policy = match start {
            StartAt::Beginning => DeliverPolicy::All,
            StartAt::Sequence(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) },
            StartAt::Time(t) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    t.timestamp_nanos_opt().unwrap_or(0).into(),
                )
                .map_err(|e| StoreError::Invalid(format!("start time: {e}")))?,
            },
            StartAt::New => DeliverPolicy::New,
        };
        let s = self.js.get_stream_no_info(stream).await.map_err(StoreError::unavailable)?;
        let (filter_subject, filter_subjects) =
            if filters.len() == 1 { (filters[0].clone(), Vec::new()) } else { (String::new(), filters) };
        // Named by us, so that the reader can delete it when it is dropped.
        let name = format!("read_{}", uuid::Uuid::now_v7().simple());
        let consumer = s
            .create_consumer(OrderedConfig {
                name: Some(name.clone()),
                filter_subject,
                filter_subjects,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(StoreError::unavailable)?;
        let messages = consumer.messages().await.map_err(StoreError::unavailable)?;
        Ok(StreamReader {
            messages,
            js: self.js.clone(),
            stream: stream.to_owned(),
            name,
            recreated: 0,
            last_consumer_seq: 0,
        })
    }

    /// The sequence of the last PROGRESS message on exactly `subject`, if any.
    pub async fn last_on_progress_subject(&self, subject: &str) -> Result<Option<u64>, StoreError> {
        let s = self.js.get_stream_no_info(self.subjects.progress_stream()).await.map_err(StoreError::unavailable)?;
        match s.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m.sequence)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// The sequence of the last message in `stream` (0 when empty).
    pub async fn stream_last_sequence(&self, stream: &str) -> Result<u64, StoreError> {
        let s = self.js.get_stream_no_info(stream).await.map_err(StoreError::unavailable)?;
        Ok(s.get_info().await.map_err(StoreError::unavailable)?.state.last_sequence)
    }

    /// When the event at `seq` was stored (`None` if there is none): the
    /// projection lag in seconds is the age of the first unprojected event.
    pub async fn stored_at(&self, seq: u64) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.events.direct_get(seq).await {
            Ok(m) => {
                let nanos = m.time.unix_timestamp_nanos();
                Ok(Some(DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))))
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// The sequence of the first event at or after `from` whose subject
    /// matches `filter` (wildcards allowed), if any: lets a bounded read of a
    /// filtered range know that it will not wait for events not stored yet.
    pub async fn next_on_subject(&self, filter: &str, from: u64) -> Result<Option<u64>, StoreError> {
        match self.events.direct_get_next_for_subject(filter, Some(from.max(1))).await {
            Ok(m) => Ok(Some(m.sequence)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(StoreError::unavailable(e)),
        }
    }

    /// The sequence of the last event in the log (0 when empty). Readiness and
    /// read-your-writes use it.
    pub async fn last_sequence(&self) -> Result<u64, StoreError> {
        let info = self.events.get_info().await.map_err(StoreError::unavailable)?;
        Ok(info.state.last_sequence)
    }
}

/// A read of [`EventStore::read_stream`]: one ordered consumer.
///
/// Dropping it deletes the consumer on the server at once. Otherwise the
/// server would keep it (and whatever it holds) until its pull request
/// expired and its inactivity threshold passed, up to a minute after the reader
/// left: a client that opens and abandons streams quickly would pile them up.
pub struct StreamReader {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    js: jetstream::Context,
    stream: String,
    name: String,
    /// How often the client library recreated the consumer (after a server
    /// restart or a gap): the live one is then named `{name}_{recreated}`.
    recreated: u64,
    last_consumer_seq: u64,
}

impl Stream for StreamReader {
    type Item = Result<StoredEvent, StoreError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let m = match std::task::ready!(self.messages.poll_next_unpin(cx)) {
            None => return std::task::Poll::Ready(None),
            Some(Err(e)) => return std::task::Poll::Ready(Some(Err(StoreError::unavailable(e)))),
            Some(Ok(m)) => m,
        };
        let info = match m.info() {
            Ok(i) => (i.stream_sequence, i.pending, i.consumer_sequence),
            Err(e) => return std::task::Poll::Ready(Some(Err(StoreError::unavailable(e)))),
        };
        let (seq, pending, consumer_seq) = info;
        // A recreated consumer counts from 1 again.
        if consumer_seq <= self.last_consumer_seq {
            self.recreated += 1;
        }
        self.last_consumer_seq = consumer_seq;
        std::task::Poll::Ready(Some(Ok(StoredEvent::new(seq, m.subject.to_string(), m.payload.clone(), Some(pending)))))
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        // The live consumer. (One being recreated at this very moment is left
        // to the server's inactivity threshold.)
        let name = match self.recreated {
            0 => std::mem::take(&mut self.name),
            n => format!("{}_{n}", self.name),
        };
        let (js, stream) = (self.js.clone(), std::mem::take(&mut self.stream));
        rt.spawn(async move {
            // Not found: already gone; fine.
            let _ = js.delete_consumer_from_stream(&name, &stream).await;
        });
    }
}

fn publish_error(e: jetstream::context::PublishError, subject: &str, expected: u64) -> StoreError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => StoreError::Conflict { subject: subject.to_owned(), expected },
        PublishErrorKind::TimedOut => StoreError::TimedOut(Duration::from_secs(5)),
        PublishErrorKind::MaxPayloadExceeded => StoreError::Invalid(format!("event too large: {e}")),
        PublishErrorKind::StreamNotFound => StoreError::Unavailable(format!("no stream for {subject}")),
        _ => StoreError::unavailable(e),
    }
}
