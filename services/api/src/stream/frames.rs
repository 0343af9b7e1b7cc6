//! The text of message frames, put together from pieces rendered once.
//!
//! A message is rendered once as its *item*, `{"seq":..,"subject_kind":..,
//! "data":..}`, shared by every connection that delivers it (see `fanout`).
//! A connection only wraps items with its subscription's head: a `message`
//! frame is the head followed by the item without its opening brace (the same
//! text `ServerMsg::Message` serializes to), and a `messages` frame is a head,
//! items separated by commas, and `]}`. Nothing per connection re-serializes a
//! message, so a thousand followers of one message cost a thousand copies of
//! its text, not a thousand encodings.

use super::protocol::StreamKind;
use serde::Serialize;
use std::sync::Arc;

/// One subscription's frame heads (its id escaped once).
#[derive(Debug)]
pub struct SubFrames {
    pub id: String,
    pub stream: StreamKind,
    /// Whether the client takes `messages` frames.
    pub batch: bool,
    single_head: String,
    batch_head: String,
}

impl SubFrames {
    pub fn new(id: &str, stream: StreamKind, batch: bool) -> Self {
        // A string and a unit enum always serialize.
        let sub = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
        let stream_text = serde_json::to_string(&stream).unwrap_or_else(|_| "\"\"".into());
        Self {
            id: id.to_owned(),
            stream,
            batch,
            single_head: format!(r#"{{"type":"message","sub":{sub},"stream":{stream_text},"#),
            batch_head: format!(r#"{{"type":"messages","sub":{sub},"stream":{stream_text},"items":["#),
        }
    }

    /// The `message` frame of one item.
    pub fn single(&self, item: &str) -> String {
        let body = item.strip_prefix('{').unwrap_or(item);
        let mut s = String::with_capacity(self.single_head.len() + body.len());
        s.push_str(&self.single_head);
        s.push_str(body);
        s
    }
}

/// A `messages` frame being filled.
pub struct BatchFrame {
    text: String,
    pub items: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl BatchFrame {
    pub fn new(sub: &SubFrames, seq: u64, item: &str) -> Self {
        let mut text = String::with_capacity(sub.batch_head.len() + item.len() + 2);
        text.push_str(&sub.batch_head);
        text.push_str(item);
        Self { text, items: 1, first_seq: seq, last_seq: seq }
    }

    /// Adds `item` unless the frame would then be longer than `max` bytes
    /// (then the caller starts another frame).
    pub fn try_push(&mut self, seq: u64, item: &str, max: usize) -> bool {
        // The comma before the item and the closing `]}`.
        if self.text.len() + 1 + item.len() + 2 > max {
            return false;
        }
        self.text.push(',');
        self.text.push_str(item);
        self.items += 1;
        self.last_seq = seq;
        true
    }

    pub fn finish(mut self) -> String {
        self.text.push_str("]}");
        self.text
    }
}

/// A message's item text: its sequence, kind and data (`None` if it does not
/// serialize, which JSON data always does).
pub fn item<D: Serialize + ?Sized>(seq: u64, subject_kind: &str, data: &D) -> Option<Arc<str>> {
    #[derive(Serialize)]
    struct Item<'a, D: ?Sized> {
        seq: u64,
        subject_kind: &'a str,
        data: &'a D,
    }
    serde_json::to_string(&Item { seq, subject_kind, data }).ok().map(Arc::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::protocol::{Item, ServerMsg};
    use serde_json::value::RawValue;
    use serde_json::{Value, json};

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    #[test]
    fn a_single_frame_is_the_message_the_protocol_type_writes() {
        let data = json!({"job_id": "j1", "line": "a \"quoted\" line", "at": "2026-11-30T00:00:00Z"});
        let item = item(42, "log", &raw(&data)).unwrap();
        // An id that needs escaping.
        let sub = SubFrames::new("p\"1", StreamKind::Progress, false);
        let expected = ServerMsg::Message {
            sub: "p\"1".into(),
            stream: StreamKind::Progress,
            seq: 42,
            subject_kind: "log".into(),
            data,
        }
        .to_text();
        assert_eq!(sub.single(&item), expected);
    }

    #[test]
    fn a_batch_frame_is_the_messages_the_protocol_type_writes_and_stays_under_the_bound() {
        let sub = SubFrames::new("s", StreamKind::Events, true);
        let items: Vec<(u64, Value)> = (1..=50).map(|i| (i, json!({"n": i, "pad": "x".repeat(40)}))).collect();
        let texts: Vec<Arc<str>> = items.iter().map(|(s, d)| item(*s, "job_queued", &raw(d)).unwrap()).collect();
        let max = 600;
        let mut frames = Vec::new();
        let mut open = BatchFrame::new(&sub, 1, &texts[0]);
        for (i, t) in texts.iter().enumerate().skip(1) {
            if !open.try_push(i as u64 + 1, t, max) {
                frames.push(std::mem::replace(&mut open, BatchFrame::new(&sub, i as u64 + 1, t)).finish());
            }
        }
        frames.push(open.finish());
        assert!(frames.len() > 1, "the bound splits 50 items");
        let mut seen = Vec::new();
        for f in &frames {
            assert!(f.len() <= max, "{} bytes", f.len());
            let v: Value = serde_json::from_str(f).unwrap();
            for it in v["items"].as_array().unwrap() {
                seen.push((it["seq"].as_u64().unwrap(), it["data"].clone()));
            }
        }
        assert_eq!(seen, items, "every item once, in order");
        // The first frame, as the protocol's own type writes it.
        let first: Value = serde_json::from_str(&frames[0]).unwrap();
        let n = first["items"].as_array().unwrap().len();
        let expected = ServerMsg::Messages {
            sub: "s".into(),
            stream: StreamKind::Events,
            items: items[..n]
                .iter()
                .map(|(seq, data)| Item { seq: *seq, subject_kind: "job_queued".into(), data: data.clone() })
                .collect(),
        };
        assert_eq!(frames[0], expected.to_text());
    }

    #[test]
    fn an_item_longer_than_the_bound_goes_alone() {
        let sub = SubFrames::new("s", StreamKind::Progress, true);
        let big = item(1, "log", &raw(&json!({"line": "y".repeat(1000)}))).unwrap();
        let small = item(2, "log", &raw(&json!({"line": "z"}))).unwrap();
        let mut f = BatchFrame::new(&sub, 1, &big);
        assert!(!f.try_push(2, &small, 500));
        assert_eq!(f.items, 1);
        let v: Value = serde_json::from_str(&f.finish()).unwrap();
        assert_eq!(v["items"][0]["seq"], 1);
    }
}
