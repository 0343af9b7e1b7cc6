//! The fetchml HTTP api.
//!
//! Commands (`POST /v1/jobs`) are validated here, decided by the pure domain
//! code and appended to the event log; a 202 means the event is stored in
//! JetStream. Reads of one job (`GET /v1/jobs/{id}`, `/events`) fold the job's
//! own events, so they are strongly consistent with every acknowledged command.

pub mod auth;
mod error;
pub mod http;
pub mod metrics;
pub mod policy;
mod refusals;
pub(crate) mod routes;
pub use routes::jobs::MAX_BATCH;
pub use routes::openapi::openapi_json;
pub mod stream;
pub mod transport;

pub use error::ApiError;

use axum::Router;
use fetchml_events::subject::Subjects;
use fetchml_eventstore::{EventStore, JobIndex, LogSource, LogTap};
use fetchml_runtime::Settings;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every handler can reach. axum clones the state for every request,
/// so it is one reference count (a profile found the clones and drops of
/// its twenty-odd fields at about 3% of the api's CPU).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppShared>);

impl std::ops::Deref for AppState {
    type Target = AppShared;
    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct AppShared {
    pub store: EventStore,
    pub nats: async_nats::Client,
    /// Every job, folded from the log in memory (lists, filters, read-your-writes).
    pub index: JobIndex,
    pub auth: std::sync::Arc<auth::Auth>,
    /// The read models, as the queries read them: `postgres.read_url` (a
    /// replica) when set, else the writer's database. Connects lazily:
    /// commands work while Postgres is down.
    pub pg: sqlx::PgPool,
    /// Whether `pg` answers: reads go through `pg_health.guard` and answer 503
    /// at once while it is down.
    pub pg_health: fetchml_projections::Health,
    /// The writer's database (`postgres.url`): the embedded projector and the
    /// migrations. The same pool and health as `pg` without a replica.
    pub pg_writer: sqlx::PgPool,
    pub pg_writer_health: fetchml_projections::Health,
    /// Whether `pg` is a replica apart from the writer (`/readyz` reports both).
    pub has_read_replica: bool,
    pub read_your_writes: Duration,
    /// Shared with the embedded projector (`None` without one): a read that
    /// waits for its own write has the projector commit at once and is woken
    /// by the commit.
    pub projector_progress: Option<fetchml_projections::Progress>,
    pub stream_limits: stream::session::Limits,
    pub max_stream_connections: usize,
    pub stream_connections: stream::ConnectionCount,
    pub as_of_max_events: u64,
    /// Cancelled when the api stops (stream sessions close with 1001).
    pub shutdown: CancellationToken,
    /// `GET /metrics` state; `None` when `api.metrics` is off (404).
    pub metrics: Option<std::sync::Arc<metrics::Scrapes>>,
    /// The reference page's renderer, read once at start (`None`: /docs is 404).
    pub docs_bundle: Option<bytes::Bytes>,
    /// `env` entries refused at submit because they look like credentials.
    pub credential_rules: std::sync::Arc<fetchml_events::job::CredentialRules>,
    /// Live stream subscriptions shared between connections.
    pub fanout: std::sync::Arc<stream::fanout::Fanout>,
    /// The audit trail's keys (`GET /v1/audit/keys`, verification).
    pub audit: AuditKeys,
    /// The built web dashboard, read once at start (`None`: `/` is 404).
    pub(crate) dashboard: Option<routes::ui::Dashboard>,
    /// The embedded scheduler's board (`None`: ask a scheduler over NATS).
    pub scheduler: Option<fetchml_scheduler::SchedulerHandle>,
    /// Shares and groups (`GET /v1/usage` sums by group with it).
    pub scheduling: std::sync::Arc<fetchml_runtime::settings::SchedulingSettings>,
}

/// The keys the audit trail is verified with.
#[derive(Clone, Debug, Default)]
pub struct AuditKeys {
    /// The current signing key's public half and every trusted older key.
    pub keys: fetchml_audit::Keyring,
    /// The id of the key this api signs checkpoints with, if it signs.
    pub signer_id: Option<String>,
}

/// Reads the `audit` settings: the signing key (if configured) and the keyring
/// (its public half and every trusted older key).
pub fn audit_keys(
    settings: &fetchml_runtime::settings::AuditSettings,
) -> Result<(Option<fetchml_audit::SigningKey>, fetchml_audit::Keyring), fetchml_audit::AuditError> {
    let signer = if settings.signing_key_file.as_os_str().is_empty() {
        None
    } else {
        Some(fetchml_audit::SigningKey::load(&settings.signing_key_file, &settings.key_id)?)
    };
    let mut keys = fetchml_audit::Keyring::default();
    if let Some(s) = &signer {
        keys.add(s.public());
    }
    for k in &settings.trusted_keys {
        keys.add(fetchml_audit::PublicKey::new(&k.id, &k.public_key)?);
    }
    Ok((signer, keys))
}

/// The router, a plain function of the state (tests build it without a socket).
pub fn router(state: AppState, limits: &transport::HttpLimits, options: &http::HttpOptions) -> Router {
    routes::router(limits, options).with_state(state)
}

/// A built api: listener bound, NATS connected, streams in place.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
    stop: CancellationToken,
    /// Signs the audit checkpoints (`None`: no `audit.signing_key_file`).
    signer: Option<fetchml_audit::SigningKey>,
    /// The process's one delivery of the log, started with the followers.
    tap: LogTap,
    scheduler: Option<fetchml_scheduler::Scheduler>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] fetchml_runtime::SettingsError),
    #[error(transparent)]
    Store(#[from] fetchml_eventstore::StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthSetupError),
    #[error("postgres settings: {0}")]
    Postgres(#[from] fetchml_projections::ProjectionError),
    #[error("audit settings: {0}")]
    Audit(#[from] fetchml_audit::AuditError),
    #[error("cannot listen on {addr}: {source} (is another fetchml api running? set api.listen)")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl Application {
    /// Connects to NATS, ensures the streams and binds the listener (port 0
    /// picks a free one; see [`Application::local_addr`]).
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let addr = settings.api_listen()?;
        // Bind first: a taken port is the most common start-up mistake and
        // should be reported before we touch anything else.
        let listener = TcpListener::bind(addr).await.map_err(|source| BuildError::Bind { addr, source })?;
        if settings.api.metrics {
            // Before anything records (the NATS connection counts reconnects).
            use fetchml_runtime::metrics as m;
            m::show_from_zero(
                &[
                    m::JOBS_ACCEPTED,
                    m::AUTH_FAILURES,
                    m::AUTH_THROTTLED,
                    m::STREAM_OPENED,
                    m::STREAM_LAGGED,
                    m::NATS_RECONNECTS,
                    m::POSTGRES_RECONNECTS,
                ],
                &[m::STREAM_CONNECTIONS],
            );
        }
        let (signer, audit_keyring) = audit_keys(&settings.audit)?;
        let nats =
            fetchml_eventstore::connect_secure(&settings.nats.url, "fetchml-api", &settings.nats_security()).await?;
        let store =
            EventStore::open(nats.clone(), Subjects::new(settings.namespace()), &settings.stream_settings()).await?;
        let stop = CancellationToken::new();
        // One delivery of the log for every follower in this process: the
        // job index, the scheduler and the projector (see `LogTap`).
        let tap = LogTap::new(store.clone());
        let index = JobIndex::spawn_on(LogSource::Tap(tap.clone()), store.clone(), stop.clone());
        let scheduler = settings.api.embedded_scheduler.then(|| {
            fetchml_scheduler::Scheduler::new(store.clone(), settings.scheduling.clone(), settings.worker_ttl())
        });
        // Create the worker registry with the configured TTL before any worker
        // or reader creates it with the default.
        fetchml_eventstore::ensure_registry(store.jetstream(), store.subjects(), settings.worker_ttl()).await?;
        let auth = std::sync::Arc::new(auth::Auth::new(store.clone(), &settings.auth).await?);
        let acquire = Duration::from_millis(settings.postgres.acquire_timeout_ms);
        let pg_writer = fetchml_projections::pool_with(&settings.postgres.url, acquire)?;
        let pg_writer_health = fetchml_projections::Health::new(&settings.postgres.url)?;
        let has_read_replica = !settings.postgres.read_url.is_empty();
        let (pg, pg_health) = if has_read_replica {
            (
                fetchml_projections::pool_with(&settings.postgres.read_url, acquire)?,
                fetchml_projections::Health::new(&settings.postgres.read_url)?,
            )
        } else {
            (pg_writer.clone(), pg_writer_health.clone())
        };
        // Create the read-model tables now if Postgres answers, so the first
        // queries do not race the projector; if it does not, the projector
        // migrates when it comes back (commands never wait for Postgres).
        match tokio::time::timeout(Duration::from_secs(5), fetchml_projections::migrate(&pg_writer)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "read models not migrated yet (Postgres unavailable?)"),
            Err(_) => tracing::warn!("read models not migrated yet: Postgres did not answer within 5 s"),
        }
        let read_your_writes = Duration::from_millis(settings.api.read_your_writes_ms);
        let st = &settings.streaming;
        let stream_limits = stream::session::Limits {
            max_subscriptions: st.max_subscriptions,
            buffer: st.buffer,
            send_timeout: Duration::from_millis(st.send_timeout_ms),
            ping_every: Duration::from_secs(st.ping_secs.max(1)),
            idle_timeout: Duration::from_secs(st.idle_secs.max(1)),
            max_message_bytes: st.max_message_bytes,
        };
        let fanout = std::sync::Arc::new(stream::fanout::Fanout::new(
            store.clone(),
            st.buffer,
            Duration::from_millis(st.send_timeout_ms),
        ));
        let state = AppState(std::sync::Arc::new(AppShared {
            store,
            nats,
            index,
            auth,
            pg,
            pg_health,
            pg_writer,
            pg_writer_health,
            has_read_replica,
            read_your_writes,
            projector_progress: settings
                .api
                .embedded_projector
                .then(|| fetchml_projections::Progress::new(!has_read_replica)),
            stream_limits,
            max_stream_connections: st.max_connections_per_user,
            stream_connections: stream::ConnectionCount::default(),
            as_of_max_events: st.as_of_max_events,
            shutdown: stop.clone(),
            metrics: settings.api.metrics.then(Default::default),
            docs_bundle: routes::docs::load_bundle(&settings.api.docs_bundle),
            credential_rules: std::sync::Arc::new(settings.secrets.credential_rules()),
            fanout,
            audit: AuditKeys { keys: audit_keyring, signer_id: signer.as_ref().map(|s| s.id().to_owned()) },
            dashboard: routes::ui::Dashboard::load_or_warn(&settings.api.ui_dir),
            scheduler: scheduler.as_ref().map(|s| s.handle()),
            scheduling: std::sync::Arc::new(settings.scheduling.clone()),
        }));
        Ok(Self { listener, state, settings, stop, signer, tap, scheduler })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains open requests. Runs the
    /// scheduler and the projector alongside when the settings say so.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = self.stop.clone();
        let source = LogSource::Tap(self.tap.clone());
        let scheduler = self.scheduler.map(|s| tokio::spawn(s.run(source.clone(), stop.clone())));
        if self.settings.api.embedded_projector {
            let projector = fetchml_projections::Projector::new(
                self.state.pg_writer.clone(),
                self.state.store.clone(),
                fetchml_projections::Batching::from(self.settings.projector_batching()),
            )
            .with_health(self.state.pg_writer_health.clone())
            .with_source(source.clone())
            .with_progress(self.state.projector_progress.clone());
            tokio::spawn(projector.run(stop.clone()));
        }
        // Every follower that starts with the process has taken its place.
        self.tap.start(stop.clone());
        if let Some(key) = self.signer {
            let policy = fetchml_audit::online::CheckpointPolicy {
                every_events: self.settings.audit.checkpoint_every_events,
                every: Duration::from_secs(self.settings.audit.checkpoint_every_secs),
            };
            tokio::spawn(fetchml_audit::online::run_checkpointer(self.state.store.clone(), key, policy, stop.clone()));
        }
        // The users file is re-read on SIGHUP and whenever it changes on disk.
        tokio::spawn(watch_users(self.state.auth.clone(), stop.clone()));
        let auth = self.state.auth.clone();
        let limits = transport::HttpLimits::from_settings(&self.settings.api);
        let app = router(self.state, &limits, &http::HttpOptions::from_settings(&self.settings.api));
        tracing::info!(addr = %self.listener.local_addr()?, "api listening");
        let stop_serving = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop_serving.cancel();
        });
        transport::serve(self.listener, app, limits, stop.clone()).await;
        stop.cancel();
        // Refusals still being folded are recorded before the api exits.
        auth.close_refusal_windows().await;
        if let Some(d) = scheduler {
            match d.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "scheduler ended with an error"),
                Err(e) => tracing::error!(error = %e, "scheduler task failed"),
            }
        }
        Ok(())
    }
}

/// Reloads the users file on SIGHUP, and when its modification time changes
/// (checked every second), until `stop`.
async fn watch_users(auth: std::sync::Arc<auth::Auth>, stop: CancellationToken) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup_recv => {
                tracing::info!("SIGHUP: reloading users");
                auth.reload();
            }
            _ = tick.tick() => auth.reload_if_changed(),
        }
    }
}
