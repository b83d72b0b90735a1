//! Queue attributes and CloudWatch numbers, read without touching messages.

use super::InternalEvent;
use crate::aws::AwsFailure;
use crate::metrics::{QueueState, Series};

const TARGET: &str = "gapwatch::watch::queue_watcher";

/// `GetQueueAttributes` answered: the queue's backlog by state (a count
/// the answer lacks has no series).
pub(crate) struct QueueBacklogRead<'a> {
    pub(crate) queue: &'a str,
    pub(crate) visible: Option<i64>,
    pub(crate) in_flight: Option<i64>,
    pub(crate) delayed: Option<i64>,
    /// The queue could not be read before.
    pub(crate) readable_again: bool,
}

impl InternalEvent for QueueBacklogRead<'_> {
    fn emit(self, series: &Series<'_>) {
        for (state, n) in [
            (QueueState::Visible, self.visible),
            (QueueState::InFlight, self.in_flight),
            (QueueState::Delayed, self.delayed),
        ] {
            match n {
                Some(n) => series.queue_messages(self.queue, state).set(n),
                None => series.remove_queue_messages(self.queue, state),
            }
        }
        if self.readable_again {
            tracing::info!(target: TARGET, queue = %self.queue, "queue is readable again");
        }
    }
}

/// The queue cannot be read (access denied, no such queue): its series are
/// dropped and it is retried slowly.
pub(crate) struct QueueUnreadable<'a> {
    pub(crate) queue: &'a str,
    pub(crate) error: &'a AwsFailure,
    pub(crate) retry_in_s: u64,
    /// Logged when the problem is new (or changed), not at every retry.
    pub(crate) log: bool,
}

impl InternalEvent for QueueUnreadable<'_> {
    fn emit(self, series: &Series<'_>) {
        for state in QueueState::ALL {
            series.remove_queue_messages(self.queue, *state);
        }
        series.remove_queue_oldest_age(self.queue);
        if self.log {
            tracing::error!(target: TARGET, queue = %self.queue, error = %self.error, retry_in_s = self.retry_in_s, "queue cannot be read; retrying slowly");
        }
    }
}

/// CloudWatch's age of the queue's oldest message (None: not known, e.g.
/// no datapoint yet).
pub(crate) struct QueueOldestAgeRead<'a> {
    pub(crate) queue: &'a str,
    pub(crate) seconds: Option<f64>,
}

impl InternalEvent for QueueOldestAgeRead<'_> {
    fn emit(self, series: &Series<'_>) {
        match self.seconds {
            Some(age) => series.queue_oldest_age(self.queue).set(age),
            None => series.remove_queue_oldest_age(self.queue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit_on, series};
    use crate::metrics::{AwsOutcome, Metrics};

    #[test]
    fn a_backlog_sets_what_it_knows_and_drops_the_rest() {
        let m = Metrics::new();
        let e = emit_on(
            &m,
            QueueBacklogRead {
                queue: "vendor-orders",
                visible: Some(3),
                in_flight: Some(1),
                delayed: Some(0),
                readable_again: false,
            },
        );
        assert_eq!(
            e.moved,
            series(&[
                (
                    "gapwatch_queue_messages{queue=\"vendor-orders\",state=\"delayed\"}",
                    0.0
                ),
                (
                    "gapwatch_queue_messages{queue=\"vendor-orders\",state=\"in_flight\"}",
                    1.0
                ),
                (
                    "gapwatch_queue_messages{queue=\"vendor-orders\",state=\"visible\"}",
                    3.0
                ),
            ])
        );
        assert!(e.logs.is_empty());
        let e = emit_on(
            &m,
            QueueBacklogRead {
                queue: "vendor-orders",
                visible: Some(3),
                in_flight: Some(1),
                delayed: None,
                readable_again: true,
            },
        );
        let mut want = series(&[]);
        want.insert(
            "gapwatch_queue_messages{queue=\"vendor-orders\",state=\"delayed\"}".into(),
            None,
        );
        assert_eq!(e.moved, want);
        assert_eq!(e.line()["message"], "queue is readable again");
    }

    #[test]
    fn an_unreadable_queue_loses_its_series() {
        let m = Metrics::new();
        emit_on(
            &m,
            QueueBacklogRead {
                queue: "vendor-orders",
                visible: Some(3),
                in_flight: None,
                delayed: None,
                readable_again: false,
            },
        );
        emit_on(
            &m,
            QueueOldestAgeRead {
                queue: "vendor-orders",
                seconds: Some(60.0),
            },
        );
        let denied = AwsFailure {
            outcome: AwsOutcome::Error,
            retryable: false,
            code: Some("AccessDenied".into()),
            message: "no".into(),
        };
        let e = emit_on(
            &m,
            QueueUnreadable {
                queue: "vendor-orders",
                error: &denied,
                retry_in_s: 300,
                log: true,
            },
        );
        let mut want = series(&[]);
        want.insert(
            "gapwatch_queue_messages{queue=\"vendor-orders\",state=\"visible\"}".into(),
            None,
        );
        want.insert(
            "gapwatch_queue_oldest_message_age_seconds{queue=\"vendor-orders\"}".into(),
            None,
        );
        assert_eq!(e.moved, want);
        let line = e.line();
        assert_eq!(line["message"], "queue cannot be read; retrying slowly");
        assert_eq!(line["retry_in_s"], 300);
    }

    #[test]
    fn queue_oldest_age_read() {
        let m = Metrics::new();
        let e = emit_on(
            &m,
            QueueOldestAgeRead {
                queue: "app-orders",
                seconds: Some(12.0),
            },
        );
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_queue_oldest_message_age_seconds{queue=\"app-orders\"}",
                12.0
            )])
        );
        let e = emit_on(
            &m,
            QueueOldestAgeRead {
                queue: "app-orders",
                seconds: None,
            },
        );
        let mut want = series(&[]);
        want.insert(
            "gapwatch_queue_oldest_message_age_seconds{queue=\"app-orders\"}".into(),
            None,
        );
        assert_eq!(e.moved, want);
    }
}
