//! A feed's monitor: observations, gaps opening and closing, freshness.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{unix_seconds, InternalEvent, RateLog};
use crate::metrics::{InputSource, PartitionState, Rejection, Series};
use crate::store::FillState;

const TARGET: &str = "gapwatch::feed";

/// Records observed live: a batch from the relay, the report API or
/// passive inflow.
pub(crate) struct RecordsObserved<'a> {
    pub(crate) feed: &'a str,
    pub(crate) count: usize,
}

impl InternalEvent for RecordsObserved<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .feed_records_observed(self.feed)
            .inc_by(self.count as u64);
    }
}

/// A live record whose event time is beyond now + `max_future_skew`: it was
/// relayed (or accepted), but neither moves freshness nor closes a gap.
pub(crate) struct EventTimeInFuture<'a> {
    pub(crate) feed: &'a str,
    pub(crate) source: InputSource,
    pub(crate) record_id: &'a str,
    pub(crate) event_time: DateTime<Utc>,
    pub(crate) now: DateTime<Utc>,
    pub(crate) max_future_skew: Duration,
    pub(crate) log: &'a mut RateLog,
}

impl InternalEvent for EventTimeInFuture<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .rejected_input(self.feed, self.source, Rejection::FutureEventTime)
            .inc();
        let Some(suppressed) = self.log.admit() else {
            return;
        };
        tracing::warn!(
            target: TARGET,
            feed = self.feed,
            record_id = %self.record_id,
            event_time = %self.event_time.to_rfc3339(),
            now = %self.now.to_rfc3339(),
            max_future_skew_s = self.max_future_skew.as_secs(),
            suppressed_since_last = suppressed,
            "event time in the future; freshness not moved"
        );
    }
}

/// The newest event time in the store was in the future (saved by a version
/// that trusted every event time) and is set back to now.
pub(crate) struct StoredEventTimeRepaired<'a> {
    pub(crate) feed: &'a str,
    pub(crate) stored: DateTime<Utc>,
    pub(crate) repaired_to: DateTime<Utc>,
}

impl InternalEvent for StoredEventTimeRepaired<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .rejected_input(self.feed, InputSource::State, Rejection::FutureEventTime)
            .inc();
        tracing::warn!(
            target: TARGET,
            feed = %self.feed,
            stored = %self.stored.to_rfc3339(),
            repaired_to = %self.repaired_to.to_rfc3339(),
            "stored newest event time is in the future; repaired"
        );
    }
}

/// A live record of a partitioned feed whose partition is not watched: it
/// counts for the feed as a whole only.
pub(crate) struct PartitionNotWatched<'a> {
    pub(crate) feed: &'a str,
    pub(crate) source: InputSource,
    pub(crate) partition: &'a str,
    pub(crate) record_id: &'a str,
    /// Partitions watched now.
    pub(crate) watched: usize,
    pub(crate) log: &'a mut RateLog,
}

impl InternalEvent for PartitionNotWatched<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .rejected_input(self.feed, self.source, Rejection::UnknownPartition)
            .inc();
        let Some(suppressed) = self.log.admit() else {
            return;
        };
        tracing::warn!(
            target: TARGET,
            feed = %self.feed,
            partition = self.partition,
            record_id = %self.record_id,
            watched = self.watched,
            suppressed_since_last = suppressed,
            "record of a partition not watched; observed for the feed as a whole only"
        );
    }
}

/// The detector found the feed (or one partition) silent past
/// `max_silence`, and the store has the gap.
pub(crate) struct GapOpened<'a> {
    pub(crate) feed: &'a str,
    pub(crate) partition: &'a str,
    pub(crate) gap_id: i64,
    pub(crate) start: DateTime<Utc>,
    pub(crate) detected_at: DateTime<Utc>,
    /// How its fill starts: pending (`backfill.auto`) or none.
    pub(crate) fill: FillState,
}

impl InternalEvent for GapOpened<'_> {
    fn emit(self, series: &Series<'_>) {
        series.gap_open(self.feed).set(1);
        series.gaps_detected(self.feed).inc();
        tracing::warn!(
            target: TARGET,
            feed = self.feed,
            partition = self.partition,
            gap_id = self.gap_id,
            from = %self.start.to_rfc3339(),
            detected_at = %self.detected_at.to_rfc3339(),
            silent_seconds = (self.detected_at - self.start).num_milliseconds() as f64 / 1000.0,
            fill = self.fill.as_str(),
            "gap opened"
        );
    }
}

/// The feed (or one partition) is heard from again, or a retired
/// partition's gap ends: the store has the gap closed.
pub(crate) struct GapClosed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) partition: &'a str,
    /// The gap the store closed (None: it had none open).
    pub(crate) gap_id: Option<i64>,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    /// A partitioned feed's gauge counts every partition's gaps: it follows
    /// [`FeedStatePublished`] instead.
    pub(crate) partitioned: bool,
}

