//! The live worker registry: a key-value bucket whose entries expire unless
//! their worker refreshes them, so a crashed worker disappears by itself.

use crate::error::StoreError;
use async_nats::jetstream::{self, kv};
use fetchml_events::subject::Subjects;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often a worker refreshes its entry; entries live three times as long.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What a live worker says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub pool: String,
    pub labels: Vec<String>,
    pub concurrency: usize,
    pub running: usize,
    pub host: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub seen_at: chrono::DateTime<chrono::Utc>,
}

/// Opens (creating if needed) the namespace's worker registry.
pub async fn open_registry(js: &jetstream::Context, subjects: &Subjects) -> Result<kv::Store, StoreError> {
    let bucket = subjects.workers_bucket();
    match js.get_key_value(&bucket).await {
        Ok(kv) => Ok(kv),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "fetchml live workers".into(),
                history: 1,
                max_age: HEARTBEAT * 3,
                ..Default::default()
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("worker registry {bucket}: {e}"))),
    }
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
