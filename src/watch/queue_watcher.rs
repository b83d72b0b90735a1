//! Queue metrics without touching messages: SQS `GetQueueAttributes` (backlog)
//! and CloudWatch `GetMetricData` (inflow, age of the oldest message). In
//! `passive` mode the per-minute inflow stands in for the records themselves
//! (see [`super::inflow`] for how minutes become observations).
//!
//! Calls, at most:
//! - every `poll_interval`, one `GetQueueAttributes` per distinct queue (each
//!   feed's `queue_url` and a relay's `forward_to`);
//! - every `cloudwatch_interval`, one `GetMetricData` for all queues:
//!   `NumberOfMessagesSent` (Sum per minute) of every feed's own queue and
//!   `ApproximateAgeOfOldestMessage` (Maximum per minute) of every queue.
//!
//! Faults: throttling and transient errors push the next attempt of that
//! resource back (exponential, full jitter, never sooner than its interval);
//! access denied or a missing queue is logged once per change, shown in
//! `/readyz`, its series are dropped, and it is retried slowly. A failing queue
//! never stops the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inflow::{self, InflowTracker, Point};
use crate::aws::{classify, queue_name, AwsFailure};
use crate::config::{Config, MonitorConfig, WatchMode};
use crate::feed::{FeedHandle, FeedStatus};
use crate::health::Health;
use crate::internal_events::{
    AwsRequestCompleted, QueueBacklogRead, QueueOldestAgeRead, QueueUnreadable,
};
use crate::metrics::{AwsOperation, AwsOutcome, Metrics};
use crate::observe::Observation;
use crate::retry::RetryPolicy;

/// Access denied or a missing queue does not heal in seconds: retry after
/// five intervals, but within these bounds.
const SLOW_RETRY_MIN: Duration = Duration::from_secs(5 * 60);
const SLOW_RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// Most queries one `GetMetricData` request may carry.
const MAX_QUERIES: usize = 500;
/// A bound on `NextToken` pages per request (a 30-minute window of 500
/// queries is 15,000 datapoints: one page).
const MAX_PAGES: usize = 20;
/// The `/readyz` resource name of CloudWatch problems.
const CLOUDWATCH: &str = "cloudwatch";

/// When a resource is read next: every interval, later after failures.
#[derive(Debug)]
struct Schedule {
    interval: Duration,
    next: Instant,
    failures: u32,
}

/// The wait after the `failures`-th failure in a row: retryable failures back
/// off exponentially with full jitter from one interval up to eight; the
/// others wait five intervals, 5–30 minutes.
fn retry_delay(
    interval: Duration,
    failures: u32,
    retryable: bool,
    rng: &mut impl rand::Rng,
) -> Duration {
    if !retryable {
        return interval
            .saturating_mul(5)
            .clamp(SLOW_RETRY_MIN, SLOW_RETRY_MAX)
            .max(interval);
    }
    let policy = RetryPolicy {
        base: interval,
        cap: interval.saturating_mul(8).min(SLOW_RETRY_MAX).max(interval),
        max_retries: u32::MAX,
    };
    policy
        .delay(failures, None, rng)
        .unwrap_or(policy.cap)
        .max(interval)
}

// === impl Schedule ===

impl Schedule {
    fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            next: now,
            failures: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    fn succeeded(&mut self, now: Instant) {
        self.failures = 0;
        self.next = now + self.interval;
    }

    fn failed(&mut self, now: Instant, retryable: bool) {
        self.failures = self.failures.saturating_add(1);
        self.next = now + retry_delay(self.interval, self.failures, retryable, &mut rand::rng());
    }

    /// Log the first failure of a streak and then every tenth.
    fn should_log(&self) -> bool {
        self.failures == 1 || self.failures.is_multiple_of(10)
    }
}

/// One queue whose backlog (and CloudWatch numbers) are watched.
#[derive(Debug)]
struct Queue {
    url: String,
    /// The metric label and CloudWatch `QueueName` dimension.
    name: String,
    /// A feed's own queue: its inflow is read too. A relay's destination only
    /// needs its backlog and age.
    inflow: bool,
    schedule: Schedule,
    last_ok: Option<Instant>,
    /// The last answer was access denied, a missing queue or another
    /// non-retryable failure: nothing is exported or advanced for it.
    unusable: bool,
    /// Messages in the queue (all states) at the last successful poll.
    backlog: Option<i64>,
}

