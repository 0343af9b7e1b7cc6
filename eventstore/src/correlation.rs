//! The correlation id of the request being served, for the commands it runs.
//!
//! A correlation id ties together everything one request set in motion: the
//! api's request id (its `X-Request-Id`), the events its commands append
//! (`correlation_id` in their envelopes), and the dispatcher's and workers'
//! log lines for the job (their spans carry it as `correlation`).
//!
//! The api runs each request inside [`scope`], and [`CommandContext::new`]
//! takes the id from there, so no handler has to thread it through by hand.
//! The scope is a task-local: it covers the request's own future, not tasks
//! it spawns (those pass it explicitly with [`CommandContext::correlated`]).
//!
//! [`CommandContext::new`]: crate::CommandContext::new
//! [`CommandContext::correlated`]: crate::CommandContext::correlated

use std::future::Future;
use uuid::Uuid;

tokio::task_local! {
    static CORRELATION: Uuid;
}

/// `fut` with `id` as the correlation id of the commands it runs. A named
/// future, so a tower layer can return it without boxing.
pub fn scope<F: Future>(id: Uuid, fut: F) -> tokio::task::futures::TaskLocalFuture<Uuid, F> {
    CORRELATION.scope(id, fut)
}

/// The correlation id of the current [`scope`], if any.
pub fn current() -> Option<Uuid> {
    CORRELATION.try_with(|id| *id).ok()
}
