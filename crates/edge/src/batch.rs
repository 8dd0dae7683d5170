//! A busy channel's frames, held a moment by the dispatcher and handed to its sessions as one
//! item: at 10,000 subscribers and 100 messages a second, handing each message to each session
//! on its own was a million hand-overs a second, and every session woke, took, and wrote
//! (coalesced only within its own 20 ms window) at that rate. Held for [`WINDOW`], the same
//! messages are ten items a second per session, and ten writes.
//!
//! A quiet channel is not held: a frame for a channel that had nothing handed out for a
//! window goes at once, and opens a window; what comes for it before the window ends waits for
//! the window's end and goes together. So a channel at one message a second delivers each at
//! once, and a busy one delivers at most one window late.
//!
//! Order: every frame of a channel (`channel.message`, `channel.updated`) goes through its
//! batch, so a channel's frames reach a session in the order the dispatcher got them. The
//! dispatcher hands out everything held before an event that changes a user's channels and
//! before closing sessions, so "no messages after the frame saying you are out" holds as
//! without batching. Held frames are lost if the edge stops: live delivery is best effort, and
//! `channel.sync` returns them (each is durable before it is broadcast).
//!
//! Plain state, unit-tested here; the dispatching is in [`crate::Inner`].

use crate::{Accepted, Frame};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a busy channel's frames are held, at most.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// Frames of one channel waiting for the end of its window, and the earliest acceptance
/// among them (what delivery latency and admission control count from).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) frames: Vec<Frame>,
    pub(crate) accepted: Option<Accepted>,
    due: Instant,
}

/// The channels with a window open.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    /// Each channel with a window open: when it opened, and what waits for its end.
    open: HashMap<String, (Instant, Option<Held>)>,
}

impl Batches {
    /// A frame for `channel` at `now`: `Some` (with the frame) to hand out now, `None` if it
    /// is held.
    pub(crate) fn offer(
        &mut self,
        channel: &str,
        frame: Frame,
        accepted: Option<Accepted>,
        now: Instant,
    ) -> Option<(Frame, Option<Accepted>)> {
        let Some((opened, held)) = self.open.get_mut(channel) else {
            self.open.insert(channel.to_owned(), (now, None));
            return Some((frame, accepted));
        };
        if held.is_none() && now >= *opened + WINDOW {
            // The window ended with nothing held: this frame opens the next one.
            *opened = now;
            return Some((frame, accepted));
        }
        // In the window, or past its end with frames still held (the dispatcher is late):
        // behind what is held.
        let due = *opened + WINDOW;
        let held = held.get_or_insert_with(|| Held {
            frames: Vec::new(),
            accepted: None,
            due,
        });
        held.frames.push(frame);
        held.accepted = earliest(held.accepted, accepted);
        None
    }

    /// When the next window with frames held ends.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.open
            .values()
            .filter_map(|(_, held)| held.as_ref().map(|h| h.due))
            .min()
    }

    /// Take what is due at `now` (each channel's frames in order); a window that ends with
    /// frames handed out opens the next one now, and one that ended with nothing is closed.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(String, Held)> {
        let mut out = Vec::new();
        self.open.retain(|channel, (opened, held)| {
            if held.as_ref().is_some_and(|h| h.due <= now) {
                if let Some(h) = held.take() {
                    out.push((channel.clone(), h));
                }
                *opened = now;
                true
            } else {
                held.is_some() || now < *opened + WINDOW
            }
        });
        out
    }

    /// Take everything held, due or not.
    pub(crate) fn all(&mut self) -> Vec<(String, Held)> {
        let mut out = Vec::new();
        for (channel, (_, held)) in self.open.iter_mut() {
            if let Some(h) = held.take() {
                out.push((channel.clone(), h));
            }
        }
        out
    }
}

fn earliest(a: Option<Accepted>, b: Option<Accepted>) -> Option<Accepted> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.ms < a.ms { b } else { a }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(n: u64) -> Frame {
        Frame {
            seq: None,
            kind: "channel.message",
            changes_channels: false,
            json: Arc::from(format!("{{\"offset\":{n}}}")),
        }
    }

    fn offsets(h: &Held) -> Vec<String> {
        h.frames.iter().map(|f| f.json.to_string()).collect()
    }

    #[test]
    fn a_quiet_channel_is_not_held() {
        let mut b = Batches::default();
        let t = Instant::now();
        assert!(b.offer("c", frame(1), None, t).is_some());
        assert!(b.offer("c", frame(2), None, t + WINDOW * 2).is_some());
        assert_eq!(b.next_due(), None);
        // A window that ended with nothing held is closed when due times are taken.
        assert!(b.due(t + WINDOW * 4).is_empty());
        assert!(b.open.is_empty());
    }

    #[test]
    fn a_busy_channel_is_held_until_its_window_ends_in_order() {
        let mut b = Batches::default();
        let t = Instant::now();
        assert!(b.offer("c", frame(1), None, t).is_some());
        let at = |ms| t + Duration::from_millis(ms);
        assert!(b.offer("c", frame(2), None, at(10)).is_none());
        assert!(b.offer("c", frame(3), None, at(20)).is_none());
        assert_eq!(b.next_due(), Some(t + WINDOW));
        assert!(b.due(at(50)).is_empty());
        let out = b.due(t + WINDOW);
        assert_eq!(out.len(), 1);
        assert_eq!(offsets(&out[0].1), ["{\"offset\":2}", "{\"offset\":3}"]);
        // The next window opened at the flush: a frame right after it is held again.
        assert!(
            b.offer("c", frame(4), None, t + WINDOW + WINDOW / 2)
                .is_none()
        );
        assert_eq!(b.next_due(), Some(t + WINDOW * 2));
        let out = b.all();
        assert_eq!(offsets(&out[0].1), ["{\"offset\":4}"]);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn a_late_flush_keeps_order() {
        let mut b = Batches::default();
        let t = Instant::now();
        b.offer("c", frame(1), None, t);
        assert!(b.offer("c", frame(2), None, t + WINDOW / 2).is_none());
        // Past the window's end, before the dispatcher took what was due: behind frame 2.
        assert!(b.offer("c", frame(3), None, t + WINDOW * 3).is_none());
        let out = b.due(t + WINDOW * 3);
        assert_eq!(offsets(&out[0].1), ["{\"offset\":2}", "{\"offset\":3}"]);
    }

    #[test]
    fn channels_are_held_apart_and_the_earliest_acceptance_is_kept() {
        let mut b = Batches::default();
        let t = Instant::now();
        let acc = |ms| Some(Accepted { ms, here: true });
        b.offer("a", frame(1), acc(5), t);
        b.offer("b", frame(1), acc(5), t);
        b.offer("a", frame(2), acc(9), t + WINDOW / 4);
        b.offer("a", frame(3), acc(7), t + WINDOW / 2);
        b.offer("b", frame(2), None, t + WINDOW / 2);
        let mut out = b.due(t + WINDOW);
        out.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1.accepted.map(|a| a.ms), Some(7));
        assert_eq!(out[1].1.accepted.map(|a| a.ms), None);
        assert_eq!(offsets(&out[1].1), ["{\"offset\":2}"]);
    }
}
