//! End-to-end tests: the real server started in-process on 127.0.0.1:0, spoken to over real
//! HTTP and WebSockets. One binary for all of them (one link step).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apart;
mod auth;
mod bad_input;
mod chat;
mod cli;
mod cluster;
mod crash;
mod deploy;
mod engagement;
mod feed;
mod lifecycle;
mod media;
mod notify;
mod outage;
mod security;
mod signals;
mod support;
