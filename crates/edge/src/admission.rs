//! Admission control of writes: past capacity, a write is refused at once (`rate_limited`
//! with `retry_after_ms`, nothing accepted) rather than queued behind a backlog it would wait
//! out into `internal`.
//!
//! The edge knows two things about its writes without asking anyone: how many it forwarded
//! to `main` that await their reply (in flight), and how long replies take (a moving average,
//! a request answered by the timeout counting as the full timeout). A write is admitted
//! unless the edge has `max_inflight` writes in flight, or the average reply time is over
//! `max_wait` while any write is in flight: then the services are behind, and what is
//! accepted now would only wait longer. With nothing in flight the next write is always
//! admitted, so the average learns again once the backlog is gone. Accepted writes keep
//! their latency; refused ones cost the client one round trip.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The weight of the newest reply time in the moving average (1/8, as TCP's SRTT).
const EWMA_SHIFT: u32 = 3;

/// An edge's writes in flight and how long their replies take.
#[derive(Debug)]
pub(crate) struct Admission {
    max_inflight: usize,
    max_wait: Duration,
    inflight: AtomicUsize,
    /// The moving average of reply times, in microseconds.
    average_us: AtomicU64,
}

impl Admission {
    /// Admit while fewer than `max_inflight` writes are in flight and replies take less than
    /// `max_wait` on average.
    pub(crate) fn new(max_inflight: usize, max_wait: Duration) -> Self {
        Admission {
            max_inflight: max_inflight.max(1),
            max_wait,
            inflight: AtomicUsize::new(0),
            average_us: AtomicU64::new(0),
        }
    }

    /// Whether a write may be accepted now; if not, when to try again.
    pub(crate) fn admit(&self) -> Result<(), Duration> {
        let inflight = self.inflight.load(Ordering::Relaxed);
        if inflight == 0 {
            return Ok(());
        }
        let average = Duration::from_micros(self.average_us.load(Ordering::Relaxed));
        if inflight >= self.max_inflight || average > self.max_wait {
            // Long enough for the backlog to move, short enough to look again soon.
            return Err(average.clamp(Duration::from_millis(100), Duration::from_secs(5)));
        }
        Ok(())
    }

    /// A write was forwarded and awaits its reply.
    pub(crate) fn forwarded(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    /// A write's reply came after `took` (or the timeout passed: `took` is the timeout).
    pub(crate) fn answered(&self, took: Duration) {
        self.settle(1);
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        // A lost update under a race only weights one sample differently.
        let old = self.average_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT)
        };
        self.average_us.store(new, Ordering::Relaxed);
    }

    /// `n` writes in flight will never be answered here (their session ended).
    pub(crate) fn abandoned(&self, n: usize) {
        self.settle(n);
    }

    fn settle(&self, n: usize) {
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Writes in flight now.
    #[cfg(test)]
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(500);

    #[test]
    fn a_cap_on_writes_in_flight() {
        let a = Admission::new(2, WAIT);
        assert!(a.admit().is_ok());
        a.forwarded();
        assert!(a.admit().is_ok());
        a.forwarded();
        let retry = a.admit().expect_err("two in flight of two");
        assert!(retry >= Duration::from_millis(100));
        a.answered(Duration::from_millis(10));
        assert!(a.admit().is_ok());
        a.abandoned(5);
        assert_eq!(a.inflight(), 0, "never below zero");
    }

    #[test]
    fn slow_replies_shed_while_anything_is_in_flight() {
        let a = Admission::new(1000, WAIT);
        a.forwarded();
        a.forwarded();
        // Replies taking 2 s: the average passes the wait at once (the first sample sets it).
        a.answered(Duration::from_secs(2));
        assert!(a.admit().is_err(), "behind: refuse while one is in flight");
        // The last one answered: nothing in flight, the next write is a probe.
        a.answered(Duration::from_secs(2));
        assert!(a.admit().is_ok());
        // Fast replies bring the average back down under the wait.
        a.forwarded();
        for _ in 0..40 {
            a.forwarded();
            a.answered(Duration::from_millis(5));
        }
        assert!(a.admit().is_ok(), "caught up");
    }
}