impl Queue {
    /// Known to exist: read successfully lately, and not refused since
    /// (transient failures do not change what is known, for a while).
    fn known_to_exist(&self, now: Instant, stale_after: Duration) -> bool {
        !self.unusable
            && self
                .last_ok
                .is_some_and(|t| now.saturating_duration_since(t) <= stale_after)
    }
}

/// A passive feed: its queue's inflow becomes its observations.
struct PassiveFeed {
    feed: String,
    queue: usize,
    tracker: InflowTracker,
    observations: mpsc::Sender<Vec<Observation>>,
}

/// A relay or report feed: CloudWatch inflow cross-checks its open gaps.
struct CrossCheck {
    feed: String,
    queue: usize,
    status: watch::Receiver<FeedStatus>,
    warned_gap: Option<i64>,
}

struct Backlog {
    visible: Option<i64>,
    in_flight: Option<i64>,
    delayed: Option<i64>,
}

pub(crate) struct QueueWatcher {
    sqs: aws_sdk_sqs::Client,
    cloudwatch: aws_sdk_cloudwatch::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    monitor: MonitorConfig,
    queues: Vec<Queue>,
    passive: Vec<PassiveFeed>,
    crosscheck: Vec<CrossCheck>,
    /// `None` when `monitor.cloudwatch = false`.
    cloudwatch_schedule: Option<Schedule>,
}

// === impl QueueWatcher ===

impl QueueWatcher {
    pub(crate) fn new(
        config: &Config,
        sqs: aws_sdk_sqs::Client,
        cloudwatch: aws_sdk_cloudwatch::Client,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        feeds: &HashMap<String, FeedHandle>,
    ) -> Self {
        let now = Instant::now();
        let monitor = config.monitor.clone();
        let mut queues: Vec<Queue> = Vec::new();
        let mut add = |url: &str, inflow: bool| -> usize {
            if let Some(i) = queues.iter().position(|q| q.url == url) {
                queues[i].inflow |= inflow;
                return i;
            }
            queues.push(Queue {
                url: url.to_string(),
                name: queue_name(url).to_string(),
                inflow,
                schedule: Schedule::new(monitor.poll_interval, now),
                last_ok: None,
                unusable: false,
                backlog: None,
            });
            queues.len() - 1
        };
        let mut passive = Vec::new();
        let mut crosscheck = Vec::new();
        for feed in &config.feeds {
            if let Some(dst) = &feed.watch.forward_to {
                add(dst, false);
            }
            let Some(url) = &feed.queue_url else { continue };
            let queue = add(url, true);
            let Some(handle) = feeds.get(&feed.name) else {
                continue;
            };
            if feed.watch.mode == WatchMode::Passive {
                let restored = handle.status.borrow().last_event;
                passive.push(PassiveFeed {
                    feed: feed.name.clone(),
                    queue,
                    tracker: InflowTracker::new(queue_name(url), restored),
                    observations: handle.observations.clone(),
                });
            } else {
                crosscheck.push(CrossCheck {
                    feed: feed.name.clone(),
                    queue,
                    status: handle.status.clone(),
                    warned_gap: None,
                });
            }
        }
        let cloudwatch_schedule = monitor
            .cloudwatch
            .then(|| Schedule::new(monitor.cloudwatch_interval, now));
        Self {
            sqs,
            cloudwatch,
            metrics,
            health,
            monitor,
            queues,
            passive,
            crosscheck,
            cloudwatch_schedule,
        }
    }

