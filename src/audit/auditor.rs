//! The auditor of one feed: every `every`, the due window (see `window`) is
//! audited as a fill of owner `audit` — the filler lists the vendor's records
//! with the feed's source and delivers those the ledger lacks — and the
//! watermark moves once the window is done. A window that fails leaves the
//! watermark where it was; the next run starts there again. The ledger is
//! pruned on the same schedule.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::window::{advance, due_window, Due};
use super::OWNER;
use crate::config::{AuditConfig, FeedConfig};
use crate::fill::plan::Window;
use crate::fill::{Filler, GapOutcome};
use crate::internal_events::{
    AuditWatermarkPublished, AuditWindowFailed, AuditWindowVerified, LedgerSized,
};
use crate::lease::LeaseView;
use crate::metrics::Metrics;
use crate::store::{Gap, GapFilter, GapKind, Store, StoreError};

/// The first run waits this long after start (the fillers reset chunks a
/// crash left running first), or `every` if that is shorter.
const FIRST_RUN: Duration = Duration::from_secs(5);
/// While an audit window has chunks waiting for a retry: how often it is looked at.
const RETRY_PASS: Duration = Duration::from_secs(1);
/// How often the ledger is pruned (at most; also once per run).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Finished fills looked at per run for a post-fill audit.
const RECENT_FILLS: i64 = 100;

pub(crate) struct Auditor {
    feed: Arc<FeedConfig>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Delivers audit windows: the feed's source and sink, owner `audit`.
    filler: Filler,
    lease: watch::Receiver<LeaseView>,
    /// Where the watermark is published (`/api/v1/feeds`).
    published: Arc<watch::Sender<Option<DateTime<Utc>>>>,
    /// Fills finished up to this gap id were audited (or predate this run).
    fills_seen: i64,
    last_prune: Option<tokio::time::Instant>,
}

impl Auditor {
    /// `filler` must be built for this feed with owner [`OWNER`].
    pub(crate) fn new(
        feed: Arc<FeedConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        filler: Filler,
        published: Arc<watch::Sender<Option<DateTime<Utc>>>>,
    ) -> Self {
        metrics.init_audit(&feed.name);
        Self {
            feed,
            store,
            metrics,
            filler,
            lease: watch::channel(LeaseView::held()).1,
            published,
            fills_seen: i64::MAX,
            last_prune: None,
        }
    }

    /// Audits only while this replica holds the feed's lease.
    pub(crate) fn with_lease(mut self, lease: watch::Receiver<LeaseView>) -> Self {
        self.lease = lease;
        self
    }

    fn config(&self) -> &AuditConfig {
        self.feed
            .audit
            .as_ref()
            .expect("auditor built for a feed with [feeds.audit]")
    }

