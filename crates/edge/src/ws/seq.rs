//! A session's exactly-once bookkeeping: which durable events (by `seq`) it has written, what
//! to do with one pushed live, and what a `sync` must not write again. Plain state, no I/O,
//! so every rule is unit-tested without a socket or a store.
//!
//! The session is registered before `last_seq` is read for `hello`, so every event committed
//! after that read is pushed live, and `next_seq = last_seq + 1`. A pushed event with
//! `seq < next_seq` was already written (dropped); `seq == next_seq` is written; a larger
//! seq means events were missed (a push lost or reordered), so the gap is read from the store
//! first. `sync` replays from the store, skipping what the session already wrote (an event
//! pushed live between `hello` and the client's `sync` is not written twice), and moves
//! `next_seq` past what it replayed.
//!
//! Pushes arrive out of order routinely: several writes commit in order, but their events
//! are pushed by concurrent handlers, so seq 12 can reach a session just before seq 11. A
//! store read for every such "gap" cost more than the delivery itself under load, so events
//! past a gap are first [`Held`] for a moment ([`GAP_WAIT`]); the missing ones nearly always
//! follow within milliseconds, and only a gap still open then (a push really lost) is read
//! from the store.

use std::collections::BTreeMap;
use std::ops::Range;
use tokio::time::{Duration, Instant};

/// How long events past a gap wait for the missing ones before the gap is read from the
/// store.
pub(crate) const GAP_WAIT: Duration = Duration::from_millis(200);
/// At most this many events are held; one more reads the gap from the store at once.
pub(crate) const MAX_HELD: usize = 256;

/// What to do with a durable event pushed live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Write it: it is the next one.
    Write,
    /// Already written (a repeat, or older than what the session has): drop it.
    Drop,
    /// Events are missing before it: read `missing` events after seq `after` from the store
    /// (the pushed one included), write them, then call [`SeqState::gap_closed`].
    Gap {
        /// Read events with seq above this.
        after: u64,
        /// How many, at most.
        missing: usize,
    },
}

/// The seqs a session has written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeqState {
    /// The seq of the next durable event to write.
    next_seq: u64,
    /// Every event from `written_from` to `next_seq - 1` was written by this session
    /// (pushed live, filled in, or replayed): a `sync` does not write them again.
    written_from: u64,
}

impl SeqState {
    /// A session whose `hello` said `last_seq`.
    pub(crate) fn new(last_seq: u64) -> Self {
        SeqState {
            next_seq: last_seq + 1,
            written_from: last_seq + 1,
        }
    }

    /// What to do with a durable event `seq` pushed live.
    pub(crate) fn pushed(&mut self, seq: u64) -> Pushed {
        if seq < self.next_seq {
            Pushed::Drop
        } else if seq == self.next_seq {
            self.next_seq += 1;
            Pushed::Write
        } else {
            Pushed::Gap {
                after: self.next_seq - 1,
                missing: usize::try_from(seq - self.next_seq + 1).unwrap_or(usize::MAX),
            }
        }
    }

