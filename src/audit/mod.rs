//! The completeness audit: for settled windows inside the lookback, list the
//! vendor's records through the feed's own source (same pagination, same rate
//! limit, after the fills), compare their ids with the ledger of what reached
//! the destination, deliver exactly the missing ones through the sink, and
//! move the feed's `verified_until` watermark.
//!
//! `window` is the pure core (which window is due, how the watermark moves);
//! `auditor` carries it out; `ledger` writes the ids the feed relayed or had
//! reported; `listing` compares without delivering (`gapwatch audit --dry-run`).
//!
//! An audit window is delivered as a fill of owner `audit`: the filler pages
//! it with per-page checkpoints and drops every id the ledger already holds,
//! so what it delivers is exactly what was missing, resumably after a crash.

pub(crate) mod auditor;
pub(crate) mod ledger;
pub(crate) mod listing;
pub(crate) mod window;

pub(crate) use auditor::{prune_loop, Auditor};
pub(crate) use listing::list_missing;

/// The gap owner of audit windows (kept out of gap listings and unfilled time).
pub(crate) const OWNER: &str = "audit";
