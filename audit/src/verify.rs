//! Verification: replays the log (online, or from an export) in stream order
//! and checks, for every event, in this order (the Python verifier in
//! `tools/audit-verify` does the same, in the same order, so both name the
//! same first break):
//!
//! 1. its sequence is the next one (`gap`, `duplicate`, `reordered`);
//! 2. the global chain entry recomputed from its bytes equals the one the
//!    export records, when it records one (`chain_mismatch`);
//! 3. a checkpoint (on the checkpoint subject) is well formed, of a known
//!    scheme and namespace, signed by a trusted key with a valid signature,
//!    and commits to the head the replay computed after its `seq`
//!    (`checkpoint_malformed`, `unsupported_scheme`, `wrong_namespace`,
//!    `unknown_key`, `bad_signature`, `wrong_head`, `checkpoint_unverifiable`);
//!    any other event passes the per-aggregate checks of scheme 1
//!    (`malformed`, `altered`, `unlinked`).

use crate::chain::{Chain, Entry};
use crate::checkpoint::{Keyring, SCHEME, StoredCheckpoint};
use fetchml_events::hash::{GENESIS, envelope_hash};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};

/// How many past chain entries the verifier keeps to check a checkpoint
/// against: a checkpoint covers a sequence a little before its own (events
/// appended while it was being written), never this far.
pub const HEAD_WINDOW: usize = 1 << 16;

/// What kind of break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    Gap,
    Duplicate,
    Reordered,
    ChainMismatch,
    Malformed,
    Altered,
    Unlinked,
    CheckpointMalformed,
    UnsupportedScheme,
    WrongNamespace,
    UnknownKey,
    BadSignature,
    WrongHead,
    CheckpointUnverifiable,
    /// The export ends before the sequence its manifest or trailer names.
    Truncated,
}

/// The first link that does not hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Break {
    /// The stream sequence of the event where it broke (for a gap: the first
    /// missing sequence).
    pub seq: u64,
    pub kind: BreakKind,
    /// Which check failed, in words.
    pub check: String,
    pub expected: String,
    pub found: String,
}

/// The last checkpoint the replay verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Where the checkpoint itself is stored.
    pub seq: u64,
    /// The last sequence it covers.
    pub covers_seq: u64,
    pub head: String,
    pub key_id: String,
    pub time: String,
}

/// The answer of a verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub intact: bool,
    pub namespace: String,
    /// The first sequence replayed.
    pub from_seq: u64,
    /// The last sequence verified intact (`from_seq - 1` if none).
    pub verified_to_seq: u64,
    /// How many events were verified.
    pub events: u64,
    /// The global chain entry after `verified_to_seq`, lowercase hex.
    pub head: String,
    pub checkpoints: u64,
    pub last_checkpoint: Option<CheckpointRef>,
    /// Whether the replay's start is trusted: it starts at sequence 1, or at a
    /// signed checkpoint, or a later signed checkpoint confirmed its heads.
    pub anchored: bool,
    pub broken: Option<Break>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(b) = &self.broken {
            write!(
                f,
                "BROKEN at sequence {}: {} ({}): expected {}, found {}; intact up to sequence {}",
                b.seq,
                serde_json::to_value(b.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                b.check,
                b.expected,
                b.found,
                self.verified_to_seq
            )?;
        } else {
            write!(f, "intact up to sequence {}, head {}", self.verified_to_seq, self.head)?;
        }
        match &self.last_checkpoint {
            Some(c) => write!(
                f,
                ", last checkpoint at sequence {} (covering {}) signed by key {}",
                c.seq, c.covers_seq, c.key_id
            )?,
            None => write!(f, ", no signed checkpoint")?,
        }
        if !self.anchored {
            write!(f, " (start not anchored by a signed checkpoint)")?;
        }
        Ok(())
    }
}

/// One event as the verifier sees it.
pub struct Item<'a> {
    pub seq: u64,
    pub subject: &'a str,
    pub bytes: &'a [u8],
    /// The chain entry an export records for this event.
    pub recorded_entry: Option<&'a str>,
    /// The sequence of the following item, if known (an export reads one line
    /// ahead): tells a reordering from a gap.
    pub next_seq: Option<u64>,
}

/// The replay state.
pub struct Verifier {
    namespace: String,
    checkpoint_subject: String,
    keys: Keyring,
    chain: Chain,
    from_seq: u64,
    /// Recent (sequence, entry after it), oldest first, including the start.
    window: VecDeque<(u64, Entry)>,
    heads: HashMap<String, String>,
    /// Starts mid-log: an aggregate's first event seen may link to one before.
    partial: bool,
    events: u64,
    checkpoints: u64,
    last_checkpoint: Option<CheckpointRef>,
    anchored: bool,
}

