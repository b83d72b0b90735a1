//! Fills: requests to the source, plans, chunks, the records they handle.
//!
//! Events of a fill are emitted inside its spans (`feed`, `gap` with
//! `gap_id`, `chunk` with its index and window), which put those fields on
//! each line.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{unix_seconds, InternalEvent};
use crate::metrics::{
    ChunkState, InputSource, RecordOutcome, Rejection, RequestStatus, Series, TokenOutcome,
};

const FILLER: &str = "gapwatch::fill::filler";

/// One request to the source API ended: answered (by its status), with an
/// error body, or not at all.
pub(crate) struct SourceRequestCompleted<'a> {
    pub(crate) feed: &'a str,
    pub(crate) status: RequestStatus,
    pub(crate) elapsed: Duration,
}

impl InternalEvent for SourceRequestCompleted<'_> {
    fn emit(self, series: &Series<'_>) {
        series.backfill_requests(self.feed, self.status).inc();
        series
            .backfill_request_duration(self.feed)
            .observe(self.elapsed.as_secs_f64());
    }
}

/// A request for an OAuth2 access token ended.
pub(crate) struct SourceTokenRequested<'a> {
    pub(crate) feed: &'a str,
    pub(crate) outcome: TokenOutcome,
}

impl InternalEvent for SourceTokenRequested<'_> {
    fn emit(self, series: &Series<'_>) {
        series.source_token_requests(self.feed, self.outcome).inc();
    }
}

/// New chunks of a gap's fill were planned.
pub(crate) struct FillPlanned<'a> {
    pub(crate) feed: &'a str,
    pub(crate) partition: &'a str,
    /// Partitions each window is asked for.
    pub(crate) partitions: usize,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) chunks: usize,
    /// The gap is still open: more is planned as it goes on.
    pub(crate) following: bool,
}

impl InternalEvent for FillPlanned<'_> {
    fn emit(self, _: &Series<'_>) {
        tracing::info!(
            target: FILLER,
            feed = self.feed,
            partition = %self.partition,
            partitions = self.partitions,
            from = %self.from.to_rfc3339(),
            to = %self.to.to_rfc3339(),
            chunks = self.chunks,
            following = self.following,
            "fill planned"
        );
    }
}

/// A chunk was fetched and delivered to its end.
pub(crate) struct FillChunkDone<'a> {
    pub(crate) feed: &'a str,
    /// An audit window's chunk: not a fill's success.
    pub(crate) audit: bool,
    pub(crate) at: DateTime<Utc>,
}

impl InternalEvent for FillChunkDone<'_> {
    fn emit(self, series: &Series<'_>) {
        if !self.audit {
            series
                .backfill_last_success(self.feed)
                .set(unix_seconds(self.at));
        }
        tracing::info!(target: FILLER, feed = self.feed, "chunk done");
    }
}

/// A chunk failed; it is retried later unless it gave up.
pub(crate) struct FillChunkFailed<'a> {
    pub(crate) feed: &'a str,
    /// Attempts so far, this one included.
    pub(crate) attempts: i64,
    pub(crate) retryable: bool,
    pub(crate) give_up: bool,
    pub(crate) retry_in: Option<Duration>,
    /// The chunk's error as stored (URLs are withheld from the log).
    pub(crate) error: &'a str,
}

impl InternalEvent for FillChunkFailed<'_> {
    fn emit(self, _: &Series<'_>) {
        tracing::warn!(
            target: FILLER,
            feed = self.feed,
            attempts = self.attempts,
            retryable = self.retryable,
            give_up = self.give_up,
            retry_in_s = self.retry_in.map_or(0, |d| d.as_secs()),
            error = %crate::redact::text(self.error),
            "chunk failed"
        );
    }
}

/// A gap's fill failed: a chunk gave up.
pub(crate) struct FillFailed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) reason: &'a str,
}

impl InternalEvent for FillFailed<'_> {
    fn emit(self, _: &Series<'_>) {
        tracing::error!(target: FILLER, feed = self.feed, error = %self.reason, "fill failed");
    }
}

/// A gap's fill is done: every chunk over the whole interval delivered.
pub(crate) struct FillFinished<'a> {
    pub(crate) feed: &'a str,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: Option<DateTime<Utc>>,
    pub(crate) chunks: i64,
    pub(crate) delivered: i64,
    pub(crate) duplicate: i64,
    pub(crate) rejected: i64,
}

