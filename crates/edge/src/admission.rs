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
//!
//! A reply comes when a write is committed, before its events reach the recipients'
//! sockets, so a backlog in delivery (a big group past what the machine can push) is not in
//! the reply time. The edge also counts, per [`WINDOW`] of its own monotonic clock, the
//! sessions that wrote events of writes this edge accepted, and how many of them wrote some
//! more than `max_delivery` after acceptance (late). While most such sessions are late, in
//! the current window or the one before, and at least [`MIN_LATE`] are, writes are refused.
//! It counts sessions, not events or batches: one slow client, or one event redelivered
//! after a crash, is one late session among many on time. Events of writes accepted by other
//! edges do not count: their acceptance time is another machine's clock. With writes
//! refused, nothing new is delivered; once a whole window passes without a late majority,
//! writes are admitted again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The span over which sessions' lateness is counted.
pub(crate) const WINDOW: Duration = Duration::from_millis(500);

/// The fewest late sessions that refuse writes (a handful of sessions late on a quiet edge
/// is noise, not a backlog).
pub(crate) const MIN_LATE: u32 = 3;

/// The weight of the newest reply time in the moving average (1/8, as TCP's SRTT).
const EWMA_SHIFT: u32 = 3;

/// An edge's writes in flight, how long their replies take, and how late its sessions'
/// events are.
#[derive(Debug)]
pub(crate) struct Admission {
    max_inflight: usize,
    max_wait: Duration,
    /// Events written later than this after acceptance make their session late (`None`:
    /// delivery is not watched).
    max_delivery: Option<Duration>,
    inflight: AtomicUsize,
    /// The moving average of reply times, in microseconds.
    average_us: AtomicU64,
    /// Where [`WINDOW`]s are counted from.
    start: Instant,
    lateness: Mutex<Lateness>,
}

/// Sessions that delivered, and those late, in the current window and the one before.
#[derive(Debug, Default)]
struct Lateness {
    /// The current window's number.
    window: u64,
    now: Count,
    before: Count,
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    active: u32,
    late: u32,
}

impl Count {
    fn behind(&self) -> bool {
        self.late >= MIN_LATE && self.late * 2 > self.active
    }
}

/// A session's part in the lateness count: the window it last counted itself in, and
/// whether as late (each session counts once per window; on time first, late at most once
/// more).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LateMark {
    window: Option<u64>,
    late: bool,
}

impl Admission {
    /// Admit while fewer than `max_inflight` writes are in flight, replies take less than
    /// `max_wait` on average, and (with `max_delivery`) most sessions receive their events
    /// within `max_delivery` of acceptance.
    pub(crate) fn new(
        max_inflight: usize,
        max_wait: Duration,
        max_delivery: Option<Duration>,
    ) -> Self {
        Admission {
            max_inflight: max_inflight.max(1),
            max_wait,
            max_delivery,
            inflight: AtomicUsize::new(0),
            average_us: AtomicU64::new(0),
            start: Instant::now(),
            lateness: Mutex::new(Lateness::default()),
        }
    }