    pub(crate) async fn run(&mut self, cancel: CancellationToken) {
        if self.queues.is_empty() {
            cancel.cancelled().await;
            return;
        }
        if self.cloudwatch_schedule.is_none() && !self.passive.is_empty() {
            let feeds: Vec<&str> = self.passive.iter().map(|p| p.feed.as_str()).collect();
            let problem = format!(
                "monitor.cloudwatch is off: passive feeds {} see no inflow",
                feeds.join(", ")
            );
            tracing::error!(feeds = %feeds.join(","), "monitor.cloudwatch is off but passive feeds need it");
            self.health.set_problem(CLOUDWATCH, Some(problem));
        }
        tracing::info!(
            queues = self.queues.len(),
            passive_feeds = self.passive.len(),
            cloudwatch = self.cloudwatch_schedule.is_some(),
            "queue watcher started"
        );
        loop {
            let step = async {
                self.poll_due().await;
                if self
                    .cloudwatch_schedule
                    .as_ref()
                    .is_some_and(|s| s.due(Instant::now()))
                {
                    self.read_cloudwatch().await;
                }
            };
            // Every call is a read: dropping one half-way loses nothing.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = step => {}
            }
            let next = self
                .queues
                .iter()
                .map(|q| q.schedule.next)
                .chain(self.cloudwatch_schedule.as_ref().map(|s| s.next))
                .min()
                .unwrap_or_else(|| Instant::now() + self.monitor.poll_interval);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        tracing::info!("queue watcher stopped");
    }

    /// How long a successful `GetQueueAttributes` vouches for the queue while
    /// later polls fail transiently.
    fn stale_after(&self) -> Duration {
        self.monitor
            .poll_interval
            .saturating_mul(3)
            .max(Duration::from_secs(600))
    }

    // --- backlog ---

