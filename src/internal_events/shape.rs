//! The shape check: recovered messages compared with live ones.

use std::time::Duration;

use tokio::time::Instant;

use super::InternalEvent;
use crate::metrics::{Series, ShapeOutcome};
use crate::shape::ShapeReport;

const TARGET: &str = "gapwatch::shape::checker";

/// The same result (outcome and first path, or reason) is logged once per
/// this long; repeats in between go to the debug level.
pub(crate) const LOG_REPEAT: Duration = Duration::from_secs(3600);

/// Logs a result when it differs from the last one logged, or once per
/// [`LOG_REPEAT`] when it does not.
#[derive(Default)]
pub(crate) struct RepeatLog {
    last: Option<(String, Instant)>,
    suppressed: u64,
}

impl RepeatLog {
    /// `Some(repeats suppressed since the last line)` when this one is logged.
    pub(crate) fn admit(&mut self, signature: String, now: Instant) -> Option<u64> {
        match &self.last {
            Some((s, at)) if *s == signature && now.duration_since(*at) < LOG_REPEAT => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some((signature, now));
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// One check ended: counted, and the mismatch gauge follows a check that
/// compared records (an unavailable one leaves it as it was).
pub(crate) struct ShapeChecked<'a> {
    pub(crate) report: &'a ShapeReport,
    pub(crate) log: &'a mut RepeatLog,
}

impl InternalEvent for ShapeChecked<'_> {
    fn emit(self, series: &Series<'_>) {
        let r = self.report;
        series.shape_checks(&r.feed, r.outcome).inc();
        set_verdict(series, &r.feed, r.outcome);
        let first = r.first();
        let signature = format!(
            "{}|{}|{}",
            r.outcome.as_str(),
            first.map_or("", |(_, f)| f.path.as_str()),
            r.reason.as_deref().unwrap_or("")
        );
        let feed = r.feed.as_str();
        let Some(repeated) = self.log.admit(signature, Instant::now()) else {
            tracing::debug!(target: TARGET, feed, outcome = %r.outcome, compared = r.compared, "shape check (same result as logged before)");
            return;
        };
        let reason = r.reason.as_deref().unwrap_or("");
        match (r.outcome, first) {
            (ShapeOutcome::Mismatch, Some((record_id, f))) => tracing::warn!(
                target: TARGET,
                feed,
                outcome = %r.outcome,
                record_id,
                part = f.part.as_str(),
                path = %f.path,
                live = f.live.as_deref().unwrap_or("(absent)"),
                recovered = f.recovered.as_deref().unwrap_or("(absent)"),
                compared = r.compared,
                differing = r.compared - r.matched,
                repeated,
                "shape check: recovered messages would differ from live ones"
            ),
            (ShapeOutcome::Unavailable, _) => tracing::info!(
                target: TARGET,
                feed,
                outcome = %r.outcome,
                reason,
                sampled = r.sampled,
                requests = r.requests,
                repeated,
                "shape check could not compare"
            ),
            _ => tracing::info!(
                target: TARGET,
                feed,
                outcome = %r.outcome,
                compared = r.compared,
                not_found = r.not_found,
                requests = r.requests,
                repeated,
                "shape check: recovered messages look live"
            ),
        }
    }
}

/// The last check's verdict, read back from the store at start.
pub(crate) struct ShapeVerdictRestored<'a> {
    pub(crate) feed: &'a str,
    pub(crate) outcome: ShapeOutcome,
}

impl InternalEvent for ShapeVerdictRestored<'_> {
    fn emit(self, series: &Series<'_>) {
        set_verdict(series, self.feed, self.outcome);
    }
}