    fn window(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.start).as_millis() / WINDOW.as_millis()) as u64
    }

    /// Whether a write may be accepted `now`; if not, when to try again.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), Duration> {
        if self.max_delivery.is_some() {
            let w = self.window(now);
            let l = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
            // The last window with a late majority, if it is this one or the one before:
            // writes are refused through the window after it.
            let last_late = if l.window == w && l.now.behind() {
                Some(w)
            } else if (l.window == w && l.before.behind()) || (l.window + 1 == w && l.now.behind())
            {
                Some(w.saturating_sub(1))
            } else {
                None
            };
            let until = last_late.map(|last| last + 2);
            if let Some(until) = until {
                let end = self.start + WINDOW * until as u32;
                return Err(end
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(100)));
            }
        }
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

    /// A session wrote events `at`, accepted by this edge `age` before; `mark` is the
    /// session's own.
    pub(crate) fn delivered(&self, mark: &mut LateMark, age: Duration, at: Instant) {
        let Some(max) = self.max_delivery else {
            return;
        };
        let late = age > max;
        let w = self.window(at);
        if mark.window == Some(w) && (mark.late || !late) {
            return; // counted already in this window
        }
        let mut l = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
        if w > l.window {
            l.before = if w == l.window + 1 {
                l.now
            } else {
                Count::default()
            };
            l.now = Count::default();
            l.window = w;
        } else if w < l.window {
            return; // a session that measured before another moved the window on
        }
        if mark.window != Some(w) {
            l.now.active += 1;
        }
        if late {
            l.now.late += 1;
        }
        *mark = LateMark {
            window: Some(w),
            late,
        };
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
        let a = Admission::new(2, WAIT, None);
        assert!(a.admit(Instant::now()).is_ok());
        a.forwarded();
        assert!(a.admit(Instant::now()).is_ok());
        a.forwarded();
        let retry = a.admit(Instant::now()).expect_err("two in flight of two");
        assert!(retry >= Duration::from_millis(100));
        a.answered(Duration::from_millis(10));
        assert!(a.admit(Instant::now()).is_ok());
        a.abandoned(5);
        assert_eq!(a.inflight(), 0, "never below zero");
    }

    #[test]
    fn slow_replies_shed_while_anything_is_in_flight() {
        let a = Admission::new(1000, WAIT, None);
        a.forwarded();
        a.forwarded();
        // Replies taking 2 s: the average passes the wait at once (the first sample sets it).
        a.answered(Duration::from_secs(2));
        assert!(
            a.admit(Instant::now()).is_err(),
            "behind: refuse while one is in flight"
        );
        // The last one answered: nothing in flight, the next write is a probe.
        a.answered(Duration::from_secs(2));
        assert!(a.admit(Instant::now()).is_ok());
        // Fast replies bring the average back down under the wait.
        a.forwarded();
        for _ in 0..40 {
            a.forwarded();
            a.answered(Duration::from_millis(5));
        }
        assert!(a.admit(Instant::now()).is_ok(), "caught up");
    }

    const LATE: Duration = Duration::from_millis(300);

    /// `n` sessions each write one batch `age` old at `at`.
    fn sessions(a: &Admission, marks: &mut [LateMark], age: Duration, at: Instant) {
        for m in marks.iter_mut() {
            a.delivered(m, age, at);
        }
    }

    #[test]
    fn a_late_majority_of_sessions_refuses_writes_until_a_window_passes_on_time() {
        let a = Admission::new(1000, WAIT, Some(LATE));
        let t0 = a.start;
        let mut marks = vec![LateMark::default(); 10];
        sessions(&a, &mut marks, Duration::from_millis(20), t0);
        assert!(a.admit(t0).is_ok(), "on time");
        // Two late sessions of ten: not a backlog (and under MIN_LATE).
        sessions(&a, &mut marks[..2], Duration::from_secs(2), t0);
        assert!(a.admit(t0).is_ok(), "a few slow sessions");
        // One session late again and again counts once.
        for _ in 0..20 {
            a.delivered(&mut marks[0], Duration::from_secs(2), t0);
        }
        assert!(
            a.admit(t0).is_ok(),
            "one session is one, however many batches"
        );
        // Six of ten late: refused, for the rest of this window and the next.
        sessions(&a, &mut marks[2..6], Duration::from_secs(2), t0);
        let retry = a.admit(t0).expect_err("most sessions are late");
        assert!(retry >= WINDOW && retry <= WINDOW * 2, "{retry:?}");
        assert!(a.admit(t0 + WINDOW).is_err(), "the window after");
        // Nothing delivered since: admitted once that window is over.
        assert!(
            a.admit(t0 + WINDOW * 2).is_ok(),
            "a window without lateness"
        );
        // Late in window 4, on time in window 5: refused through 5, admitted in 6.
        let t4 = t0 + WINDOW * 4;
        sessions(&a, &mut marks, Duration::from_secs(1), t4);
        assert!(a.admit(t4).is_err());
        let t5 = t0 + WINDOW * 5;
        sessions(&a, &mut marks, Duration::from_millis(5), t5);
        assert!(a.admit(t5).is_err(), "the window after a late one");
        sessions(&a, &mut marks, Duration::from_millis(5), t0 + WINDOW * 6);
        assert!(a.admit(t0 + WINDOW * 6).is_ok(), "caught up");
    }

    #[test]
    fn without_a_delivery_bound_lateness_is_not_watched() {
        let a = Admission::new(1000, WAIT, None);
        let mut marks = vec![LateMark::default(); 10];
        sessions(&a, &mut marks, Duration::from_secs(60), a.start);
        assert!(a.admit(a.start).is_ok());
    }
}
