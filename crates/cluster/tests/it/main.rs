//! Integration tests of the cluster crate, in one binary (one link step): each implementation
//! against its trait's conformance suite, on the real Redis server `scripts/test` starts
//! (`HUBBUB_TEST_REDIS_URL`), each test in its own key namespace: the queue and the log
//! (`queue`), the registry and the timeline cache (`backends`), the edge link
//! (`edge_link`), presence and typing (`signals`), engagement (`engagement`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backends;
mod edge_link;
mod engagement;
mod queue;
mod signals;
mod support;
