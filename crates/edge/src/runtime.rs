//! The runtime config as this edge applies it: what reads it (limits, `hello`'s flags, debug
//! logging) and what a new version does to live sessions (a `flags` push to each session whose
//! evaluation changed).
//!
//! The process's watcher (in the binary) publishes each applied version on a `watch` channel
//! ([`EdgeDeps::runtime`](crate::EdgeDeps)); this module only reads it. Limits are read where
//! they are used, so a new version holds from the next frame (the rate of a connection already
//! open, its outgoing frame bound and its ping interval are set when it opens). Per-session
//! debug logging goes to the tracing target [`DEBUG_TARGET`] at debug level: the binary's log
//! filter always lets that target through, and only sessions under a `debug` entry write to
//! it, so the rest of the server stays at the global level.

use crate::{Frame, Inner, Out};
use hubbub_protocol::ServerFrame;
use hubbub_protocol::admin::{VersionedConfig, evaluate_flags};
use hubbub_queue::clock::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The tracing target of per-session debug logging.
pub const DEBUG_TARGET: &str = "hubbub_debug";

impl Inner {
    /// The runtime config this process applies now.
    pub(crate) fn runtime(&self) -> Arc<VersionedConfig> {
        self.deps.runtime.borrow().clone()
    }

    /// Whether a `debug` entry covers this session now.
    pub(crate) fn debugged(&self, user: &str, session: &str) -> bool {
        if !self.debug_any.load(Ordering::Relaxed) {
            return false;
        }
        let now = now_ms();
        self.deps
            .runtime
            .borrow()
            .config
            .debug
            .iter()
            .any(|d| d.covers(user, session, now))
    }

    /// The flags of `user` under the config applied now.
    pub(crate) fn flags_of(&self, user: &str) -> BTreeMap<String, bool> {
        evaluate_flags(&self.deps.runtime.borrow().config.flags, user)
    }

    /// Apply a new version: the values cached for hot paths, then a `flags` push to every
    /// session of this edge whose evaluation changed.
    pub(crate) fn apply(&self, old: &VersionedConfig, new: &VersionedConfig) {
        self.debug_any
            .store(!new.config.debug.is_empty(), Ordering::Relaxed);
        self.max_outgoing_bytes.store(
            new.config.limits.max_outgoing_bytes.max(1),
            Ordering::Relaxed,
        );
        if old.config.flags == new.config.flags {
            return;
        }
        let sessions = self.sessions();
        let mut pushed = 0u64;
        for (user, ids) in &sessions.by_user {
            let before = evaluate_flags(&old.config.flags, user);
            let after = evaluate_flags(&new.config.flags, user);
            if before == after {
                continue;
            }
            let frame = Frame::new(&ServerFrame::Flags { flags: after });
            let frames: Arc<[Frame]> = Arc::from([frame]);
            for id in ids {
                if let Some(h) = sessions.by_id.get(id) {
                    self.offer(&h.out, Out::Events(Arc::new((frames.clone(), None))));
                    pushed += 1;
                }
            }
        }
        metrics::counter!(hubbub_protocol::metrics::FLAGS_PUSHED).increment(pushed);
    }
}

/// Apply every version the watch channel publishes until the edge stops.
pub(crate) async fn follow(inner: Arc<Inner>) {
    let mut rx = inner.deps.runtime.clone();
    let mut last = rx.borrow_and_update().clone();
    inner.apply(&last, &last);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let next = rx.borrow_and_update().clone();
                inner.apply(&last, &next);
                last = next;
            }
            _ = inner.cancel.cancelled() => break,
        }
    }
}
