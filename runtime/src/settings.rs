//! Typed settings. Sources, later ones winning: built-in defaults → a YAML file
//! → environment variables `FETCHML_<SECTION>__<KEY>` (for example
//! `FETCHML_NATS__URL=nats://127.0.0.1:4333`, `FETCHML_WORKER__CONCURRENCY=4`)
//! → command-line flags (applied by the binary). Everything is validated before
//! any service starts.

use fetchml_events::ids::{Namespace, PoolName};
use fetchml_eventstore::StreamSettings;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: String, source: serde_yaml_ng::Error },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid setting {field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// The whole settings tree; each service reads its sections.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub nats: NatsSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub postgres: PostgresSettings,
    pub auth: AuthSettings,
    pub streaming: StreamingSettings,
    pub telemetry: TelemetrySettings,
    pub secrets: SecretSettings,
    pub audit: AuditSettings,
    pub scheduling: SchedulingSettings,
    pub runtime: RuntimeSettings,
}

/// The async runtime a service process runs on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Threads that run the process's tasks; 0 is one per core. Unset: 1
    /// for a worker, one per core for the others.
    ///
    /// Why a worker takes one: its own work is small (about 40 µs of CPU a
    /// no-op job) and mostly hand-offs between its tasks, which on one
    /// thread cost no cross-thread wake-up. On virtual machines whose idle
    /// CPUs halt, each such wake-up costs about 0.1 ms; in the bench, one
    /// thread cut a worker's CPU per job by a quarter and raised end to end
    /// 4-9% (BENCHMARKS.md, twelfth session). One thread uses at most one core.
    pub threads: Option<usize>,
}

impl RuntimeSettings {
    /// Builds the runtime: `threads`, or `default_threads` when it is unset.
    pub fn build(&self, default_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
        match self.threads.unwrap_or(default_threads) {
            1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        }
    }
}

/// How the scheduler orders waiting jobs (see the README's "Scheduling").
/// Priorities order first; within a pool and a priority, users (and groups)
/// take free slots in proportion to their shares, corrected by recent usage.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulingSettings {
    /// Off: first come, first served within a priority (the order before
    /// fair share existed).
    pub fair_share: bool,
    /// A user's share; users not listed have `default_share`.
    pub user_shares: std::collections::BTreeMap<String, u32>,
    pub default_share: u32,
    /// Groups of users: a group's share is split between its members in
    /// proportion to their own shares; usage and shares are then compared
    /// between groups first, then between the members of a group.
    pub groups: std::collections::BTreeMap<String, GroupSettings>,
    /// Usage (slot-seconds) counts half as much after this long.
    pub usage_half_life_secs: u64,
    /// A job waiting this long is ordered as one priority higher (and so on
    /// for each further period), so that nothing waits forever.
    pub aging_secs: u64,
    /// An assignment a worker has not started within this long goes back to
    /// the queue (the message was lost, or the worker died).
    pub assignment_timeout_ms: u64,
    /// At most this many jobs handed to one worker and not yet started (its
    /// other free slots wait for the next pass). Offers a worker has not
    /// reached are decided already: with every free slot offered at once, a
    /// user who queues behind a backlog waited for all of them (in the bench,
    /// 128 on four 32-slot workers). 0: no limit.
    pub max_unstarted_per_worker: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    pub share: u32,
    pub members: Vec<String>,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        Self {
            fair_share: true,
            user_shares: Default::default(),
            default_share: 1,
            groups: Default::default(),
            usage_half_life_secs: 7 * 24 * 3600,
            aging_secs: 3600,
            assignment_timeout_ms: 5_000,
            max_unstarted_per_worker: 16,
        }
    }
}

impl SchedulingSettings {
    /// The group `user` belongs to, if any (the first that lists them).
    pub fn group_of(&self, user: &str) -> Option<&str> {
        self.groups.iter().find(|(_, g)| g.members.iter().any(|m| m == user)).map(|(n, _)| n.as_str())
    }

    pub fn share_of(&self, user: &str) -> u32 {
        self.user_shares.get(user).copied().unwrap_or(self.default_share).max(1)
    }
}