    async fn poll_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(usize, String)> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.schedule.due(now))
            .map(|(i, q)| (i, q.url.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        let results = futures::future::join_all(
            due.iter()
                .map(|(_, url)| get_backlog(&self.sqs, &self.metrics, url)),
        )
        .await;
        let now = Instant::now();
        for ((i, _), result) in due.into_iter().zip(results) {
            self.apply_backlog(i, result, now);
        }
    }

    fn apply_backlog(&mut self, i: usize, result: Result<Backlog, AwsFailure>, now: Instant) {
        let q = &mut self.queues[i];
        match result {
            Ok(b) => {
                q.schedule.succeeded(now);
                q.last_ok = Some(now);
                q.unusable = false;
                q.backlog = match (b.visible, b.in_flight, b.delayed) {
                    (Some(v), Some(f), Some(d)) => Some(v + f + d),
                    _ => None,
                };
                self.metrics.emit(QueueBacklogRead {
                    queue: &q.name,
                    visible: b.visible,
                    in_flight: b.in_flight,
                    delayed: b.delayed,
                    readable_again: self.health.set_problem(&q.name, None),
                });
            }
            Err(f) if f.retryable => {
                q.schedule.failed(now, true);
                if q.schedule.should_log() {
                    tracing::warn!(queue = %q.name, error = %f, failures = q.schedule.failures, "cannot read queue attributes; backing off");
                }
            }
            Err(f) => {
                q.schedule.failed(now, false);
                q.unusable = true;
                q.backlog = None;
                let problem = format!("GetQueueAttributes: {f}");
                self.metrics.emit(QueueUnreadable {
                    queue: &q.name,
                    error: &f,
                    retry_in_s: q.schedule.next.saturating_duration_since(now).as_secs(),
                    log: self.health.set_problem(&q.name, Some(problem)),
                });
            }
        }
    }

    // --- CloudWatch ---

    fn queries(&self) -> Vec<MetricDataQuery> {
        let mut out = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.unusable {
                continue;
            }
            if q.inflow {
                out.push(query(sent_id(i), &q.name, "NumberOfMessagesSent", "Sum"));
            }
            out.push(query(
                age_id(i),
                &q.name,
                "ApproximateAgeOfOldestMessage",
                "Maximum",
            ));
        }
        out
    }

    async fn read_cloudwatch(&mut self) {
        let now = Utc::now();
        let queries = self.queries();
        let result = if queries.is_empty() {
            Ok(HashMap::new())
        } else {
            let (start, end) = inflow::query_window(now, &self.monitor);
            get_metric_data(&self.cloudwatch, &self.metrics, &queries, start, end).await
        };
        let done = Instant::now();
        let Some(schedule) = self.cloudwatch_schedule.as_mut() else {
            return;
        };
        match result {
            Ok(series) => {
                schedule.succeeded(done);
                if self.health.set_problem(CLOUDWATCH, None) {
                    tracing::info!("cloudwatch is readable again");
                }
                self.apply_cloudwatch(&series, now, done).await;
            }
            Err(f) if f.retryable => {
                schedule.failed(done, true);
                if schedule.should_log() {
                    tracing::warn!(error = %f, failures = schedule.failures, "cannot read cloudwatch metrics; backing off");
                }
            }
            Err(f) => {
                schedule.failed(done, false);
                let retry_in = schedule.next.saturating_duration_since(done).as_secs();
                if self
                    .health
                    .set_problem(CLOUDWATCH, Some(format!("GetMetricData: {f}")))
                {
                    tracing::error!(error = %f, retry_in_s = retry_in, "cloudwatch metrics cannot be read; retrying slowly");
                }
            }
        }
    }

    async fn apply_cloudwatch(
        &mut self,
        series: &HashMap<String, Vec<Point>>,
        now: DateTime<Utc>,
        at: Instant,
    ) {
        let settled = inflow::settled_before(now, self.monitor.cloudwatch_delay);
        let none: Vec<Point> = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.unusable {
                continue;
            }
            let points = series.get(&age_id(i)).unwrap_or(&none);
            self.metrics.emit(QueueOldestAgeRead {
                queue: &q.name,
                seconds: inflow::oldest_age(points, settled, q.backlog == Some(0)),
            });
        }

        let stale_after = self.stale_after();
        for p in &mut self.passive {
            let q = &self.queues[p.queue];
            let points = series.get(&sent_id(p.queue)).unwrap_or(&none);
            let exists = q.known_to_exist(at, stale_after);
            let obs = p.tracker.take(points, settled, exists);
            if !exists {
                tracing::debug!(feed = %p.feed, queue = %q.name, "queue not known to exist; inflow not counted");
                continue;
            }
            let (Some(first), Some(last)) = (obs.first(), obs.last()) else {
                continue;
            };
            tracing::debug!(
                feed = %p.feed,
                queue = %q.name,
                minutes = obs.len(),
                from = %first.event_time.to_rfc3339(),
                to = %last.event_time.to_rfc3339(),
                "inflow observed"
            );
            if p.observations.send(obs).await.is_err() {
                tracing::warn!(feed = %p.feed, "feed monitor is gone; inflow dropped");
            }
        }

        for c in &mut self.crosscheck {
            let Some(gap) = c.status.borrow().open_gap else {
                continue;
            };
            if c.warned_gap == Some(gap.id) {
                continue;
            }
            let q = &self.queues[c.queue];
            let points = series.get(&sent_id(c.queue)).unwrap_or(&none);
            let Some(minute) = inflow::newest_inflow(points, settled) else {
                continue;
            };
            if minute > inflow::floor_minute(gap.start) {
                c.warned_gap = Some(gap.id);
                tracing::warn!(
                    feed = %c.feed,
                    gap_id = gap.id,
                    queue = %q.name,
                    inflow_minute = %minute.to_rfc3339(),
                    gap_start = %gap.start.to_rfc3339(),
                    "the vendor queue receives messages but the feed observes nothing newer than the gap start"
                );
            }
        }
    }
}

fn sent_id(queue: usize) -> String {
    format!("sent{queue}")
}

fn age_id(queue: usize) -> String {
    format!("age{queue}")
}

fn query(id: String, queue: &str, metric: &str, stat: &str) -> MetricDataQuery {
    let metric = Metric::builder()
        .namespace("AWS/SQS")
        .metric_name(metric)
        .dimensions(Dimension::builder().name("QueueName").value(queue).build())
        .build();
    MetricDataQuery::builder()
        .id(id)
        .return_data(true)
        .metric_stat(
            MetricStat::builder()
                .metric(metric)
                .period(60)
                .stat(stat)
                .build(),
        )
        .build()
}

