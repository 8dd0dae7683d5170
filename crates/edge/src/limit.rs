//! Rate limits: a token bucket, and a keyed set of buckets (per IP, per handle) whose memory
//! is bounded however many keys a client makes up.
//!
//! Time is tokio's clock, so tests run these on paused time.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use tokio::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst.max(1)),
            rate: rate.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take a token, or say how many milliseconds until one is there.
    pub(crate) fn take(&mut self) -> Result<(), u64> {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }

    /// Whether the bucket is full again (it then says nothing a new bucket would not).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One token bucket per key, for at most `max_keys` keys at once.
///
/// When the map is full, buckets that have refilled are dropped (a new bucket for the same
/// key would be the same); if every bucket is still in use, the map is cleared. A client
/// spraying keys can thus at worst reset limits, never grow memory.
#[derive(Debug)]
pub(crate) struct KeyedLimiter<K> {
    buckets: Mutex<HashMap<K, TokenBucket>>,
    rate: f64,
    burst: u32,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_minute` tokens a minute for each key, bursts of `burst`.
    pub(crate) fn per_minute(per_minute: u32, burst: u32, max_keys: usize) -> Self {
        KeyedLimiter {
            buckets: Mutex::new(HashMap::new()),
            rate: f64::from(per_minute.max(1)) / 60.0,
            burst,
            max_keys: max_keys.max(1),
        }
    }

    /// Take a token for `key`, or say how many milliseconds until one is there.
    pub(crate) fn take(&self, key: &K) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.max_keys {
            let now = Instant::now();
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= self.max_keys {
                map.clear();
            }
        }
        map.entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .take()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_its_rate() {
        let mut b = TokenBucket::new(2.0, 3);
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        assert_eq!(b.take(), Err(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.take().is_ok());
        assert!(b.take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_limited_apart_and_memory_is_bounded() {
        let l: KeyedLimiter<String> = KeyedLimiter::per_minute(60, 2, 100);
        let (a, b) = ("a".to_owned(), "b".to_owned());
        assert!(l.take(&a).is_ok());
        assert!(l.take(&a).is_ok());
        let wait = l.take(&a).expect_err("a is out of tokens");
        assert!((1..=1000).contains(&wait), "{wait}");
        assert!(l.take(&b).is_ok(), "another key has its own bucket");
        let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        for k in &keys {
            let _ = l.take(k);
            assert!(l.len() <= 100);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.take(&keys[0]).is_ok());
    }

    /// However long a bucket idles, it saves up `burst` tokens, no more.
    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_saves_up_to_its_burst() {
        let mut b = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            assert!(b.take().is_ok());
        }
        assert_eq!(b.take(), Err(100));
    }

    /// When the map is full, only buckets that have refilled are dropped: a key still short
    /// of tokens keeps its limit.
    #[tokio::test(start_paused = true)]
    async fn a_full_map_drops_only_refilled_buckets() {
        // One token a second, bursts of 2, two keys.
        let l: KeyedLimiter<&str> = KeyedLimiter::per_minute(60, 2, 2);
        assert!(l.take(&"a").is_ok());
        assert!(l.take(&"a").is_ok());
        assert!(l.take(&"b").is_ok());
        // b is full again after 1 s; a, emptied, is not before 2 s.
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(l.take(&"c").is_ok());
        assert_eq!(l.len(), 2, "b made room for c");
        assert!(l.take(&"a").is_ok(), "1.5 tokens saved up");
        assert_eq!(l.take(&"a"), Err(500), "a kept its bucket");
    }
}
