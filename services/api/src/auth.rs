//! Authentication and authorization at the HTTP edge.
//!
//! Credentials: `Authorization: Bearer <api key or session token>`.
//! - An API key (`fml_<id>_<secret>`) is verified with argon2id once, then served
//!   from an in-memory cache (keyed by its SHA-256) for `auth.key_cache_secs`; a
//!   reload of the users file clears the cache, so a removed key stops working
//!   within seconds.
//! - A session token (`fms_<secret>`, from `POST /v1/auth/login`) is looked up by
//!   its SHA-256 in the `<ns>_sessions` key-value bucket, whose entries expire.
//!
//! Every login, every first use of a key, every failed attempt and every denied
//! request is appended to the event log (User aggregate). Failed attempts are
//! throttled per source address and per user (429 with Retry-After). An unknown
//! key id is checked against a dummy hash, so it costs what a known one costs.

use crate::AppState;
use crate::error::ApiError;
use async_nats::jetstream::kv;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
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

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub source: String,
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
    expires_at: chrono::DateTime<chrono::Utc>,
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
    store: EventStore,
    /// Bounds concurrent argon2 verifications (19 MiB and a core each): a burst
    /// of first requests must not allocate gigabytes or starve the api.
    verify_gate: tokio::sync::Semaphore,
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
            store,
            verify_gate: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4),
            ),
        })
    }

    fn directory(&self) -> Arc<Directory> {
        self.directory.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the users file. A broken file is reported and the previous
    /// directory kept.
    pub fn reload(&self) -> bool {
        match Directory::load(&self.users_file) {
            Ok(d) => {
                *self.directory.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                *self.loaded_mtime.lock().unwrap_or_else(|p| p.into_inner()) =
                    std::fs::metadata(&self.users_file).and_then(|m| m.modified()).ok();
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
        let store = self.store.clone();
        let subject = store.subjects().user(who);
        let who = who.to_owned();
        tokio::spawn(async move {
            let ctx = CommandContext::new(actor);
            if let Err(e) = store.append_to_chain(&subject, &who, event, &ctx).await {
                tracing::error!(error = %e, user = %who, "audit event not stored");
            }
        });
    }

    fn system() -> Actor {
        Actor::System { component: "api-auth".into() }
    }

    fn fail(&self, user: Option<&UserName>, method: &str, source: &str, reason: &str) -> ApiError {
        let now = Instant::now();
        self.throttle.record_failure(&format!("src:{source}"), now);
        if let Some(u) = user {
            self.throttle.record_failure(&format!("user:{u}"), now);
        }
        let who = user.map(|u| u.as_str().to_owned()).unwrap_or_else(|| UNKNOWN_USER.to_owned());
        let event =
            UserEvent::AuthenticationFailed { method: method.into(), source: source.into(), reason: reason.into() };
        self.audit(&who, event, Self::system());
        ApiError::Unauthenticated("invalid credentials")
    }

    fn throttled(&self, key: &str) -> Result<(), ApiError> {
        self.throttle.check(key, Instant::now()).map_err(ApiError::Throttled)
    }

    /// Verifies an API key (argon2 on a blocking thread, unless cached).
    fn cached(&self, dir: &Directory, digest: &str) -> Option<Principal> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let c = cache.get(digest)?;
        if c.until > Instant::now() && dir.key(&c.key_id).is_some_and(|(u, _)| *u == c.user) {
            dir.user(&c.user).cloned()
        } else {
            None
        }
    }

    async fn verify_key(&self, key: &str, source: &str, method: &str) -> Result<Principal, ApiError> {
        let dir = self.directory();
        let digest = sha256_hex(key);
        if method == "api_key"
            && let Some(p) = self.cached(&dir, &digest)
        {
            return Ok(p);
        }
        // One verification per core at a time; whoever waited re-checks the
        // cache, so a burst of requests with one new key costs one argon2 run.
        let _permit = self.verify_gate.acquire().await.map_err(|e| ApiError::Internal(e.into()))?;
        if method == "api_key"
            && let Some(p) = self.cached(&dir, &digest)
        {
            return Ok(p);
        }
        let Some(parsed) = ParsedKey::parse(key) else {
            return Err(self.fail(None, method, source, "malformed key"));
        };
        let (user, hash) = match dir.key(parsed.key_id) {
            Some((u, h)) => (Some(u.clone()), h.to_owned()),
            None => (None, self.dummy.clone()),
        };
        if let Some(u) = &user {
            self.throttled(&format!("user:{u}"))?;
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
        self.audit(
            principal.name.as_str(),
            UserEvent::UserAuthenticated { method: method.into(), source: source.into() },
            Actor::User { name: principal.name.clone() },
        );
        Ok(principal)
    }

    async fn verify_session(&self, token: &str, source: &str) -> Result<Principal, ApiError> {
        let digest = sha256_hex(token);
        let entry =
            self.sessions.get(&digest).await.map_err(|e| ApiError::Unavailable(StoreError::unavailable_from(e)))?;
        let session = entry.and_then(|b| serde_json::from_slice::<Session>(&b).ok());
        match session {
            Some(s) if s.expires_at > chrono::Utc::now() => match self.directory().user(&s.user) {
                Some(p) => Ok(p.clone()),
                None => Err(self.fail(Some(&s.user), "session", source, "user no longer configured")),
            },
            _ => Err(self.fail(None, "session", source, "unknown or expired session")),
        }
    }

    /// Authenticates the bearer credential of a request.
    pub async fn authenticate(&self, bearer: Option<&str>, source: &str) -> Result<Principal, ApiError> {
        let Some(token) = bearer else {
            return Err(ApiError::Unauthenticated(
                "missing credentials: send Authorization: Bearer <api key or token>",
            ));
        };
        self.throttled(&format!("src:{source}"))?;
        if token.starts_with("fms_") {
            self.verify_session(token, source).await
        } else {
            self.verify_key(token, source, "api_key").await
        }
    }

    /// `POST /v1/auth/login`: trades an API key for a session token.
    pub async fn login(
        &self,
        key: &str,
        source: &str,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>, Principal), ApiError> {
        self.throttled(&format!("src:{source}"))?;
        let principal = self.verify_key(key, source, "login").await?;
        let token = fetchml_identity::new_session_token();
        let expires_at = chrono::Utc::now() + chrono::Duration::from_std(self.session_ttl).unwrap_or_default();
        let body = serde_json::to_vec(&Session { user: principal.name.clone(), expires_at })
            .map_err(|e| ApiError::Internal(e.into()))?;
        self.sessions
            .put(sha256_hex(&token), body.into())
            .await
            .map_err(|e| ApiError::Unavailable(StoreError::unavailable_from(e)))?;
        Ok((token, expires_at, principal))
    }

    /// Records a refused request and returns the error to answer with.
    pub fn deny(&self, caller: &Caller, permission: &str, resource: &str, answer: ApiError) -> ApiError {
        let event = UserEvent::AccessDenied {
            permission: permission.into(),
            resource: resource.into(),
            source: caller.source.clone(),
        };
        self.audit(caller.name().as_str(), event, Actor::User { name: caller.name().clone() });
        answer
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

    /// The owners whose jobs `p` may read in full (besides `jobs:read:all`).
    pub fn visible_owners(&self, p: &Principal) -> Vec<String> {
        let mut owners = Vec::new();
        if p.may("jobs:read") {
            owners.push(p.name.to_string());
        }
        if p.may("jobs:read:group") {
            owners.extend(self.directory().group_mates(p).into_iter().map(|u| u.to_string()));
        }
        owners.sort();
        owners.dedup();
        owners
    }

    /// The configured principal of `name`, if any (for group checks).
    pub fn user(&self, name: &UserName) -> Option<Principal> {
        self.directory().user(name).cloned()
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

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty() && t.len() <= 256)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let source = source_of(parts);
        let principal = state.auth.authenticate(bearer(parts), &source).await?;
        Ok(Caller { principal, source })
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
