//! The audit trail's chain, checkpoints and verification
//! (`GET /v1/audit/keys`, `/v1/audit/verify`, `/v1/audit/export`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/audit/keys`: the public keys checkpoints are verified with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditKeys {
    pub keys: Vec<AuditKey>,
}

/// One Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditKey {
    /// Always `ed25519`.
    pub algorithm: String,
    /// `true`: the key this api signs new checkpoints with; `false`: an older
    /// key whose checkpoints still verify (`audit.trusted_keys`).
    pub current: bool,
    pub id: String,
    /// The 32-byte public key as 64 lowercase hex digits.
    pub public_key: String,
}

/// Where a verification starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerifyFrom {
    /// Sequence 1: every event is checked.
    #[default]
    Start,
    /// The latest checkpoint whose signature holds: what it covers is taken on
    /// its signature, the rest is replayed.
    Checkpoint,
}

/// `GET /v1/audit/verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditVerifyQuery {
    /// `start` (the default) or `checkpoint`.
    #[param(inline)]
    pub from: Option<VerifyFrom>,
}

/// `GET /v1/audit/export`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditExportQuery {
    /// The first stream sequence exported (default 1).
    pub from_seq: Option<u64>,
    /// The last stream sequence exported (default: the last at the request).
    pub to_seq: Option<u64>,
}

/// `GET /v1/audit/verify`: what the replay found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerdict {
    /// Whether the start of the replay is trusted: sequence 1, a signed
    /// checkpoint, or confirmed by a later signed checkpoint.
    pub anchored: bool,
    /// The first break, if any.
    pub broken: Option<AuditBreak>,
    /// How many checkpoints were verified.
    pub checkpoints: u64,
    /// How many events were verified.
    pub events: u64,
    pub from_seq: u64,
    /// The global chain entry after `verified_to_seq` (hex).
    pub head: String,
    pub intact: bool,
    pub last_checkpoint: Option<AuditCheckpointRef>,
    pub namespace: String,
    /// The verdict in one sentence.
    pub summary: String,
    /// The last sequence verified intact.
    pub verified_to_seq: u64,
}

/// The first broken link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditBreak {
    /// Which check failed, in words.
    pub check: String,
    pub expected: String,
    pub found: String,
    /// `gap`, `duplicate`, `reordered`, `chain_mismatch`, `malformed`,
    /// `altered`, `unlinked`, `checkpoint_malformed`, `unsupported_scheme`,
    /// `wrong_namespace`, `unknown_key`, `bad_signature`, `wrong_head`,
    /// `checkpoint_unverifiable`, `truncated`.
    pub kind: String,
    /// The stream sequence of the event where it broke.
    pub seq: u64,
}

/// A verified checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditCheckpointRef {
    /// The last sequence it covers.
    pub covers_seq: u64,
    pub head: String,
    pub key_id: String,
    /// Where the checkpoint is stored.
    pub seq: u64,
    pub time: String,
}
