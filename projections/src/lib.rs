//! The read models in Postgres and the projector that keeps them.
//!
//! Guarantees:
//! - **Exactly once in effect.** Events are applied in batches; each batch and
//!   the checkpoint (the last stream sequence applied) commit in one Postgres
//!   transaction, and every row update is guarded by the row's own `last_seq`.
//!   Kill the projector anywhere: it resumes from the checkpoint, and a rebuild
//!   from sequence 1 yields the same tables.
//! - **One writer.** A replica runs the projection only while it holds a
//!   Postgres advisory lock on the connection it writes with; others wait.
//! - **No event stops it.** A job's row is the domain's own fold (`fold.rs`).
//!   What Postgres cannot hold is stored safely (NUL as U+FFFD) or recorded as
//!   a fault in `projection_faults`, with the checkpoint, and skipped; a
//!   refusal nothing foresaw is isolated to its event the same way. A rebuild
//!   skips and records the same events.
//! - **Postgres down.** Commands do not need Postgres; the projector retries
//!   with backoff and catches up on its own when it returns. Reads answer at
//!   once while it is known down ([`Health`]).
//! - **Rebuild without a gap.** `rebuild` fills fresh tables in a shadow schema
//!   from sequence 1, then, holding exclusive locks, catches up to the live
//!   checkpoint and swaps the tables in one transaction: readers wait for the
//!   swap for a moment, but never see empty or half-built tables.

mod apply;
mod bulk;
pub mod fold;
pub mod health;
pub mod queries;
pub mod usage;

pub use fold::Fault;
pub use health::Health;

use fetchml_eventstore::{EventStore, LogSource, StartAt, StoreError};
use futures::StreamExt;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The projection's name in `projection_checkpoints` (it feeds every table).
pub const JOBS: &str = "jobs";
/// Advisory lock key of the jobs projection ("fetchmlj").
const LOCK_KEY: i64 = 0x6665_7463_686d_6c6a;
/// Transaction-level advisory lock between projector batches (shared) and the
/// rebuild's swap (exclusive): taken before any table lock, so the two never
/// deadlock on table locks taken in different orders.
const SWAP_KEY: i64 = 0x6665_7463_686d_6c73;
/// The tables a rebuild replaces.
pub const TABLES: [&str; 9] = [
    "projection_checkpoints",
    "projection_faults",
    "jobs",
    "job_counts",
    "experiment_metrics",
    "workers",
    "usage_open_attempts",
    "usage_daily",
    "analyst_usage_daily",
];
/// The views each role reads `jobs` through (migration 0006).
const ROLE_VIEWS: [&str; 3] = ["admin_jobs", "researcher_jobs", "analyst_jobs"];
const SHADOW: &str = "fetchml_rebuild";

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this database holds the read models of namespace {found:?}, not {ours:?}: use one database per namespace")]
    WrongNamespace { found: String, ours: String },
    #[error("rebuild: {0}")]
    Rebuild(String),
    /// A stored row does not hold what the projector writes (edited by hand?).
    #[error("read model row: {0}")]
    Corrupt(String),
    /// Postgres was found unreachable moments ago and has not answered since
    /// (see [`Health`]): answered at once instead of waiting for the pool.
    #[error("postgres is unreachable")]
    Down,
}

impl ProjectionError {
    /// Postgres cannot be reached (as opposed to a query that is wrong).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ProjectionError::Down)
            || matches!(
                self,
                ProjectionError::Postgres(
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
                )
            )
            || matches!(self, ProjectionError::Postgres(sqlx::Error::Database(e))
            // 57P: shutting down; 08: connection; 42P01: tables not created yet.
            if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08") || c == "42P01"))
    }