async fn get_backlog(
    sqs: &aws_sdk_sqs::Client,
    metrics: &Metrics,
    url: &str,
) -> Result<Backlog, AwsFailure> {
    use QueueAttributeName as A;
    let r = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await;
    match r {
        Ok(out) => {
            metrics.emit(AwsRequestCompleted {
                call: AwsOperation::SqsGetQueueAttributes,
                outcome: AwsOutcome::Ok,
            });
            let attrs = out.attributes.unwrap_or_default();
            let get = |k: A| attrs.get(&k).and_then(|v| v.parse::<i64>().ok());
            Ok(Backlog {
                visible: get(A::ApproximateNumberOfMessages),
                in_flight: get(A::ApproximateNumberOfMessagesNotVisible),
                delayed: get(A::ApproximateNumberOfMessagesDelayed),
            })
        }
        Err(e) => {
            let f = classify(&e);
            metrics.emit(AwsRequestCompleted {
                call: AwsOperation::SqsGetQueueAttributes,
                outcome: f.outcome,
            });
            Err(f)
        }
    }
}

/// Every datapoint of `queries` over `[start, end)`, by query id.
async fn get_metric_data(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    metrics: &Metrics,
    queries: &[MetricDataQuery],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<HashMap<String, Vec<Point>>, AwsFailure> {
    use aws_sdk_cloudwatch::primitives::DateTime as AwsTime;
    let mut out: HashMap<String, Vec<Point>> = HashMap::new();
    for chunk in queries.chunks(MAX_QUERIES) {
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let r = cloudwatch
                .get_metric_data()
                .set_metric_data_queries(Some(chunk.to_vec()))
                .start_time(AwsTime::from_secs(start.timestamp()))
                .end_time(AwsTime::from_secs(end.timestamp()))
                .scan_by(ScanBy::TimestampAscending)
                .set_next_token(token.take())
                .send()
                .await;
            let page = match r {
                Ok(page) => {
                    metrics.emit(AwsRequestCompleted {
                        call: AwsOperation::CloudWatchGetMetricData,
                        outcome: AwsOutcome::Ok,
                    });
                    page
                }
                Err(e) => {
                    let f = classify(&e);
                    metrics.emit(AwsRequestCompleted {
                        call: AwsOperation::CloudWatchGetMetricData,
                        outcome: f.outcome,
                    });
                    return Err(f);
                }
            };
            for result in page.metric_data_results() {
                let Some(id) = result.id() else { continue };
                let points = out.entry(id.to_string()).or_default();
                for (t, v) in result.timestamps().iter().zip(result.values()) {
                    if let Some(t) = DateTime::from_timestamp(t.secs(), 0) {
                        points.push((t, *v));
                    }
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn transient_failures_back_off_from_one_interval_up_to_eight() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let i = Duration::from_secs(60);
        for failures in 1..20 {
            let d = retry_delay(i, failures, true, &mut rng);
            assert!(d >= i, "{d:?} shorter than the interval");
            assert!(d <= i * 8, "{d:?} beyond the cap");
        }
        assert_eq!(retry_delay(i, 1, true, &mut rng), i);
    }

    #[test]
    fn refusals_are_retried_slowly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = |secs| retry_delay(Duration::from_secs(secs), 1, false, &mut rng);
        assert_eq!(d(1), SLOW_RETRY_MIN);
        assert_eq!(d(120), Duration::from_secs(600));
        assert_eq!(d(3600), Duration::from_secs(3600));
    }

    #[test]
    fn a_queue_is_known_only_after_a_recent_success() {
        let now = Instant::now();
        let mut q = Queue {
            url: "u".into(),
            name: "q".into(),
            inflow: true,
            schedule: Schedule::new(Duration::from_secs(60), now),
            last_ok: None,
            unusable: false,
            backlog: None,
        };
        let stale = Duration::from_secs(600);
        assert!(!q.known_to_exist(now, stale));
        q.last_ok = Some(now);
        assert!(q.known_to_exist(now + Duration::from_secs(599), stale));
        assert!(!q.known_to_exist(now + Duration::from_secs(601), stale));
        q.unusable = true;
        assert!(!q.known_to_exist(now, stale));
    }
}
