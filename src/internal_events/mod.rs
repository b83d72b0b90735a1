//! One event per state change or error, as in Vector's `internal_events`:
//! each struct's `emit` writes its one log line (rate-limited where it
//! repeats) and moves its series, so a log line and its metric cannot drift
//! apart. Call sites build the event and hand it to
//! [`Metrics::emit`](crate::metrics::Metrics::emit); no other code touches a
//! metric family (see [`crate::metrics`]).
//!
//! A file per subsystem: `feed` (observations, gaps, freshness),
//! `partitions` (the vendor's listing), `fill` (source requests, chunks,
//! fills), `relay`, `queues` (queue attributes and CloudWatch), `aws`,
//! `audit`, `shape`, `lease`, `task` (supervision), `daemon` (readiness),
//! `store`, `input` (refused input without a log line of its own).
//!
//! Log lines keep their message text, fields and `target` (the module that
//! wrote them before these events existed): operators and tests grep them.

mod audit;
mod aws;
mod daemon;
mod feed;
mod fill;
mod input;
mod lease;
mod partitions;
mod queues;
mod relay;
mod shape;
mod store;
mod task;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::metrics::Series;

pub(crate) use audit::{
    AuditWatermarkPublished, AuditWindowFailed, AuditWindowVerified, LedgerSized,
};
pub(crate) use aws::AwsRequestCompleted;
pub(crate) use daemon::{DaemonStarted, ReadinessChecked, ShutdownStarted};
pub(crate) use feed::{
    EventTimeInFuture, FeedFreshnessMeasured, FeedStatePublished, GapClosed, GapOpened,
    PartitionNotWatched, PartitionsCounted, RecordsObserved, StoredEventTimeRepaired,
    UnfilledMeasured,
};
pub(crate) use fill::{
    ChunkStatesMeasured, FillChunkDone, FillChunkFailed, FillFailed, FillFinished, FillPlanned,
    FillRecords, RecordRenderFailed, SourceRequestCompleted, SourceTokenRequested,
};
pub(crate) use input::InputRejected;
pub(crate) use lease::FeedLeaseChecked;
pub(crate) use partitions::{PartitionListingFailed, PartitionsListed};
pub(crate) use queues::{QueueBacklogRead, QueueOldestAgeRead, QueueUnreadable};
pub(crate) use relay::{ForwardFailure, RelayForwardFailed, RelayForwarded};
pub(crate) use shape::{RepeatLog, ShapeChecked, ShapeVerdictRestored};
pub(crate) use store::StateWriteFailed;
pub(crate) use task::TaskRestarted;

/// A state change or error, as logged and counted.
pub(crate) trait InternalEvent {
    /// Writes the event's log line (if it has one, and it is not
    /// suppressed as a repeat) and moves its series.
    fn emit(self, series: &Series<'_>);
}

/// Rate limit for a warning that input may repeat (an event time in the
/// future, an unknown partition): a vendor that gets every record wrong must
/// not flood the log. The event is counted every time; its line is written
/// at most once per [`RateLog::EVERY`], with the number suppressed since.
#[derive(Debug, Default)]
pub(crate) struct RateLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLog {
    const EVERY: Duration = Duration::from_secs(60);

    /// `Some(occurrences suppressed since the last line)` when this one is
    /// logged; otherwise it is counted as suppressed.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A time as the `*_timestamp_seconds` gauges hold it.
fn unix_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

#[cfg(test)]
pub(crate) mod testing {
    //! One helper for every event's test: what emitting it moved, and what
    //! it logged.

    use std::collections::BTreeMap;

    use serde_json::{Map, Value};

    use super::InternalEvent;
    use crate::metrics::Metrics;

    /// What one emission did.
    #[derive(Debug)]
    pub(crate) struct Emitted {
        /// Each series whose value changed (or that appeared), with its new
        /// value; `None`: the series was removed.
        pub(crate) moved: BTreeMap<String, Option<f64>>,
        /// The log lines written, as JSON objects.
        pub(crate) logs: Vec<Map<String, Value>>,
    }

    impl Emitted {
        /// The messages of the lines logged at `level` or above.
        pub(crate) fn messages(&self) -> Vec<&str> {
            self.logs
                .iter()
                .filter(|l| l["level"] != "DEBUG" && l["level"] != "TRACE")
                .filter_map(|l| l["message"].as_str())
                .collect()
        }

        /// The only line at INFO or above.
        pub(crate) fn line(&self) -> &Map<String, Value> {
            let lines: Vec<_> = self
                .logs
                .iter()
                .filter(|l| l["level"] != "DEBUG" && l["level"] != "TRACE")
                .collect();
            assert_eq!(lines.len(), 1, "{:?}", self.logs);
            lines[0]
        }
    }

    /// Emits `event` on `metrics` and diffs every series before and after.
    pub(crate) fn emit_on(metrics: &Metrics, event: impl InternalEvent) -> Emitted {
        let before = metrics.samples();
        let logs = crate::logging::capture(|| metrics.emit(event));
        let after = metrics.samples();
        let mut moved = BTreeMap::new();
        for (k, v) in &after {
            if before.get(k) != Some(v) {
                moved.insert(k.clone(), Some(*v));
            }
        }
        for k in before.keys() {
            if !after.contains_key(k) {
                moved.insert(k.clone(), None);
            }
        }
        Emitted { moved, logs }
    }

    /// [`emit_on`] fresh metrics.
    pub(crate) fn emit(event: impl InternalEvent) -> Emitted {
        emit_on(&Metrics::new(), event)
    }

    /// Series and the values they moved to, for comparing with [`Emitted::moved`].
    pub(crate) fn series(pairs: &[(&str, f64)]) -> BTreeMap<String, Option<f64>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(*v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_log_admits_one_line_a_minute_and_counts_the_rest() {
        let mut log = RateLog::default();
        assert_eq!(log.admit(), Some(0));
        assert_eq!(log.admit(), None);
        assert_eq!(log.admit(), None);
        log.last = Some(std::time::Instant::now() - RateLog::EVERY);
        assert_eq!(log.admit(), Some(2));
    }
}
