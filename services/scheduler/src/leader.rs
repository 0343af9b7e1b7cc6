//! Which scheduler decides: the one holding the `scheduler` key of the
//! namespace's leases bucket. The bucket's entries live one TTL; the leader
//! rewrites its key every third of it (an update that names the revision it
//! last wrote, so two processes can never both believe they renewed), and
//! the others try to create the key, which only succeeds once it has expired
//! or been deleted. A leader that cannot renew steps down at once.
//!
//! Two leaders for a moment (a partition) cost nothing worse than a job
//! offered twice: starts are fenced by the job's last sequence in the log.

use async_nats::jetstream::{self, kv};
use fetchml_events::subject::Subjects;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEY: &str = "scheduler";

async fn bucket(js: &jetstream::Context, subjects: &Subjects, ttl: Duration) -> Option<kv::Store> {
    let name = subjects.leases_bucket();
    match js.get_key_value(&name).await {
        Ok(kv) => Some(kv),
        Err(_) => match js
            .create_key_value(kv::Config {
                bucket: name.clone(),
                description: "fetchml leadership leases".into(),
                history: 1,
                max_age: ttl,
                // As many copies as the log: a leader elected on a minority
                // would assign nothing it could start anyway.
                num_replicas: fetchml_eventstore::log_replicas(js, subjects).await,
                ..Default::default()
            })
            .await
        {
            Ok(kv) => Some(kv),
            Err(e) => {
                tracing::warn!(bucket = name, error = %e, "cannot open the leases bucket");
                None
            }
        },
    }
}

/// Holds (or waits for) the lease until `stop`, keeping `leading` up to date.
pub(crate) async fn hold(
    js: jetstream::Context,
    subjects: Subjects,
    me: String,
    ttl: Duration,
    leading: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let every = fetchml_eventstore::refresh_every(ttl);
    let mut store = None;
    let mut revision = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if store.is_none() {
            store = bucket(&js, &subjects, ttl).await;
            // An existing bucket keeps the TTL it was made with: renewing by
            // a longer setting would let the lease expire between renewals
            // (leadership lost and taken again every time).
            if let Some(kv) = &store
                && let Some(lease) = fetchml_eventstore::entry_ttl(kv).await
                && lease != ttl
            {
                tracing::warn!(lease = ?lease, configured = ?ttl,
                    "the leases bucket's TTL differs from nats.worker_ttl_secs; renewing by the bucket's");
                tick = tokio::time::interval(fetchml_eventstore::refresh_every(lease));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        }
        let Some(kv) = &store else { continue };
        if leading.load(Ordering::Relaxed) {
            match kv.update(KEY, me.clone().into(), revision).await {
                Ok(r) => revision = r,
                Err(e) => {
                    leading.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "scheduler lost its leadership lease; stepping down");
                }
            }
        } else if let Ok(r) = kv.create(KEY, me.clone().into()).await {
            revision = r;
            leading.store(true, Ordering::Relaxed);
            tracing::info!(scheduler = %me, "scheduler leading");
        }
    }
    // Hand over at once rather than after a TTL.
    if leading.swap(false, Ordering::Relaxed)
        && let Some(kv) = &store
    {
        let _ = kv.delete_expect_revision(KEY, Some(revision)).await;
    }
}
