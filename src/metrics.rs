//! Every metric gapwatch exports, owned by one [`Metrics`] value with its own
//! registry (never the global one). Label values come from enums so a typo
//! cannot create a new series.
//!
//! Nothing outside this module touches a family: a state change is an event
//! of [`crate::internal_events`], handed to [`Metrics::emit`], whose `emit`
//! writes its log line and moves its series through [`Series`] (typed
//! accessors, one per family). `Series` can only be had inside an event's
//! `emit`, so a metric cannot be bumped without its event.

use std::fmt;

pub(crate) use crate::store::ChunkState;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::internal_events::InternalEvent;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayOutcome {
    Forwarded,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordOutcome {
    Delivered,
    Duplicate,
    Rejected,
    /// Returned by the source for a query but outside the chunk's window.
    OutOfWindow,
    /// Dropped by `backfill.filter`: the live feed does not carry it.
    Filtered,
}

/// How an audit of one window ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuditOutcome {
    /// Every vendor record of the window is in the ledger (the missing ones
    /// were delivered): the watermark may move.
    Ok,
    /// The window could not be listed or its missing records delivered.
    Failed,
}

/// How a shape check ended (see [`crate::shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShapeOutcome {
    /// Every sampled record the source listed renders as its live message.
    Match,
    /// At least one differs: recovery would send messages the app does not expect.
    Mismatch,
    /// Nothing could be compared: no sample yet, the source not reachable,
    /// or none of the sampled records listed.
    Unavailable,
}

/// How a request for an OAuth2 access token ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenOutcome {
    /// A token was issued.
    Ok,
    /// The token endpoint refused the client (4xx other than 408/429).
    Refused,
    /// The request failed or the answer was not usable (retried later).
    Error,
}

/// Why a write to the state store failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteFailure {
    /// The disk (or the database's quota) is full: reads still work.
    DiskFull,
    /// Any other failure (connection lost, lock timeout, I/O error).
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueState {
    Visible,
    InFlight,
    Delayed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AwsOutcome {
    Ok,
    Throttled,
    Error,
}

/// A kind of long-running task (the `task` label of restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskKind {
    Relay,
    FeedMonitor,
    QueueWatcher,
    Filler,
    Auditor,
    ShapeChecker,
    LeaseKeeper,
    Server,
    PartitionLister,
}

/// Where a refused piece of input came from (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputSource {
    /// A message relayed from (or watched on) the vendor queue.
    Queue,
    /// A report-mode observation posted to the HTTP API.
    Report,
    /// Any other HTTP API request.
    Api,
    /// A page of the vendor's REST API (fills and audits).
    Vendor,
    /// A value read back from the state store.
    State,
}

/// Why a piece of input was not taken as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A relayed message body that is not JSON (forwarded, observed by SentTimestamp).
    BodyNotJson,
    /// A relayed message that is JSON but not in the feed's `watch.envelope`.
    NoEnvelope,
    /// A source record whose `render`, `attributes` or `filter` program failed
    /// (the record is not sent; the rest of its page is).
    RenderFailed,
    /// A relayed message without a usable event time field.
    NoEventTime,
    /// A relayed message without a usable record id field.
    NoRecordId,
    /// A report-mode observation with a bad id or time.
    BadObservation,
    /// An HTTP API request that was refused (bad JSON, unknown feed, auth).
    BadRequest,
    /// A vendor page that could not be used.
    BadPage,
    /// An event time beyond now + `max_future_skew`: the record is relayed
    /// (or accepted) but does not move freshness.
    FutureEventTime,
    /// A vendor page larger than `source.max_page_bytes`.
    PageTooLarge,
    /// A live record of a partitioned feed without a usable partition value
    /// (observed for the feed as a whole only).
    NoPartitionKey,
    /// A live record whose partition is not watched (not in `values`, or
    /// beyond `partitions.max`): observed for the feed as a whole only.
    UnknownPartition,
    /// A partition listing (`partitions.from`) that could not be used.
    BadListing,
}

/// How a partitioned feed's partition stands (the `state` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PartitionState {
    /// Its gap is open: silent past `max_silence` inside the active window.
    Silent,
    /// Seen, no open gap.
    Fresh,
    /// Nothing seen from it yet.
    Unseen,
}

/// How a partition listing (`partitions.from`) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListingOutcome {
    Ok,
    Failed,
}

