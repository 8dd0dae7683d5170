//! Per-connection counting: frames within the current second (the 1008 cut-off), and a
//! session's acks, coalesced so a flood of them costs at most one store write in flight and
//! one every [`ACK_FLUSH_EVERY`]. Plain state on tokio's clock, unit-tested on paused time.

use crate::limit::TokenBucket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A session's acks reach the store at most this often (only the highest is written).
pub(crate) const ACK_FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Counts frames within the current second.
pub(super) struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    pub(super) fn new() -> Self {
        Window {
            start: Instant::now(),
            count: 0,
        }
    }
    /// Count one; the count within this second.
    pub(super) fn count(&mut self) -> u32 {
        let now = Instant::now();
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count
    }
}

/// A session's acks: the highest seen, the highest written, and whether a write is in
/// flight.
pub(super) struct Acks {
    /// The highest acked seq (what the next write records).
    pub(super) highest: u64,
    /// The highest seq handed to the store.
    pub(super) written: u64,
    /// Set while a store write is in flight: at most one per session.
    pub(super) writing: Arc<AtomicBool>,
    /// When the next write may start, while one is due.
    pub(super) due: Option<Instant>,
    last_write: Option<Instant>,
    pub(super) bucket: TokenBucket,
    pub(super) window: Window,
}

impl Acks {
    pub(super) fn new(acks_per_s: u32) -> Self {
        Acks {
            highest: 0,
            written: 0,
            writing: Arc::new(AtomicBool::new(false)),
            due: None,
            last_write: None,
            bucket: TokenBucket::new(f64::from(acks_per_s.max(1)), acks_per_s),
            window: Window::new(),
        }
    }

    /// Record an ack; a write becomes due (at once, or [`ACK_FLUSH_EVERY`] after the last).
    pub(super) fn record(&mut self, seq: u64, now: Instant) {
        if seq <= self.highest {
            return;
        }
        self.highest = seq;
        if self.due.is_none() {
            let earliest = self
                .last_write
                .map_or(now, |t| (t + ACK_FLUSH_EVERY).max(now));
            self.due = Some(earliest);
        }
    }

    /// The seq to write now, if one is due and no write is in flight (the caller clears
    /// `writing` when its write ends); otherwise the write is put off.
    pub(super) fn flush(&mut self, now: Instant) -> Option<u64> {
        self.due = None;
        if self.highest <= self.written {
            return None;
        }
        if self.writing.swap(true, Ordering::AcqRel) {
            self.due = Some(now + ACK_FLUSH_EVERY);
            return None;
        }
        self.written = self.highest;
        self.last_write = Some(now);
        Some(self.highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of rising acks becomes a handful of writes, one at a time, and the last write
    /// records the highest ack.
    #[tokio::test(start_paused = true)]
    async fn acks_are_coalesced() {
        let mut acks = Acks::new(1_000_000);
        let start = Instant::now();
        let mut writes = Vec::new();
        for seq in 1..=100_000u64 {
            // 100,000 acks over one second.
            let now = start + Duration::from_micros(seq * 10);
            acks.record(seq, now);
            if acks.due.is_some_and(|d| d <= now)
                && let Some(s) = acks.flush(now)
            {
                writes.push((now, s));
                // The write ends at once, except every third one, still in flight at the
                // next due time (the next flush must wait for it).
                if writes.len() % 3 != 0 {
                    acks.writing.store(false, Ordering::Release);
                }
            }
            if writes.len() % 3 == 0 && acks.due.is_some_and(|d| d <= now) {
                acks.writing.store(false, Ordering::Release);
            }
        }
        let end = start + Duration::from_secs(2);
        acks.writing.store(false, Ordering::Release);
        if let Some(s) = acks.flush(end) {
            writes.push((end, s));
        }
        assert!(writes.len() <= 10, "{} writes", writes.len());
        assert_eq!(writes.last().map(|w| w.1), Some(100_000));
        for pair in writes.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= ACK_FLUSH_EVERY,
                "writes too close: {pair:?}"
            );
            assert!(pair[1].1 > pair[0].1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_ack_changes_nothing() {
        let mut acks = Acks::new(100);
        let now = Instant::now();
        acks.record(5, now);
        assert_eq!(acks.flush(now), Some(5));
        acks.writing.store(false, Ordering::Release);
        acks.record(3, now);
        assert_eq!(acks.due, None);
        assert_eq!(acks.flush(now), None);
    }
}