impl InternalEvent for GapClosed<'_> {
    fn emit(self, series: &Series<'_>) {
        if !self.partitioned {
            series.gap_open(self.feed).set(0);
        }
        tracing::info!(
            target: TARGET,
            feed = self.feed,
            partition = self.partition,
            gap_id = self.gap_id,
            from = %self.start.to_rfc3339(),
            to = %self.end.to_rfc3339(),
            gap_seconds = (self.end - self.start).num_milliseconds() as f64 / 1000.0,
            "gap closed"
        );
    }
}

/// Gap time of the feed not yet recovered, as the store computed it.
pub(crate) struct UnfilledMeasured<'a> {
    pub(crate) feed: &'a str,
    pub(crate) seconds: f64,
}

impl InternalEvent for UnfilledMeasured<'_> {
    fn emit(self, series: &Series<'_>) {
        series.gap_unfilled(self.feed).set(self.seconds);
    }
}

/// The monitor published the feed's state: its newest event (once there is
/// one) and whether any gap of it is open.
pub(crate) struct FeedStatePublished<'a> {
    pub(crate) feed: &'a str,
    pub(crate) last_event: Option<DateTime<Utc>>,
    pub(crate) gap_open: bool,
}

impl InternalEvent for FeedStatePublished<'_> {
    fn emit(self, series: &Series<'_>) {
        if let Some(last) = self.last_event {
            series.feed_last_event(self.feed).set(unix_seconds(last));
        }
        series.gap_open(self.feed).set(i64::from(self.gap_open));
    }
}

/// A partitioned feed's partitions, counted by state.
pub(crate) struct PartitionsCounted<'a> {
    pub(crate) feed: &'a str,
    pub(crate) silent: usize,
    pub(crate) fresh: usize,
    pub(crate) unseen: usize,
}

impl InternalEvent for PartitionsCounted<'_> {
    fn emit(self, series: &Series<'_>) {
        for (state, n) in [
            (PartitionState::Silent, self.silent),
            (PartitionState::Fresh, self.fresh),
            (PartitionState::Unseen, self.unseen),
        ] {
            series.feed_partitions(self.feed, state).set(n as i64);
        }
    }
}

/// What moves with the clock alone: whether data is expected now, and the
/// freshness (absent until a first event).
pub(crate) struct FeedFreshnessMeasured<'a> {
    pub(crate) feed: &'a str,
    pub(crate) active: bool,
    pub(crate) freshness_seconds: Option<f64>,
    /// Partitioned feeds: of the partition heard from longest ago.
    pub(crate) oldest_partition_freshness_seconds: Option<f64>,
}

