//! Whether Postgres answers, shared by the api's queries and its projector, so
//! that a read while Postgres is down is refused at once (503
//! `read_model_unavailable`) instead of after the pool's acquire timeout.
//!
//! Guarantees:
//! - While Postgres is known to be down, [`Health::guard`] answers
//!   [`ProjectionError::Down`] at once, without waiting for the pool.
//! - It becomes known down when a query or the projector finds it
//!   unreachable, or when a read has waited [`SLOW`] for the pool and a
//!   direct connection attempt fails too (the pool is slow because the
//!   database is gone, not because it is busy). The pool alone cannot tell:
//!   it retries a refused connection until its acquire timeout.
//! - It becomes known up again as soon as Postgres accepts a connection:
//!   while down, one background probe tries every [`PROBE_EVERY`], and any
//!   projector commit also says so.

use crate::ProjectionError;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A read that has waited this long for Postgres checks whether it answers.
pub const SLOW: Duration = Duration::from_millis(200);
/// How often a probe connects while Postgres is down.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe's connection attempt gives up after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A probe's answer stands this long for the reads that ask meanwhile (so a
/// busy pool costs one extra connection attempt a second, not one a read).
const PROBE_FRESH: Duration = Duration::from_secs(1);

/// See the module documentation. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    down: AtomicBool,
    probing: AtomicBool,
    opts: PgConnectOptions,
    last_probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

impl Health {
    /// For the database at `url` (the read models' pool's URL).
    pub fn new(url: &str) -> Result<Self, ProjectionError> {
        let opts = PgConnectOptions::from_str(url)?.disable_statement_logging();
        Ok(Self {
            inner: Arc::new(Inner {
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
                opts,
                last_probe: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// Whether Postgres is known to be down right now.
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Acquire)
    }

    /// Runs `read` unless Postgres is known down; learns from its outcome,
    /// and from a probe when it waits longer than [`SLOW`].
    pub async fn guard<T>(&self, read: impl Future<Output = Result<T, ProjectionError>>) -> Result<T, ProjectionError> {
        if self.is_down() {
            return Err(ProjectionError::Down);
        }
        let mut read = std::pin::pin!(read);
        let result = tokio::select! {
            r = &mut read => r,
            _ = tokio::time::sleep(SLOW) => {
                if !self.probe_shared().await {
                    self.mark_down();
                    return Err(ProjectionError::Down);
                }
                read.await
            }
        };
        self.observe(&result);
        result
    }

    /// Learns from the outcome of any use of the pool.
    pub fn observe<T>(&self, result: &Result<T, ProjectionError>) {
        match result {
            Err(e) if e.is_unavailable() => self.mark_down(),
            Ok(_) => self.mark_up(),
            Err(_) => {}
        }
    }

    /// Postgres answered.
    pub fn mark_up(&self) {
        if self.inner.down.swap(false, Ordering::AcqRel) {
            metrics::counter!("fetchml_postgres_reconnects_total").increment(1);
            tracing::info!("postgres answers again; reads are served");
        }
    }

    /// Postgres was found unreachable: refuse reads at once until a probe
    /// connects.
    pub fn mark_down(&self) {
        if !self.inner.down.swap(true, Ordering::AcqRel) {
            tracing::warn!("postgres is unreachable; reads answer 503 at once until it is back");
        }
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.probing.store(false, Ordering::Release);
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            while me.is_down() {
                tokio::time::sleep(PROBE_EVERY).await;
                if me.probe().await {
                    me.mark_up();
                }
            }
            me.inner.probing.store(false, Ordering::Release);
        });
    }

    /// A probe's answer, shared by the reads that ask within [`PROBE_FRESH`].
    async fn probe_shared(&self) -> bool {
        let mut last = self.inner.last_probe.lock().await;
        if let Some((at, up)) = *last
            && at.elapsed() < PROBE_FRESH
        {
            return up;
        }
        let up = self.probe().await;
        *last = Some((Instant::now(), up));
        up
    }

    /// Whether Postgres accepts a connection now. An answer that is an error
    /// of another kind (a refused password) still means it is there.
    async fn probe(&self) -> bool {
        match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect_with(&self.inner.opts)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                true
            }
            Ok(Err(e)) => !ProjectionError::Postgres(e).is_unavailable(),
            Err(_) => false,
        }
    }
}