/// An AWS API call (the `service` and `operation` labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AwsOperation {
    SqsReceiveMessage,
    SqsSendMessageBatch,
    SqsDeleteMessageBatch,
    SqsGetQueueAttributes,
    CloudWatchGetMetricData,
}

impl AwsOperation {
    pub(crate) fn service(self) -> &'static str {
        match self {
            AwsOperation::CloudWatchGetMetricData => "cloudwatch",
            _ => "sqs",
        }
    }

    pub(crate) fn operation(self) -> &'static str {
        match self {
            AwsOperation::SqsReceiveMessage => "ReceiveMessage",
            AwsOperation::SqsSendMessageBatch => "SendMessageBatch",
            AwsOperation::SqsDeleteMessageBatch => "DeleteMessageBatch",
            AwsOperation::SqsGetQueueAttributes => "GetQueueAttributes",
            AwsOperation::CloudWatchGetMetricData => "GetMetricData",
        }
    }
}

/// How a request to the source API ended (the `status` label of
/// `gapwatch_backfill_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestStatus {
    /// The HTTP status code the source answered.
    Http(reqwest::StatusCode),
    /// A 2xx whose body `source.error_when` found to be an error.
    ErrorBody,
    /// No answer (connection refused, timeout, …).
    Error,
}

impl RequestStatus {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            RequestStatus::Http(code) => code.as_str(),
            RequestStatus::ErrorBody => "error_body",
            RequestStatus::Error => "error",
        }
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `as_str` and `Display` for a label enum; `ALL` too where every value of
/// the label is created up front (a series at zero before the first event).
macro_rules! label_enum {
    ($t:ty: all { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub(crate) const ALL: &'static [$t] = &[$(<$t>::$v),+];
        }
        label_enum!($t { $($v => $s),+ });
    };
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub(crate) fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum!(AuditOutcome: all { Ok => "ok", Failed => "failed" });
label_enum!(ShapeOutcome: all { Match => "match", Mismatch => "mismatch", Unavailable => "unavailable" });
label_enum!(TokenOutcome: all { Ok => "ok", Refused => "refused", Error => "error" });
label_enum!(RelayOutcome: all { Forwarded => "forwarded", Failed => "failed" });
label_enum!(RecordOutcome: all {
    Delivered => "delivered",
    Duplicate => "duplicate",
    Rejected => "rejected",
    OutOfWindow => "out_of_window",
    Filtered => "filtered",
});
label_enum!(WriteFailure: all { DiskFull => "disk_full", Error => "error" });
label_enum!(QueueState: all { Visible => "visible", InFlight => "in_flight", Delayed => "delayed" });
label_enum!(AwsOutcome { Ok => "ok", Throttled => "throttled", Error => "error" });
label_enum!(TaskKind: all {
    Relay => "relay",
    FeedMonitor => "feed_monitor",
    QueueWatcher => "queue_watcher",
    Filler => "filler",
    Auditor => "auditor",
    ShapeChecker => "shape_checker",
    LeaseKeeper => "lease_keeper",
    Server => "server",
    PartitionLister => "partition_lister",
});
label_enum!(InputSource {
    Queue => "queue",
    Report => "report",
    Api => "api",
    Vendor => "vendor",
    State => "state",
});
label_enum!(Rejection {
    BodyNotJson => "body_not_json",
    NoEnvelope => "no_envelope",
    RenderFailed => "render_failed",
    NoEventTime => "no_event_time",
    NoRecordId => "no_record_id",
    BadObservation => "bad_observation",
    BadRequest => "bad_request",
    BadPage => "bad_page",
    FutureEventTime => "future_event_time",
    PageTooLarge => "page_too_large",
    NoPartitionKey => "no_partition_key",
    UnknownPartition => "unknown_partition",
    BadListing => "bad_listing",
});
label_enum!(PartitionState: all { Silent => "silent", Fresh => "fresh", Unseen => "unseen" });
label_enum!(ListingOutcome: all { Ok => "ok", Failed => "failed" });

pub(crate) struct Metrics {
    registry: Registry,
    build_info: IntGaugeVec,
    feed_last_event: GaugeVec,
    feed_freshness: GaugeVec,
    feed_active: IntGaugeVec,
    feed_records_observed: IntCounterVec,
    queue_messages: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    gap_open: IntGaugeVec,
    feed_leader: IntGaugeVec,
    gaps_detected: IntCounterVec,
    gap_unfilled: GaugeVec,
    backfill_records: IntCounterVec,
    backfill_requests: IntCounterVec,
    backfill_request_duration: HistogramVec,
    source_token_requests: IntCounterVec,
    backfill_chunks: IntGaugeVec,
    backfill_last_success: GaugeVec,
    relay_messages: IntCounterVec,
    aws_requests: IntCounterVec,
    rejected_input: IntCounterVec,
    task_restarts: IntCounterVec,
    audit_runs: IntCounterVec,
    audit_missing: IntCounterVec,
    audit_verified_until: GaugeVec,
    ledger_ids: IntGaugeVec,
    feed_partitions: IntGaugeVec,
    feed_oldest_partition_freshness: GaugeVec,
    partition_listings: IntCounterVec,
    shape_checks: IntCounterVec,
    shape_mismatch: IntGaugeVec,
    state_write_failures: IntCounterVec,
    up: IntGauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            build_info: gauge_vec_int(
                "gapwatch_build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            feed_last_event: gauge_vec(
                "gapwatch_feed_last_event_timestamp_seconds",
                "Event time of the newest record observed, as a Unix timestamp.",
                &["feed"],
            ),
            feed_freshness: gauge_vec(
                "gapwatch_feed_freshness_seconds",
                "Now minus the event time of the newest record observed.",
                &["feed"],
            ),
            feed_active: gauge_vec_int(
                "gapwatch_feed_active",
                "1 while the feed is inside its active window (data expected), else 0.",
                &["feed"],
            ),
            feed_records_observed: counter_vec(
                "gapwatch_feed_records_observed_total",
                "Records observed live (relayed, reported or counted from inflow).",
                &["feed"],
            ),
            queue_messages: gauge_vec_int(
                "gapwatch_queue_messages",
                "Approximate messages in the queue, by state (SQS GetQueueAttributes).",
                &["queue", "state"],
            ),
            queue_oldest_age: gauge_vec(
                "gapwatch_queue_oldest_message_age_seconds",
                "Age of the oldest message in the queue (CloudWatch ApproximateAgeOfOldestMessage).",
                &["queue"],
            ),
            gap_open: gauge_vec_int(
                "gapwatch_gap_open",
                "1 while the feed has an open gap (silent inside its active window).",
                &["feed"],
            ),
            feed_leader: gauge_vec_int(
                "gapwatch_feed_leader",
                "1 while this replica holds the feed's lease (it opens and closes gaps, plans and runs fills).",
                &["feed"],
            ),
            gaps_detected: counter_vec(
                "gapwatch_gaps_detected_total",
                "Gaps opened by the detector.",
                &["feed"],
            ),
            gap_unfilled: gauge_vec(
                "gapwatch_gap_unfilled_seconds",
                "Seconds of gap time (open or closed gaps) not yet recovered.",
                &["feed"],
            ),
            backfill_records: counter_vec(
                "gapwatch_backfill_records_total",
                "Records handled by fills, by outcome.",
                &["feed", "outcome"],
            ),
            backfill_requests: counter_vec(
                "gapwatch_backfill_requests_total",
                "Requests to the source API, by HTTP status code or \"error\".",
                &["feed", "status"],
            ),
            source_token_requests: counter_vec(
                "gapwatch_source_token_requests_total",
                "Requests for an OAuth2 access token to the source's token_url, by outcome.",
                &["feed", "outcome"],
            ),
            backfill_request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "gapwatch_backfill_request_duration_seconds",
                    "Duration of requests to the source API.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["feed"],
            )
            .expect("valid histogram definition"),
            backfill_chunks: gauge_vec_int(
                "gapwatch_backfill_chunks",
                "Fill chunks of gaps not yet finished, by state.",
                &["feed", "state"],
            ),
            backfill_last_success: gauge_vec(
                "gapwatch_backfill_last_success_timestamp_seconds",
                "When a fill chunk of the feed last finished, as a Unix timestamp.",
                &["feed"],
            ),
            relay_messages: counter_vec(
                "gapwatch_relay_messages_total",
                "Messages relayed from the vendor queue to the destination queue, by outcome.",
                &["feed", "outcome"],
            ),
            aws_requests: counter_vec(
                "gapwatch_aws_requests_total",
                "AWS API calls, by service, operation and outcome.",
                &["service", "operation", "outcome"],
            ),
            rejected_input: counter_vec(
                "gapwatch_rejected_input_total",
                "Input that was refused or could not be used as it was, by where it came from and why.",
                &["feed", "source", "reason"],
            ),
            task_restarts: counter_vec(
                "gapwatch_task_restarts_total",
                "Long-running tasks restarted after a panic or an unexpected exit, by kind of task.",
                &["task"],
            ),
            audit_runs: counter_vec(
                "gapwatch_audit_runs_total",
                "Audited windows, by outcome (ok: every vendor record is proven delivered).",
                &["feed", "outcome"],
            ),
            audit_missing: counter_vec(
                "gapwatch_audit_records_missing_total",
                "Records the audit found missing from the destination, then delivered.",
                &["feed"],
            ),
            audit_verified_until: gauge_vec(
                "gapwatch_audit_verified_until_timestamp_seconds",
                "Every record with an event time before this Unix timestamp is proven delivered.",
                &["feed"],
            ),
            ledger_ids: gauge_vec_int(
                "gapwatch_state_ledger_ids",
                "Record ids the ledger holds for the feed (kept for the audit lookback plus a margin).",
                &["feed"],
            ),
            feed_partitions: gauge_vec_int(
                "gapwatch_feed_partitions",
                "Partitions of a partitioned feed, by state (silent: an open gap; fresh; unseen: nothing seen yet).",
                &["feed", "state"],
            ),
            feed_oldest_partition_freshness: gauge_vec(
                "gapwatch_feed_oldest_partition_freshness_seconds",
                "Now minus the newest event time of the partition heard from longest ago (partitioned feeds).",
                &["feed"],
            ),
            partition_listings: counter_vec(
                "gapwatch_partition_listings_total",
                "Listings of a feed's partitions from the vendor (partitions.from), by outcome.",
                &["feed", "outcome"],
            ),
            shape_checks: counter_vec(
                "gapwatch_shape_checks_total",
                "Shape checks (sampled live messages compared with what a fill would send for the same records), by outcome.",
                &["feed", "outcome"],
            ),
            shape_mismatch: gauge_vec_int(
                "gapwatch_shape_mismatch",
                "1 while the latest shape check that compared records found a difference, 0 once one finds none (absent before the first).",
                &["feed"],
            ),
            state_write_failures: counter_vec(
                "gapwatch_state_write_failures_total",
                "Writes to the state store that failed, by reason (disk_full: the disk or quota is full; what could not be written waits in memory).",
                &["reason"],
            ),
            up: IntGauge::new(
                "gapwatch_ready",
                "1 when the daemon is ready (config loaded, store reachable), else 0.",
            )
            .expect("valid gauge definition"),
            registry,
        };
        m.register_all();
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.build_info.clone()),
            Box::new(self.feed_last_event.clone()),
            Box::new(self.feed_freshness.clone()),
            Box::new(self.feed_active.clone()),
            Box::new(self.feed_records_observed.clone()),
            Box::new(self.queue_messages.clone()),
            Box::new(self.queue_oldest_age.clone()),
            Box::new(self.gap_open.clone()),
            Box::new(self.feed_leader.clone()),
            Box::new(self.gaps_detected.clone()),
            Box::new(self.gap_unfilled.clone()),
            Box::new(self.backfill_records.clone()),
            Box::new(self.backfill_requests.clone()),
            Box::new(self.backfill_request_duration.clone()),
            Box::new(self.source_token_requests.clone()),
            Box::new(self.backfill_chunks.clone()),
            Box::new(self.backfill_last_success.clone()),
            Box::new(self.relay_messages.clone()),
            Box::new(self.aws_requests.clone()),
            Box::new(self.rejected_input.clone()),
            Box::new(self.task_restarts.clone()),
            Box::new(self.audit_runs.clone()),
            Box::new(self.audit_missing.clone()),
            Box::new(self.audit_verified_until.clone()),
            Box::new(self.ledger_ids.clone()),
            Box::new(self.feed_partitions.clone()),
            Box::new(self.feed_oldest_partition_freshness.clone()),
            Box::new(self.partition_listings.clone()),
            Box::new(self.shape_checks.clone()),
            Box::new(self.shape_mismatch.clone()),
            Box::new(self.state_write_failures.clone()),
            Box::new(self.up.clone()),
        ];
        for c in collectors {
            // Names are fixed above and distinct; a clash is a programming error.
            self.registry
                .register(c)
                .expect("metric families are distinct");
        }
    }

    /// Creates every series a feed will have, at zero, so dashboards and alert
    /// rules see them before the first event (freshness stays absent until then).
    pub(crate) fn init_feed(&self, feed: &str) {
        self.feed_records_observed.with_label_values(&[feed]);
        self.feed_active.with_label_values(&[feed]);
        self.gap_open.with_label_values(&[feed]).set(0);
        // Created at 0, never reset: the lease keeper may have set it already.
        self.feed_leader.with_label_values(&[feed]);
        self.gaps_detected.with_label_values(&[feed]);
        self.gap_unfilled.with_label_values(&[feed]).set(0.0);
        for o in RelayOutcome::ALL {
            self.relay_messages.with_label_values(&[feed, o.as_str()]);
        }
        for o in RecordOutcome::ALL {
            self.backfill_records.with_label_values(&[feed, o.as_str()]);
        }
        for s in ChunkState::ALL {
            self.backfill_chunks.with_label_values(&[feed, s.as_str()]);
        }
    }

    /// Series of a partitioned feed, at zero: per-feed counts, never a
    /// series per partition (the oldest freshness stays absent until a
    /// partition was heard from).
    pub(crate) fn init_partitions(&self, feed: &str, listed: bool) {
        for s in PartitionState::ALL {
            self.feed_partitions.with_label_values(&[feed, s.as_str()]);
        }
        if listed {
            for o in ListingOutcome::ALL {
                self.partition_listings
                    .with_label_values(&[feed, o.as_str()]);
            }
        }
    }

    /// Series of a feed that has a backfill source, at zero.
    pub(crate) fn init_backfill(&self, feed: &str) {
        self.backfill_requests
            .with_label_values(&[feed, RequestStatus::Error.as_str()]);
        self.backfill_request_duration.with_label_values(&[feed]);
    }

    /// Series of an audited feed, at zero (the watermark stays absent until
    /// a first window is verified).
    pub(crate) fn init_audit(&self, feed: &str) {
        for o in AuditOutcome::ALL {
            self.audit_runs.with_label_values(&[feed, o.as_str()]);
        }
        self.audit_missing.with_label_values(&[feed]);
    }

    /// Series of a feed with a shape check, at zero (the mismatch gauge
    /// stays absent until a check compared records).
    pub(crate) fn init_shape(&self, feed: &str) {
        for o in ShapeOutcome::ALL {
            self.shape_checks.with_label_values(&[feed, o.as_str()]);
        }
    }

    /// Series of a feed whose source gets OAuth2 tokens, at zero.
    pub(crate) fn init_source_token(&self, feed: &str) {
        for o in TokenOutcome::ALL {
            self.source_token_requests
                .with_label_values(&[feed, o.as_str()]);
        }
    }

    /// Series of the state store's failed writes, at zero.
    pub(crate) fn init_state_writes(&self) {
        for r in WriteFailure::ALL {
            self.state_write_failures.with_label_values(&[r.as_str()]);
        }
    }

    /// Series of a kind of supervised task, at zero.
    pub(crate) fn init_task(&self, kind: TaskKind) {
        self.task_restarts.with_label_values(&[kind.as_str()]);
    }

    /// A feed's leader gauge at 0 until the lease keeper's first round.
    pub(crate) fn init_lease(&self, feed: &str) {
        self.feed_leader.with_label_values(&[feed]).set(0);
    }

    /// Writes `event`'s log line and moves its series.
    pub(crate) fn emit(&self, event: impl InternalEvent) {
        event.emit(&Series(self));
    }

    /// Prometheus text exposition of every family.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl Metrics {
    /// Every sample, by series (`name{label="value",…}`, labels sorted by
    /// name; a histogram as its `_count` and `_sum`).
    pub(crate) fn samples(&self) -> std::collections::BTreeMap<String, f64> {
        use prometheus::proto::MetricType;
        let mut out = std::collections::BTreeMap::new();
        for family in self.registry.gather() {
            for m in family.get_metric() {
                let mut labels: Vec<_> = m
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={:?}", l.name(), l.value()))
                    .collect();
                labels.sort();
                let labels = labels.join(",");
                let name = family.name();
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        out.insert(
                            format!("{name}_count{{{labels}}}"),
                            h.get_sample_count() as f64,
                        );
                        out.insert(format!("{name}_sum{{{labels}}}"), h.get_sample_sum());
                        continue;
                    }
                    _ => continue,
                };
                out.insert(format!("{name}{{{labels}}}"), value);
            }
        }
        out
    }

    /// One series' value (see [`Metrics::samples`] for how it is named).
    pub(crate) fn value(&self, series: &str) -> Option<f64> {
        self.samples().get(series).copied()
    }
}

