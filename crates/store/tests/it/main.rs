//! Integration tests of the store crate, in one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod media;
mod migrations;
mod moderation;
mod postgres_commit;
mod runs;
mod webhooks;