    pub(crate) async fn run(&mut self, cancel: CancellationToken) {
        // Inside its feed's span (see `crate::supervise`).
        let span = tracing::info_span!("audit");
        async move {
            // The ledger is complete from the feed monitor's start on: the
            // audit's first window starts here, not at the first run.
            match self.store.audit_state(&self.feed.name, Utc::now()).await {
                Ok(state) => self.publish(state.verified_until),
                Err(e) => tracing::warn!(error = %e, "cannot read the audit state"),
            }
            let every = self.config().every;
            // Runs start every `every` (a run longer than that delays the next).
            let mut next = tokio::time::Instant::now() + FIRST_RUN.min(every);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(next) => {}
                }
                next = (next + every).max(tokio::time::Instant::now());
                if !self.lease.borrow().is_mine() {
                    continue;
                }
                if let Err(e) = self.round(&cancel).await {
                    tracing::error!(error = %e, "audit run failed");
                }
                self.prune().await;
            }
            tracing::debug!("auditor stopped");
        }
        .instrument(span)
        .await
    }

    /// One run: windows left by a previous run, the fills that finished
    /// behind the watermark, then the window that is due.
    pub(crate) async fn round(&mut self, cancel: &CancellationToken) -> Result<(), StoreError> {
        let feed = self.feed.name.clone();
        let now = Utc::now();
        let state = self.store.audit_state(&feed, now).await?;
        self.publish(state.verified_until);
        for gap in self.store.gaps_to_fill(&feed, OWNER).await? {
            self.audit_gap(gap, cancel).await?;
        }
        self.audit_finished_fills(cancel).await?;
        let state = self.store.audit_state(&feed, Utc::now()).await?;
        let Some(b) = &self.feed.backfill else {
            return Ok(());
        };
        let c = self.config();
        let horizon = Utc::now() - chrono::Duration::from_std(c.lookback).unwrap_or_default();
        if let Some(v) = state.verified_until.filter(|v| *v < horizon) {
            tracing::warn!(
                verified_until = %v.to_rfc3339(),
                resumes_at = %horizon.to_rfc3339(),
                "watermark older than the lookback: the stretch before cannot be audited any more"
            );
        }
        let due = Due {
            now: Utc::now(),
            started: state.started,
            verified_until: state.verified_until,
            lookback: c.lookback,
            delay: c.delay,
            fill_from: self.fills_under_way().await?,
            resolution: b.source.time_resolution,
        };
        if let Some(window) = due_window(&due) {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let id = self
                .store
                .manual_gap(&feed, "", window.start, window.end, OWNER, Utc::now())
                .await?;
            if let Some(gap) = self.store.gap(id).await? {
                self.audit_gap(gap, cancel).await?;
            }
        }
        Ok(())
    }

    /// The earliest start of a fill (not an audit) still under way, overlap included.
    async fn fills_under_way(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let overlap = self
            .feed
            .backfill
            .as_ref()
            .map_or(Duration::ZERO, |b| b.overlap);
        let mut earliest: Option<DateTime<Utc>> = None;
        for state in ["pending", "running"] {
            let gaps = self
                .store
                .gaps(&GapFilter {
                    partition: None,
                    feed: Some(self.feed.name.clone()),
                    state: Some(state.into()),
                    limit: Some(1000),
                })
                .await?;
            for g in gaps {
                let start = match g.kind {
                    GapKind::Detected => {
                        g.start - chrono::Duration::from_std(overlap).unwrap_or_default()
                    }
                    GapKind::Manual => g.start,
                };
                earliest = Some(earliest.map_or(start, |e| e.min(start)));
            }
        }
        Ok(earliest)
    }

    /// Fills that finished since the last run over windows the watermark had
    /// passed already are audited once more (a fill that lost records is
    /// caught here); the watermark stays.
    async fn audit_finished_fills(&mut self, cancel: &CancellationToken) -> Result<(), StoreError> {
        let feed = self.feed.name.clone();
        let done = self
            .store
            .gaps(&GapFilter {
                partition: None,
                feed: Some(feed.clone()),
                state: Some("done".into()),
                limit: Some(RECENT_FILLS),
            })
            .await?;
        let newest = done.iter().map(|g| g.id).max().unwrap_or(0);
        if self.fills_seen == i64::MAX {
            // The first run: fills before this process are not looked at again.
            self.fills_seen = newest;
            return Ok(());
        }
        let Some(verified) = self.store.verified_until(&feed).await? else {
            self.fills_seen = self.fills_seen.max(newest);
            return Ok(());
        };
        let overlap = self
            .feed
            .backfill
            .as_ref()
            .map_or(Duration::ZERO, |b| b.overlap);
        let overlap = chrono::Duration::from_std(overlap).unwrap_or_default();
        let mut fresh: Vec<&Gap> = done.iter().filter(|g| g.id > self.fills_seen).collect();
        fresh.sort_by_key(|g| g.id);
        for g in fresh {
            let (pad, end) = match g.kind {
                GapKind::Detected => (overlap, g.end.map(|e| e + overlap)),
                GapKind::Manual => (chrono::Duration::zero(), g.end),
            };
            let start = g.start - pad;
            if let Some(end) = end.map(|e| e.min(verified)).filter(|e| *e > start) {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                tracing::info!(
                    gap_id = g.id,
                    "auditing a finished fill behind the watermark"
                );
                let id = self
                    .store
                    .manual_gap(&feed, &g.partition, start, end, OWNER, Utc::now())
                    .await?;
                if let Some(gap) = self.store.gap(id).await? {
                    self.audit_gap(gap, cancel).await?;
                }
            }
            self.fills_seen = g.id;
        }
        Ok(())
    }

    /// Delivers an audit window's missing records (a fill of owner `audit`)
    /// and moves the watermark if it is done.
    async fn audit_gap(&mut self, gap: Gap, cancel: &CancellationToken) -> Result<(), StoreError> {
        let feed = self.feed.name.clone();
        let window = Window {
            start: gap.start,
            end: gap.end.unwrap_or(gap.start),
        };
        let outcome = loop {
            let Some(current) = self.store.gap(gap.id).await? else {
                return Ok(());
            };
            let outcome = self.filler.fill_gap(&current, cancel).await?;
            if outcome != GapOutcome::InProgress
                || cancel.is_cancelled()
                || !self.lease.borrow().is_mine()
            {
                break outcome;
            }
            tokio::select! {
                _ = cancel.cancelled() => break GapOutcome::InProgress,
                _ = tokio::time::sleep(RETRY_PASS) => {}
            }
        };
        let progress = self
            .store
            .gap(gap.id)
            .await?
            .map(|g| g.progress)
            .unwrap_or_default();
        let listed = progress.records_delivered + progress.records_duplicate;
        match outcome {
            // Resumed from its checkpoint by the next run (or the next holder).
            GapOutcome::InProgress => {}
            GapOutcome::Done => {
                self.metrics.emit(AuditWindowVerified {
                    feed: &feed,
                    window,
                    missing: progress.records_delivered,
                    listed,
                });
                // Due windows start at the watermark; a fill's window
                // behind it leaves it where it is.
                let state = self.store.audit_state(&feed, Utc::now()).await?;
                let until = advance(state.verified_until, window);
                self.store
                    .set_verified_until(&feed, until, Utc::now())
                    .await?;
                self.publish(Some(until));
            }
            GapOutcome::Failed(reason) => {
                self.metrics.emit(AuditWindowFailed {
                    feed: &feed,
                    window,
                    delivered: progress.records_delivered,
                    error: &reason,
                });
                // Kept as failed for the record; the next run audits the
                // window again from the watermark.
            }
        }
        Ok(())
    }

    fn publish(&self, verified_until: Option<DateTime<Utc>>) {
        if let Some(v) = verified_until {
            self.metrics.emit(AuditWatermarkPublished {
                feed: &self.feed.name,
                verified_until: v,
            });
        }
        self.published.send_replace(verified_until);
    }

    /// Forgets ids older than the lookback plus margin (at most every
    /// [`PRUNE_EVERY`]) and exports the ledger's size.
    async fn prune(&mut self) {
        if self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(tokio::time::Instant::now());
        prune_ledger(&self.store, &self.metrics, &self.feed).await;
    }
}

