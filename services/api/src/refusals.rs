//! Folding of repeated refusals, so that a caller cannot grow the audit log
//! without bound by repeating a refused request (defect 12).
//!
//! Every refusal stays on record. The first refusal of a kind (same actor,
//! permission, resource and source) is recorded at once as an `access_denied`
//! event; the identical ones that follow within `auth.refusal_window_secs` are
//! only counted, and when the window ends one more `access_denied` carries
//! their number in `count`. A sustained flood of one refusal thus costs at
//! most two events per window. Distinct refusals are bounded too: past
//! [`MAX_KINDS_PER_ACTOR`] kinds open for one actor, further ones fold into a
//! single event per actor with permission, resource and source `*`.
//! A window of 0 turns folding off (one event per refusal). When the api
//! stops, every open window is recorded at once (`Auth::close_refusal_windows`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Kinds of refusal counted separately per actor within one window; beyond
/// this they share one `*` kind.
pub const MAX_KINDS_PER_ACTOR: usize = 16;

/// What identifies repeats of one refusal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RefusalKind {
    pub actor: String,
    pub permission: String,
    pub resource: String,
    pub source: String,
}

impl RefusalKind {
    fn overflow(actor: &str) -> Self {
        let any = || "*".to_owned();
        RefusalKind { actor: actor.to_owned(), permission: any(), resource: any(), source: any() }
    }
}

/// What to do with a refusal just noted.
#[derive(Debug, PartialEq, Eq)]
pub enum Noted {
    /// The first of its kind in a window: record it now (count 1), and call
    /// [`Refusals::close`] on this kind when the window ends.
    First(RefusalKind),
    /// Counted into an open window: nothing to record now.
    Folded,
}

/// The open windows (one per kind of refusal seen within the last window).
pub struct Refusals {
    window: Duration,
    open: Mutex<HashMap<RefusalKind, u64>>,
}

impl Refusals {
    pub fn new(window: Duration) -> Self {
        Self { window, open: Mutex::new(HashMap::new()) }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Notes one refusal.
    pub fn note(&self, kind: RefusalKind) -> Noted {
        if self.window.is_zero() {
            return Noted::First(kind);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let kind = if open.contains_key(&kind)
            || open.keys().filter(|k| k.actor == kind.actor).count() < MAX_KINDS_PER_ACTOR
        {
            kind
        } else {
            RefusalKind::overflow(&kind.actor)
        };
        match open.get_mut(&kind) {
            Some(folded) => {
                *folded += 1;
                Noted::Folded
            }
            None => {
                open.insert(kind.clone(), 0);
                Noted::First(kind)
            }
        }
    }

    /// Ends every open window (the api is stopping): each kind with refusals
    /// folded into it, and how many.
    pub fn close_all(&self) -> Vec<(RefusalKind, u64)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.drain().filter(|(_, n)| *n > 0).collect()
    }

    /// Ends the window of `kind`: how many refusals were folded into it after
    /// the first (0: nothing more to record).
    pub fn close(&self, kind: &RefusalKind) -> u64 {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(kind).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(actor: &str, resource: &str) -> RefusalKind {
        RefusalKind {
            actor: actor.into(),
            permission: "jobs:create".into(),
            resource: resource.into(),
            source: "ip".into(),
        }
    }

    #[test]
    fn repeats_within_a_window_are_counted_and_the_next_window_starts_afresh() {
        let r = Refusals::new(Duration::from_secs(10));
        assert_eq!(r.note(kind("ana", "jobs")), Noted::First(kind("ana", "jobs")));
        for _ in 0..199 {
            assert_eq!(r.note(kind("ana", "jobs")), Noted::Folded);
        }
        // Another actor or resource is its own kind.
        assert!(matches!(r.note(kind("bob", "jobs")), Noted::First(_)));
        assert!(matches!(r.note(kind("ana", "job/1")), Noted::First(_)));
        assert_eq!(r.close(&kind("ana", "jobs")), 199);
        assert_eq!(r.close(&kind("ana", "jobs")), 0);
        assert!(matches!(r.note(kind("ana", "jobs")), Noted::First(_)));
        r.note(kind("ana", "jobs"));
        assert_eq!(r.close_all(), vec![(kind("ana", "jobs"), 1)]);
        assert_eq!(r.close(&kind("ana", "jobs")), 0);
    }

    #[test]
    fn a_spray_of_distinct_refusals_folds_into_one_kind_per_actor() {
        let r = Refusals::new(Duration::from_secs(10));
        let firsts = (0..1000).filter(|i| matches!(r.note(kind("ana", &format!("job/{i}"))), Noted::First(_))).count();
        assert_eq!(firsts, MAX_KINDS_PER_ACTOR + 1);
        assert_eq!(r.close(&RefusalKind::overflow("ana")), 1000 - MAX_KINDS_PER_ACTOR as u64 - 1);
    }

    #[test]
    fn a_zero_window_records_every_refusal() {
        let r = Refusals::new(Duration::ZERO);
        assert!((0..5).all(|_| matches!(r.note(kind("ana", "jobs")), Noted::First(_))));
    }
}
