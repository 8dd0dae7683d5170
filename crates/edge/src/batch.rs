//! A busy channel's frames, held a moment by the dispatcher and handed to its sessions in
//! batches, a slice of the sessions at a time.
//!
//! Why hold: at 10,000 subscribers and 100 messages a second, handing each message to each
//! session on its own was a million hand-overs a second, and every session woke, took and
//! wrote at that rate. Held for up to [`WINDOW`], the same messages are ten items a second per
//! session, and ten writes.
//!
//! Why slices: a session handed an item is woken, and a woken task runs after every task
//! already queued on the sessions' runtime. Handing a batch to 10,000 sessions at once put
//! 10,000 socket writes ahead of everything else, the next step of the publisher's own message
//! (its commit, its `ok`) included, ten times a second. So a busy channel's sessions are split
//! into [`SLICES`] fixed slices, and every [`TICK`] one slice gets what it has not had yet: the
//! work is the same, spread evenly over the window, and nothing waits behind more than a
//! slice.
//!
//! A quiet channel is not held: a frame for a channel with nothing held that had no frame for
//! a window goes to all its sessions at once. So a channel at one message a second delivers
//! each at once, and a busy one delivers at most one window late.
//!
//! Order: every frame of a channel (`channel.message`, `channel.updated`) goes through its
//! batches, so each session gets a channel's frames in the order the dispatcher got them. The
//! dispatcher hands out everything held before an event that changes a user's channels and
//! before closing sessions, so "no messages after the frame saying you are out" holds as
//! without batching. Held frames are lost if the edge stops: live delivery is best effort, and
//! `channel.sync` returns them (each is durable before it is broadcast).
//!
//! Plain state, unit-tested here; the dispatching is in [`crate::Inner`].

use crate::{Accepted, Frame};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// How long a busy channel's frames are held, at most.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// The slices a busy channel's sessions are split into; one slice is handed its frames every
/// [`TICK`].
pub(crate) const SLICES: usize = 10;

/// How often a busy channel hands a slice its frames.
pub(crate) const TICK: Duration = Duration::from_millis(WINDOW.as_millis() as u64 / SLICES as u64);

/// A busy channel: its frames not yet handed to every slice, and where each slice is.
#[derive(Debug)]
struct Busy {
    /// Frames numbered from `base`, with their acceptance and their mark.
    frames: VecDeque<(Frame, Option<Accepted>, u64)>,
    base: u64,
    /// The number of the first frame each slice has not been handed.
    next: [u64; SLICES],
    /// The slice due next, and when.
    slice: usize,
    tick_at: Instant,
    /// When its last frame came.
    last: Instant,
}

impl Busy {
    /// The number the next frame gets.
    fn end(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    fn pending(&self) -> bool {
        let end = self.end();
        self.next.iter().any(|n| *n < end)
    }

    /// Slice `j`'s frames not handed yet (marked handed), with the earliest acceptance.
    fn take(&mut self, j: usize) -> Option<Held> {
        let end = self.end();
        let from = self.next[j];
        if from >= end {
            return None;
        }
        self.next[j] = end;
        let skip = usize::try_from(from - self.base).unwrap_or(usize::MAX);
        let mut accepted = None;
        let mut marks = Vec::new();
        let frames = self
            .frames
            .iter()
            .skip(skip)
            .map(|(f, a, m)| {
                accepted = earliest(accepted, *a);
                marks.push(*m);
                f.clone()
            })
            .collect();
        Some(Held {
            slice: j,
            frames,
            accepted,
            marks,
        })
    }

    /// Forget the frames every slice has.
    fn trim(&mut self) {
        let low = self.next.iter().copied().min().unwrap_or(self.base);
        while self.base < low && self.frames.pop_front().is_some() {
            self.base += 1;
        }
    }
}

/// Frames for one slice of a channel's sessions, in order, and the earliest acceptance among
/// them (what delivery latency and admission control count from).
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) slice: usize,
    pub(crate) frames: Vec<Frame>,
    pub(crate) accepted: Option<Accepted>,
    /// Each frame's mark (see [`Batches::offer`]), never decreasing.
    pub(crate) marks: Vec<u64>,
}

/// The busy channels.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    busy: HashMap<String, Busy>,
}

