//! Signed checkpoints: every N events or T seconds the api appends, on the
//! subject `<ns>.ev.audit.checkpoint`, an event committing to the global chain
//! head after sequence `seq`, signed with the server's Ed25519 key.
//!
//! Signed bytes: the RFC 8785 (JCS) form of the checkpoint body. The body
//! holds only ASCII keys, strings and integers below 2^53, for which JCS is
//! exactly: keys sorted, no whitespace, strings as JSON escapes them minimally
//! (`\"`, `\\`, `\b \f \n \r \t`, other controls as `\u00xx`, everything
//! else as UTF-8), integers in decimal. [`signed_bytes`] refuses anything
//! else rather than sign a form a third party would encode differently.

use crate::AuditError;
use fetchml_events::hash::canonical_json;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The scheme of the global chain and the checkpoints (scheme 1 is the
/// per-aggregate hash alone).
pub const SCHEME: u32 = 2;
/// The `type` of a checkpoint event.
pub const CHECKPOINT_TYPE: &str = "audit.checkpoint";
/// The `aggregate_kind` of a checkpoint event.
pub const CHECKPOINT_KIND: &str = "audit";

/// What a checkpoint says, and what is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    pub scheme: u32,
    pub namespace: String,
    /// The last stream sequence covered.
    pub seq: u64,
    /// The global chain entry after `seq`, lowercase hex.
    pub head: String,
    /// When it was written (RFC 3339, UTC).
    pub time: String,
    /// Which key signed it.
    pub key_id: String,
}

/// A checkpoint event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCheckpoint {
    pub aggregate_kind: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub checkpoint: CheckpointBody,
    /// Ed25519 signature over [`signed_bytes`] of `checkpoint`, lowercase hex.
    pub signature: String,
}

impl StoredCheckpoint {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let c: StoredCheckpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.aggregate_kind != CHECKPOINT_KIND || c.event_type != CHECKPOINT_TYPE {
            return Err(format!("aggregate_kind/type are {}/{}", c.aggregate_kind, c.event_type));
        }
        Ok(c)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, AuditError> {
        Ok(serde_json::to_vec(self)?)
    }
}

/// The bytes that are signed: the JCS form of `body` (see the module docs).
pub fn signed_bytes(body: &CheckpointBody) -> Result<Vec<u8>, AuditError> {
    const MAX_SAFE: u64 = (1 << 53) - 1;
    if body.seq > MAX_SAFE {
        return Err(AuditError::Invalid(format!("checkpoint seq {} is beyond 2^53-1", body.seq)));
    }
    let v = serde_json::to_value(body)?;
    let mut out = Vec::with_capacity(256);
    canonical_json(&v, &mut out);
    debug_assert!(matches!(v, Value::Object(_)));
    Ok(out)
}

/// The key id derived from a public key when none is configured.
pub fn key_id_of(public: &[u8]) -> String {
    format!("ed25519-{}", &hex::encode(Sha256::digest(public))[..16])
}

/// A public key the verifier trusts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub id: String,
    /// The 32-byte Ed25519 public key, lowercase hex.
    pub public_key: String,
}

impl PublicKey {
    pub fn new(id: &str, public_hex: &str) -> Result<Self, AuditError> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(public_hex.trim(), &mut raw)
            .map_err(|e| AuditError::Invalid(format!("public key of {id:?} is not 64 hex digits: {e}")))?;
        Ok(Self { id: id.to_owned(), public_key: hex::encode(raw) })
    }

    /// `ID=HEX`, or `HEX` alone (the id is then derived from the key).
    pub fn parse_arg(arg: &str) -> Result<Self, AuditError> {
        match arg.split_once('=') {
            Some((id, key)) => Self::new(id, key),
            None => {
                let k = Self::new("", arg)?;
                let raw = hex::decode(&k.public_key).map_err(|e| AuditError::Invalid(e.to_string()))?;
                Ok(Self { id: key_id_of(&raw), ..k })
            }
        }
    }
}

/// The keys a verifier trusts, by id.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    keys: Vec<PublicKey>,
}

