//! AWS API calls (SQS, CloudWatch), by outcome.

use super::InternalEvent;
use crate::metrics::{AwsOperation, AwsOutcome, Series};

/// One AWS API call ended (its failures are logged where they are handled).
pub(crate) struct AwsRequestCompleted {
    pub(crate) call: AwsOperation,
    pub(crate) outcome: AwsOutcome,
}

impl InternalEvent for AwsRequestCompleted {
    fn emit(self, series: &Series<'_>) {
        series.aws_requests(self.call, self.outcome).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    #[test]
    fn aws_request_completed() {
        let e = emit(AwsRequestCompleted {
            call: AwsOperation::CloudWatchGetMetricData,
            outcome: AwsOutcome::Throttled,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_aws_requests_total{operation=\"GetMetricData\",outcome=\"throttled\",service=\"cloudwatch\"}", 1.0)])
        );
        let e = emit(AwsRequestCompleted {
            call: AwsOperation::SqsDeleteMessageBatch,
            outcome: AwsOutcome::Ok,
        });
        assert_eq!(
            e.moved,
            series(&[("gapwatch_aws_requests_total{operation=\"DeleteMessageBatch\",outcome=\"ok\",service=\"sqs\"}", 1.0)])
        );
    }
}