impl Verifier {
    /// A replay from sequence 1.
    pub fn new(namespace: &str, keys: Keyring) -> Self {
        Self::resume(namespace, keys, 0, crate::chain::GENESIS_ENTRY, true)
    }

    /// A replay starting after sequence `seq` whose entry is `head`; `trusted`
    /// when `head` comes from a verified checkpoint (or is the genesis entry).
    pub fn resume(namespace: &str, keys: Keyring, seq: u64, head: Entry, trusted: bool) -> Self {
        let mut window = VecDeque::with_capacity(1024);
        window.push_back((seq, head));
        Self {
            namespace: namespace.to_owned(),
            checkpoint_subject: checkpoint_subject(namespace),
            keys,
            chain: Chain::resume(seq, head),
            from_seq: seq + 1,
            window,
            heads: HashMap::new(),
            partial: seq > 0,
            events: 0,
            checkpoints: 0,
            last_checkpoint: None,
            anchored: trusted,
        }
    }

    /// The sequence expected next.
    pub fn expected(&self) -> u64 {
        self.chain.seq() + 1
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Checks the next event.
    pub fn check(&mut self, item: &Item<'_>) -> Result<(), Break> {
        let expected = self.expected();
        if item.seq != expected {
            return Err(order_break(expected, item.seq, item.next_seq));
        }
        let head = crate::chain::next_entry(&self.chain.head(), item.seq, &crate::chain::event_digest(item.bytes));
        if let Some(recorded) = item.recorded_entry
            && recorded != hex::encode(head)
        {
            return Err(Break {
                seq: item.seq,
                kind: BreakKind::ChainMismatch,
                check: "global chain entry recomputed from the stored bytes".into(),
                expected: hex::encode(head),
                found: recorded.to_owned(),
            });
        }
        if item.subject == self.checkpoint_subject {
            self.check_checkpoint(item)?;
        } else {
            self.check_aggregate(item)?;
        }
        self.chain = Chain::resume(item.seq, head);
        if self.window.len() == HEAD_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back((item.seq, head));
        self.events += 1;
        Ok(())
    }

    fn check_checkpoint(&mut self, item: &Item<'_>) -> Result<(), Break> {
        let brk = |kind, check: &str, expected: String, found: String| Break {
            seq: item.seq,
            kind,
            check: check.to_owned(),
            expected,
            found,
        };
        let cp = StoredCheckpoint::parse(item.bytes)
            .map_err(|e| brk(BreakKind::CheckpointMalformed, "checkpoint format", "a checkpoint event".into(), e))?;
        let body = &cp.checkpoint;
        if body.scheme != SCHEME {
            return Err(brk(
                BreakKind::UnsupportedScheme,
                "checkpoint scheme",
                SCHEME.to_string(),
                body.scheme.to_string(),
            ));
        }
        if body.namespace != self.namespace {
            return Err(brk(
                BreakKind::WrongNamespace,
                "checkpoint namespace",
                self.namespace.clone(),
                body.namespace.clone(),
            ));
        }
        let Some(key) = self.keys.get(&body.key_id) else {
            let known: Vec<&str> = self.keys.keys().iter().map(|k| k.id.as_str()).collect();
            return Err(brk(
                BreakKind::UnknownKey,
                "checkpoint signed by a trusted key",
                format!("one of [{}]", known.join(", ")),
                body.key_id.clone(),
            ));
        };
        if !Keyring::signature_holds(key, body, &cp.signature) {
            return Err(brk(
                BreakKind::BadSignature,
                "Ed25519 signature of the checkpoint body",
                format!("a valid signature by {}", key.id),
                cp.signature.clone(),
            ));
        }
        let Some(&(_, at)) = self.window.iter().find(|(s, _)| *s == body.seq) else {
            let oldest = self.window.front().map(|(s, _)| *s).unwrap_or(0);
            return Err(brk(
                BreakKind::CheckpointUnverifiable,
                "checkpoint covers a sequence the replay has seen",
                format!("a sequence in {oldest}..={}", item.seq - 1),
                body.seq.to_string(),
            ));
        };
        if hex::encode(at) != body.head {
            return Err(brk(
                BreakKind::WrongHead,
                &format!("global chain head after sequence {}", body.seq),
                hex::encode(at),
                body.head.clone(),
            ));
        }
        self.checkpoints += 1;
        // A signed head confirms every entry before it, the start included.
        self.anchored = true;
        self.last_checkpoint = Some(CheckpointRef {
            seq: item.seq,
            covers_seq: body.seq,
            head: body.head.clone(),
            key_id: body.key_id.clone(),
            time: body.time.clone(),
        });
        Ok(())
    }

    fn check_aggregate(&mut self, item: &Item<'_>) -> Result<(), Break> {
        let brk = |kind, check: &str, expected: String, found: String| Break {
            seq: item.seq,
            kind,
            check: check.to_owned(),
            expected,
            found,
        };
        let envelope: Value = serde_json::from_slice(item.bytes).map_err(|e| {
            brk(BreakKind::Malformed, "event is JSON", "a JSON object".into(), format!("invalid JSON: {e}"))
        })?;
        let field = |k: &str| envelope.get(k).and_then(Value::as_str);
        let (Some(aggregate), Some(prev), Some(stored)) = (field("aggregate_id"), field("prev_hash"), field("hash"))
        else {
            return Err(brk(
                BreakKind::Malformed,
                "event envelope",
                "an object with string aggregate_id, prev_hash and hash".into(),
                "missing fields".into(),
            ));
        };
        let computed = envelope_hash(&envelope);
        if computed != stored {
            return Err(brk(BreakKind::Altered, "per-aggregate hash of the event (scheme 1)", computed, stored.into()));
        }
        let kind = envelope.get("aggregate_kind").and_then(Value::as_str).unwrap_or("");
        let key = format!("{kind}/{aggregate}");
        match self.heads.get(&key) {
            Some(expected) if prev != expected => {
                return Err(brk(
                    BreakKind::Unlinked,
                    &format!("prev_hash links to the previous event of {key}"),
                    expected.clone(),
                    prev.into(),
                ));
            }
            None if !self.partial && prev != GENESIS => {
                return Err(brk(
                    BreakKind::Unlinked,
                    &format!("first event of {key} starts its chain"),
                    GENESIS.into(),
                    prev.into(),
                ));
            }
            _ => {}
        }
        self.heads.insert(key, stored.to_owned());
        Ok(())
    }

    /// The verdict so far, with `broken` if the replay stopped at a break.
    pub fn verdict(&self, broken: Option<Break>) -> Verdict {
        Verdict {
            intact: broken.is_none(),
            namespace: self.namespace.clone(),
            from_seq: self.from_seq,
            verified_to_seq: self.chain.seq(),
            events: self.events,
            head: hex::encode(self.chain.head()),
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint.clone(),
            anchored: self.anchored,
            broken,
        }
    }
}

/// The subject of a namespace's checkpoints.
/// (As `Subjects::audit_checkpoint`, from the namespace as a string: an
/// export's namespace is only a string.)
pub fn checkpoint_subject(namespace: &str) -> String {
    format!("{namespace}.ev.audit.checkpoint")
}

/// Names an out-of-order sequence: `found` where `expected` was due, with the
/// following item's sequence when known.
pub fn order_break(expected: u64, found: u64, next: Option<u64>) -> Break {
    let (kind, check) = if found + 1 == expected {
        (BreakKind::Duplicate, "each sequence appears once")
    } else if found < expected || next == Some(expected) {
        (BreakKind::Reordered, "sequences ascend")
    } else {
        (BreakKind::Gap, "no sequence is missing")
    };
    let seq = if kind == BreakKind::Gap { expected } else { found };
    Break { seq, kind, check: check.into(), expected: expected.to_string(), found: found.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_1_numbers_are_laid_out_as_the_readme_says() {
        // The README's rules, which the Python verifier implements (checked
        // once against 23 000 doubles, random bit patterns and powers of ten).
        let v: Value = serde_json::from_str("[1.0, 0.1, 1e16, 1e15, 0.00001, 0.0001, 1.5e-7, 1e21, 5e-324, -2.5, 7]")
            .expect("literal");
        let mut out = Vec::new();
        fetchml_events::hash::canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "[1.0,0.1,1e+16,1000000000000000.0,0.00001,0.0001,1.5e-7,1e+21,5e-324,-2.5,7]"
        );
    }

    #[test]
    fn order_breaks_are_named() {
        assert_eq!(order_break(5, 4, Some(5)).kind, BreakKind::Duplicate);
        assert_eq!(order_break(5, 3, Some(5)).kind, BreakKind::Reordered);
        assert_eq!(order_break(5, 6, Some(5)).kind, BreakKind::Reordered);
        let gap = order_break(5, 6, Some(7));
        assert_eq!((gap.kind, gap.seq), (BreakKind::Gap, 5));
        assert_eq!(order_break(5, 9, None).kind, BreakKind::Gap);
    }
}
