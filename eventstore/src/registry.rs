//! The live worker registry: a key-value bucket whose entries expire unless
//! their worker refreshes them, so a crashed worker disappears by itself.
//!
//! A worker refreshes its entry every third of the bucket's TTL for as long as
//! it holds jobs: while it runs, and while it drains after SIGTERM (then with
//! `draining: true`), until its last job has ended or been handed back. So an
//! entry means "alive, and holding whatever leases it holds"; the reconciler
//! takes over a running job only when its worker has no entry.

use crate::error::StoreError;
use async_nats::jetstream::{self, kv};
use fetchml_events::subject::Subjects;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often a worker refreshes its entry under the default TTL.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long an entry lives without a refresh, unless `nats.worker_ttl_secs`
/// says otherwise when the bucket is created.
pub const DEFAULT_WORKER_TTL: Duration = Duration::from_secs(15);

/// What a live worker says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub pool: String,
    pub labels: Vec<String>,
    pub concurrency: usize,
    pub running: usize,
    /// GPU device ids this worker gives jobs (empty: none).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// CPUs and memory it reserves for jobs that ask (0: none offered).
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
    /// Stopping: it takes no new jobs and lets its running ones finish.
    #[serde(default)]
    pub draining: bool,
    pub host: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

/// Opens (creating if needed, with the default TTL) the namespace's worker
/// registry.
pub async fn open_registry(js: &jetstream::Context, subjects: &Subjects) -> Result<kv::Store, StoreError> {
    ensure_registry(js, subjects, DEFAULT_WORKER_TTL).await
}

/// Opens the namespace's worker registry, creating it with entries that live
/// `ttl` if it does not exist. An existing bucket keeps its TTL (workers pace
/// their heartbeat by it, see [`heartbeat_every`]); a different `ttl` is
/// reported, not applied, so processes configured differently do not fight.
pub async fn ensure_registry(
    js: &jetstream::Context,
    subjects: &Subjects,
    ttl: Duration,
) -> Result<kv::Store, StoreError> {
    let bucket = subjects.workers_bucket();
    match js.get_key_value(&bucket).await {
        Ok(kv) => {
            if ttl != DEFAULT_WORKER_TTL
                && let Ok(status) = kv.status().await
                && status.max_age() != ttl
            {
                tracing::warn!(bucket, existing = ?status.max_age(), wanted = ?ttl,
                    "worker registry exists with another TTL; keeping it");
            }
            Ok(kv)
        }
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "fetchml live workers".into(),
                history: 1,
                max_age: ttl,
                num_replicas: crate::streams::log_replicas(js, subjects).await,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("worker registry {bucket}: {e}"))),
    }
}

/// How long entries of `kv` live: the TTL the bucket was made with, which an
/// existing bucket keeps whatever a process is configured with. `None` if
/// the bucket cannot say or keeps entries for ever.
pub async fn entry_ttl(kv: &kv::Store) -> Option<Duration> {
    kv.status().await.ok().map(|s| s.max_age()).filter(|ttl| !ttl.is_zero())
}

/// How often an entry that lives `ttl` is written again: every third of it,
/// so that one lost write does not let it expire.
pub fn refresh_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// How often a worker must refresh its entry in `kv`: by the bucket's TTL
/// ([`refresh_every`]).
pub async fn heartbeat_every(kv: &kv::Store) -> Duration {
    entry_ttl(kv).await.map_or(HEARTBEAT, refresh_every)
}

/// Every live worker.
pub async fn list_workers(kv: &kv::Store) -> Result<Vec<WorkerRecord>, StoreError> {
    let mut keys = kv.keys().await.map_err(StoreError::unavailable)?;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        names.push(k.map_err(StoreError::unavailable)?);
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(bytes) = kv.get(&name).await.map_err(StoreError::unavailable)?
            && let Ok(rec) = serde_json::from_slice::<WorkerRecord>(&bytes)
        {
            out.push(rec);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