impl InternalEvent for FeedFreshnessMeasured<'_> {
    fn emit(self, series: &Series<'_>) {
        series.feed_active(self.feed).set(i64::from(self.active));
        if let Some(f) = self.freshness_seconds {
            series.feed_freshness(self.feed).set(f);
        }
        if let Some(f) = self.oldest_partition_freshness_seconds {
            series.feed_oldest_partition_freshness(self.feed).set(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, emit_on, series};
    use crate::metrics::Metrics;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn records_observed() {
        let e = emit(RecordsObserved {
            feed: "orders",
            count: 3,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_feed_records_observed_total{feed=\"orders\"}", 3.0)])
        );
        assert!(e.logs.is_empty());
    }

    #[test]
    fn event_time_in_future_is_counted_every_time_and_logged_once_a_minute() {
        let m = Metrics::new();
        let mut log = RateLog::default();
        fn event(log: &mut RateLog) -> EventTimeInFuture<'_> {
            EventTimeInFuture {
                feed: "orders",
                source: InputSource::Queue,
                record_id: "r1",
                event_time: at("2030-01-01T00:00:00Z"),
                now: at("2026-01-01T00:00:00Z"),
                max_future_skew: Duration::from_secs(300),
                log,
            }
        }
        let e = emit_on(&m, event(&mut log));
        let key = "gapwatch_rejected_input_total{feed=\"orders\",reason=\"future_event_time\",source=\"queue\"}";
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        let line = e.line();
        assert_eq!(
            line["message"],
            "event time in the future; freshness not moved"
        );
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["feed"], "orders");
        assert_eq!(line["record_id"], "r1");
        assert_eq!(line["max_future_skew_s"], 300);
        assert_eq!(line["suppressed_since_last"], 0);
        assert_eq!(line["target"], TARGET);
        let again = emit_on(&m, event(&mut log));
        assert_eq!(again.moved, series(&[(key, 2.0)]));
        assert!(again.logs.is_empty());
    }

    #[test]
    fn stored_event_time_repaired() {
        let e = emit(StoredEventTimeRepaired {
            feed: "orders",
            stored: at("2030-01-01T00:00:00Z"),
            repaired_to: at("2026-01-01T00:00:00Z"),
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_rejected_input_total{feed=\"orders\",reason=\"future_event_time\",source=\"state\"}", 1.0)])
        );
        let line = e.line();
        assert_eq!(
            line["message"],
            "stored newest event time is in the future; repaired"
        );
        assert_eq!(line["repaired_to"], "2026-01-01T00:00:00+00:00");
    }

    #[test]
    fn partition_not_watched() {
        let mut log = RateLog::default();
        let e = emit(PartitionNotWatched {
            feed: "orders",
            source: InputSource::Report,
            partition: "s9",
            record_id: "r1",
            watched: 2,
            log: &mut log,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_rejected_input_total{feed=\"orders\",reason=\"unknown_partition\",source=\"report\"}", 1.0)])
        );
        let line = e.line();
        assert_eq!(
            line["message"],
            "record of a partition not watched; observed for the feed as a whole only"
        );
        assert_eq!(line["partition"], "s9");
        assert_eq!(line["watched"], 2);
    }

    #[test]
    fn gap_opened() {
        let e = emit(GapOpened {
            feed: "orders",
            partition: "",
            gap_id: 7,
            start: at("2026-01-01T00:00:00Z"),
            detected_at: at("2026-01-01T00:05:00Z"),
            fill: FillState::Pending,
        });
        assert_eq!(
            e.moved,
            series(&[
                ("gapwatch_gap_open{feed=\"orders\"}", 1.0),
                ("gapwatch_gaps_detected_total{feed=\"orders\"}", 1.0),
            ])
        );
        let line = e.line();
        assert_eq!(line["message"], "gap opened");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["feed"], "orders");
        assert_eq!(line["gap_id"], 7);
        assert_eq!(line["from"], "2026-01-01T00:00:00+00:00");
        assert_eq!(line["silent_seconds"], 300.0);
        assert_eq!(line["fill"], "pending");
    }

    #[test]
    fn gap_closed() {
        let m = Metrics::new();
        m.init_feed("orders");
        emit_on(
            &m,
            FeedStatePublished {
                feed: "orders",
                last_event: None,
                gap_open: true,
            },
        );
        let closed = |partitioned| GapClosed {
            feed: "orders",
            partition: "",
            gap_id: Some(7),
            start: at("2026-01-01T00:00:00Z"),
            end: at("2026-01-01T01:00:00Z"),
            partitioned,
        };
        let e = emit_on(&m, closed(false));
        assert_eq!(
            e.moved,
            series(&[("gapwatch_gap_open{feed=\"orders\"}", 0.0)])
        );
        let line = e.line();
        assert_eq!(line["message"], "gap closed");
        assert_eq!(line["gap_id"], 7);
        assert_eq!(line["gap_seconds"], 3600.0);
        assert_eq!(line["to"], "2026-01-01T01:00:00+00:00");
        // A partitioned feed's gauge counts its other partitions too.
        let e = emit(closed(true));
        assert!(e.moved.is_empty(), "{:?}", e.moved);
        assert_eq!(e.messages(), ["gap closed"]);
    }

    #[test]
    fn unfilled_measured() {
        let e = emit(UnfilledMeasured {
            feed: "orders",
            seconds: 42.5,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_gap_unfilled_seconds{feed=\"orders\"}", 42.5)])
        );
    }

    #[test]
    fn feed_state_published() {
        let e = emit(FeedStatePublished {
            feed: "orders",
            last_event: Some(at("2026-01-01T00:00:01.5Z")),
            gap_open: true,
        });
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_feed_last_event_timestamp_seconds{feed=\"orders\"}",
                    1767225601.5
                ),
                ("gapwatch_gap_open{feed=\"orders\"}", 1.0),
            ])
        );
        // Nothing seen yet: no newest event sample.
        let e = emit(FeedStatePublished {
            feed: "orders",
            last_event: None,
            gap_open: false,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_gap_open{feed=\"orders\"}", 0.0)])
        );
    }

    #[test]
    fn partitions_counted() {
        let e = emit(PartitionsCounted {
            feed: "orders",
            silent: 1,
            fresh: 2,
            unseen: 3,
        });
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_feed_partitions{feed=\"orders\",state=\"fresh\"}",
                    2.0
                ),
                (
                    "gapwatch_feed_partitions{feed=\"orders\",state=\"silent\"}",
                    1.0
                ),
                (
                    "gapwatch_feed_partitions{feed=\"orders\",state=\"unseen\"}",
                    3.0
                ),
            ])
        );
    }

    #[test]
    fn feed_freshness_measured() {
        let e = emit(FeedFreshnessMeasured {
            feed: "orders",
            active: true,
            freshness_seconds: Some(2.0),
            oldest_partition_freshness_seconds: Some(9.0),
        });
        assert_eq!(
            e.moved,
            series(&[
                ("gapwatch_feed_active{feed=\"orders\"}", 1.0),
                ("gapwatch_feed_freshness_seconds{feed=\"orders\"}", 2.0),
                (
                    "gapwatch_feed_oldest_partition_freshness_seconds{feed=\"orders\"}",
                    9.0
                ),
            ])
        );
        // Before a first event: no freshness sample (never NaN).
        let e = emit(FeedFreshnessMeasured {
            feed: "orders",
            active: false,
            freshness_seconds: None,
            oldest_partition_freshness_seconds: None,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_feed_active{feed=\"orders\"}", 0.0)])
        );
    }
}
