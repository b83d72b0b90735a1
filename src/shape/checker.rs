//! The shape checker of one feed (a daemon task): saves the live sample to
//! the store soon after each message is taken, and checks it every
//! `shape.every` while this replica holds the feed's lease. The first check
//! after a start runs as soon as a sampled message is old enough for the
//! source to list it, so a wrong `render` is reported minutes after a deploy,
//! not an hour later.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::check::{check, ShapeReport, ShapeStatus, SLACK};
use super::sample::{LiveMessage, Sampler};
use crate::config::{FeedConfig, ShapeConfig};
use crate::fill::source::Source;
use crate::internal_events::{RepeatLog, ShapeChecked, ShapeVerdictRestored};
use crate::lease::LeaseView;
use crate::metrics::Metrics;
use crate::store::Store;

/// After a message is taken, the save waits this long for others to join it.
const SAVE_DELAY: Duration = Duration::from_secs(1);

pub(crate) struct ShapeChecker {
    feed: Arc<FeedConfig>,
    store: Store,
    metrics: Arc<Metrics>,
    /// The feed's source: shared with its fills (one rate limit).
    source: Source,
    sampler: Arc<Sampler>,
    lease: watch::Receiver<LeaseView>,
    /// Where the last check is published (`/api/v1/feeds`).
    published: Arc<watch::Sender<Option<ShapeStatus>>>,
    log: RepeatLog,
    save_failures: u32,
    /// Whether the first check since this process started is behind us
    /// (run here, or left to the lease holder).
    checked: bool,
}

impl ShapeChecker {
    pub(crate) fn new(
        feed: Arc<FeedConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        source: Source,
        sampler: Arc<Sampler>,
        published: Arc<watch::Sender<Option<ShapeStatus>>>,
    ) -> Self {
        metrics.init_shape(&feed.name);
        Self {
            feed,
            store,
            metrics,
            source,
            sampler,
            lease: watch::channel(LeaseView::held()).1,
            published,
            log: RepeatLog::default(),
            save_failures: 0,
            checked: false,
        }
    }

    /// Checks only while this replica holds the feed's lease.
    pub(crate) fn with_lease(mut self, lease: watch::Receiver<LeaseView>) -> Self {
        self.lease = lease;
        self
    }

    fn config(&self) -> &ShapeConfig {
        self.feed
            .shape
            .as_ref()
            .expect("shape checker built for a feed with a shape check")
    }

    pub(crate) async fn run(&mut self, cancel: CancellationToken) {
        // Inside its feed's span (see `crate::supervise`).
        let span = tracing::info_span!("shape");
        async move {
            self.restore().await;
            let started = Instant::now();
            let mut last_check: Option<Instant> = None;
            let sampler = self.sampler.clone();
            loop {
                let due = self.due(started, last_check);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = sampler.taken() => {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(SAVE_DELAY) => {}
                        }
                        self.save().await;
                        continue;
                    }
                    _ = tokio::time::sleep_until(due) => {}
                }
                last_check = Some(Instant::now());
                // From here on checks are `every` apart, whoever runs them.
                self.checked = true;
                if !self.lease.borrow().is_mine() {
                    // The holder checks; show what it found.
                    if let Ok(Some(status)) = self.store.shape_check(&self.feed.name).await {
                        self.published.send_replace(Some(status));
                    }
                    continue;
                }
                // A check waits on the source (retries, timeouts): shutdown does not.
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.check_now() => {}
                }
            }
            self.save().await;
            tracing::debug!("shape checker stopped");
        }
        .instrument(span)
        .await
    }

    /// The last check and the sample as the store kept them.
    async fn restore(&mut self) {
        let feed = self.feed.name.clone();
        match self.store.shape_sample(&feed).await {
            Ok(saved) => self.sampler.restore(saved),
            Err(e) => tracing::warn!(error = %e, "cannot read the saved shape sample"),
        }
        match self.store.shape_check(&feed).await {
            Ok(Some(status)) => {
                self.metrics.emit(ShapeVerdictRestored {
                    feed: &feed,
                    outcome: status.outcome,
                });
                self.published.send_replace(Some(status));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the last shape check"),
        }
    }

    /// When the next check is due: `every` after the last one; before the
    /// first, as soon as a sampled message can be listed (at the latest
    /// `every` after the start).
    fn due(&self, started: Instant, last_check: Option<Instant>) -> Instant {
        let every = self.config().every;
        if let Some(last) = last_check.filter(|_| self.checked) {
            return last + every;
        }
        let latest = last_check.unwrap_or(started) + every;
        let settle = self
            .feed
            .backfill
            .as_ref()
            .map_or(Duration::ZERO, |b| b.settle);
        let wait = chrono::TimeDelta::from_std(settle + SLACK).unwrap_or(chrono::TimeDelta::MAX);
        let listable = self
            .sampler
            .messages()
            .iter()
            .map(|m| m.event_time)
            .min()
            .and_then(|t| t.checked_add_signed(wait));
        match listable {
            Some(t) => latest.min(instant_at(t, every)),
            None => latest,
        }
    }

    /// Writes the sample if a message was taken since the last save.
    async fn save(&mut self) {
        let Some(messages) = self.sampler.unsaved() else {
            return;
        };
        let keep = self.config().sample.get();
        match self
            .store
            .save_shape_sample(&self.feed.name, &messages, keep)
            .await
        {
            Ok(()) => {
                if self.save_failures > 0 {
                    tracing::info!("shape sample saved again");
                }
                self.save_failures = 0;
            }
            Err(e) => {
                self.sampler.save_failed();
                self.save_failures = self.save_failures.saturating_add(1);
                if self.save_failures == 1 || self.save_failures.is_multiple_of(100) {
                    tracing::warn!(error = %e, failures = self.save_failures, "cannot save the shape sample; kept in memory");
                }
            }
        }
    }

    /// One check now: saved first, so what is checked outlives a crash.
    pub(crate) async fn check_now(&mut self) -> ShapeReport {
        self.save().await;
        let sample = self.sample().await;
        let report = check(&self.feed, &self.source, &sample, Utc::now()).await;
        self.checked = true;
        self.metrics.emit(ShapeChecked {
            report: &report,
            log: &mut self.log,
        });
        let status = report.status();
        if let Err(e) = self.store.save_shape_check(&self.feed.name, &status).await {
            tracing::warn!(error = %e, "cannot save the shape check");
        }
        self.published.send_replace(Some(status));
        report
    }

    /// The sample to check: the store's (every replica's messages) or, when
    /// it cannot be read, this replica's own.
    async fn sample(&self) -> Vec<LiveMessage> {
        match self.store.shape_sample(&self.feed.name).await {
            Ok(saved) if !saved.is_empty() => saved,
            Ok(_) => self.sampler.messages(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shape sample; checking this replica's");
                self.sampler.messages()
            }
        }
    }
}

