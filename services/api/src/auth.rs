//! Authentication and authorization at the HTTP edge.
//!
//! Credentials: `Authorization: Bearer <api key or session token>` (one header;
//! two are refused as `ambiguous_credentials`, rather than guessing which counts).
//! - An API key (`fml_<id>_<secret>`) is verified with argon2id once, then served
//!   from an in-memory cache (keyed by its SHA-256) for `auth.key_cache_secs`; a
//!   reload of the users file clears the cache, so a removed key stops working
//!   within seconds.
//! - A session token (`fms_<secret>`, from `POST /v1/auth/login`) is looked up by
//!   its SHA-256 in the `<ns>_sessions` key-value bucket, whose entries expire.
//!   It records the key it was made with: once that key or its user is gone from
//!   the users file, the session is refused. `POST /v1/auth/logout` deletes it.
//! - An open stream (`GET /v1/stream`) watches its credential
//!   ([`Auth::revoked`]): a logout, a reload that removes the key or the user
//!   or changes the user's role or groups, or the session's expiry closes it
//!   with 4001.
//!
//! Throttling (failures, never successes). Failed attempts are counted per
//! source address, and per (source address, user named by the key id); either
//! past `auth.max_failures_per_minute` in the last minute answers 429 with
//! Retry-After, but only to credentials that would need verifying: a key
//! already verified and cached, or a valid session token, is known-good and is
//! served from a throttled address as ever (one bad script behind a lab's NAT
//! does not lock out the lab). A credential that is not known-good is refused
//! with 429 before any argon2 runs, so a throttled address costs nothing.
//! Wrong secrets naming a user's key id count against the (source, user) pair,
//! not the user: they cannot lock the user out from elsewhere (the secrets are
//! 256 bits, so a per-user cap adds no guessing resistance, only a lever).
//!
//! Every login, logout, first use of a key, failed attempt and denied request
//! is appended to the event log (User aggregate); repeated identical refusals
//! are folded into counted events (see [`crate::refusals`]). Appends to one
//! user's chain are made one at a time, so a burst cannot lose records to
//! sequence conflicts. An unknown key id is checked against a dummy hash, so it
//! costs what a known one costs.

use crate::AppState;
use crate::error::ApiError;
use crate::policy::Denied;
use crate::refusals::{Noted, RefusalKind, Refusals};
use async_nats::jetstream::kv;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use fetchml_events::user::{UNKNOWN_USER, UserEvent};
use fetchml_events::{Actor, UserName};
use fetchml_eventstore::{CommandContext, EventStore, StoreError};
use fetchml_identity::{Directory, ParsedKey, Principal, Throttle, dummy_hash, sha256_hex, verify_secret};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How a caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    /// An API key, by its (public) key id.
    Key { key_id: String },
    /// A session token, by the SHA-256 it is stored under.
    Session {
        digest: String,
        /// The key the session was made with (`None` for sessions stored by
        /// an older api, which are checked by user only).
        key_id: Option<String>,
        expires_at: DateTime<Utc>,
    },
}

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub source: String,
    pub credential: Credential,
}

impl Caller {
    pub fn name(&self) -> &UserName {
        &self.principal.name
    }

    pub fn may(&self, permission: &str) -> bool {
        self.principal.may(permission)
    }
}

#[derive(Serialize, Deserialize)]
struct Session {
    user: UserName,
    expires_at: DateTime<Utc>,
    /// Absent in sessions stored before keys were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
}

struct CachedKey {
    user: UserName,
    key_id: String,
    until: Instant,
}

/// Everything authentication needs, shared by all requests.
pub struct Auth {
    directory: RwLock<Arc<Directory>>,
    users_file: PathBuf,
    loaded_mtime: Mutex<Option<SystemTime>>,
    cache: Mutex<HashMap<String, CachedKey>>,
    cache_ttl: Duration,
    sessions: kv::Store,
    session_ttl: Duration,
    throttle: Throttle,
    dummy: String,
    audit: Auditor,
    /// Bounds concurrent argon2 verifications (19 MiB and a core each): a burst
    /// of first requests must not allocate gigabytes or starve the api.
    verify_gate: tokio::sync::Semaphore,
    /// Bumped by every reload and logout: open streams re-check their credential.
    revocations: tokio::sync::watch::Sender<u64>,
    refusals: Arc<Refusals>,
}

/// Why a credential is not (or no longer) good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revoked {
    UserGone,
    KeyGone,
}

