//! The tamper-evident chain. Each event carries the hash of its aggregate's
//! previous event and its own hash, computed over a canonical JSON form of the
//! envelope as stored (sorted keys, no `hash` field). Hashing the stored form,
//! not a re-serialised typed value, keeps old events verifiable after their
//! payload types evolve (upcasting never touches stored bytes).
//!
//! The chain is per aggregate: a global chain would force every append in the
//! system through one optimistic-concurrency point. The stream itself denies
//! delete and purge, so whole aggregates cannot be removed through the API; a
//! verifier replays the log and names the first broken link.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The predecessor hash of an aggregate's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Writes `v` as JSON with object keys sorted, independent of how serde_json
/// was compiled (its `preserve_order` feature changes map order).
///
/// Every appended event is hashed (api and workers seal one or two per job,
/// a verifier hashes the whole log), so this writes straight into `out`: no
/// string per key or scalar, and no key list when the map is already in
/// order (always, unless `preserve_order` is on).
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => write_object(map, |_| true, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => write_json(scalar, out),
    }
}

/// A string or scalar as compact JSON; writing into a `Vec` cannot fail.
fn write_json<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, v);
}

/// An object's entries that `keep` accepts, keys sorted.
fn write_object(map: &serde_json::Map<String, Value>, keep: impl Fn(&str) -> bool, out: &mut Vec<u8>) {
    let mut first = true;
    let mut entry = |k: &String, v: &Value, out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(k, out);
        out.push(b':');
        canonical_json(v, out);
    };
    out.push(b'{');
    if map.keys().is_sorted() {
        for (k, v) in map.iter().filter(|(k, _)| keep(k)) {
            entry(k, v, out);
        }
    } else {
        let mut keys: Vec<&String> = map.keys().filter(|k| keep(k)).collect();
        keys.sort();
        for k in keys {
            entry(k, &map[k], out);
        }
    }
    out.push(b'}');
}

/// The hash of an envelope given as a JSON object: SHA-256 over its canonical
/// form without the `hash` field, as lowercase hex.
pub fn envelope_hash(envelope: &Value) -> String {
    let mut buf = Vec::with_capacity(1024);
    match envelope {
        // The top-level object without `hash`, written in place (no copy of the tree).
        Value::Object(map) => write_object(map, |k| k != "hash", &mut buf),
        other => canonical_json(other, &mut buf),
    }
    hex::encode(Sha256::digest(&buf))
}

/// The first link that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokenLink {
    #[error("event at sequence {seq} is not a JSON object with aggregate_id, prev_hash and hash")]
    Malformed { seq: u64 },
    #[error("event at sequence {seq} was altered: stored hash {stored}, computed {computed}")]
    Altered { seq: u64, stored: String, computed: String },
    #[error(
        "event at sequence {seq} of aggregate {aggregate} points to {prev}, but its predecessor's hash is {expected}"
    )]
    Unlinked { seq: u64, aggregate: String, prev: String, expected: String },
}

/// Replays events in stream order and checks every link of every aggregate's
/// chain. Feed it the whole log (or a suffix together with `known_heads`).
#[derive(Default)]
pub struct ChainVerifier {
    heads: HashMap<String, String>,
    checked: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events were checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks the next event of the log, stored at stream sequence `seq`.
    pub fn check(&mut self, seq: u64, envelope: &Value) -> Result<(), BrokenLink> {
        let field = |k: &str| envelope.get(k).and_then(Value::as_str);
        let (Some(aggregate), Some(prev), Some(stored)) = (field("aggregate_id"), field("prev_hash"), field("hash"))
        else {
            return Err(BrokenLink::Malformed { seq });
        };
        let computed = envelope_hash(envelope);
        if computed != stored {
            return Err(BrokenLink::Altered { seq, stored: stored.into(), computed });
        }
        let kind = envelope.get("aggregate_kind").and_then(Value::as_str).unwrap_or("");
        let key = format!("{kind}/{aggregate}");
        let expected = self.heads.get(&key).map(String::as_str).unwrap_or(GENESIS);
        if prev != expected {
            return Err(BrokenLink::Unlinked { seq, aggregate: key, prev: prev.into(), expected: expected.into() });
        }
        self.heads.insert(key, stored.to_owned());
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_at_every_depth() {
        let mut out = Vec::new();
        canonical_json(&json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}}), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#);
    }

    #[test]
    fn canonical_form_escapes_as_serde_json_does() {
        let mut out = Vec::new();
        let v = json!({"k\"\u{0}é": ["a\nb\u{1f}", 1.5, -0, true, null, 10_000_000_000u64, {}], "": []});
        canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"":[],"k\"\u0000é":["a\nb\u001f",1.5,0,true,null,10000000000,{}]}"#
        );
    }

    /// Pinned (SHA-256 of `{"a":"é\t","b":{"a":null,"z":[1,"two"]}}`, computed
    /// outside Rust): a change of the canonical form would break every stored chain.
    #[test]
    fn the_hash_of_a_known_envelope_does_not_change() {
        let v = json!({"hash": "x", "b": {"z": [1, "two"], "a": null}, "a": "é\t"});
        assert_eq!(envelope_hash(&v), "20b86c868ac2b213de53a7028a78fb3603358202a95b66e721298e2f8892c485");
    }

    #[test]
    fn hash_ignores_the_hash_field_and_key_order() {
        let a = json!({"x": 1, "y": 2, "hash": "whatever"});
        let b = json!({"y": 2, "x": 1});
        assert_eq!(envelope_hash(&a), envelope_hash(&b));
        assert_ne!(envelope_hash(&a), envelope_hash(&json!({"x": 1, "y": 3})));
    }
}