impl InternalEvent for FillFinished<'_> {
    fn emit(self, _: &Series<'_>) {
        tracing::info!(
            target: FILLER,
            feed = self.feed,
            from = %self.from.to_rfc3339(),
            to = %self.to.map(|e| e.to_rfc3339()).unwrap_or_default(),
            chunks = self.chunks,
            delivered = self.delivered,
            duplicate = self.duplicate,
            rejected = self.rejected,
            "fill finished"
        );
    }
}

/// Records a fill handled, by outcome (a page's, or a delivered batch's).
/// Audit windows count theirs in the audit's own metrics.
#[derive(Default)]
pub(crate) struct FillRecords<'a> {
    pub(crate) feed: &'a str,
    pub(crate) delivered: u64,
    pub(crate) duplicate: u64,
    pub(crate) rejected: u64,
    pub(crate) out_of_window: u64,
    pub(crate) filtered: u64,
}

impl InternalEvent for FillRecords<'_> {
    fn emit(self, series: &Series<'_>) {
        for (outcome, n) in [
            (RecordOutcome::Delivered, self.delivered),
            (RecordOutcome::Duplicate, self.duplicate),
            (RecordOutcome::Rejected, self.rejected),
            (RecordOutcome::OutOfWindow, self.out_of_window),
            (RecordOutcome::Filtered, self.filtered),
        ] {
            if n > 0 {
                series.backfill_records(self.feed, outcome).inc_by(n);
            }
        }
    }
}

/// A source record's `render`, `attributes` or `filter` program failed: the
/// record is left out (counted rejected), the rest of its page is sent.
pub(crate) struct RecordRenderFailed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) record_id: &'a str,
    pub(crate) error: &'a dyn fmt::Display,
    /// The chunk's first such failure: the only one logged.
    pub(crate) first: bool,
}

impl InternalEvent for RecordRenderFailed<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .rejected_input(self.feed, InputSource::Vendor, Rejection::RenderFailed)
            .inc();
        if self.first {
            tracing::warn!(
                target: FILLER,
                feed = self.feed,
                record_id = %self.record_id,
                error = %self.error,
                "a record could not be rendered; left out, counted rejected"
            );
        }
    }
}

/// Chunks of the feed's unfinished gaps, by state, as the store counts them.
pub(crate) struct ChunkStatesMeasured<'a> {
    pub(crate) feed: &'a str,
    /// States without chunks may be left out (they count 0).
    pub(crate) states: &'a [(ChunkState, i64)],
}

