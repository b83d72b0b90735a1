//! The shape check: proof, before an outage needs it, that recovered
//! messages look like live ones.
//!
//! gapwatch keeps a small sample of live messages per feed (`sample`: bodies
//! and message attributes as the relay forwarded them, or as a report-mode
//! app sent them along; in memory and in the store). Every `shape.every`, and
//! on `gapwatch check-shape`, it finds those records at the source, renders
//! them exactly as a fill would, and compares (`diff`: JSON structure and
//! values, ignoring the envelope's fresh ids and times and `shape.ignore`;
//! then attributes, `gapwatch-*` apart). `check` is one check; `checker` the
//! daemon task that saves the sample and runs checks on a timer.
//!
//! Outcomes: `match` (every record found renders as its live message),
//! `mismatch` (at least one differs: the first difference, its path and both
//! values go to `/api/v1/feeds`, the log and `gapwatch_shape_mismatch`), or
//! `unavailable` (nothing compared: no sample yet, the source not reachable,
//! the sampled records not listed).

pub(crate) mod check;
pub(crate) mod checker;
pub(crate) mod diff;
pub(crate) mod sample;

pub(crate) use check::{check, Part, ShapeReport, ShapeStatus};
pub(crate) use checker::ShapeChecker;
pub(crate) use diff::Attribute;
pub(crate) use sample::{LiveMessage, Sampler};
