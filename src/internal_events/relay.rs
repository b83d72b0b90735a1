//! The relay: messages forwarded from the vendor queue to the destination.

use super::InternalEvent;
use crate::aws::AwsFailure;
use crate::metrics::{RelayOutcome, Series};

const TARGET: &str = "gapwatch::watch::relay";

/// Messages reached the destination queue (they are deleted next).
pub(crate) struct RelayForwarded<'a> {
    pub(crate) feed: &'a str,
    pub(crate) count: usize,
}

impl InternalEvent for RelayForwarded<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .relay_messages(self.feed, RelayOutcome::Forwarded)
            .inc_by(self.count as u64);
    }
}

/// Why messages could not be forwarded.
pub(crate) enum ForwardFailure<'a> {
    /// The destination refused this message (retrying will not help).
    Refused {
        message_id: &'a str,
        reason: &'a str,
    },
    /// The call failed in a way retrying will not help (access denied, no
    /// such queue).
    Call(&'a AwsFailure),
    /// Retryable failures until the attempts ran out.
    KeptFailing,
}

/// Messages could not be forwarded: they stay in the vendor queue and come
/// back after its visibility timeout.
pub(crate) struct RelayForwardFailed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) count: usize,
    pub(crate) cause: ForwardFailure<'a>,
}

impl InternalEvent for RelayForwardFailed<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .relay_messages(self.feed, RelayOutcome::Failed)
            .inc_by(self.count as u64);
        match self.cause {
            ForwardFailure::Refused { message_id, reason } => tracing::error!(
                target: TARGET,
                feed = %self.feed,
                message_id = %message_id,
                %reason,
                "destination refused a message; it stays in the vendor queue"
            ),
            ForwardFailure::Call(e) => tracing::error!(
                target: TARGET,
                feed = %self.feed,
                error = %e,
                "forward failed; messages stay in the vendor queue"
            ),
            ForwardFailure::KeptFailing => tracing::error!(
                target: TARGET,
                feed = %self.feed,
                count = self.count,
                "forward kept failing; messages stay in the vendor queue"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};
    use crate::metrics::AwsOutcome;

    #[test]
    fn relay_forwarded() {
        let e = emit(RelayForwarded {
            feed: "orders",
            count: 10,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_relay_messages_total{feed=\"orders\",outcome=\"forwarded\"}",
                10.0
            )])
        );
        assert!(e.logs.is_empty());
    }

    #[test]
    fn relay_forward_failed() {
        let key = "gapwatch_relay_messages_total{feed=\"orders\",outcome=\"failed\"}";
        let e = emit(RelayForwardFailed {
            feed: "orders",
            count: 1,
            cause: ForwardFailure::Refused {
                message_id: "m1",
                reason: "InvalidMessageContents",
            },
        });
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        let line = e.line();
        assert_eq!(
            line["message"],
            "destination refused a message; it stays in the vendor queue"
        );
        assert_eq!(line["message_id"], "m1");
        assert_eq!(line["reason"], "InvalidMessageContents");

        let denied = AwsFailure {
            outcome: AwsOutcome::Error,
            retryable: false,
            code: Some("AccessDenied".into()),
            message: "no".into(),
        };
        let e = emit(RelayForwardFailed {
            feed: "orders",
            count: 3,
            cause: ForwardFailure::Call(&denied),
        });
        assert_eq!(e.moved, series(&[(key, 3.0)]));
        assert_eq!(
            e.line()["message"],
            "forward failed; messages stay in the vendor queue"
        );

        let e = emit(RelayForwardFailed {
            feed: "orders",
            count: 2,
            cause: ForwardFailure::KeptFailing,
        });
        assert_eq!(e.moved, series(&[(key, 2.0)]));
        assert_eq!(
            e.line()["message"],
            "forward kept failing; messages stay in the vendor queue"
        );
        assert_eq!(e.line()["count"], 2);
    }
}
