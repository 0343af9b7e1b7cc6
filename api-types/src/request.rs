//! Request bodies. Every body is a JSON object (the api refuses arrays, which
//! serde would otherwise read as a struct's fields by position).

use fetchml_events::job::JobSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `POST /v1/auth/login`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An API key (`fml_<id>_<secret>`).
    pub api_key: String,
}

/// The optional body of `POST /v1/jobs/{id}/cancel` and `/retry` (an empty
/// body is allowed too).
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReasonRequest {
    /// Recorded in the job's event (1-1024 characters; line breaks and tabs
    /// allowed, other control characters not).
    pub reason: Option<String>,
}

/// `POST /v1/jobs/batch`: 1 to 1000 job specs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Each a job spec. Kept as JSON here so that the api can name the spec an
    /// error is in (`jobs[3].command`); see [`JobSpec`].
    #[schema(value_type = Vec<JobSpec>, min_items = 1, max_items = 1000)]
    pub jobs: Vec<Value>,
}
