//! The scheduler's answers: why a job waits, and each pool's queue.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Why a job waits (or where it is), for `GET /v1/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Scheduling {
    /// `waiting`, `assigned` or `running` (as the scheduler sees it).
    pub phase: String,
    /// 1 for the next job this pool would start; absent unless waiting.
    pub position: Option<usize>,
    pub priority: u8,
    /// The priority after aging.
    pub effective_priority: u32,
    /// The owner's share and usage (slot-seconds, decayed, running included),
    /// and the two divided: lower goes first.
    pub share: u32,
    pub usage: f64,
    pub normalized_usage: f64,
    /// Whether some live worker in the pool could ever hold this job.
    pub fits: bool,
    pub paused: bool,
    /// In plain words: why it waits, or where it runs.
    pub reason: String,
    pub not_before: Option<DateTime<Utc>>,
    pub worker: Option<String>,
}

/// One pool's queue, for `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolSummary {
    pub pool: String,
    pub paused: bool,
    /// Waiting jobs by priority (10 to 1; only priorities with jobs).
    pub waiting_by_priority: BTreeMap<u8, usize>,
    pub waiting: usize,
    /// Seconds the oldest waiting job has been ready to run.
    pub oldest_wait_secs: Option<f64>,
    pub assigned: usize,
    pub running: usize,
    pub workers: usize,
    pub draining_workers: usize,
    pub free_slots: usize,
    pub gpus: usize,
    pub free_gpus: usize,
}

/// `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub items: Vec<PoolSummary>,
}