impl Revoked {
    fn reason(self) -> &'static str {
        match self {
            Revoked::UserGone => "user no longer configured",
            Revoked::KeyGone => "key no longer configured",
        }
    }
}

impl Auth {
    pub async fn new(
        store: EventStore,
        settings: &fetchml_runtime::settings::AuthSettings,
    ) -> Result<Self, AuthSetupError> {
        let directory = Directory::load(&settings.users_file)?;
        let mtime = std::fs::metadata(&settings.users_file).and_then(|m| m.modified()).ok();
        let bucket = store.subjects().sessions_bucket();
        let js = store.jetstream();
        let session_ttl = Duration::from_secs(settings.session_ttl_secs);
        let sessions = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "fetchml session tokens (SHA-256 of the token)".into(),
                    history: 1,
                    max_age: session_ttl,
                    num_replicas: fetchml_eventstore::log_replicas(js, store.subjects()).await,
                    ..Default::default()
                })
                .await
                .map_err(|e| AuthSetupError::Sessions(e.to_string()))?,
        };
        let dummy = tokio::task::spawn_blocking(dummy_hash).await.unwrap_or_default();
        Ok(Self {
            directory: RwLock::new(Arc::new(directory)),
            users_file: settings.users_file.clone(),
            loaded_mtime: Mutex::new(mtime),
            cache: Mutex::new(HashMap::new()),
            cache_ttl: Duration::from_secs(settings.key_cache_secs),
            sessions,
            session_ttl,
            throttle: Throttle::new(settings.max_failures_per_minute, Duration::from_secs(60)),
            dummy,
            audit: Auditor { store, chains: Arc::default() },
            verify_gate: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4),
            ),
            revocations: tokio::sync::watch::Sender::new(0),
            refusals: Arc::new(Refusals::new(Duration::from_secs(settings.refusal_window_secs))),
        })
    }

    /// The users, roles and keys in force (for the policy's group checks).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the users file. A broken file is reported and the previous
    /// directory kept. Open streams re-check their credentials.
    pub fn reload(&self) -> bool {
        match Directory::load(&self.users_file) {
            Ok(d) => {
                *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner()) =
                    std::fs::metadata(&self.users_file).and_then(|m| m.modified()).ok();
                self.revocations.send_modify(|g| *g += 1);
                tracing::info!(file = %self.users_file.display(), "users reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "users file not reloaded; keeping the previous one");
                false
            }
        }
    }

    /// Reloads when the file's modification time changed.
    pub fn reload_if_changed(&self) {
        let now = std::fs::metadata(&self.users_file).and_then(|m| m.modified()).ok();
        let before = *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && now != before {
            self.reload();
        }
    }

    fn audit(&self, who: &str, event: UserEvent, actor: Actor) {
        self.audit.append(who.to_owned(), event, actor);
    }

    fn system() -> Actor {
        Actor::System { component: "api-auth".into() }
    }

    fn source_key(source: &str) -> String {
        format!("src:{source}")
    }

    /// The (source, user) pair; NUL cannot occur in either.
    fn pair_key(source: &str, user: &UserName) -> String {
        format!("pair:{source}\0{user}")
    }

    fn fail(&self, user: Option<&UserName>, method: &str, source: &str, reason: &str) -> ApiError {
        let now = Instant::now();
        self.throttle.record_failure(&Self::source_key(source), now);
        if let Some(u) = user {
            self.throttle.record_failure(&Self::pair_key(source, u), now);
        }
        let who = user.map(|u| u.as_str().to_owned()).unwrap_or_else(|| UNKNOWN_USER.to_owned());
        let event =
            UserEvent::AuthenticationFailed { method: method.into(), source: source.into(), reason: reason.into() };
        self.audit(&who, event, Self::system());
        metrics::counter!(fetchml_runtime::metrics::AUTH_FAILURES).increment(1);
        ApiError::Unauthenticated("invalid credentials")
    }

    fn throttled(&self, key: &str) -> Result<(), ApiError> {
        self.throttle.check(key, Instant::now()).map_err(|wait| {
            metrics::counter!(fetchml_runtime::metrics::AUTH_THROTTLED).increment(1);
            ApiError::Throttled(wait)
        })
    }

    /// A key verified before (and neither expired from the cache nor revoked
    /// since): known-good, served without argon2 and never throttled.
    fn cached(&self, dir: &Directory, digest: &str) -> Option<(Principal, String)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(digest)?;
        if c.until > Instant::now() && dir.key(&c.key_id).is_some_and(|(u, _)| *u == c.user) {
            dir.user(&c.user).cloned().map(|p| (p, c.key_id.clone()))
        } else {
            None
        }
    }

    /// A cached key, as [`Auth::cached`]; a login with it is still recorded.
    fn known_good(&self, dir: &Directory, digest: &str, method: &str, source: &str) -> Option<(Principal, String)> {
        let hit = self.cached(dir, digest)?;
        if method == "login" {
            self.authenticated(&hit.0, method, source);
        }
        Some(hit)
    }

    /// Records a successful authentication (a login, or a key's first use).
    fn authenticated(&self, p: &Principal, method: &str, source: &str) {
        let event = UserEvent::UserAuthenticated { method: method.into(), source: source.into() };
        self.audit(p.name.as_str(), event, Actor::User { name: p.name.clone() });
    }

    /// Verifies an API key (argon2 on a blocking thread, unless cached);
    /// returns the principal and the key id.
    async fn verify_key(&self, key: &str, source: &str, method: &str) -> Result<(Principal, String), ApiError> {
        let dir = self.directory();
        let digest = sha256_hex(key);
        if let Some(hit) = self.known_good(&dir, &digest, method, source) {
            return Ok(hit);
        }
        // Not known-good: this attempt may fail, so the throttle applies.
        self.throttled(&Self::source_key(source))?;
        // One verification per core at a time; whoever waited re-checks the
        // cache, so a burst of requests with one new key costs one argon2 run.
        let _permit = self.verify_gate.acquire().await.map_err(|e| ApiError::Internal(e.into()))?;
        if let Some(hit) = self.known_good(&dir, &digest, method, source) {
            return Ok(hit);
        }
        let Some(parsed) = ParsedKey::parse(key) else {
            return Err(self.fail(None, method, source, "malformed key"));
        };
        let (user, hash) = match dir.key(parsed.key_id) {
            Some((u, h)) => (Some(u.clone()), h.to_owned()),
            None => (None, self.dummy.clone()),
        };
        if let Some(u) = &user {
            self.throttled(&Self::pair_key(source, u))?;
        }
        let secret = parsed.secret.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_secret(&hash, &secret)).await.unwrap_or(false);
        let principal = match (ok, &user) {
            (true, Some(u)) => dir.user(u).cloned(),
            _ => None,
        };
        let Some(principal) = principal else {
            return Err(self.fail(
                user.as_ref(),
                method,
                source,
                if user.is_some() { "wrong secret" } else { "unknown key id" },
            ));
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            digest,
            CachedKey {
                user: principal.name.clone(),
                key_id: parsed.key_id.to_owned(),
                until: Instant::now() + self.cache_ttl,
            },
        );
        self.authenticated(&principal, method, source);
        Ok((principal, parsed.key_id.to_owned()))
    }

    /// Whether a session's key and user still stand in `dir`.
    fn session_holds(dir: &Directory, user: &UserName, key_id: Option<&str>) -> Result<Principal, Revoked> {
        let p = dir.user(user).ok_or(Revoked::UserGone)?;
        if let Some(k) = key_id
            && dir.key(k).is_none_or(|(u, _)| u != user)
        {
            return Err(Revoked::KeyGone);
        }
        Ok(p.clone())
    }

    async fn verify_session(&self, token: &str, source: &str) -> Result<(Principal, Credential), ApiError> {
        let digest = sha256_hex(token);
        let entry =
            self.sessions.get(&digest).await.map_err(|e| ApiError::Unavailable(StoreError::unavailable_from(e)))?;
        let session = entry.and_then(|b| serde_json::from_slice::<Session>(&b).ok());
        let (user, reason) = match session {
            Some(s) if s.expires_at > Utc::now() => {
                match Self::session_holds(&self.directory(), &s.user, s.key_id.as_deref()) {
                    Ok(p) => {
                        let credential = Credential::Session { digest, key_id: s.key_id, expires_at: s.expires_at };
                        return Ok((p, credential));
                    }
                    Err(r) => (Some(s.user), r.reason()),
                }
            }
            _ => (None, "unknown or expired session"),
        };
        // Not a good credential: from a throttled address, 429 (not recorded
        // again: the throttle already says this address keeps failing).
        self.throttled(&Self::source_key(source))?;
        Err(self.fail(user.as_ref(), "session", source, reason))
    }

    /// Authenticates the bearer credential of a request.
    pub async fn authenticate(&self, bearer: Option<&str>, source: &str) -> Result<(Principal, Credential), ApiError> {
        let Some(token) = bearer else {
            return Err(ApiError::Unauthenticated(
                "missing credentials: send Authorization: Bearer <api key or token>",
            ));
        };
        if token.starts_with("fms_") {
            self.verify_session(token, source).await
        } else {
            let (p, key_id) = self.verify_key(token, source, "api_key").await?;
            Ok((p, Credential::Key { key_id }))
        }
    }

    /// `POST /v1/auth/login`: trades an API key for a session token.
    pub async fn login(&self, key: &str, source: &str) -> Result<(String, DateTime<Utc>, Principal), ApiError> {
        let (principal, key_id) = self.verify_key(key, source, "login").await?;
        let token = fetchml_identity::new_session_token();
        let expires_at = Utc::now() + chrono::Duration::from_std(self.session_ttl).unwrap_or_default();
        let body = serde_json::to_vec(&Session { user: principal.name.clone(), expires_at, key_id: Some(key_id) })
            .map_err(|e| ApiError::Internal(e.into()))?;
        self.sessions
            .put(sha256_hex(&token), body.into())
            .await
            .map_err(|e| ApiError::Unavailable(StoreError::unavailable_from(e)))?;
        Ok((token, expires_at, principal))
    }

    /// `POST /v1/auth/logout`: deletes the caller's session, so the token
    /// answers 401 from now on and the sockets opened with it close (4001).
    pub async fn logout(&self, caller: &Caller) -> Result<(), ApiError> {
        let Credential::Session { digest, .. } = &caller.credential else {
            return Err(ApiError::bad_request(
                "not_a_session",
                "logout ends a session token from POST /v1/auth/login; an API key is revoked by removing it from the users file",
            ));
        };
        self.sessions.delete(digest).await.map_err(|e| ApiError::Unavailable(StoreError::unavailable_from(e)))?;
        self.revocations.send_modify(|g| *g += 1);
        self.audit(
            caller.name().as_str(),
            UserEvent::UserLoggedOut { source: caller.source.clone() },
            Actor::User { name: caller.name().clone() },
        );
        Ok(())
    }

    /// Whether `caller`'s credential still stands as it did when it was
    /// checked: same user with the same role and groups, key still configured,
    /// session still stored. A store that cannot answer is not a revocation.
    async fn still_good(&self, caller: &Caller) -> bool {
        let dir = self.directory();
        if dir.user(caller.name()) != Some(&caller.principal) {
            return false;
        }
        match &caller.credential {
            Credential::Key { key_id } => dir.key(key_id).is_some_and(|(u, _)| u == caller.name()),
            Credential::Session { digest, key_id, .. } => {
                if Self::session_holds(&dir, caller.name(), key_id.as_deref()).is_err() {
                    return false;
                }
                !matches!(self.sessions.get(digest).await, Ok(None))
            }
        }
    }

    /// Resolves once `caller`'s credential is revoked (logout, or a reload that
    /// removes the key or the user or changes the user's rights) or its
    /// session expires. Open streams select on it.
    pub async fn revoked(&self, caller: &Caller) {
        // Subscribe before the first check, so no change is missed in between.
        let mut changes = self.revocations.subscribe();
        let expiry = match &caller.credential {
            Credential::Session { expires_at, .. } => Some((*expires_at - Utc::now()).to_std().unwrap_or_default()),
            Credential::Key { .. } => None,
        };
        let expired = async move {
            match expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            if !self.still_good(caller).await {
                return;
            }
            tokio::select! {
                _ = &mut expired => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The sender lives as long as `self`: cannot happen.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Records a refused request and returns the error to answer with. The
    /// first refusal of a kind is recorded at once; identical ones within the
    /// refusal window are counted into one later event (see [`crate::refusals`]).
    pub fn deny(&self, caller: &Caller, permission: &str, resource: &str, answer: ApiError) -> ApiError {
        let kind = RefusalKind {
            actor: caller.name().to_string(),
            permission: permission.into(),
            resource: resource.into(),
            source: caller.source.clone(),
        };
        if let Noted::First(kind) = self.refusals.note(kind) {
            let denied = |k: &RefusalKind, count: u64| UserEvent::AccessDenied {
                permission: k.permission.clone(),
                resource: k.resource.clone(),
                source: k.source.clone(),
                count,
            };
            let actor = Actor::User { name: caller.name().clone() };
            self.audit(&kind.actor, denied(&kind, 1), actor.clone());
            let window = self.refusals.window();
            if !window.is_zero() {
                let (refusals, audit) = (self.refusals.clone(), self.audit.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    let folded = refusals.close(&kind);
                    if folded > 0 {
                        audit.store(kind.actor.clone(), denied(&kind, folded), actor).await;
                    }
                });
            }
        }
        answer
    }

    /// Records the refusals still folded in open windows, now (the api is
    /// stopping: a window's own timer would not run to its end).
    pub async fn close_refusal_windows(&self) {
        for (kind, count) in self.refusals.close_all() {
            let Ok(name) = UserName::parse(&kind.actor) else { continue };
            let event = UserEvent::AccessDenied {
                permission: kind.permission,
                resource: kind.resource,
                source: kind.source,
                count,
            };
            self.audit.store(kind.actor, event, Actor::User { name }).await;
        }
    }

    /// Answers a policy decision: `Ok` as is; a refusal is recorded (as by
    /// [`Auth::deny`]) and turned into its HTTP error.
    pub fn enforce<T>(&self, caller: &Caller, decision: Result<T, Denied>, resource: &str) -> Result<T, ApiError> {
        decision.map_err(|d| self.deny(caller, d.permission, resource, d.error()))
    }

    /// `Ok` if the caller holds `permission`; otherwise records the denial and
    /// answers 403.
    pub fn require(&self, caller: &Caller, permission: &'static str, resource: &str) -> Result<(), ApiError> {
        if caller.may(permission) {
            Ok(())
        } else {
            Err(self.deny(caller, permission, resource, ApiError::Forbidden(permission)))
        }
    }
}

/// Appends audit events to the users' chains in the background (a request
/// does not wait for its audit record; a failure is logged). Appends to one
/// chain are serialized here: concurrent appends to one chain would conflict
/// on its expected sequence and, past the store's retries, be lost.
#[derive(Clone)]
struct Auditor {
    store: EventStore,
    /// One lock per chain (user), created on first use: as many as users.
    chains: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Auditor {
    /// Appends in the background.
    fn append(&self, who: String, event: UserEvent, actor: Actor) {
        let this = self.clone();
        tokio::spawn(async move { this.store(who, event, actor).await });
    }

    /// Appends, waiting for its turn on the chain and for the store.
    async fn store(&self, who: String, event: UserEvent, actor: Actor) {
        let chain = self.chains.lock().unwrap_or_else(|p| p.into_inner()).entry(who.clone()).or_default().clone();
        let _turn = chain.lock().await;
        let subject = self.store.subjects().user(&who);
        let ctx = CommandContext::new(actor);
        if let Err(e) = self.store.append_to_chain(&subject, &who, event, &ctx).await {
            tracing::error!(error = %e, user = %who, "audit event not stored");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(transparent)]
    Directory(#[from] fetchml_identity::DirectoryError),
    #[error("session bucket: {0}")]
    Sessions(String),
}

fn source_of(parts: &Parts) -> String {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_else(|| "unknown".into())
}

/// The bearer credential, if any. Two `Authorization` headers are refused:
/// taking either would be a guess, and proxies disagree about which wins.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let mut values = parts.headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_request("ambiguous_credentials", "send one Authorization header, not several"));
    }
    let Some(v) = first.and_then(|v| v.to_str().ok()) else { return Ok(websocket_session(parts)) };
    let Some((scheme, token)) = v.split_once(' ') else { return Ok(None) };
    Ok(scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && t.len() <= 256))
}

/// The prefix of the WebSocket subprotocol that carries a session token.
pub const WS_BEARER_PROTOCOL: &str = "fetchml.bearer.";

/// A browser cannot set `Authorization` on a WebSocket: it may offer its
/// session token as a subprotocol instead, `fetchml.bearer.<fms_token>` next
/// to `fetchml.v1` (the one the server selects). Only on an upgrade request
/// without `Authorization`, and only session tokens (short-lived, revocable
/// by logout), never API keys. Nothing is ambient, so a page of another origin
/// cannot open a stream on the user's behalf.
fn websocket_session(parts: &Parts) -> Option<&str> {
    let upgrade = parts.headers.get(axum::http::header::UPGRADE)?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    parts
        .headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(WS_BEARER_PROTOCOL))
        .find(|t| t.starts_with("fms_") && t.len() <= 256)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let source = source_of(parts);
        let (principal, credential) = state.auth.authenticate(bearer(parts)?, &source).await?;
        Ok(Caller { principal, source, credential })
    }
}

/// The source address of a request (for login, which has no caller yet).
pub struct Source(pub String);

impl FromRequestParts<AppState> for Source {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Source(source_of(parts)))
    }
}
