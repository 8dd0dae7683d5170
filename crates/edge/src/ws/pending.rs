//! Requests forwarded to `main` that await their reply, each with a deadline
//! (`request_timeout` after it was forwarded). A request overdue is answered `internal` by
//! the session and forgotten, so its reply, if it comes later, is dropped: every request
//! with an id gets exactly one reply. Plain state on tokio's clock, unit-tested on paused
//! time. It also keeps the edge's [`Admission`] informed: what is in flight, and how long
//! replies take.

use crate::admission::Admission;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A session's requests awaiting a reply: request id → deadline.
pub(super) struct Pending {
    timeout: Duration,
    deadlines: HashMap<String, Instant>,
    admission: Arc<Admission>,
}

impl Pending {
    /// Nothing pending; each request will wait `timeout` for its reply.
    pub(super) fn new(timeout: Duration, admission: Arc<Admission>) -> Self {
        Pending {
            timeout,
            deadlines: HashMap::new(),
            admission,
        }
    }

    /// Request `id` was forwarded at `now`.
    pub(super) fn forwarded(&mut self, id: String, now: Instant) {
        if self.deadlines.insert(id, now + self.timeout).is_none() {
            self.admission.forwarded();
        }
    }

    /// Request `id` never reached the queue (it refused the write): it is answered at once,
    /// and awaited no more.
    pub(super) fn withdraw(&mut self, id: &str) {
        if self.deadlines.remove(id).is_some() {
            self.admission.abandoned(1);
        }
    }

    /// A reply to `id` came: whether it is to be written (the request was still awaited; it
    /// no longer is). A reply after the deadline, or a second one, is not.
    pub(super) fn answered(&mut self, id: &str) -> bool {
        match self.deadlines.remove(id) {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.admission.answered(self.timeout.saturating_sub(left));
                true
            }
            None => false,
        }
    }

    /// The earliest deadline of a request still awaited.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }

    /// The requests whose deadline has come by `now`, no longer awaited: the session
    /// answers each `internal`.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<String> {
        let mut overdue = Vec::new();
        self.deadlines.retain(|id, deadline| {
            let due = *deadline <= now;
            if due {
                overdue.push(id.clone());
            }
            !due
        });
        for _ in &overdue {
            self.admission.answered(self.timeout);
        }
        overdue
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.admission.abandoned(self.deadlines.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn admission() -> Arc<Admission> {
        Arc::new(Admission::new(1000, Duration::from_secs(1), None))
    }

    /// A request with no reply is overdue when the timeout has passed, not before, and
    /// once; a reply coming after that is dropped.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_is_overdue_once_after_the_timeout() {
        let mut pending = Pending::new(TIMEOUT, admission());
        pending.forwarded("r1".into(), Instant::now());
        advance(TIMEOUT - Duration::from_millis(1)).await;
        assert!(pending.overdue(Instant::now()).is_empty());
        advance(Duration::from_millis(1)).await;
        assert_eq!(pending.overdue(Instant::now()), ["r1"]);
        assert!(pending.overdue(Instant::now()).is_empty(), "answered once");
        assert_eq!(pending.next_deadline(), None, "nothing left to wait for");
        advance(TIMEOUT).await;
        assert!(!pending.answered("r1"), "the late reply is dropped");
    }

    /// A reply in time is written once and ends the wait; each request has its own deadline.
    #[tokio::test(start_paused = true)]
    async fn a_reply_in_time_ends_the_wait() {
        let mut pending = Pending::new(TIMEOUT, admission());
        pending.forwarded("r1".into(), Instant::now());
        advance(Duration::from_secs(4)).await;
        pending.forwarded("r2".into(), Instant::now());
        let first = pending.next_deadline().expect("r1 awaited");
        advance(Duration::from_secs(5)).await;
        assert!(pending.answered("r1"));
        assert!(
            pending.next_deadline().expect("r2 awaited") > first,
            "the earliest deadline is r2's once r1 is answered"
        );
        assert!(!pending.answered("r1"), "a second reply is dropped");
        assert!(!pending.answered("r3"), "no such request");
        advance(Duration::from_secs(1)).await;
        assert!(
            pending.overdue(Instant::now()).is_empty(),
            "r1 was answered"
        );
        advance(Duration::from_secs(4)).await;
        assert_eq!(pending.overdue(Instant::now()), ["r2"]);
    }

    /// The edge's count of writes in flight follows the session's: up on forward, down on a
    /// reply, a timeout, or the session's end.
    #[tokio::test(start_paused = true)]
    async fn the_edge_counts_what_is_in_flight() {
        let a = admission();
        let mut pending = Pending::new(TIMEOUT, a.clone());
        for id in ["r1", "r2", "r3"] {
            pending.forwarded(id.into(), Instant::now());
        }
        pending.forwarded("r3".into(), Instant::now());
        assert_eq!(a.inflight(), 3, "a repeated id counts once");
        assert!(pending.answered("r1"));
        assert_eq!(a.inflight(), 2);
        advance(TIMEOUT).await;
        assert_eq!(pending.overdue(Instant::now()).len(), 2);
        assert_eq!(a.inflight(), 0);
        assert!(
            a.admit(std::time::Instant::now()).is_ok(),
            "nothing in flight: admitted"
        );
        pending.forwarded("r4".into(), Instant::now());
        assert!(
            a.admit(std::time::Instant::now()).is_err(),
            "replies took the full timeout: behind"
        );
        drop(pending);
        assert_eq!(a.inflight(), 0, "the session's end settles its requests");
    }
}