/// Credentials a job needs, kept out of the log (see `fetchml_events::job::CredentialRules`).
/// The api applies the `refuse_*` rules at submit; the worker resolves the
/// names a job lists in `secrets` from `file` and, if `from_env`, its own
/// environment (the file wins).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretSettings {
    /// `env` names refused at submit: glob patterns, `*` any run of
    /// characters, case-insensitive. An empty list refuses no name.
    pub refuse_env_names: Vec<String>,
    /// `env` values refused at submit when they start with one of these
    /// (values of 16 characters or more without spaces).
    pub refuse_env_value_prefixes: Vec<String>,
    /// Worker: a YAML map `NAME: value` of the secrets this host provides.
    /// Readable by the worker's user only (mode 0600 or stricter), or the
    /// worker refuses to start.
    pub file: Option<PathBuf>,
    /// Worker: also provide secrets from the worker's own environment.
    pub from_env: bool,
}

impl Default for SecretSettings {
    fn default() -> Self {
        let d = fetchml_events::job::CredentialRules::default();
        Self { refuse_env_names: d.names, refuse_env_value_prefixes: d.value_prefixes, file: None, from_env: true }
    }
}

impl SecretSettings {
    /// The submit-time rules.
    pub fn credential_rules(&self) -> fetchml_events::job::CredentialRules {
        fetchml_events::job::CredentialRules {
            names: self.refuse_env_names.clone(),
            value_prefixes: self.refuse_env_value_prefixes.clone(),
        }
    }
}

/// The audit trail's signed checkpoints (see the README, "Audit").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The Ed25519 signing key (its seed as 64 hex digits, written by
    /// `fetchml audit keygen`). Empty: the api writes no checkpoints.
    pub signing_key_file: PathBuf,
    /// The signing key's id; empty: derived from its public key.
    pub key_id: String,
    /// A checkpoint after this many new events...
    pub checkpoint_every_events: u64,
    /// ...or this many seconds after the first uncovered one, whichever first.
    pub checkpoint_every_secs: u64,
    /// Public keys whose checkpoints still verify (rotated-out keys), besides
    /// the current signing key.
    pub trusted_keys: Vec<TrustedKey>,
}

/// A public key trusted for verification.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    pub id: String,
    /// The 32-byte Ed25519 public key as 64 hex digits.
    pub public_key: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            signing_key_file: PathBuf::new(),
            key_id: String::new(),
            checkpoint_every_events: 1000,
            checkpoint_every_secs: 60,
            trusted_keys: Vec::new(),
        }
    }
}

/// Where traces go besides the log (see `crate::telemetry`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP traces URL of an OpenTelemetry collector, e.g.
    /// `http://127.0.0.1:4318/v1/traces`: every span (requests, dispatches,
    /// job attempts) is exported there. Empty (the default): no export, at no
    /// cost. Needs a binary built with the `otlp` cargo feature.
    pub otlp_endpoint: String,
}