impl Batches {
    /// A frame for `channel` at `now`: `Some` (with the frame) to hand to all the channel's
    /// sessions now, `None` if it is held. `mark` is the edge's count of sessions opened so
    /// far: a session opened later did not exist when the frame came, and is not handed it
    /// (it finds it with `channel.sync`, as it would have without batching).
    pub(crate) fn offer(
        &mut self,
        channel: &str,
        frame: Frame,
        accepted: Option<Accepted>,
        mark: u64,
        now: Instant,
    ) -> Option<(Frame, Option<Accepted>)> {
        match self.busy.get_mut(channel) {
            Some(b) if b.pending() || now < b.last + WINDOW => {
                b.frames.push_back((frame, accepted, mark));
                b.last = now;
                None
            }
            _ => {
                // Quiet: this frame goes now, and the channel is busy for a window.
                self.busy.insert(
                    channel.to_owned(),
                    Busy {
                        frames: VecDeque::new(),
                        base: 0,
                        next: [0; SLICES],
                        slice: 0,
                        tick_at: now + TICK,
                        last: now,
                    },
                );
                Some((frame, accepted))
            }
        }
    }

    /// When the next slice with frames held is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.busy
            .values()
            .filter(|b| b.pending())
            .map(|b| b.tick_at)
            .min()
    }

    /// Take what is due at `now`: each busy channel's slices whose turn came, in turn. A
    /// channel with nothing held and no frame for a window is quiet again.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(String, Held)> {
        let mut out = Vec::new();
        self.busy.retain(|channel, b| {
            if !b.pending() {
                // No ticks while nothing is held: the turns start again with the next frame.
                if b.tick_at <= now {
                    b.tick_at = now + TICK;
                }
                return now < b.last + WINDOW;
            }
            // At most one round of turns at once, however late the dispatcher is.
            let mut turns = 0;
            while b.tick_at <= now && turns < SLICES {
                let j = b.slice;
                if let Some(h) = b.take(j) {
                    out.push((channel.clone(), h));
                }
                b.slice = (j + 1) % SLICES;
                b.tick_at += TICK;
                turns += 1;
            }
            if b.tick_at <= now {
                b.tick_at = now + TICK;
            }
            b.trim();
            true
        });
        out
    }

    /// Take everything held, every slice's, due or not.
    pub(crate) fn all(&mut self) -> Vec<(String, Held)> {
        let mut out = Vec::new();
        for (channel, b) in self.busy.iter_mut() {
            for j in 0..SLICES {
                if let Some(h) = b.take(j) {
                    out.push((channel.clone(), h));
                }
            }
            b.trim();
        }
        out
    }
}