/// `gapwatch_shape_mismatch` after a check that compared records.
fn set_verdict(series: &Series<'_>, feed: &str, outcome: ShapeOutcome) {
    match outcome {
        ShapeOutcome::Match => series.shape_mismatch(feed).set(0),
        ShapeOutcome::Mismatch => series.shape_mismatch(feed).set(1),
        ShapeOutcome::Unavailable => {}
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::internal_events::testing::{emit, emit_on, series};
    use crate::metrics::Metrics;
    use crate::shape::check::{Finding, RecordFindings};
    use crate::shape::Part;

    fn report(outcome: ShapeOutcome) -> ShapeReport {
        let mismatches = match outcome {
            ShapeOutcome::Mismatch => vec![RecordFindings {
                record_id: "r1".into(),
                findings: vec![Finding {
                    part: Part::Body,
                    path: "/amount".into(),
                    live: Some("1".into()),
                    recovered: Some("\"1\"".into()),
                }],
            }],
            _ => Vec::new(),
        };
        ShapeReport {
            feed: "orders".into(),
            checked_at: Utc::now(),
            outcome,
            reason: (outcome == ShapeOutcome::Unavailable)
                .then(|| "no live message sampled yet".into()),
            sampled: 2,
            eligible: 2,
            compared: 2,
            matched: 1,
            not_found: 0,
            requests: 1,
            mismatches,
        }
    }

    #[test]
    fn shape_checked() {
        let m = Metrics::new();
        let mut log = RepeatLog::default();
        let mismatch = report(ShapeOutcome::Mismatch);
        let e = emit_on(
            &m,
            ShapeChecked {
                report: &mismatch,
                log: &mut log,
            },
        );
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_shape_checks_total{feed=\"orders\",outcome=\"mismatch\"}",
                    1.0
                ),
                ("gapwatch_shape_mismatch{feed=\"orders\"}", 1.0),
            ])
        );
        let line = e.line();
        assert_eq!(
            line["message"],
            "shape check: recovered messages would differ from live ones"
        );
        assert_eq!(line["path"], "/amount");
        assert_eq!(line["differing"], 1);
        // The same result again: counted, logged at debug only.
        let e = emit_on(
            &m,
            ShapeChecked {
                report: &mismatch,
                log: &mut log,
            },
        );
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_shape_checks_total{feed=\"orders\",outcome=\"mismatch\"}",
                2.0
            )])
        );
        assert!(e.messages().is_empty());
        // Unavailable: counted, the gauge stays.
        let e = emit_on(
            &m,
            ShapeChecked {
                report: &report(ShapeOutcome::Unavailable),
                log: &mut log,
            },
        );
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_shape_checks_total{feed=\"orders\",outcome=\"unavailable\"}",
                1.0
            )])
        );
        assert_eq!(e.line()["message"], "shape check could not compare");
        assert_eq!(e.line()["reason"], "no live message sampled yet");
        let e = emit_on(
            &m,
            ShapeChecked {
                report: &report(ShapeOutcome::Match),
                log: &mut log,
            },
        );
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_shape_checks_total{feed=\"orders\",outcome=\"match\"}",
                    1.0
                ),
                ("gapwatch_shape_mismatch{feed=\"orders\"}", 0.0),
            ])
        );
        assert_eq!(
            e.line()["message"],
            "shape check: recovered messages look live"
        );
    }

    #[test]
    fn shape_verdict_restored() {
        let e = emit(ShapeVerdictRestored {
            feed: "orders",
            outcome: ShapeOutcome::Mismatch,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_shape_mismatch{feed=\"orders\"}", 1.0)])
        );
        assert!(e.logs.is_empty());
        let e = emit(ShapeVerdictRestored {
            feed: "orders",
            outcome: ShapeOutcome::Unavailable,
        });
        assert!(e.moved.is_empty());
    }

    #[test]
    fn repeated_results_are_logged_once_per_hour() {
        let mut log = RepeatLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit("mismatch|/a|".into(), t0), Some(0));
        assert_eq!(
            log.admit("mismatch|/a|".into(), t0 + Duration::from_secs(60)),
            None
        );
        assert_eq!(
            log.admit("mismatch|/a|".into(), t0 + Duration::from_secs(120)),
            None
        );
        // Another result is logged at once, the same one again after an hour.
        assert_eq!(
            log.admit("match||".into(), t0 + Duration::from_secs(180)),
            Some(2)
        );
        assert_eq!(
            log.admit("match||".into(), t0 + Duration::from_secs(200)),
            None
        );
        assert_eq!(
            log.admit("match||".into(), t0 + Duration::from_secs(180) + LOG_REPEAT),
            Some(1)
        );
    }
}
