//! Integration tests of the queue crate, in one binary (one link step).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod crash;
mod embedded;
mod model;
