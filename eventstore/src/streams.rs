//! Creating or verifying the three streams of a namespace. Idempotent: running it
//! again against streams it made changes nothing; a stream that exists with a
//! contradicting configuration is reported, never silently changed.

use crate::error::StoreError;
use async_nats::jetstream::{
    self,
    stream::{Config, DiscardPolicy, RetentionPolicy, StorageType},
};
use fetchml_events::subject::Subjects;
use std::time::Duration;

/// Tunables of the streams (see `configs/server.yaml` for the documented defaults).
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// How long JetStream remembers `Nats-Msg-Id`s for deduplication.
    pub duplicate_window: Duration,
    /// PROGRESS keeps logs and metrics this long.
    pub progress_max_age: Duration,
    /// ... and at most this many bytes (oldest dropped first).
    pub progress_max_bytes: i64,
    /// Largest single message accepted by any stream (bounded frames).
    pub max_message_size: i32,
    /// Replicas per stream (1 on a single server; 3 in a cluster).
    pub replicas: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            duplicate_window: Duration::from_secs(120),
            progress_max_age: Duration::from_secs(7 * 24 * 3600),
            progress_max_bytes: 1 << 30,
            max_message_size: 1 << 20,
            replicas: 1,
        }
    }
}

fn events_config(s: &Subjects, st: &StreamSettings) -> Config {
    Config {
        name: s.events_stream(),
        description: Some("fetchml event log: system of record and audit trail".into()),
        subjects: vec![s.all_events()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: Duration::ZERO,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        duplicate_window: st.duplicate_window,
        max_message_size: st.max_message_size,
        num_replicas: st.replicas,
        ..Default::default()
    }
}

fn progress_config(s: &Subjects, st: &StreamSettings) -> Config {
    Config {
        name: s.progress_stream(),
        description: Some("fetchml progress: logs, metrics, percent done (bounded)".into()),
        subjects: vec![s.all_progress()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: st.progress_max_age,
        max_bytes: st.progress_max_bytes,
        discard: DiscardPolicy::Old,
        allow_direct: true,
        max_message_size: st.max_message_size,
        num_replicas: st.replicas,
        ..Default::default()
    }
}

/// The fields whose mismatch makes a stream unusable for fetchml.
fn check(existing: &Config, wanted: &Config) -> Result<(), StoreError> {
    let conflict = |field: &'static str, e: String, w: String| StoreError::StreamConflict {
        stream: wanted.name.clone(),
        field,
        existing: e,
        wanted: w,
    };
    if existing.subjects != wanted.subjects {
        return Err(conflict("subjects", format!("{:?}", existing.subjects), format!("{:?}", wanted.subjects)));
    }
    if existing.storage != wanted.storage {
        return Err(conflict("storage", format!("{:?}", existing.storage), format!("{:?}", wanted.storage)));
    }
    if existing.retention != wanted.retention {
        return Err(conflict("retention", format!("{:?}", existing.retention), format!("{:?}", wanted.retention)));
    }
    if existing.deny_delete != wanted.deny_delete || existing.deny_purge != wanted.deny_purge {
        return Err(conflict(
            "deny_delete/deny_purge",
            format!("{}/{}", existing.deny_delete, existing.deny_purge),
            format!("{}/{}", wanted.deny_delete, wanted.deny_purge),
        ));
    }
    if existing.max_age != wanted.max_age && wanted.retention == RetentionPolicy::Limits && wanted.deny_purge {
        return Err(conflict("max_age", format!("{:?}", existing.max_age), format!("{:?}", wanted.max_age)));
    }
    Ok(())
}

/// Creates the namespace's EVENTS and PROGRESS streams, or verifies
/// that existing ones fit and applies this process's limits to them.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<(), StoreError> {
    ensure_streams_as(js, subjects, settings, true).await
}

/// [`ensure_streams`]; with `update_limits` false, existing streams are only
/// verified, never changed: for processes whose NATS credentials may not
/// update streams (workers, see `crate::authorization`), which leave the
/// limits to the api.
pub async fn ensure_streams_as(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
    update_limits: bool,
) -> Result<(), StoreError> {
    for wanted in [events_config(subjects, settings), progress_config(subjects, settings)] {
        match js.get_stream(&wanted.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(StoreError::unavailable)?;
                check(&info.config, &wanted)?;
                if !update_limits {
                    if needs_safe_update(&info.config, &wanted) {
                        tracing::debug!(stream = %wanted.name, "stream limits differ from this process's; the api sets them");
                    }
                } else if needs_safe_update(&info.config, &wanted) {
                    // Only tunables differ (limits, direct get): apply ours.
                    let mut updated = info.config.clone();
                    updated.allow_direct = wanted.allow_direct;
                    updated.duplicate_window = wanted.duplicate_window;
                    updated.max_message_size = wanted.max_message_size;
                    updated.max_bytes = wanted.max_bytes;
                    if !wanted.deny_purge {
                        updated.max_age = wanted.max_age;
                    }
                    js.update_stream(updated).await.map_err(StoreError::unavailable)?;
                    tracing::info!(stream = %wanted.name, "updated stream limits");
                }
            }
            Err(e) if is_stream_not_found(&e) => {
                match js.create_stream(wanted.clone()).await {
                    Ok(_) => tracing::info!(stream = %wanted.name, "created stream"),
                    // Lost a race with another process creating it: verify theirs.
                    Err(create_err) => {
                        let mut stream = js.get_stream(&wanted.name).await.map_err(|_| {
                            StoreError::Unavailable(format!("cannot create stream {}: {create_err}", wanted.name))
                        })?;
                        let info = stream.info().await.map_err(StoreError::unavailable)?;
                        check(&info.config, &wanted)?;
                    }
                }
            }
            Err(e) => return Err(StoreError::unavailable(format!("cannot look up stream {}: {e}", wanted.name))),
        }
    }
    Ok(())
}

/// The replica count of the namespace's EVENTS stream, 1 when it cannot be
/// read. Key-value buckets made beside the streams (sessions, the worker
/// registry) take it, so that on a cluster they survive the loss of a node as
/// the log does, whichever process happens to create them first.
pub async fn log_replicas(js: &jetstream::Context, subjects: &Subjects) -> usize {
    match js.get_stream(subjects.events_stream()).await {
        Ok(mut stream) => stream.info().await.map_or(1, |i| i.config.num_replicas.max(1)),
        Err(_) => 1,
    }
}

fn needs_safe_update(existing: &Config, wanted: &Config) -> bool {
    existing.allow_direct != wanted.allow_direct
        || existing.duplicate_window != wanted.duplicate_window
        || existing.max_message_size != wanted.max_message_size
        || existing.max_bytes != wanted.max_bytes
        || (!wanted.deny_purge && existing.max_age != wanted.max_age)
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    use jetstream::context::GetStreamErrorKind;
    match e.kind() {
        GetStreamErrorKind::JetStream(err) => err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND,
        _ => false,
    }
}
