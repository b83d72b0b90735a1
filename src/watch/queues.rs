//! Queue metrics without touching messages: SQS `GetQueueAttributes` (backlog)
//! and CloudWatch `GetMetricData` (inflow, age of the oldest message). In
//! `passive` mode the per-minute inflow stands in for the records themselves.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::Health;
use crate::config::Config;
use crate::feed::FeedHandle;
use crate::metrics::Metrics;

pub struct QueueWatcher {}

impl QueueWatcher {
    pub fn new(
        _config: &Config,
        _sqs: aws_sdk_sqs::Client,
        _cloudwatch: aws_sdk_cloudwatch::Client,
        _metrics: Arc<Metrics>,
        _health: Arc<Health>,
        _feeds: &HashMap<String, FeedHandle>,
    ) -> Self {
        Self {}
    }

    pub async fn run(self, cancel: CancellationToken) {
        cancel.cancelled().await;
    }
}