    /// An event read from the store to fill a gap was written.
    pub(crate) fn filled(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// The gap before the pushed event `seq` was filled as far as the store could: whether
    /// the pushed event itself must still be written (the store did not return it).
    pub(crate) fn gap_closed(&mut self, seq: u64) -> bool {
        if self.next_seq <= seq {
            self.next_seq = seq + 1;
            true
        } else {
            false
        }
    }

    /// The seqs this session already wrote (a `sync` skips them).
    pub(crate) fn written(&self) -> Range<u64> {
        self.written_from..self.next_seq
    }

    /// A `sync` from `after_seq` wrote everything up to `cursor` (skipping [`Self::written`]).
    pub(crate) fn synced(&mut self, after_seq: u64, cursor: u64) {
        // Written now: everything after `after_seq` up to `cursor`, joined to what was.
        self.written_from = if after_seq < self.next_seq {
            self.written_from.min(after_seq + 1)
        } else {
            after_seq + 1
        };
        self.next_seq = self.next_seq.max(cursor + 1);
    }

    /// The seq of the next durable event to write.
    #[cfg(test)]
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Events pushed past a gap, by seq, waiting for the missing ones.
#[derive(Debug)]
pub(crate) struct Held<T> {
    items: BTreeMap<u64, T>,
    /// When the gap before the first held event opened (or last narrowed).
    since: Option<Instant>,
}

impl<T> Held<T> {
    /// Nothing held (no allocation: idle sessions pay for none).
    pub(crate) fn new() -> Self {
        Held {
            items: BTreeMap::new(),
            since: None,
        }
    }

    /// Hold a pushed event whose seq is past a gap ([`Pushed::Gap`]); true when as many are
    /// held as may be, and the gap should be read from the store now.
    pub(crate) fn hold(&mut self, seq: u64, item: T, now: Instant) -> bool {
        self.items.insert(seq, item);
        self.since.get_or_insert(now);
        self.items.len() >= MAX_HELD
    }

    /// The held events that follow what was written now, in seq order (each marked written
    /// in `state`); those written meanwhile (by a `sync`, a fill) are dropped.
    pub(crate) fn release(&mut self, state: &mut SeqState, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(entry) = self.items.first_entry() {
            let seq = *entry.key();
            match state.pushed(seq) {
                Pushed::Drop => {
                    entry.remove();
                }
                Pushed::Write => out.push(entry.remove()),
                Pushed::Gap { .. } => break,
            }
        }
        if self.items.is_empty() {
            self.since = None;
        } else if !out.is_empty() {
            // The gap narrowed: the missing events are arriving, so the rest get their wait.
            self.since = Some(now);
        }
        out
    }

    /// When the gap must be read from the store, if events are held.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.since.map(|s| s + GAP_WAIT)
    }

    /// The store read that fills the gap up to the last held event: events with seq above
    /// `after`, at most `missing`.
    pub(crate) fn gap(&self, state: &SeqState) -> Option<(u64, usize)> {
        let last = *self.items.keys().next_back()?;
        let after = state.next_seq.saturating_sub(1);
        (last > after).then(|| (after, usize::try_from(last - after).unwrap_or(usize::MAX)))
    }

    /// After the store filled what it could ([`SeqState::filled`]): the held events still to
    /// write, in order. One past a gap the store could not fill is written anyway (the client
    /// finds what it lacks on `sync`).
    pub(crate) fn flush(&mut self, state: &mut SeqState) -> Vec<T> {
        self.since = None;
        std::mem::take(&mut self.items)
            .into_iter()
            .filter_map(|(seq, item)| state.gap_closed(seq).then_some(item))
            .collect()
    }

    /// How many events are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordered_pushes_are_held_then_written_in_order() {
        let now = Instant::now();
        let mut s = SeqState::new(10);
        let mut held = Held::new();
        assert_eq!(held.due(), None);
        // 12 and 13 arrive before 11.
        for seq in [12, 13] {
            assert!(matches!(s.pushed(seq), Pushed::Gap { .. }));
            assert!(!held.hold(seq, seq, now));
        }
        assert_eq!(held.due(), Some(now + GAP_WAIT));
        assert_eq!(
            held.release(&mut s, now),
            Vec::<u64>::new(),
            "11 is still missing"
        );
        assert_eq!(s.pushed(11), Pushed::Write);
        assert_eq!(held.release(&mut s, now), [12, 13]);
        assert_eq!(held.due(), None, "nothing held, nothing due");
        assert_eq!(s.pushed(13), Pushed::Drop, "a repeat is still dropped");
        assert_eq!(s.pushed(14), Pushed::Write);
    }

    #[test]
    fn a_narrowing_gap_restarts_the_wait() {
        let t0 = Instant::now();
        let mut s = SeqState::new(0);
        let mut held = Held::new();
        for seq in [2, 4] {
            assert!(matches!(s.pushed(seq), Pushed::Gap { .. }));
            held.hold(seq, seq, t0);
        }
        let later = t0 + Duration::from_millis(50);
        assert_eq!(s.pushed(1), Pushed::Write);
        assert_eq!(held.release(&mut s, later), [2]);
        assert_eq!(held.len(), 1);
        assert_eq!(held.due(), Some(later + GAP_WAIT));
        assert_eq!(held.gap(&s), Some((2, 2)), "3 and 4 read from the store");
    }

    #[test]
    fn a_gap_still_open_at_the_deadline_is_read_then_the_held_are_written() {
        let now = Instant::now();
        let mut s = SeqState::new(0);
        let mut held = Held::new();
        assert_eq!(s.pushed(1), Pushed::Write);
        for seq in [3, 5] {
            assert!(matches!(s.pushed(seq), Pushed::Gap { .. }));
            held.hold(seq, seq, now);
        }
        assert_eq!(held.gap(&s), Some((1, 4)));
        // The store had 2 and 3 (the held 3 is not written twice); 4 is gone for good.
        s.filled(2);
        s.filled(3);
        assert_eq!(held.flush(&mut s), [5]);
        assert_eq!(held.due(), None);
        assert_eq!(s.next_seq(), 6);
        assert_eq!(s.pushed(4), Pushed::Drop);
    }