    /// Postgres refused the data itself (SQLSTATE class 22: data exception,
    /// 23: integrity constraint, 54: program limit such as an index entry too
    /// large), as opposed to being unreachable or the statement being wrong.
    /// For a projector, the event's fault; for a query, its parameters'.
    pub fn is_data_error(&self) -> bool {
        matches!(self, ProjectionError::Corrupt(_))
            || matches!(self, ProjectionError::Postgres(sqlx::Error::Database(e))
                if e.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")))
    }
}

/// How long a use of the pool waits for a connection by default.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool that connects lazily: the api starts (and accepts commands) while
/// Postgres is down.
pub fn pool(url: &str) -> Result<PgPool, ProjectionError> {
    pool_with(url, ACQUIRE_TIMEOUT)
}

/// [`pool`] with an acquire timeout of its own.
pub fn pool_with(url: &str, acquire_timeout: Duration) -> Result<PgPool, ProjectionError> {
    let opts = PgConnectOptions::from_str(url)?;
    let mut pool = PgPoolOptions::new().max_connections(8).acquire_timeout(acquire_timeout);
    // Every statement is planned for its parameters and the tables as they
    // are now. By default Postgres keeps a generic plan from a prepared
    // statement's sixth run until the next ANALYZE; made while a fresh
    // deployment's `jobs` held a few rows, the projector's lookups by key
    // (`id = ANY($1)`, the UPDATE's join) kept scanning the whole table as
    // it grew, each batch dearer than the last. Planning each run costs less
    // than one such scan. A statement, not a startup option, so that it also
    // passes a pooler that drops startup options; a URL that sets the mode
    // itself (`?options=-c plan_cache_mode=...`) keeps its own.
    if !opts.get_options().is_some_and(|o| o.contains("plan_cache_mode")) {
        pool = pool.after_connect(|conn, _| {
            Box::pin(
                async move { sqlx::raw_sql("SET plan_cache_mode = force_custom_plan").execute(conn).await.map(|_| ()) },
            )
        });
    }
    Ok(pool.connect_lazy_with(opts))
}

/// Applies the migrations owned by this crate.
pub async fn migrate(pool: &PgPool) -> Result<(), ProjectionError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

/// Claims the database for `namespace`, or refuses if another namespace has it.
pub async fn claim_namespace(conn: &mut PgConnection, namespace: &str) -> Result<(), ProjectionError> {
    sqlx::query("INSERT INTO projection_namespace (namespace) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(namespace)
        .execute(&mut *conn)
        .await?;
    let found: String = sqlx::query_scalar("SELECT namespace FROM projection_namespace").fetch_one(&mut *conn).await?;
    if found != namespace {
        return Err(ProjectionError::WrongNamespace { found, ours: namespace.to_owned() });
    }
    Ok(())
}

/// The last sequence the read models include (0 if none).
pub async fn checkpoint(pool: &PgPool) -> Result<u64, ProjectionError> {
    let v: Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT last_seq FROM projection_checkpoints WHERE name = $1")
            .bind(JOBS)
            .fetch_optional(pool)
            .await;
    match v {
        Ok(v) => Ok(v.unwrap_or(0) as u64),
        // Not migrated yet: the projector has not started; nothing is projected.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

async fn checkpoint_on(conn: &mut PgConnection) -> Result<u64, ProjectionError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM projection_checkpoints WHERE name = $1")
        .bind(JOBS)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(v.unwrap_or(0) as u64)
}

/// Applies `batch` and moves the checkpoint, in one transaction, with the
/// faults found. If Postgres refuses the batch's data, the batch is applied
/// again event by event, and each event it still refuses is recorded as a
/// fault (with the checkpoint) and skipped: no event stops the projector.
/// Any other error (Postgres gone, a wrong statement) is returned, and the
/// batch is tried again later.
async fn commit_batch(
    conn: &mut PgConnection,
    batch: &[fetchml_eventstore::StoredEvent],
    skip: &HashSet<i64>,
) -> Result<(), ProjectionError> {
    match try_commit(conn, batch, skip).await {
        Err(e) if e.is_data_error() && batch.len() > 1 => {
            tracing::warn!(error = %e, events = batch.len(), "postgres refused a batch; applying it event by event");
            for one in batch.chunks(1) {
                commit_one(conn, one, skip).await?;
            }
            Ok(())
        }
        Err(e) if e.is_data_error() => commit_one(conn, batch, skip).await,
        other => other,
    }
}

/// Commits one event, or its fault if Postgres refuses it.
async fn commit_one(
    conn: &mut PgConnection,
    one: &[fetchml_eventstore::StoredEvent],
    skip: &HashSet<i64>,
) -> Result<(), ProjectionError> {
    let Some(ev) = one.first() else { return Ok(()) };
    match try_commit(conn, one, skip).await {
        Err(e) if e.is_data_error() => {
            let fault = Fault::new(ev.seq, "jobs", fold::code::REFUSED, e.to_string());
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(SWAP_KEY).execute(&mut *tx).await?;
            record_faults(&mut tx, std::slice::from_ref(&fault)).await?;
            move_checkpoint(&mut tx, ev.seq).await?;
            tx.commit().await?;
            Ok(())
        }
        other => other,
    }
}

async fn try_commit(
    conn: &mut PgConnection,
    batch: &[fetchml_eventstore::StoredEvent],
    skip: &HashSet<i64>,
) -> Result<(), ProjectionError> {
    let Some(last) = batch.last() else { return Ok(()) };
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(SWAP_KEY).execute(&mut *tx).await?;
    let faults = apply::apply_batch(&mut tx, batch, skip).await?;
    record_faults(&mut tx, &faults).await?;
    move_checkpoint(&mut tx, last.seq).await?;
    tx.commit().await?;
    Ok(())
}

async fn move_checkpoint(conn: &mut PgConnection, seq: u64) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, last_seq, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (name) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
         WHERE projection_checkpoints.last_seq < EXCLUDED.last_seq",
    )
    .bind(JOBS)
    .bind(seq as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records `faults` (in the caller's transaction) and logs the new ones.
async fn record_faults(conn: &mut PgConnection, faults: &[Fault]) -> Result<(), ProjectionError> {
    for f in faults {
        let new = sqlx::query(
            "INSERT INTO projection_faults (seq, model, code, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(f.seq)
        .bind(&f.model)
        .bind(&f.code)
        .bind(&f.message)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            > 0;
        if new {
            f.log();
        }
    }
    Ok(())
}

/// The faults recorded so far (every model).
pub async fn faults(pool: &PgPool) -> Result<Vec<Fault>, ProjectionError> {
    faults_on(&mut *pool.acquire().await?, "public").await
}

async fn faults_on(conn: &mut PgConnection, schema: &str) -> Result<Vec<Fault>, ProjectionError> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT seq, model, code, message FROM {schema}.projection_faults ORDER BY seq, model"
    )))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(seq, model, code, message)| Fault { seq, model, code, message }).collect())
}