/// The slice a session is in (by the order sessions opened on this edge: fixed for its
/// life, and even).
pub(crate) fn slice_of(opened: u64) -> usize {
    (opened % SLICES as u64) as usize
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
            json: crate::FrameJson::Whole(Arc::from(n.to_string())),
        }
    }

    fn numbers(h: &Held) -> Vec<u64> {
        h.frames
            .iter()
            .map(|f| f.json.to_string().parse().unwrap_or(0))
            .collect()
    }

    /// What each slice got, in the order taken.
    fn by_slice(out: &[(String, Held)]) -> Vec<Vec<u64>> {
        let mut got = vec![Vec::new(); SLICES];
        for (_, h) in out {
            got[h.slice].extend(numbers(h));
        }
        got
    }

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    #[test]
    fn a_quiet_channel_is_not_held() {
        let mut b = Batches::default();
        let t = Instant::now();
        assert!(b.offer("c", frame(1), None, 0, t).is_some());
        assert_eq!(b.next_due(), None);
        assert!(b.offer("c", frame(2), None, 0, t + WINDOW).is_some());
        // Quiet for a window: forgotten when due times are taken.
        assert!(b.due(t + WINDOW * 3).is_empty());
        assert!(b.busy.is_empty());
    }

    #[test]
    fn a_busy_channel_hands_each_slice_every_frame_once_in_order_one_slice_a_tick() {
        let mut b = Batches::default();
        let t = Instant::now();
        assert!(b.offer("c", frame(1), None, 0, t).is_some());
        let mut out = Vec::new();
        // 100 frames a second for half a second, the dispatcher taking what is due each ms.
        for n in 2..=50u64 {
            let at = ms(t, (n - 1) * 10);
            for step in 0..10 {
                out.extend(b.due(at + Duration::from_millis(step)));
            }
            assert!(b.offer("c", frame(n), None, 0, at).is_none());
        }
        // Never more than one slice in a turn.
        for step in 0..=200 {
            let due = b.due(ms(t, 500 + step));
            assert!(due.len() <= 1);
            out.extend(due);
        }
        assert_eq!(b.next_due(), None);
        for got in by_slice(&out) {
            assert_eq!(got, (2..=50).collect::<Vec<_>>());
        }
        // Nothing held, and quiet again after a window.
        assert!(b.all().is_empty());
        b.due(ms(t, 900));
        assert!(b.busy.is_empty());
    }

    #[test]
    fn every_slice_waits_at_most_a_window() {
        let mut b = Batches::default();
        let t = Instant::now();
        b.offer("c", frame(1), None, 0, t);
        assert!(b.offer("c", frame(2), None, 0, ms(t, 1)).is_none());
        let mut got = vec![None; SLICES];
        for step in 0..=100 {
            for (_, h) in b.due(ms(t, step)) {
                got[h.slice].get_or_insert(step);
            }
        }
        assert!(got.iter().all(|g| g.is_some_and(|at| at <= 100)), "{got:?}");
    }

    #[test]
    fn all_hands_out_everything_held() {
        let mut b = Batches::default();
        let t = Instant::now();
        b.offer("c", frame(1), None, 0, t);
        b.offer("c", frame(2), None, 0, ms(t, 1));
        // Slice 0's turn: it has frame 2.
        assert_eq!(by_slice(&b.due(ms(t, 10)))[0], [2]);
        b.offer("c", frame(3), None, 0, ms(t, 11));
        let got = by_slice(&b.all());
        assert_eq!(got[0], [3]);
        for g in &got[1..] {
            assert_eq!(g, &[2, 3]);
        }
        assert_eq!(b.next_due(), None);
        assert!(b.busy.get("c").is_some_and(|c| c.frames.is_empty()));
    }

    #[test]
    fn a_late_dispatcher_catches_up_one_round_at_most() {
        let mut b = Batches::default();
        let t = Instant::now();
        b.offer("c", frame(1), None, 0, t);
        b.offer("c", frame(2), None, 0, ms(t, 1));
        let out = b.due(ms(t, 10_000));
        assert_eq!(out.len(), SLICES);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn channels_are_held_apart_and_the_earliest_acceptance_is_kept() {
        let mut b = Batches::default();
        let t = Instant::now();
        let acc = |ms| Some(Accepted { ms, here: true });
        b.offer("a", frame(1), acc(5), 0, t);
        b.offer("b", frame(1), acc(5), 0, t);
        b.offer("a", frame(2), acc(9), 0, ms(t, 1));
        b.offer("a", frame(3), acc(7), 0, ms(t, 2));
        b.offer("b", frame(2), None, 0, ms(t, 2));
        let out = b.all();
        for (channel, h) in &out {
            match channel.as_str() {
                "a" => {
                    assert_eq!(numbers(h), [2, 3]);
                    assert_eq!(h.accepted.map(|a| a.ms), Some(7));
                }
                _ => {
                    assert_eq!(numbers(h), [2]);
                    assert!(h.accepted.is_none());
                }
            }
        }
        assert_eq!(out.len(), 2 * SLICES);
    }

    #[test]
    fn held_frames_keep_their_marks() {
        let mut b = Batches::default();
        let t = Instant::now();
        b.offer("c", frame(1), None, 3, t);
        b.offer("c", frame(2), None, 3, ms(t, 1));
        b.offer("c", frame(3), None, 5, ms(t, 2));
        for (_, h) in b.all() {
            assert_eq!(h.marks, [3, 5]);
            assert_eq!(numbers(&h), [2, 3]);
        }
    }

    #[test]
    fn slices_are_even() {
        let mut count = [0; SLICES];
        for opened in 0..1000 {
            count[slice_of(opened)] += 1;
        }
        assert!(count.iter().all(|c| *c == 1000 / SLICES));
    }
}