    #[test]
    fn a_full_hold_asks_for_the_store_at_once() {
        let now = Instant::now();
        let mut s = SeqState::new(0);
        let mut held = Held::new();
        let mut full = false;
        for seq in 2..(2 + MAX_HELD as u64) {
            assert!(matches!(s.pushed(seq), Pushed::Gap { .. }));
            full = held.hold(seq, (), now);
        }
        assert!(full);
        assert_eq!(held.gap(&s), Some((0, MAX_HELD + 1)));
    }

    #[test]
    fn a_sync_past_the_held_events_drops_them() {
        let now = Instant::now();
        let mut s = SeqState::new(0);
        let mut held = Held::new();
        assert!(matches!(s.pushed(3), Pushed::Gap { .. }));
        held.hold(3, 3, now);
        s.synced(0, 3);
        assert_eq!(held.release(&mut s, now), Vec::<u64>::new());
        assert_eq!(held.due(), None);
    }

    #[test]
    fn live_events_are_written_once_in_order() {
        let mut s = SeqState::new(4);
        assert_eq!(s.pushed(5), Pushed::Write);
        assert_eq!(s.pushed(5), Pushed::Drop, "a repeat");
        assert_eq!(s.pushed(3), Pushed::Drop, "older than hello");
        assert_eq!(s.pushed(6), Pushed::Write);
        assert_eq!(s.next_seq(), 7);
    }

    #[test]
    fn a_gap_is_filled_from_the_store_first() {
        let mut s = SeqState::new(0);
        assert_eq!(s.pushed(1), Pushed::Write);
        // 2 and 3 were lost; 4 arrives.
        assert_eq!(
            s.pushed(4),
            Pushed::Gap {
                after: 1,
                missing: 3
            }
        );
        // The store returned 2, 3 and 4: the pushed 4 is not written again.
        for seq in [2, 3, 4] {
            s.filled(seq);
        }
        assert!(!s.gap_closed(4));
        assert_eq!(s.pushed(4), Pushed::Drop);
        assert_eq!(s.pushed(5), Pushed::Write);
    }

    #[test]
    fn a_gap_the_store_cannot_fill_still_writes_the_pushed_event() {
        let mut s = SeqState::new(0);
        assert!(matches!(
            s.pushed(3),
            Pushed::Gap {
                after: 0,
                missing: 3
            }
        ));
        // The store failed (or lagged): nothing filled.
        assert!(s.gap_closed(3), "the pushed event is written");
        assert_eq!(s.next_seq(), 4);
        assert_eq!(
            s.pushed(2),
            Pushed::Drop,
            "later arrivals of older seqs are dropped"
        );
    }

    /// The double-write the cluster test once found: events pushed live after `hello` and
    /// before the client's `sync` are not written a second time by the replay.
    #[test]
    fn sync_skips_what_was_pushed_after_hello() {
        let mut s = SeqState::new(10);
        assert_eq!(s.pushed(11), Pushed::Write);
        assert_eq!(s.pushed(12), Pushed::Write);
        // The client had processed up to 8: the replay brings 9..=12, of which 11 and 12
        // were written already.
        let written = s.written();
        let replayed: Vec<u64> = (9..=12).filter(|seq| !written.contains(seq)).collect();
        assert_eq!(replayed, [9, 10]);
        s.synced(8, 12);
        assert_eq!(s.written(), 9..13);
        // A second sync from 8 writes nothing again.
        let written = s.written();
        assert!((9..=12).all(|seq| written.contains(&seq)));
        assert_eq!(s.pushed(13), Pushed::Write);
    }

    #[test]
    fn sync_past_what_was_written_moves_on() {
        let mut s = SeqState::new(3);
        // The client syncs from 5 (it saw 4 and 5 on another session): 6..=7 replayed.
        s.synced(5, 7);
        assert_eq!(s.written(), 6..8);
        assert_eq!(s.pushed(7), Pushed::Drop);
        assert_eq!(s.pushed(8), Pushed::Write);
        // A sync from the start rewrites only what this session did not write.
        let written = s.written();
        let replayed: Vec<u64> = (1..=8).filter(|seq| !written.contains(seq)).collect();
        assert_eq!(replayed, [1, 2, 3, 4, 5]);
        s.synced(0, 8);
        assert_eq!(s.written(), 1..9);
    }
}