/// How many faults are recorded.
pub async fn fault_count(pool: &PgPool) -> Result<u64, ProjectionError> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_faults").fetch_one(pool).await?;
    Ok(n as u64)
}

/// Batching: up to `max` events, or whatever arrived within `wait` of the
/// first one; large batches when catching up. Live, a batch costs Postgres
/// about the same whatever its size (a transaction of a few statements, each
/// planned for its values), so the wait trades read-model lag for Postgres
/// CPU at a steady load. Set by `postgres.projector_batch_*` (default 25 ms,
/// 1 000 events; 5 ms before the eighteenth session, BENCHMARKS.md).
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub max: usize,
    pub wait: Duration,
}

impl From<(usize, Duration)> for Batching {
    fn from((max, wait): (usize, Duration)) -> Self {
        Self { max, wait }
    }
}

/// What a projector and the reads of its own process tell each other, so that
/// a read waiting for its own write (`after_seq`) neither waits out the
/// projector's batching window nor polls Postgres for the commit:
/// - a read says which sequence it waits for; a batch that holds it commits
///   at once instead of waiting for more of the log;
/// - each commit says the checkpoint it reached; the read wakes at once.
///
/// A read that waits while another process's projector holds the lock (or a
/// read from a replica) learns of the commit by polling, as without this.
#[derive(Clone, Debug)]
pub struct Progress(std::sync::Arc<ProgressShared>);