impl InternalEvent for ChunkStatesMeasured<'_> {
    fn emit(self, series: &Series<'_>) {
        for s in ChunkState::ALL {
            let n = self
                .states
                .iter()
                .find(|(state, _)| state == s)
                .map_or(0, |(_, n)| *n);
            series.backfill_chunks(self.feed, *s).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn source_request_completed() {
        let e = emit(SourceRequestCompleted {
            feed: "orders",
            status: RequestStatus::Http(reqwest::StatusCode::TOO_MANY_REQUESTS),
            elapsed: Duration::from_millis(250),
        });
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_backfill_request_duration_seconds_count{feed=\"orders\"}",
                    1.0
                ),
                (
                    "gapwatch_backfill_request_duration_seconds_sum{feed=\"orders\"}",
                    0.25
                ),
                (
                    "gapwatch_backfill_requests_total{feed=\"orders\",status=\"429\"}",
                    1.0
                ),
            ])
        );
        assert!(e.logs.is_empty());
        for (status, label) in [
            (RequestStatus::Error, "error"),
            (RequestStatus::ErrorBody, "error_body"),
        ] {
            let e = emit(SourceRequestCompleted {
                feed: "orders",
                status,
                elapsed: Duration::ZERO,
            });
            let key =
                format!("gapwatch_backfill_requests_total{{feed=\"orders\",status=\"{label}\"}}");
            assert_eq!(e.moved.get(&key), Some(&Some(1.0)), "{:?}", e.moved);
        }
    }

    #[test]
    fn source_token_requested() {
        let e = emit(SourceTokenRequested {
            feed: "orders",
            outcome: TokenOutcome::Refused,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_source_token_requests_total{feed=\"orders\",outcome=\"refused\"}",
                1.0
            )])
        );
    }

    #[test]
    fn fill_planned() {
        let e = emit(FillPlanned {
            feed: "orders",
            partition: "",
            partitions: 1,
            from: at("2026-01-01T00:00:00Z"),
            to: at("2026-01-01T02:00:00Z"),
            chunks: 2,
            following: true,
        });
        assert!(e.moved.is_empty());
        let line = e.line();
        assert_eq!(line["message"], "fill planned");
        assert_eq!(line["chunks"], 2);
        assert_eq!(line["following"], true);
        assert_eq!(line["to"], "2026-01-01T02:00:00+00:00");
        assert_eq!(line["target"], FILLER);
    }

    #[test]
    fn fill_chunk_done() {
        let done = |audit| FillChunkDone {
            feed: "orders",
            audit,
            at: at("2026-01-01T00:00:00Z"),
        };
        let e = emit(done(false));
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_backfill_last_success_timestamp_seconds{feed=\"orders\"}",
                1767225600.0
            )])
        );
        assert_eq!(e.messages(), ["chunk done"]);
        let e = emit(done(true));
        assert!(e.moved.is_empty());
        assert_eq!(e.messages(), ["chunk done"]);
    }

    #[test]
    fn fill_chunk_failed() {
        let e = emit(FillChunkFailed {
            feed: "orders",
            attempts: 2,
            retryable: true,
            give_up: false,
            retry_in: Some(Duration::from_secs(4)),
            error: "request to http://vendor.example/v1?key=s3cret failed",
        });
        assert!(e.moved.is_empty());
        let line = e.line();
        assert_eq!(line["message"], "chunk failed");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["retry_in_s"], 4);
        assert!(
            !line["error"].as_str().unwrap().contains("s3cret"),
            "{line:?}"
        );
    }

    #[test]
    fn fill_failed_and_finished() {
        let e = emit(FillFailed {
            feed: "orders",
            reason: "chunk 0 failed",
        });
        assert!(e.moved.is_empty());
        assert_eq!(e.line()["message"], "fill failed");
        assert_eq!(e.line()["error"], "chunk 0 failed");
        let e = emit(FillFinished {
            feed: "orders",
            from: at("2026-01-01T00:00:00Z"),
            to: Some(at("2026-01-01T01:00:00Z")),
            chunks: 1,
            delivered: 5,
            duplicate: 1,
            rejected: 0,
        });
        assert!(e.moved.is_empty());
        let line = e.line();
        assert_eq!(line["message"], "fill finished");
        assert_eq!(line["delivered"], 5);
    }

    #[test]
    fn fill_records() {
        let e = emit(FillRecords {
            feed: "orders",
            delivered: 3,
            out_of_window: 1,
            ..FillRecords::default()
        });
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_backfill_records_total{feed=\"orders\",outcome=\"delivered\"}",
                    3.0
                ),
                (
                    "gapwatch_backfill_records_total{feed=\"orders\",outcome=\"out_of_window\"}",
                    1.0
                ),
            ])
        );
        let e = emit(FillRecords {
            feed: "orders",
            filtered: 2,
            ..FillRecords::default()
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_backfill_records_total{feed=\"orders\",outcome=\"filtered\"}",
                2.0
            )])
        );
    }

    #[test]
    fn record_render_failed() {
        let render = |first| RecordRenderFailed {
            feed: "orders",
            record_id: "r1",
            error: &"jq: null has no keys",
            first,
        };
        let key = "gapwatch_rejected_input_total{feed=\"orders\",reason=\"render_failed\",source=\"vendor\"}";
        let e = emit(render(true));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        assert_eq!(
            e.line()["message"],
            "a record could not be rendered; left out, counted rejected"
        );
        let e = emit(render(false));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        assert!(e.logs.is_empty());
    }

    #[test]
    fn chunk_states_measured() {
        let e = emit(ChunkStatesMeasured {
            feed: "orders",
            states: &[(ChunkState::Running, 2), (ChunkState::Failed, 1)],
        });
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_backfill_chunks{feed=\"orders\",state=\"done\"}",
                    0.0
                ),
                (
                    "gapwatch_backfill_chunks{feed=\"orders\",state=\"failed\"}",
                    1.0
                ),
                (
                    "gapwatch_backfill_chunks{feed=\"orders\",state=\"pending\"}",
                    0.0
                ),
                (
                    "gapwatch_backfill_chunks{feed=\"orders\",state=\"running\"}",
                    2.0
                ),
            ])
        );
    }
}