/// The series of every family, by typed label values: what an event's
/// `emit` moves. Only [`Metrics::emit`] makes one.
pub(crate) struct Series<'a>(&'a Metrics);

impl Series<'_> {
    pub(crate) fn feed_last_event(&self, feed: &str) -> Gauge {
        self.0.feed_last_event.with_label_values(&[feed])
    }

    pub(crate) fn feed_freshness(&self, feed: &str) -> Gauge {
        self.0.feed_freshness.with_label_values(&[feed])
    }

    pub(crate) fn feed_active(&self, feed: &str) -> IntGauge {
        self.0.feed_active.with_label_values(&[feed])
    }

    pub(crate) fn feed_records_observed(&self, feed: &str) -> IntCounter {
        self.0.feed_records_observed.with_label_values(&[feed])
    }

    pub(crate) fn queue_messages(&self, queue: &str, state: QueueState) -> IntGauge {
        self.0
            .queue_messages
            .with_label_values(&[queue, state.as_str()])
    }

    /// Drops the series: its value is not known (any more).
    pub(crate) fn remove_queue_messages(&self, queue: &str, state: QueueState) {
        let _ = self
            .0
            .queue_messages
            .remove_label_values(&[queue, state.as_str()]);
    }

    pub(crate) fn queue_oldest_age(&self, queue: &str) -> Gauge {
        self.0.queue_oldest_age.with_label_values(&[queue])
    }

    /// Drops the series: its value is not known (any more).
    pub(crate) fn remove_queue_oldest_age(&self, queue: &str) {
        let _ = self.0.queue_oldest_age.remove_label_values(&[queue]);
    }

    pub(crate) fn gap_open(&self, feed: &str) -> IntGauge {
        self.0.gap_open.with_label_values(&[feed])
    }

    pub(crate) fn feed_leader(&self, feed: &str) -> IntGauge {
        self.0.feed_leader.with_label_values(&[feed])
    }

    pub(crate) fn gaps_detected(&self, feed: &str) -> IntCounter {
        self.0.gaps_detected.with_label_values(&[feed])
    }

    pub(crate) fn gap_unfilled(&self, feed: &str) -> Gauge {
        self.0.gap_unfilled.with_label_values(&[feed])
    }

    pub(crate) fn backfill_records(&self, feed: &str, outcome: RecordOutcome) -> IntCounter {
        self.0
            .backfill_records
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn backfill_requests(&self, feed: &str, status: RequestStatus) -> IntCounter {
        self.0
            .backfill_requests
            .with_label_values(&[feed, status.as_str()])
    }

    pub(crate) fn backfill_request_duration(&self, feed: &str) -> Histogram {
        self.0.backfill_request_duration.with_label_values(&[feed])
    }

    pub(crate) fn source_token_requests(&self, feed: &str, outcome: TokenOutcome) -> IntCounter {
        self.0
            .source_token_requests
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn backfill_chunks(&self, feed: &str, state: ChunkState) -> IntGauge {
        self.0
            .backfill_chunks
            .with_label_values(&[feed, state.as_str()])
    }

    pub(crate) fn backfill_last_success(&self, feed: &str) -> Gauge {
        self.0.backfill_last_success.with_label_values(&[feed])
    }

    pub(crate) fn relay_messages(&self, feed: &str, outcome: RelayOutcome) -> IntCounter {
        self.0
            .relay_messages
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn aws_requests(&self, call: AwsOperation, outcome: AwsOutcome) -> IntCounter {
        self.0
            .aws_requests
            .with_label_values(&[call.service(), call.operation(), outcome.as_str()])
    }

    pub(crate) fn rejected_input(
        &self,
        feed: &str,
        source: InputSource,
        reason: Rejection,
    ) -> IntCounter {
        self.0
            .rejected_input
            .with_label_values(&[feed, source.as_str(), reason.as_str()])
    }

    pub(crate) fn task_restarts(&self, kind: TaskKind) -> IntCounter {
        self.0.task_restarts.with_label_values(&[kind.as_str()])
    }

    pub(crate) fn audit_runs(&self, feed: &str, outcome: AuditOutcome) -> IntCounter {
        self.0
            .audit_runs
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn audit_missing(&self, feed: &str) -> IntCounter {
        self.0.audit_missing.with_label_values(&[feed])
    }

    pub(crate) fn audit_verified_until(&self, feed: &str) -> Gauge {
        self.0.audit_verified_until.with_label_values(&[feed])
    }

    pub(crate) fn ledger_ids(&self, feed: &str) -> IntGauge {
        self.0.ledger_ids.with_label_values(&[feed])
    }

    pub(crate) fn feed_partitions(&self, feed: &str, state: PartitionState) -> IntGauge {
        self.0
            .feed_partitions
            .with_label_values(&[feed, state.as_str()])
    }

    pub(crate) fn feed_oldest_partition_freshness(&self, feed: &str) -> Gauge {
        self.0
            .feed_oldest_partition_freshness
            .with_label_values(&[feed])
    }

    pub(crate) fn partition_listings(&self, feed: &str, outcome: ListingOutcome) -> IntCounter {
        self.0
            .partition_listings
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn shape_checks(&self, feed: &str, outcome: ShapeOutcome) -> IntCounter {
        self.0
            .shape_checks
            .with_label_values(&[feed, outcome.as_str()])
    }

    pub(crate) fn shape_mismatch(&self, feed: &str) -> IntGauge {
        self.0.shape_mismatch.with_label_values(&[feed])
    }

    pub(crate) fn state_write_failures(&self, reason: WriteFailure) -> IntCounter {
        self.0
            .state_write_failures
            .with_label_values(&[reason.as_str()])
    }

    /// `gapwatch_ready`.
    pub(crate) fn ready(&self) -> &IntGauge {
        &self.0.up
    }
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition")
}

fn gauge_vec_int(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_contract_family_with_build_info() {
        let m = Metrics::new();
        m.init_feed("orders");
        m.queue_messages
            .with_label_values(&["vendor-orders", QueueState::Visible.as_str()])
            .set(3);
        m.queue_oldest_age
            .with_label_values(&["vendor-orders"])
            .set(1.0);
        m.feed_freshness.with_label_values(&["orders"]).set(2.0);
        m.feed_last_event.with_label_values(&["orders"]).set(1.0);
        m.backfill_request_duration
            .with_label_values(&["orders"])
            .observe(0.1);
        m.backfill_requests
            .with_label_values(&["orders", "200"])
            .inc();
        m.backfill_last_success
            .with_label_values(&["orders"])
            .set(1.0);
        Series(&m)
            .aws_requests(AwsOperation::SqsReceiveMessage, AwsOutcome::Ok)
            .inc();
        m.init_audit("orders");
        m.audit_verified_until
            .with_label_values(&["orders"])
            .set(1.0);
        m.ledger_ids.with_label_values(&["orders"]).set(3);
        m.init_shape("orders");
        Series(&m)
            .shape_checks("orders", ShapeOutcome::Mismatch)
            .inc();
        Series(&m).shape_mismatch("orders").set(1);
        let text = m.render();
        for family in [
            "gapwatch_build_info",
            "gapwatch_feed_last_event_timestamp_seconds",
            "gapwatch_feed_freshness_seconds",
            "gapwatch_feed_active",
            "gapwatch_feed_records_observed_total",
            "gapwatch_queue_messages",
            "gapwatch_queue_oldest_message_age_seconds",
            "gapwatch_gap_open",
            "gapwatch_feed_leader",
            "gapwatch_gaps_detected_total",
            "gapwatch_gap_unfilled_seconds",
            "gapwatch_backfill_records_total",
            "gapwatch_backfill_requests_total",
            "gapwatch_backfill_request_duration_seconds",
            "gapwatch_backfill_chunks",
            "gapwatch_backfill_last_success_timestamp_seconds",
            "gapwatch_relay_messages_total",
            "gapwatch_aws_requests_total",
            "gapwatch_audit_runs_total",
            "gapwatch_audit_records_missing_total",
            "gapwatch_audit_verified_until_timestamp_seconds",
            "gapwatch_state_ledger_ids",
            "gapwatch_shape_checks_total",
            "gapwatch_shape_mismatch",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing from:\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "gapwatch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!text.contains("NaN"));
    }

    #[test]
    fn a_feed_without_events_has_no_freshness_sample() {
        let m = Metrics::new();
        m.init_feed("orders");
        let text = m.render();
        assert!(!text.contains("gapwatch_feed_freshness_seconds{"));
        assert!(text.contains("gapwatch_gap_open{feed=\"orders\"} 0"));
    }
}