/// The monotonic instant at wall-clock time `t` (now if `t` has passed),
/// at most `cap` ahead (an event time far in the future is no deadline).
fn instant_at(t: DateTime<Utc>, cap: Duration) -> Instant {
    let ahead = t
        .signed_duration_since(Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    Instant::now() + ahead.min(cap)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Config;

    /// A report feed checked every hour, settle 1 m, over an in-memory store.
    async fn checker() -> ShapeChecker {
        let text = r#"
[server]
admin_token = "t0ken"
[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  settle = "1m"
    [feeds.backfill.source]
    url = "http://127.0.0.1:1/v1/events"
    query = { since = "{start}", until = "{end}" }
    record_time = "/t"
    [feeds.backfill.sink]
    type = "file"
    path = "/tmp/gapwatch-shape-checker-test.ndjson"
"#;
        let feed = Arc::new(
            Config::from_toml(text, &Default::default())
                .unwrap()
                .feeds
                .remove(0),
        );
        let metrics = Arc::new(Metrics::new());
        let b = feed.backfill.as_ref().unwrap();
        let source = Source::new(&feed.name, &b.source, metrics.clone()).unwrap();
        let shape = feed.shape.as_ref().unwrap();
        let sampler = Arc::new(Sampler::for_check(shape.sample.get(), shape.every));
        ShapeChecker::new(
            feed.clone(),
            Store::memory().await.unwrap(),
            metrics,
            source,
            sampler,
            Arc::new(watch::channel(None).0),
        )
    }

    fn live(event_time: DateTime<Utc>) -> LiveMessage {
        LiveMessage {
            id: "r-1".into(),
            event_time,
            received_at: Utc::now(),
            body: "{}".into(),
            attributes: BTreeMap::new(),
        }
    }

    /// `a` and `b` within a second of each other.
    fn near(a: Instant, b: Instant) -> bool {
        a.max(b).duration_since(a.min(b)) < Duration::from_secs(1)
    }

    #[tokio::test]
    async fn the_first_check_runs_once_a_sampled_message_is_listable() {
        let c = checker().await;
        let hour = Duration::from_secs(3600);
        let started = Instant::now();
        // Nothing sampled: `every` after the start.
        assert_eq!(c.due(started, None), started + hour);
        // A message of now: listable after settle + slack (61 s).
        c.sampler.offer(live(Utc::now()));
        assert!(near(
            c.due(started, None),
            Instant::now() + Duration::from_secs(61)
        ));
        // A message (restored from the store) listable already: at once.
        let c = checker().await;
        c.sampler
            .restore(vec![live(Utc::now() - chrono::TimeDelta::minutes(5))]);
        assert!(near(c.due(started, None), Instant::now()));
        // An event time far ahead is no deadline beyond `every`.
        let mut c = checker().await;
        c.sampler
            .restore(vec![live(Utc::now() + chrono::TimeDelta::days(3650))]);
        assert_eq!(c.due(started, None), started + hour);
        // Once the first check is behind, `every` apart.
        c.checked = true;
        let last = started + Duration::from_secs(10);
        assert_eq!(c.due(started, Some(last)), last + hour);
    }
}
