//! The error body every refusal carries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": {"code", "message", "field"?}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error: a stable machine-readable `code` (see the README's errors
/// table), a message for people, and for an invalid spec the `field` at fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(example = "job_not_found")]
    pub code: String,
    /// The field at fault in a job spec (`command`, `jobs[3].env.A B`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}