/// Prunes one feed's ledger to its retention and sets `gapwatch_state_ledger_ids`.
pub(crate) async fn prune_ledger(store: &Store, metrics: &Metrics, feed: &FeedConfig) {
    let retention = chrono::Duration::from_std(feed.ledger_retention()).unwrap_or_default();
    let before = Utc::now() - retention;
    match store.prune_ledger(&feed.name, before).await {
        Ok(n) if n > 0 => {
            tracing::info!(pruned = n, before = %before.to_rfc3339(), "ledger pruned")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot prune the ledger"),
    }
    match store.ledger_size(&feed.name).await {
        Ok(n) => metrics.emit(LedgerSized {
            feed: &feed.name,
            ids: n,
        }),
        Err(e) => tracing::warn!(error = %e, "cannot read the ledger size"),
    }
}

/// The ledger of a feed without an audit (ids delivered by fills, seen near
/// gap edges) is pruned on the same schedule, by the feed's lease holder.
pub(crate) async fn prune_loop(
    store: Store,
    metrics: Arc<Metrics>,
    feed: Arc<FeedConfig>,
    lease: watch::Receiver<LeaseView>,
    cancel: CancellationToken,
) {
    let mut wait = FIRST_RUN;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PRUNE_EVERY;
        if lease.borrow().is_mine() {
            prune_ledger(&store, &metrics, &feed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Config, LEDGER_MARGIN};
    use crate::store::Origin;

    fn feed(audit: &str) -> FeedConfig {
        let text = format!(
            r#"
[server]
admin_token = "t0ken"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
    [feeds.backfill.source]
    url = "http://127.0.0.1:1/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}" }}
    record_time = "/t"
    [feeds.backfill.sink]
    type = "file"
    path = "/tmp/gapwatch-prune-test.ndjson"
{audit}"#
        );
        Config::from_toml(&text, &HashMap::new())
            .unwrap()
            .feeds
            .remove(0)
    }

    async fn prunes_at_lookback_plus_margin(feed: FeedConfig, lookback: Duration) {
        let store = Store::memory().await.unwrap();
        let metrics = Metrics::new();
        let horizon = Utc::now() - chrono::Duration::from_std(lookback + LEDGER_MARGIN).unwrap();
        let minute = chrono::Duration::minutes(1);
        let ids = [
            ("older".to_string(), horizon - minute),
            ("newer".to_string(), horizon + minute),
            ("now".to_string(), Utc::now()),
        ];
        store
            .ledger_add("orders", Origin::Reported, &ids)
            .await
            .unwrap();
        prune_ledger(&store, &metrics, &feed).await;
        let known = store
            .known_ids("orders", &["older", "newer", "now"])
            .await
            .unwrap();
        assert!(!known.contains("older"), "{known:?}");
        assert!(
            known.contains("newer") && known.contains("now"),
            "{known:?}"
        );
        assert_eq!(
            metrics.value("gapwatch_state_ledger_ids{feed=\"orders\"}"),
            Some(2.0)
        );
    }

    #[tokio::test]
    async fn the_ledger_keeps_ids_for_the_lookback_plus_the_margin() {
        let audited = feed("  [feeds.audit]\n  lookback = \"2h\"\n");
        prunes_at_lookback_plus_margin(audited, Duration::from_secs(7200)).await;
        // Without an audit: the default lookback.
        prunes_at_lookback_plus_margin(feed(""), crate::config::DEFAULT_LEDGER_LOOKBACK).await;
    }
}