/// Limits of `GET /v1/stream` connections.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingSettings {
    /// Messages buffered per connection; a client further behind is cut off (4008).
    pub buffer: usize,
    /// A frame not written within this is a client too slow (4008).
    pub send_timeout_ms: u64,
    pub ping_secs: u64,
    /// No frame from the client for this long closes the connection (4009).
    pub idle_secs: u64,
    pub max_subscriptions: usize,
    /// Largest client message; larger ones get a `message_too_large` error.
    pub max_message_bytes: usize,
    pub max_connections_per_user: usize,
    /// `GET /v1/jobs?as_of_seq=` replays at most this many events.
    pub as_of_max_events: u64,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        Self {
            buffer: 4096,
            send_timeout_ms: 5000,
            ping_secs: 20,
            idle_secs: 60,
            max_subscriptions: 32,
            max_message_bytes: 64 * 1024,
            max_connections_per_user: 16,
            as_of_max_events: 1_000_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Users, roles and API key hashes; re-read on SIGHUP and when it changes.
    pub users_file: PathBuf,
    /// Lifetime of a token from `POST /v1/auth/login`.
    pub session_ttl_secs: u64,
    /// Failed authentications allowed per source address, and per (source
    /// address, user) pair, per minute; past it, credentials not already known
    /// to be good (a cached key, a valid session) get 429 from that address.
    pub max_failures_per_minute: usize,
    /// How long a verified API key is served from memory before argon2 runs again.
    pub key_cache_secs: u64,
    /// Identical refusals (same user, permission, resource, source) within this
    /// window are recorded as one counted `access_denied` event; 0 records each.
    pub refusal_window_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            users_file: PathBuf::from("configs/users.yaml"),
            session_ttl_secs: 3600,
            max_failures_per_minute: 10,
            key_cache_secs: 600,
            refusal_window_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// The pinned nats-server started by `./deploy/up` listens on 4333 (4222 is
    /// often taken by an older system NATS).
    pub url: String,
    /// Prefix of every stream, subject and consumer name.
    pub namespace: String,
    /// How long retried messages are recognised as duplicates.
    pub duplicate_window_secs: u64,
    /// How long PROGRESS keeps logs and metrics.
    pub progress_max_age_secs: u64,
    /// How many bytes PROGRESS keeps at most.
    pub progress_max_bytes: i64,
    /// Replicas per stream (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// How long a worker's registry entry lives without a refresh (workers
    /// refresh every third of it, draining ones included). Applied when the
    /// registry bucket is created.
    pub worker_ttl_secs: u64,
    /// The NKey seed file this process authenticates to NATS with, when the
    /// server runs with authorization (`./deploy/up` generates one per class
    /// of process: api, worker, reader).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed) for a server run in operator
    /// mode; the alternative to `nkey_file` (not both).
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates that signed the server's certificate. Setting it
    /// (or a `tls://` URL) makes TLS required: a server without TLS is refused.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that verifies clients
    /// (`verify: true`); with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's PEM private key (readable by this process's user only).
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Where the HTTP api listens.
    pub listen: String,
    /// Largest request body accepted; a larger `Content-Length` is answered 413
    /// before any of the body is read (and without `100 Continue`).
    pub max_body_bytes: usize,
    /// A request's headers must arrive within this, counted from the
    /// connection's start or from the end of the previous response: it is also
    /// how long an idle keep-alive connection stays open (then it is closed).
    pub header_read_timeout_ms: u64,
    /// A request's body must arrive within this after its headers (else 408
    /// `body_timeout` and the connection is closed).
    pub body_timeout_ms: u64,
    /// Open connections at most (WebSockets included); further ones wait in the
    /// listen backlog until one closes. Keep it below the process's open-file
    /// limit (`ulimit -n`), which NATS and Postgres connections share.
    pub max_connections: usize,
    /// Run a scheduler inside the api process (any number may run; one
    /// leads, see `fetchml-scheduler`).
    pub embedded_scheduler: bool,
    /// Run the projector (event log → Postgres read models) inside the api process.
    pub embedded_projector: bool,
    /// How long a query with `after_seq` waits for the read models.
    pub read_your_writes_ms: u64,
    /// Serve Prometheus metrics at `GET /metrics` on `listen`, without
    /// authentication (aggregate counts only: no job ids, users or paths).
    /// Turn off when the api is reachable beyond the hosts that may see them.
    pub metrics: bool,
    /// Redoc's standalone bundle (npm package `redoc`, pinned in
    /// `web/docs/package.json`; `./deploy/up` and `./deploy/test` install it),
    /// served with the reference page at `GET /docs`. A relative path is taken
    /// from the working directory. Missing: `/docs` answers 404.
    pub docs_bundle: PathBuf,
    /// The built dashboard (`web/app/dist`, made by `npm run build` in
    /// `web/app`; `./deploy/up` and `./deploy/test` build it), served at `/`.
    /// Read once at start; a relative path is taken from the working directory.
    /// Missing: the api starts anyway and `/` answers 404 `dashboard_unavailable`.
    pub ui_dir: PathBuf,
    /// A request must have its answer's head within this, else 504
    /// `request_timeout`. Counted from the request's head, reading the body
    /// included, so it must exceed `body_timeout_ms` (a stalled body is then
    /// told apart: 408 `body_timeout`). Streams (`/v1/stream`,
    /// `/v1/jobs/{id}/logs`) send their head at once and are never cut by it.
    /// A command cut by it may still have been stored: retry it with the same
    /// `Idempotency-Key`.
    pub request_timeout_ms: u64,
    /// Browser origins allowed to call the api (CORS), e.g.
    /// `https://dash.example.org`; `["*"]` allows any. Empty (the default):
    /// CORS is off and preflight requests are answered 405.
    pub cors_allowed_origins: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// The pool this worker serves.
    pub pool: String,
    /// Labels this worker offers (e.g. `gpu`).
    pub labels: Vec<String>,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Jobs run inside this directory (created if missing).
    pub job_root: PathBuf,
    /// Lease length: a worker that stops renewing for this long loses its job.
    pub lease_secs: u64,
    /// Between SIGTERM and SIGKILL when a job is cancelled or times out.
    pub kill_grace_secs: u64,
    /// On shutdown, how long running jobs may finish before they are handed back.
    pub drain_secs: u64,
    /// Where this worker serves Prometheus metrics (`GET /metrics`, no
    /// authentication), e.g. `127.0.0.1:9102`; `None` (the default) serves
    /// none: several workers on one host would otherwise fight over one port.
    pub metrics_listen: Option<String>,
    /// GPU device ids this worker gives jobs, e.g. `["0", "1"]` or UUIDs.
    /// `None` (the default): those `nvidia-smi` lists, or none without it.
    pub gpus: Option<Vec<String>>,
    /// CPUs and memory (MB) jobs may reserve here; `None`: the host's.
    pub cpus: Option<u32>,
    pub memory_mb: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresSettings {
    /// Read models live here: the projectors write them, and the api's
    /// queries read them unless `read_url` is set. TLS is set in the URL, as
    /// libpq spells it: `?sslmode=verify-full&sslrootcert=/etc/fetchml/pg-ca.pem`
    /// (and `sslcert=`/`sslkey=` for a client certificate). Without `sslmode`
    /// TLS is used when the server offers it, unverified (`prefer`).
    pub url: String,
    /// A read-only connection string for the api's queries (a streaming
    /// replica, or a pooler in front of replicas); empty: queries use `url`.
    /// Projectors and migrations always use `url`. A query that needs a write
    /// newer than the replica has (`after_seq`) waits for the replica's
    /// checkpoint to reach it, as it waits for the projector.
    pub read_url: String,
    /// How long a read waits for a pooled connection before it answers 503.
    /// While Postgres is known to be down, reads answer 503 at once instead.
    pub acquire_timeout_ms: u64,
    /// The projector applies the log in batches: the events that arrive
    /// within this long of a batch's first one, up to
    /// `projector_batch_max`. A longer wait makes fewer, larger statements
    /// (less CPU per event in Postgres and the projector at a steady load),
    /// and read models that lag the log by up to that much more. Default 25.
    pub projector_batch_wait_ms: u64,
    pub projector_batch_max: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        let s = StreamSettings::default();
        Self {
            url: "nats://127.0.0.1:4333".into(),
            namespace: "fetchml".into(),
            duplicate_window_secs: s.duplicate_window.as_secs(),
            progress_max_age_secs: s.progress_max_age.as_secs(),
            progress_max_bytes: s.progress_max_bytes,
            replicas: s.replicas,
            worker_ttl_secs: fetchml_eventstore::DEFAULT_WORKER_TTL.as_secs(),
            nkey_file: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9101".into(),
            max_body_bytes: 1 << 20,
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 512,
            embedded_scheduler: true,
            embedded_projector: true,
            read_your_writes_ms: 5000,
            metrics: true,
            docs_bundle: PathBuf::from("web/docs/node_modules/redoc/bundles/redoc.standalone.js"),
            ui_dir: PathBuf::from("web/app/dist"),
            request_timeout_ms: 60_000,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            pool: "default".into(),
            labels: Vec::new(),
            concurrency: 1,
            job_root: PathBuf::from(".fetchml/jobs"),
            lease_secs: 30,
            kill_grace_secs: 10,
            drain_secs: 30,
            metrics_listen: None,
            gpus: None,
            cpus: None,
            memory_mb: None,
        }
    }
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/fetchml".into(),
            read_url: String::new(),
            acquire_timeout_ms: 2000,
            projector_batch_wait_ms: 25,
            projector_batch_max: 1000,
        }
    }
}

