//! Integration tests of the cluster crate, in one binary (one link step): each implementation
//! against its trait's conformance suite, on the real Redis server `scripts/test` starts
//! (`HUBBUB_TEST_REDIS_URL`), each test in its own key namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backends;
mod queue;
