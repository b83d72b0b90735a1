//! The completeness audit: windows verified against the vendor, the
//! watermark, the ledger.

use chrono::{DateTime, Utc};

use super::{unix_seconds, InternalEvent};
use crate::fill::plan::Window;
use crate::metrics::{AuditOutcome, Series};

const TARGET: &str = "gapwatch::audit::auditor";

/// Every vendor record of the window is in the ledger; those that were
/// missing have just been delivered.
pub(crate) struct AuditWindowVerified<'a> {
    pub(crate) feed: &'a str,
    pub(crate) window: Window,
    /// Found missing, then delivered.
    pub(crate) missing: i64,
    /// Listed by the vendor for the window.
    pub(crate) listed: i64,
}

impl InternalEvent for AuditWindowVerified<'_> {
    fn emit(self, series: &Series<'_>) {
        series.audit_runs(self.feed, AuditOutcome::Ok).inc();
        let from = self.window.start.to_rfc3339();
        let to = self.window.end.to_rfc3339();
        if self.missing > 0 {
            series.audit_missing(self.feed).inc_by(self.missing as u64);
            tracing::warn!(
                target: TARGET,
                feed = self.feed,
                from,
                to,
                missing = self.missing,
                listed = self.listed,
                "audit found records missing; delivered"
            );
        } else {
            tracing::info!(target: TARGET, feed = self.feed, from, to, listed = self.listed, "audit window complete");
        }
    }
}

/// The window could not be listed or its missing records delivered: the
/// watermark stays, the next run tries again.
pub(crate) struct AuditWindowFailed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) window: Window,
    /// Delivered before it failed.
    pub(crate) delivered: i64,
    pub(crate) error: &'a str,
}

impl InternalEvent for AuditWindowFailed<'_> {
    fn emit(self, series: &Series<'_>) {
        series.audit_runs(self.feed, AuditOutcome::Failed).inc();
        tracing::error!(
            target: TARGET,
            feed = self.feed,
            from = self.window.start.to_rfc3339(),
            to = self.window.end.to_rfc3339(),
            delivered = self.delivered,
            error = self.error,
            "audit window failed; watermark not moved"
        );
    }
}

/// The audit's watermark as published: every record older is proven
/// delivered.
pub(crate) struct AuditWatermarkPublished<'a> {
    pub(crate) feed: &'a str,
    pub(crate) verified_until: DateTime<Utc>,
}

impl InternalEvent for AuditWatermarkPublished<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .audit_verified_until(self.feed)
            .set(unix_seconds(self.verified_until));
    }
}

/// The ledger's size for the feed, read after a prune.
pub(crate) struct LedgerSized<'a> {
    pub(crate) feed: &'a str,
    pub(crate) ids: i64,
}

impl InternalEvent for LedgerSized<'_> {
    fn emit(self, series: &Series<'_>) {
        series.ledger_ids(self.feed).set(self.ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    fn window() -> Window {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        Window {
            start: at("2026-01-01T00:00:00Z"),
            end: at("2026-01-01T00:15:00Z"),
        }
    }

    #[test]
    fn audit_window_verified() {
        let e = emit(AuditWindowVerified {
            feed: "orders",
            window: window(),
            missing: 2,
            listed: 40,
        });
        assert_eq!(
            e.moved,
            series(&[
                ("gapwatch_audit_records_missing_total{feed=\"orders\"}", 2.0),
                (
                    "gapwatch_audit_runs_total{feed=\"orders\",outcome=\"ok\"}",
                    1.0
                ),
            ])
        );
        let line = e.line();
        assert_eq!(line["message"], "audit found records missing; delivered");
        assert_eq!(line["from"], "2026-01-01T00:00:00+00:00");
        assert_eq!(line["missing"], 2);
        let e = emit(AuditWindowVerified {
            feed: "orders",
            window: window(),
            missing: 0,
            listed: 40,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_audit_runs_total{feed=\"orders\",outcome=\"ok\"}",
                1.0
            )])
        );
        assert_eq!(e.line()["message"], "audit window complete");
    }

    #[test]
    fn audit_window_failed() {
        let e = emit(AuditWindowFailed {
            feed: "orders",
            window: window(),
            delivered: 1,
            error: "chunk 0 failed",
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_audit_runs_total{feed=\"orders\",outcome=\"failed\"}",
                1.0
            )])
        );
        let line = e.line();
        assert_eq!(line["message"], "audit window failed; watermark not moved");
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["error"], "chunk 0 failed");
    }

    #[test]
    fn watermark_and_ledger() {
        let e = emit(AuditWatermarkPublished {
            feed: "orders",
            verified_until: window().end,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_audit_verified_until_timestamp_seconds{feed=\"orders\"}",
                1767226500.0
            )])
        );
        let e = emit(LedgerSized {
            feed: "orders",
            ids: 9,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_state_ledger_ids{feed=\"orders\"}", 9.0)])
        );
    }
}
