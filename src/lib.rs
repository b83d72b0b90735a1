//! gapwatch: guards a real-time data feed delivered through SQS. It measures the
//! feed's freshness, detects gaps, and recovers them from the vendor's REST API.
//!
//! The tree follows the data flow: `watch` (signals: relay, report, passive) →
//! `detector` (pure gap state machine) → `store` (SQLite) → `fill` (source API →
//! sink). `feed` runs one feed's loop; `api` serves HTTP; `cli` is the command line.
//!
//! # Public surface
//!
//! gapwatch is a binary; this library target exists so `main.rs` stays tiny.
//! Its whole public API is [`cli::Cli`] (the parsed command line) and
//! [`cli::main`] (runs it). Integration tests, the bench and the vendor
//! simulator talk to the `gapwatch` binary only (its CLI, HTTP API, metrics
//! and logs), never to this crate. Everything else is `pub(crate)`, and
//! `unreachable_pub` keeps it so: the compiler then sees, and reports, code
//! nothing uses.

#![warn(unreachable_pub)]

pub(crate) mod api;
pub(crate) mod audit;
pub(crate) mod aws;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod detector;
pub(crate) mod envelope;
pub(crate) mod feed;
pub(crate) mod fill;
pub(crate) mod health;
pub(crate) mod internal_events;
pub(crate) mod jq;
pub(crate) mod lease;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod observe;
pub(crate) mod redact;
pub(crate) mod retry;
pub(crate) mod server;
pub(crate) mod shape;
pub(crate) mod store;
pub(crate) mod supervise;
pub(crate) mod timefmt;
pub(crate) mod watch;