#[derive(Debug)]
struct ProgressShared {
    /// The highest sequence a read of this process waits for.
    wanted: std::sync::atomic::AtomicU64,
    hurry: tokio::sync::Notify,
    /// The checkpoint of this process's projector's last commit.
    committed: tokio::sync::watch::Sender<u64>,
    /// Whether the reads see what the projector commits when it commits (no
    /// replica between them): only then does a commit answer a read.
    reads_see_commits: bool,
}

impl Progress {
    /// `reads_see_commits`: the reads go to the database the projector writes
    /// (false with a read replica: the replica may not have the commit yet).
    pub fn new(reads_see_commits: bool) -> Self {
        Self(std::sync::Arc::new(ProgressShared {
            wanted: Default::default(),
            hurry: Default::default(),
            committed: tokio::sync::watch::Sender::new(0),
            reads_see_commits,
        }))
    }

    fn want(&self, seq: u64) {
        if self.0.wanted.fetch_max(seq, std::sync::atomic::Ordering::AcqRel) < seq {
            self.0.hurry.notify_one();
        }
    }

    /// A read waits for a sequence that committing `batch` would reach: commit
    /// now. (Past the last commit rather than from the batch's first event:
    /// a read may wait for a sequence the projector is not sent.)
    fn hurried(&self, batch: &[fetchml_eventstore::StoredEvent]) -> bool {
        let Some(last) = batch.last() else { return false };
        let wanted = self.0.wanted.load(std::sync::atomic::Ordering::Acquire);
        wanted > *self.0.committed.borrow() && wanted <= last.seq
    }

    fn committed(&self, seq: u64) {
        self.0.committed.send_if_modified(|c| {
            let moved = seq > *c;
            *c = (*c).max(seq);
            moved
        });
    }
}

/// Resolves when a read of the process asks `progress`'s projector to hurry;
/// never without one.
async fn hurry(progress: Option<&Progress>) {
    match progress {
        Some(p) => p.0.hurry.notified().await,
        None => std::future::pending().await,
    }
}

pub struct Projector {
    pool: PgPool,
    store: EventStore,
    batching: Batching,
    health: Option<Health>,
    /// Where the log is read: the store itself, or the process's shared tap.
    source: Option<LogSource>,
    progress: Option<Progress>,
}

impl Projector {
    pub fn new(pool: PgPool, store: EventStore, batching: Batching) -> Self {
        Self { pool, store, batching, health: None, source: None, progress: None }
    }

    /// Commits at once a batch that a read of the same process waits for, and
    /// tells that read when it is committed ([`Progress`]; `None`: nobody asks).
    pub fn with_progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Reads the log through `source` (the api's shared tap: one delivery of
    /// each event for the projector, the job index and the scheduler).
    pub fn with_source(mut self, source: LogSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Shares what the projector learns about Postgres (down, up again) with
    /// the reads of the same process.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Projects until `stop`, surviving Postgres and NATS outages.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = fetchml_eventstore::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.is_cancelled() {
            match self.run_once(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    if let Some(h) = &self.health
                        && e.is_unavailable()
                    {
                        h.mark_down();
                    }
                    tracing::warn!(error = %e, "projector stopped; retrying");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        }
    }

    async fn run_once(&self, stop: &CancellationToken) -> Result<(), ProjectionError> {
        migrate(&self.pool).await?;
        // A connection of our own: the advisory lock lives as long as it, and
        // it closes (releasing the lock) when dropped.
        let mut conn = self.pool.acquire().await?.detach();
        claim_namespace(&mut conn, self.store.subjects().namespace().as_str()).await?;
        loop {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK_KEY).fetch_one(&mut conn).await?;
            if got {
                break;
            }
            tokio::select! { _ = stop.cancelled() => return Ok(()), _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
        }
        let from = checkpoint_on(&mut conn).await? + 1;
        if let Some(p) = &self.progress {
            p.committed(from - 1);
        }
        tracing::info!(from, "projector running");
        let all = self.store.subjects().all_events();
        let mut events = match &self.source {
            Some(source) => source.read(&all, from).await?,
            None => Box::pin(self.store.read(&all, StartAt::Sequence(from)).await?),
        };
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                e = events.next() => e,
            };
            let Some(first) = first else { return Err(StoreError::Unavailable("event stream ended".into()).into()) };
            let mut batch = vec![first?];
            let deadline = tokio::time::Instant::now() + self.batching.wait;
            let progress = self.progress.as_ref();
            while batch.len() < self.batching.max && !progress.is_some_and(|p| p.hurried(&batch)) {
                tokio::select! {
                    next = tokio::time::timeout_at(deadline, events.next()) => match next {
                        Ok(Some(Ok(e))) => batch.push(e),
                        Ok(Some(Err(e))) => return Err(e.into()),
                        _ => break,
                    },
                    // A read began to wait: look at the batch again.
                    () = hurry(progress) => {}
                }
            }
            commit_batch(&mut conn, &batch, &HashSet::new()).await?;
            if let Some(h) = &self.health {
                h.mark_up();
            }
            if let (Some(p), Some(last)) = (progress, batch.last()) {
                p.committed(last.seq);
            }
        }
    }
}