impl Keyring {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        let mut ring = Self::default();
        for k in keys {
            ring.add(k);
        }
        ring
    }

    /// Adds `key` unless a key with its id is already there.
    pub fn add(&mut self, key: PublicKey) {
        if !self.keys.iter().any(|k| k.id == key.id) {
            self.keys.push(key);
        }
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn get(&self, id: &str) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Whether `signature` (hex) is `key`'s signature of `body`.
    pub fn signature_holds(key: &PublicKey, body: &CheckpointBody, signature: &str) -> bool {
        let (Ok(pk), Ok(sig), Ok(msg)) = (hex::decode(&key.public_key), hex::decode(signature), signed_bytes(body))
        else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, pk).verify(&msg, &sig).is_ok()
    }
}

/// The server's signing key.
pub struct SigningKey {
    id: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    // Never prints the secret half.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).field("public", &self.public_hex()).finish()
    }
}

impl SigningKey {
    /// From a 32-byte seed; `id` empty: derived from the public key.
    pub fn from_seed(id: &str, seed: &[u8]) -> Result<Self, AuditError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| AuditError::Invalid(format!("signing key seed: {e}")))?;
        let id = if id.is_empty() { key_id_of(pair.public_key().as_ref()) } else { id.to_owned() };
        Ok(Self { id, pair })
    }

    /// Reads a key file written by [`generate_key_file`]: the seed as 64 hex
    /// digits (surrounding whitespace ignored).
    pub fn load(path: &Path, id: &str) -> Result<Self, AuditError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuditError::Invalid(format!("cannot read signing key {}: {e}", path.display())))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
            AuditError::Invalid(format!("signing key {} is not 64 hex digits (an Ed25519 seed)", path.display()))
        })?;
        Self::from_seed(id, &seed)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { id: self.id.clone(), public_key: self.public_hex() }
    }

    /// Signs a checkpoint covering `seq` with chain head `head`.
    pub fn checkpoint(
        &self,
        namespace: &str,
        seq: u64,
        head: &crate::chain::Entry,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<StoredCheckpoint, AuditError> {
        let body = CheckpointBody {
            scheme: SCHEME,
            namespace: namespace.to_owned(),
            seq,
            head: hex::encode(head),
            time: time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            key_id: self.id.clone(),
        };
        let signature = hex::encode(self.pair.sign(&signed_bytes(&body)?).as_ref());
        Ok(StoredCheckpoint {
            aggregate_kind: CHECKPOINT_KIND.into(),
            event_type: CHECKPOINT_TYPE.into(),
            checkpoint: body,
            signature,
        })
    }
}

/// Writes a new random seed to `path` (which must not exist), readable by the
/// owner only, and returns the key.
pub fn generate_key_file(path: &Path, id: &str) -> Result<SigningKey, AuditError> {
    use ring::rand::SecureRandom;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| AuditError::Invalid("the system's random source failed".into()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::Invalid(format!("cannot create {}: {e}", path.display())))?;
    writeln!(f, "{}", hex::encode(seed))
        .map_err(|e| AuditError::Invalid(format!("writing {}: {e}", path.display())))?;
    SigningKey::from_seed(id, &seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_only_for_its_body_and_key() {
        let key = SigningKey::from_seed("k1", &[7; 32]).unwrap();
        let cp = key.checkpoint("ns", 41, &[3; 32], chrono::Utc::now()).unwrap();
        let pk = key.public();
        assert!(Keyring::signature_holds(&pk, &cp.checkpoint, &cp.signature));
        let mut other = cp.checkpoint.clone();
        other.seq = 42;
        assert!(!Keyring::signature_holds(&pk, &other, &cp.signature));
        let stranger = SigningKey::from_seed("k1", &[8; 32]).unwrap().public();
        assert!(!Keyring::signature_holds(&stranger, &cp.checkpoint, &cp.signature));
        let parsed = StoredCheckpoint::parse(&cp.to_bytes().unwrap()).unwrap();
        assert_eq!(parsed, cp);
    }

    #[test]
    fn signed_bytes_are_the_jcs_form() {
        let body = CheckpointBody {
            scheme: 2,
            namespace: "ns".into(),
            seq: 7,
            head: "ab".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            key_id: "k\"1".into(),
        };
        assert_eq!(
            String::from_utf8(signed_bytes(&body).unwrap()).unwrap(),
            r#"{"head":"ab","key_id":"k\"1","namespace":"ns","scheme":2,"seq":7,"time":"2026-01-01T00:00:00.000Z"}"#
        );
    }
}
