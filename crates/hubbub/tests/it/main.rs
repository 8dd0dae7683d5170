//! End-to-end tests: the real server started in-process on 127.0.0.1:0, spoken to over real
//! HTTP and WebSockets. One binary for all of them (one link step). The roles-apart tests
//! (`apart`, `cluster`, `outage`) need the `cluster` feature and the Redis and PostgreSQL
//! servers `scripts/test` starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "cluster")]
mod apart;
mod auth;
mod bad_input;
mod browser;
mod channels;
mod chat;
mod cli;
#[cfg(feature = "cluster")]
mod cluster;
mod contacts;
mod control;
mod crash;
mod dashboard;
mod demo;
mod deploy;
mod engagement;
mod feed;
mod lifecycle;
mod media;
mod messages;
mod moderation;
mod notify;
#[cfg(feature = "cluster")]
mod outage;
mod overload;
mod security;
mod server_api;
mod signals;
mod support;
mod webhooks;