impl Settings {
    /// Defaults, then `path` (if given), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, SettingsError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(path, &vars)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_from(path: Option<&Path>, env: &[(String, String)]) -> Result<Self, SettingsError> {
        let mut tree = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| SettingsError::Read { path: p.to_owned(), source })?;
                serde_yaml_ng::from_str::<Value>(&text)
                    .map_err(|source| SettingsError::Parse { path: p.display().to_string(), source })?
            }
            None => Value::Mapping(Mapping::new()),
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix("FETCHML_") else { continue };
            if !rest.contains("__") {
                continue; // FETCHML_HOME and friends belong to the scripts.
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let value: Value = serde_yaml_ng::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()));
            set_path(&mut tree, &path, value).map_err(|message| SettingsError::Env { var: var.clone(), message })?;
        }
        let settings: Settings = serde_yaml_ng::from_value(tree).map_err(|source| SettingsError::Parse {
            path: path.map(|p| p.display().to_string()).unwrap_or_else(|| "<environment>".into()),
            source,
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: names, addresses, ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, message: String| SettingsError::Invalid { field, message };
        Namespace::parse(&self.nats.namespace).map_err(|e| invalid("nats.namespace", e.to_string()))?;
        if !self.nats.url.starts_with("nats://") && !self.nats.url.starts_with("tls://") {
            return Err(invalid("nats.url", format!("{:?} must start with nats:// or tls://", self.nats.url)));
        }
        if self.nats.tls_cert_file.is_some() != self.nats.tls_key_file.is_some() {
            return Err(invalid("nats.tls_cert_file", "tls_cert_file and tls_key_file go together".into()));
        }
        if self.nats.nkey_file.is_some() && self.nats.credentials_file.is_some() {
            return Err(invalid("nats.credentials_file", "set nkey_file or credentials_file, not both".into()));
        }
        for (field, url) in [("postgres.url", &self.postgres.url), ("postgres.read_url", &self.postgres.read_url)] {
            if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                // Only the scheme: the rest may hold a password, never echoed.
                return Err(invalid(field, "must start with postgres:// or postgresql://".into()));
            }
        }
        self.api_listen()?;
        self.worker_metrics_listen()?;
        PoolName::parse(&self.worker.pool).map_err(|e| invalid("worker.pool", e.to_string()))?;
        if self.worker.concurrency == 0 || self.worker.concurrency > 1024 {
            return Err(invalid("worker.concurrency", "must be 1-1024".into()));
        }
        if self.postgres.acquire_timeout_ms == 0 {
            return Err(invalid("postgres.acquire_timeout_ms", "must be at least 1".into()));
        }
        if self.postgres.projector_batch_wait_ms > 10_000 {
            return Err(invalid("postgres.projector_batch_wait_ms", "must be at most 10000".into()));
        }
        if self.postgres.projector_batch_max == 0 || self.postgres.projector_batch_max > 100_000 {
            return Err(invalid("postgres.projector_batch_max", "must be 1-100000".into()));
        }
        if self.auth.session_ttl_secs < 60 {
            return Err(invalid("auth.session_ttl_secs", "must be at least 60".into()));
        }
        if self.worker.lease_secs < 3 {
            return Err(invalid("worker.lease_secs", "must be at least 3".into()));
        }
        if self.api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024".into()));
        }
        if self.api.header_read_timeout_ms == 0 {
            return Err(invalid("api.header_read_timeout_ms", "must be at least 1".into()));
        }
        if self.api.body_timeout_ms == 0 {
            return Err(invalid("api.body_timeout_ms", "must be at least 1".into()));
        }
        if self.api.request_timeout_ms <= self.api.body_timeout_ms {
            return Err(invalid(
                "api.request_timeout_ms",
                format!(
                    "must be larger than api.body_timeout_ms ({}), so that a stalled body gets 408 body_timeout",
                    self.api.body_timeout_ms
                ),
            ));
        }
        check_origins(&self.api.cors_allowed_origins).map_err(|m| invalid("api.cors_allowed_origins", m))?;
        if self.api.max_connections == 0 {
            return Err(invalid("api.max_connections", "must be at least 1".into()));
        }
        if self.nats.replicas == 0 || self.nats.replicas > 5 {
            return Err(invalid("nats.replicas", "must be 1-5".into()));
        }
        let sched = &self.scheduling;
        if sched.usage_half_life_secs == 0 || sched.aging_secs == 0 || sched.assignment_timeout_ms == 0 {
            return Err(invalid(
                "scheduling",
                "usage_half_life_secs, aging_secs and assignment_timeout_ms must be above 0".into(),
            ));
        }
        // An offer held longer than an hour is a slot lost for that long; far
        // larger values overflow the scheduler's clock arithmetic.
        if sched.assignment_timeout_ms > 3_600_000 {
            return Err(invalid("scheduling.assignment_timeout_ms", "must be at most 3600000 (an hour)".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, g) in &sched.groups {
            if g.share == 0 {
                return Err(invalid("scheduling.groups", format!("group {name:?}: share must be at least 1")));
            }
            for m in &g.members {
                if !seen.insert(m.as_str()) {
                    return Err(invalid("scheduling.groups", format!("user {m:?} is in more than one group")));
                }
            }
        }
        let otlp = &self.telemetry.otlp_endpoint;
        if !otlp.is_empty() && !otlp.starts_with("http://") && !otlp.starts_with("https://") {
            return Err(invalid("telemetry.otlp_endpoint", format!("{otlp:?} must start with http:// or https://")));
        }
        if self.audit.checkpoint_every_events == 0 {
            return Err(invalid("audit.checkpoint_every_events", "must be at least 1".into()));
        }
        if self.audit.checkpoint_every_secs == 0 {
            return Err(invalid("audit.checkpoint_every_secs", "must be at least 1".into()));
        }
        for k in &self.audit.trusted_keys {
            if k.id.is_empty() || k.public_key.len() != 64 || !k.public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "audit.trusted_keys",
                    format!("{:?}: needs an id and a public_key of 64 hex digits", k.id),
                ));
            }
        }
        if !(3..=3600).contains(&self.nats.worker_ttl_secs) {
            return Err(invalid("nats.worker_ttl_secs", "must be 3-3600".into()));
        }
        Ok(())
    }

    pub fn api_listen(&self) -> Result<SocketAddr, SettingsError> {
        self.api.listen.parse().map_err(|e| SettingsError::Invalid {
            field: "api.listen",
            message: format!("{:?} is not host:port: {e}", self.api.listen),
        })
    }

    /// The worker's metrics address, if it serves metrics.
    pub fn worker_metrics_listen(&self) -> Result<Option<SocketAddr>, SettingsError> {
        let Some(raw) = &self.worker.metrics_listen else { return Ok(None) };
        raw.parse().map(Some).map_err(|e| SettingsError::Invalid {
            field: "worker.metrics_listen",
            message: format!("{raw:?} is not host:port: {e}"),
        })
    }

    pub fn namespace(&self) -> Namespace {
        // validate() has checked it; fall back to the default rather than panic.
        Namespace::parse(&self.nats.namespace)
            .unwrap_or_else(|_| Namespace::parse("fetchml").unwrap_or_else(|_| unreachable!()))
    }

    /// How the projector batches the log (`postgres.projector_batch_*`).
    pub fn projector_batching(&self) -> (usize, Duration) {
        (self.postgres.projector_batch_max, Duration::from_millis(self.postgres.projector_batch_wait_ms))
    }

    /// How long a worker's registry entry lives without a refresh.
    pub fn worker_ttl(&self) -> Duration {
        Duration::from_secs(self.nats.worker_ttl_secs)
    }

    /// How this process authenticates to NATS and checks its TLS.
    pub fn nats_security(&self) -> fetchml_eventstore::ConnectSecurity {
        let n = &self.nats;
        fetchml_eventstore::ConnectSecurity {
            nkey_file: n.nkey_file.clone(),
            credentials_file: n.credentials_file.clone(),
            tls_ca_file: n.tls_ca_file.clone(),
            tls_client_cert: n.tls_cert_file.clone().zip(n.tls_key_file.clone()),
            require_tls: n.url.starts_with("tls://"),
        }
    }

    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            duplicate_window: Duration::from_secs(self.nats.duplicate_window_secs),
            progress_max_age: Duration::from_secs(self.nats.progress_max_age_secs),
            progress_max_bytes: self.nats.progress_max_bytes,
            replicas: self.nats.replicas,
            ..StreamSettings::default()
        }
    }
}

