//! The offline export: JSON Lines.
//!
//! - line 1, the manifest: `{"kind":"manifest","format":"fetchml-audit-export",
//!   "version":1,"namespace","from_seq","to_seq","start_entry","chain_scheme":2,
//!   "aggregate_schemes":[1],"keys":[{"id","public_key"}],"created_at"}`;
//!   `start_entry` is the chain entry after `from_seq - 1` (zeros from 1);
//! - one line per event, checkpoints included, in stream order:
//!   `{"kind":"event","seq","subject","data","entry"}` where `data` is the
//!   stored bytes as a JSON string (they are UTF-8 JSON; bytes that are not
//!   UTF-8 go in `data_hex` instead) and `entry` the chain entry after it;
//! - last line: `{"kind":"end","to_seq","events","head"}`, so that a cut-off
//!   file is told from a complete one.
//!
//! The keys in the manifest are informative: a verifier trusts only the keys
//! it is given.

use crate::AuditError;
use crate::chain::{Entry, GENESIS_ENTRY, parse_entry};
use crate::checkpoint::{Keyring, PublicKey, SCHEME};
use crate::verify::{Break, BreakKind, Item, Verdict, Verifier};
use serde::{Deserialize, Serialize};
use std::io::BufRead;

pub const FORMAT: &str = "fetchml-audit-export";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub namespace: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub start_entry: String,
    pub chain_scheme: u32,
    pub aggregate_schemes: Vec<u32>,
    pub keys: Vec<PublicKey>,
    pub created_at: String,
}

impl Manifest {
    pub fn new(namespace: &str, from_seq: u64, to_seq: u64, start_entry: &Entry, keys: Vec<PublicKey>) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            namespace: namespace.into(),
            from_seq,
            to_seq,
            start_entry: hex::encode(start_entry),
            chain_scheme: SCHEME,
            aggregate_schemes: vec![1],
            keys,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    Manifest(Manifest),
    Event {
        seq: u64,
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_hex: Option<String>,
        entry: String,
    },
    End {
        to_seq: u64,
        events: u64,
        head: String,
    },
}

impl Line {
    pub fn event(seq: u64, subject: &str, bytes: &[u8], entry: &Entry) -> Self {
        let (data, data_hex) = match std::str::from_utf8(bytes) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(hex::encode(bytes))),
        };
        Line::Event { seq, subject: subject.to_owned(), data, data_hex, entry: hex::encode(entry) }
    }

    /// The line as written, newline included.
    pub fn to_line(&self) -> Result<Vec<u8>, AuditError> {
        let mut v = serde_json::to_vec(self)?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Verifies an export read from `input`, trusting only `keys`.
pub fn verify_export(input: impl BufRead, keys: Keyring) -> Result<Verdict, AuditError> {
    let mut lines = input.lines();
    let first = lines.next().ok_or_else(|| AuditError::Invalid("empty export".into()))??;
    let manifest = match serde_json::from_str::<Line>(&first) {
        Ok(Line::Manifest(m)) => m,
        _ => return Err(AuditError::Invalid("the first line is not an export manifest".into())),
    };
    if manifest.format != FORMAT || manifest.version != VERSION {
        return Err(AuditError::Invalid(format!(
            "unsupported export format {} version {}",
            manifest.format, manifest.version
        )));
    }
    let start = parse_entry(&manifest.start_entry)
        .ok_or_else(|| AuditError::Invalid("manifest start_entry is not 64 hex digits".into()))?;
    let from = manifest.from_seq.max(1);
    let trusted = from == 1 && start == GENESIS_ENTRY;
    let mut v = Verifier::resume(&manifest.namespace, keys, from - 1, start, trusted);

    let mut parsed = lines.map(|l| l.map(|l| serde_json::from_str::<Line>(&l)));
    let mut next = parsed.next().transpose()?;
    let mut end = None;
    while let Some(current) = next.take() {
        next = parsed.next().transpose()?;
        let line = match current {
            Ok(l) => l,
            Err(e) => return Ok(v.verdict(Some(malformed_line(v.expected(), &e.to_string())))),
        };
        match line {
            Line::Event { seq, subject, data, data_hex, entry } => {
                let bytes = match (data, data_hex) {
                    (Some(s), None) => s.into_bytes(),
                    (None, Some(h)) => match hex::decode(h) {
                        Ok(b) => b,
                        Err(e) => return Ok(v.verdict(Some(malformed_line(seq, &e.to_string())))),
                    },
                    _ => return Ok(v.verdict(Some(malformed_line(seq, "needs exactly one of data, data_hex")))),
                };
                let next_seq = match &next {
                    Some(Ok(Line::Event { seq, .. })) => Some(*seq),
                    _ => None,
                };
                let item = Item { seq, subject: &subject, bytes: &bytes, recorded_entry: Some(&entry), next_seq };
                if let Err(b) = v.check(&item) {
                    return Ok(v.verdict(Some(b)));
                }
            }
            Line::End { to_seq, .. } => {
                end = Some(to_seq);
                break;
            }
            Line::Manifest(_) => return Ok(v.verdict(Some(malformed_line(v.expected(), "a second manifest")))),
        }
    }
    let last = v.expected() - 1;
    let due = end.unwrap_or(manifest.to_seq).max(manifest.to_seq);
    if end.is_none() || last != due {
        let b = Break {
            seq: last + 1,
            kind: BreakKind::Truncated,
            check: "the export holds every event up to its end line and manifest".into(),
            expected: format!("events up to sequence {due} and an end line"),
            found: format!("events up to sequence {last}{}", if end.is_none() { ", no end line" } else { "" }),
        };
        return Ok(v.verdict(Some(b)));
    }
    Ok(v.verdict(None))
}

fn malformed_line(seq: u64, why: &str) -> Break {
    Break {
        seq,
        kind: BreakKind::Malformed,
        check: "export line format".into(),
        expected: "a JSON event line".into(),
        found: why.to_owned(),
    }
}
