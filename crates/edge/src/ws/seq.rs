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

use std::ops::Range;

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

#[cfg(test)]
mod tests {
    use super::*;

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