/// Waits (bounded) until the read models include sequence `seq`. With the
/// [`Progress`] of a projector in the same process, that projector commits
/// the batch that reaches `seq` at once and the wait ends at its commit; the
/// checkpoint is polled as well (every 10 ms), for a projector elsewhere.
pub async fn wait_for(
    pool: &PgPool,
    seq: u64,
    within: Duration,
    local: Option<&Progress>,
) -> Result<bool, ProjectionError> {
    const POLL: Duration = Duration::from_millis(10);
    let deadline = tokio::time::Instant::now() + within;
    let mut commits = local.filter(|p| p.0.reads_see_commits).map(|p| p.0.committed.subscribe());
    if let Some(p) = local {
        p.want(seq);
    }
    loop {
        if commits.as_ref().is_some_and(|c| *c.borrow() >= seq) || checkpoint(pool).await? >= seq {
            return Ok(true);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let next_poll = (now + POLL).min(deadline);
        match commits.as_mut() {
            Some(c) => {
                // Woken by a local commit past `seq`, or at the next poll.
                let _ = tokio::time::timeout_at(next_poll, c.wait_for(|&at| at >= seq)).await;
            }
            None => tokio::time::sleep_until(next_poll).await,
        }
    }
}

/// Gives the shadow copy of `table` the indexes and key constraints of the
/// live one, under the same names.
async fn copy_indexes(pool: &PgPool, table: &str) -> Result<(), ProjectionError> {
    let defs: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT pg_get_indexdef(ix.indexrelid), c.conname::text, pg_get_constraintdef(c.oid)
         FROM pg_index ix
         JOIN pg_class t ON t.oid = ix.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         LEFT JOIN pg_constraint c ON c.conindid = ix.indexrelid AND c.conrelid = t.oid AND c.contype IN ('p', 'u')
         WHERE n.nspname = 'public' AND t.relname = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    for (indexdef, constraint, constraintdef) in defs {
        let statement = match (constraint, constraintdef) {
            (Some(name), Some(def)) => format!("ALTER TABLE {SHADOW}.{table} ADD CONSTRAINT {name} {def}"),
            _ => indexdef.replacen(&format!(" ON public.{table} "), &format!(" ON {SHADOW}.{table} "), 1),
        };
        if !statement.contains(SHADOW) {
            return Err(ProjectionError::Rebuild(format!(
                "cannot place index of {table} in the shadow schema: {statement}"
            )));
        }
        sqlx::query(AssertSqlSafe(statement)).execute(pool).await?;
    }
    Ok(())
}

/// How long each phase of a rebuild took.
#[derive(Clone, Copy, Debug)]
pub struct RebuildStats {
    /// The sequence the new tables include.
    pub seq: u64,
    /// Reading and folding the log.
    pub read: Duration,
    /// COPYing the rows into the shadow tables and indexing them.
    pub write: Duration,
    /// Of `write`, building the indexes and keys after the COPYs.
    pub index: Duration,
    /// Catching up with the live projector and swapping the tables in.
    pub swap: Duration,
}

/// Rebuilds every read model from sequence 1 into a shadow schema and swaps it
/// in. Returns the sequence the new tables include.
pub async fn rebuild(pool: &PgPool, store: &EventStore) -> Result<u64, ProjectionError> {
    Ok(rebuild_with_stats(pool, store).await?.seq)
}

/// [`rebuild`], reporting how long each phase took.
pub async fn rebuild_with_stats(pool: &PgPool, store: &EventStore) -> Result<RebuildStats, ProjectionError> {
    migrate(pool).await?;
    let mut conn = pool.acquire().await?.detach();
    claim_namespace(&mut conn, store.subjects().namespace().as_str()).await?;
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {SHADOW} CASCADE"))).execute(&mut conn).await?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {SHADOW}"))).execute(&mut conn).await?;
    // Without indexes: COPY then builds each index once, sorted, instead of
    // updating it row by row (about twice as fast here).
    for t in TABLES {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {SHADOW}.{t} (LIKE public.{t} INCLUDING ALL EXCLUDING INDEXES)"
        )))
        .execute(&mut conn)
        .await?;
        // LIKE copies columns and constraints, not storage parameters (the
        // fillfactor that leaves room for HOT updates): carry them over.
        let options: Option<String> = sqlx::query_scalar(
            "SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = to_regclass($1) AND reloptions IS NOT NULL",
        )
        .bind(format!("public.{t}"))
        .fetch_optional(&mut conn)
        .await?
        .flatten();
        if let Some(options) = options.filter(|o| !o.is_empty()) {
            sqlx::query(AssertSqlSafe(format!("ALTER TABLE {SHADOW}.{t} SET ({options})"))).execute(&mut conn).await?;
        }
    }
    // Unqualified names now mean the shadow tables on this connection.
    sqlx::query(AssertSqlSafe(format!("SET search_path TO {SHADOW}"))).execute(&mut conn).await?;
    let head = store.last_sequence().await?;
    // Events Postgres refused to the live projector, for reasons `fold.rs`
    // does not foresee: the rebuild skips them too and keeps their faults, so
    // that it yields the same tables. (Foreseen faults it finds on its own.)
    let carried: Vec<Fault> =
        faults_on(&mut conn, "public").await?.into_iter().filter(|f| f.code == fold::code::REFUSED).collect();
    let skip: HashSet<i64> = carried.iter().map(|f| f.seq).collect();
    // Fast path: fold everything in memory and COPY the final rows (the
    // incremental projector needs several statements per event).
    let t0 = std::time::Instant::now();
    let folded = bulk::fold(store, head, carried).await?;
    let mut done = folded.last_seq;
    let read = t0.elapsed();
    let indexing;
    match bulk::write(pool, SHADOW, folded).await {
        Ok(()) => {
            indexing = std::time::Instant::now();
            futures::future::try_join_all(TABLES.iter().map(|t| copy_indexes(pool, t))).await?;
        }
        // Postgres refused a row no fault rule foresaw (a fresh database has
        // no live faults to learn from): fill the shadow tables the slow way,
        // event by event where needed, as the live projector does.
        Err(e) if e.is_data_error() => {
            tracing::warn!(error = %e, "rebuild: postgres refused a row of the fast path; projecting event by event");
            let shadow: Vec<String> = TABLES.iter().map(|t| format!("{SHADOW}.{t}")).collect();
            sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", shadow.join(", ")))).execute(&mut conn).await?;
            indexing = std::time::Instant::now();
            futures::future::try_join_all(TABLES.iter().map(|t| copy_indexes(pool, t))).await?;
            done = project_range(&mut conn, store, 1, head, &skip).await?;
        }
        Err(e) => return Err(e),
    }
    let index = indexing.elapsed();
    let write = t0.elapsed() - read;
    // Swap: lock the live tables (the live projector's next batch waits), catch
    // up to whatever it committed meanwhile, and exchange the tables.
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SWAP_KEY).execute(&mut *tx).await?;
    // The role views name the live `jobs` table, which is about to be
    // dropped: take them down and put them back, as they are defined, over
    // the new one (the definitions name `public.jobs`: public is not on this
    // connection's search path). Dropped before the tables are locked: a
    // reader locks a view and then `jobs`, so taking `jobs` first and a view
    // second would wait for a reader that waits for us (a deadlock).
    let views: Vec<(String, String)> = sqlx::query_as(
        "SELECT viewname::text, definition FROM pg_views WHERE schemaname = 'public' AND viewname = ANY($1)",
    )
    .bind(&ROLE_VIEWS[..])
    .fetch_all(&mut *tx)
    .await?;
    if let Some(missing) = ROLE_VIEWS.iter().find(|v| !views.iter().any(|(name, _)| name == *v)) {
        return Err(ProjectionError::Rebuild(format!("the role view public.{missing} is missing")));
    }
    for (view, _) in &views {
        sqlx::query(AssertSqlSafe(format!("DROP VIEW public.{view}"))).execute(&mut *tx).await?;
    }
    let live: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    sqlx::query(AssertSqlSafe(format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", live.join(", "))))
        .execute(&mut *tx)
        .await?;
    let live_cp: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM public.projection_checkpoints WHERE name = $1")
        .bind(JOBS)
        .fetch_optional(&mut *tx)
        .await?;
    let target = (live_cp.unwrap_or(0) as u64).max(done);
    if target > done {
        done = project_range(&mut tx, store, done + 1, target, &skip).await?;
    }
    for t in TABLES {
        sqlx::query(AssertSqlSafe(format!("DROP TABLE public.{t}"))).execute(&mut *tx).await?;
        sqlx::query(AssertSqlSafe(format!("ALTER TABLE {SHADOW}.{t} SET SCHEMA public"))).execute(&mut *tx).await?;
    }
    for (view, definition) in &views {
        sqlx::query(AssertSqlSafe(format!("CREATE VIEW public.{view} AS {definition}"))).execute(&mut *tx).await?;
    }
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {SHADOW}"))).execute(&mut *tx).await?;
    tx.commit().await?;
    let stats = RebuildStats { seq: done, read, write, index, swap: t0.elapsed() - read - write };
    tracing::info!(
        seq = done,
        read_ms = read.as_millis() as u64,
        write_ms = write.as_millis() as u64,
        index_ms = index.as_millis() as u64,
        swap_ms = stats.swap.as_millis() as u64,
        "read models rebuilt"
    );
    Ok(stats)
}

/// Applies events `from..=to` on `conn` in batches; returns the last applied.
async fn project_range(
    conn: &mut PgConnection,
    store: &EventStore,
    from: u64,
    to: u64,
    skip: &HashSet<i64>,
) -> Result<u64, ProjectionError> {
    let mut events = store.read(&store.subjects().all_events(), StartAt::Sequence(from)).await?;
    let mut batch = Vec::with_capacity(1000);
    let mut last = from.saturating_sub(1);
    while last < to {
        let Some(ev) = events.next().await else { break };
        let ev = ev?;
        if ev.seq > to {
            break;
        }
        last = ev.seq;
        batch.push(ev);
        if batch.len() >= 1000 || last >= to {
            commit_batch(conn, &batch, skip).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        commit_batch(conn, &batch, skip).await?;
    }
    Ok(last)
}

/// A checksum of every projected table's content (ordered by key), for tests
/// and operators comparing a live model with a rebuild.
pub async fn checksums(pool: &PgPool) -> Result<Vec<(String, String)>, ProjectionError> {
    let mut out = Vec::new();
    for (t, order) in [
        ("jobs", "id"),
        ("job_counts", "state"),
        ("experiment_metrics", "experiment, owner, metric"),
        ("workers", "id"),
        ("usage_open_attempts", "job_id"),
        ("usage_daily", "owner, pool, day"),
        ("analyst_usage_daily", "pool, day"),
        ("projection_faults", "seq, model"),
    ] {
        let sum: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) FROM {t} t"
        )))
        .fetch_one(pool)
        .await?;
        out.push((t.to_owned(), sum.unwrap_or_default()));
    }
    Ok(out)
}