/// Each origin is `*` (alone) or `scheme://host[:port]` as a browser sends it
/// in `Origin`: no path, no trailing slash (it would never match).
fn check_origins(origins: &[String]) -> Result<(), String> {
    if origins.iter().any(|o| o == "*") {
        return if origins.len() == 1 { Ok(()) } else { Err("\"*\" must be the only entry".into()) };
    }
    for o in origins {
        let Some((scheme, host)) = o.split_once("://") else {
            return Err(format!("{o:?} is not scheme://host[:port]"));
        };
        let host_ok = !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !matches!(scheme, "http" | "https") || !host_ok {
            return Err(format!("{o:?} is not http(s)://host[:port] (no path, no trailing slash)"));
        }
    }
    Ok(())
}

fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else { return Err("empty key".into()) };
    let Value::Mapping(map) = tree else { return Err(format!("{first} is not a section")) };
    let key = Value::String(first.clone());
    if rest.is_empty() {
        map.insert(key, value);
        return Ok(());
    }
    let child = map.entry(key).or_insert_with(|| Value::Mapping(Mapping::new()));
    // A section whose keys are all commented out (`runtime:` in the shipped
    // configs) reads as null: it is an empty section, not a value.
    if child.is_null() {
        *child = Value::Mapping(Mapping::new());
    }
    set_path(child, rest, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("fetchml-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.yaml");
        std::fs::write(&file, "nats:\n  url: nats://127.0.0.1:1\nworker:\n  concurrency: 2\n").unwrap();
        let s = Settings::load_from(
            Some(&file),
            &env(&[("FETCHML_NATS__URL", "nats://127.0.0.1:2"), ("FETCHML_HOME", "/x")]),
        )
        .unwrap();
        assert_eq!(s.nats.url, "nats://127.0.0.1:2");
        assert_eq!(s.worker.concurrency, 2);
        assert_eq!(s.api.listen, "127.0.0.1:9101");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_shipped_configs_load() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for name in ["server.yaml", "worker.yaml"] {
            if let Err(e) = Settings::load_from(Some(&configs.join(name)), &[]) {
                panic!("configs/{name}: {e}");
            }
            // Environment variables reach a section the file leaves empty.
            let s = Settings::load_from(Some(&configs.join(name)), &env(&[("FETCHML_RUNTIME__THREADS", "4")]));
            assert_eq!(s.map(|s| s.runtime.threads).map_err(|e| e.to_string()), Ok(Some(4)), "configs/{name}");
        }
    }

    #[test]
    fn runtime_threads_default_per_process_and_can_be_set() {
        use tokio::runtime::RuntimeFlavor;
        let unset = Settings::load_from(None, &[]).unwrap().runtime;
        assert_eq!(unset.threads, None);
        assert_eq!(unset.build(1).unwrap().handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(unset.build(0).unwrap().handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        let one = Settings::load_from(None, &env(&[("FETCHML_RUNTIME__THREADS", "1")])).unwrap().runtime;
        assert_eq!(one.build(0).unwrap().handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let three = Settings::load_from(None, &env(&[("FETCHML_RUNTIME__THREADS", "3")])).unwrap().runtime;
        let rt = three.build(1).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 3);
        assert!(Settings::load_from(None, &env(&[("FETCHML_RUNTIME__THREADS", "many")])).is_err());
    }

    #[test]
    fn tls_settings_reach_the_nats_connection() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("FETCHML_NATS__URL", "tls://nats1.example.org:4222"),
                ("FETCHML_NATS__TLS_CA_FILE", "/etc/fetchml/ca.pem"),
                ("FETCHML_NATS__TLS_CERT_FILE", "/etc/fetchml/w.pem"),
                ("FETCHML_NATS__TLS_KEY_FILE", "/etc/fetchml/w-key.pem"),
            ]),
        )
        .unwrap();
        let sec = s.nats_security();
        assert!(sec.require_tls);
        assert_eq!(sec.tls_ca_file.as_deref(), Some(Path::new("/etc/fetchml/ca.pem")));
        assert_eq!(
            sec.tls_client_cert,
            Some((PathBuf::from("/etc/fetchml/w.pem"), PathBuf::from("/etc/fetchml/w-key.pem")))
        );
        assert_eq!(s.postgres.read_url, "", "no replica unless one is named");
        let plain = Settings::load_from(None, &env(&[("FETCHML_NATS__URL", "nats://127.0.0.1:4222")])).unwrap();
        assert!(!plain.nats_security().require_tls);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_precisely() {
        let e = Settings::load_from(None, &env(&[("FETCHML_NATS__URLL", "x")])).unwrap_err();
        assert!(e.to_string().contains("urll"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_NATS__NAMESPACE", "a.b")])).unwrap_err();
        assert!(e.to_string().contains("nats.namespace"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_WORKER__CONCURRENCY", "0")])).unwrap_err();
        assert!(e.to_string().contains("worker.concurrency"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_NATS__WORKER_TTL_SECS", "2")])).unwrap_err();
        assert!(e.to_string().contains("nats.worker_ttl_secs"), "{e}");
        let huge = env(&[("FETCHML_SCHEDULING__ASSIGNMENT_TIMEOUT_MS", "9223372036854775808")]);
        let e = Settings::load_from(None, &huge).unwrap_err();
        assert!(e.to_string().contains("scheduling.assignment_timeout_ms"), "{e}");
        for bad in ["[\"https://a.example/\"]", "[\"a.example\"]", "[\"*\", \"https://a.example\"]"] {
            let e = Settings::load_from(None, &env(&[("FETCHML_API__CORS_ALLOWED_ORIGINS", bad)])).unwrap_err();
            assert!(e.to_string().contains("api.cors_allowed_origins"), "{bad}: {e}");
        }
        let e = Settings::load_from(None, &env(&[("FETCHML_API__REQUEST_TIMEOUT_MS", "30000")])).unwrap_err();
        assert!(e.to_string().contains("api.request_timeout_ms"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_NATS__TLS_CERT_FILE", "/c.pem")])).unwrap_err();
        assert!(e.to_string().contains("nats.tls_cert_file"), "{e}");
        let both = env(&[("FETCHML_NATS__NKEY_FILE", "/a.nk"), ("FETCHML_NATS__CREDENTIALS_FILE", "/a.creds")]);
        let e = Settings::load_from(None, &both).unwrap_err();
        assert!(e.to_string().contains("nats.credentials_file"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_POSTGRES__READ_URL", "mysql://u:pw@h/db")])).unwrap_err();
        assert!(e.to_string().contains("postgres.read_url") && !e.to_string().contains("pw"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_POSTGRES__PROJECTOR_BATCH_MAX", "0")])).unwrap_err();
        assert!(e.to_string().contains("postgres.projector_batch_max"), "{e}");
        let e = Settings::load_from(None, &env(&[("FETCHML_POSTGRES__PROJECTOR_BATCH_WAIT_MS", "60000")])).unwrap_err();
        assert!(e.to_string().contains("postgres.projector_batch_wait_ms"), "{e}");
        assert_eq!(Settings::load_from(None, &[]).unwrap().projector_batching(), (1000, Duration::from_millis(25)));
        let batching = env(&[
            ("FETCHML_POSTGRES__PROJECTOR_BATCH_WAIT_MS", "40"),
            ("FETCHML_POSTGRES__PROJECTOR_BATCH_MAX", "200"),
        ]);
        assert_eq!(
            Settings::load_from(None, &batching).unwrap().projector_batching(),
            (200, Duration::from_millis(40))
        );
        let ok =
            Settings::load_from(None, &env(&[("FETCHML_API__CORS_ALLOWED_ORIGINS", "[\"http://127.0.0.1:3000\"]")]));
        assert_eq!(ok.unwrap().api.cors_allowed_origins, ["http://127.0.0.1:3000"]);
    }
}
