//! gapwatch: guards a real-time data feed delivered through SQS. It measures the
//! feed's freshness, detects gaps, and recovers them from the vendor's REST API.
//!
//! The tree follows the data flow: `watch` (signals: relay, report, passive) →
//! `detector` (pure gap state machine) → `store` (SQLite) → `fill` (source API →
//! sink). `feed` runs one feed's loop; `api` serves HTTP; `cli` is the command line.

pub mod api;
pub mod audit;
pub mod aws;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod detector;
pub mod envelope;
pub mod feed;
pub mod fill;
pub mod health;
pub mod jq;
pub mod lease;
pub mod metrics;
pub mod observe;
pub mod redact;
pub mod retry;
pub mod server;
pub mod shape;
pub mod store;
pub mod supervise;
pub mod timefmt;
pub mod watch;
