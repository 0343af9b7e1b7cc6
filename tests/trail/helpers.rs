//! Reading whole streams as bytes, to prove what is not in them.

use fetchml_eventstore::{EventStore, StartAt};
use futures::StreamExt;

/// Every message of `stream` (from the first to the last stored now), as
/// (subject, payload) pairs.
pub async fn everything_in(store: &EventStore, stream: &str, filter: &str) -> Vec<(String, Vec<u8>)> {
    let last = store.stream_last_sequence(stream).await.unwrap();
    let mut out = Vec::new();
    if last == 0 {
        return out;
    }
    let mut read = store.read_stream(stream, vec![filter.to_owned()], StartAt::Beginning).await.unwrap();
    while let Some(ev) = read.next().await {
        let ev = ev.unwrap();
        let (seq, pending) = (ev.seq, ev.pending);
        out.push((ev.subject, ev.payload.to_vec()));
        if seq >= last || pending == Some(0) {
            break;
        }
    }
    out
}

/// The messages of `messages` whose subject or payload contains `needle`.
pub fn containing<'a>(messages: &'a [(String, Vec<u8>)], needle: &str) -> Vec<&'a str> {
    messages
        .iter()
        .filter(|(subject, payload)| {
            subject.contains(needle) || payload.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|(subject, _)| subject.as_str())
        .collect()
}
