//! One feed's monitor: takes observations (from the relay, the report API or
//! passive inflow), drives the detector on a clock, persists what it decides,
//! and publishes the feed's status.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::ledger::{LedgerBuffer, Unwritten};
use crate::config::{FeedConfig, WatchMode};
use crate::detector::{ActiveWindow, Detector, GapEvent};
use crate::lease::LeaseView;
use crate::metrics::{InputSource, Metrics, Rejection};
use crate::observe::Observation;
use crate::store::{FillState, Origin, Store};

/// How often the newest event time is written to the store (at most).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often `gapwatch_gap_unfilled_seconds` is recomputed while the feed has
/// a gap or unfilled time.
const UNFILLED_EVERY: Duration = Duration::from_secs(5);
/// … and otherwise (a manual backfill may add a gap the monitor does not see).
const UNFILLED_IDLE: Duration = Duration::from_secs(60);
/// Retry delay for store writes that failed.
const RETRY: Duration = Duration::from_secs(1);
/// While the store keeps failing, the pause before the monitor tries it
/// again doubles up to this: each try may wait the pool's acquire timeout,
/// and observations, freshness and metrics must not wait with it.
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(16);
/// A monitor with nothing due still looks around this often.
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// With a shared store: how often the feed's state written by every replica
/// (the newest event, the holder's gap) is read back.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);
/// Capacity of a feed's observation channel, in batches (backpressure beyond).
pub const CHANNEL_BATCHES: usize = 64;

/// What `/api/v1/feeds` shows for a feed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FeedStatus {
    pub name: String,
    pub mode: &'static str,
    pub last_event: Option<DateTime<Utc>>,
    pub freshness_seconds: Option<f64>,
    pub active: bool,
    pub open_gap: Option<OpenGap>,
    pub records_observed: u64,
    /// The replica holding the feed's lease (it decides the feed's gaps and fills).
    pub leader: Option<String>,
    /// Audited feeds: every record older than this is proven delivered.
    pub verified_until: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct OpenGap {
    pub id: i64,
    pub start: DateTime<Utc>,
    pub silent_seconds: f64,
}

/// The parts of a running feed that others talk to.
#[derive(Clone)]
pub struct FeedHandle {
    pub name: String,
    pub config: Arc<FeedConfig>,
    pub observations: mpsc::Sender<Vec<Observation>>,
    pub status: watch::Receiver<FeedStatus>,
    /// Woken when a gap opens or closes, so fills start at once.
    pub fill_wakeup: Arc<Notify>,
    /// How far behind the wall clock the feed's detector runs.
    clock_lag: chrono::TimeDelta,
    /// The audit's watermark, published by the feed's auditor.
    pub verified_until: Arc<watch::Sender<Option<DateTime<Utc>>>>,
    /// Ids observed but not in the store yet, for the fills' dedupe.
    pub unwritten: Unwritten,
}

pub struct FeedMonitor {
    config: Arc<FeedConfig>,
    detector: Detector,
    store: Store,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Vec<Observation>>,
    status: watch::Sender<FeedStatus>,
    fill_wakeup: Arc<Notify>,
    /// The newest live ids, kept to be saved as the "before" edge when a gap opens.
    recent: VecDeque<(String, DateTime<Utc>)>,
    edge_ids: usize,
    /// After a gap closes: its id and how many more live ids to keep as the
    /// "after" edge.
    after_edge: Option<(i64, usize)>,
    after_pending: Vec<(String, DateTime<Utc>)>,
    /// The ids of `after_pending` and of the ledger buffer.
    unwritten: Unwritten,
    /// The newest live ids when the detector opened the gap not saved yet:
    /// its "before" edge, even when the store takes the gap only later.
    before_edge: Vec<(String, DateTime<Utc>)>,
    open_gap_id: Option<i64>,
    /// Gap events the store has not taken yet (retried every tick).
    unsaved: VecDeque<GapEvent>,
    observed: u64,
    last_saved: Option<DateTime<Utc>>,
    last_save_at: Option<Instant>,
    last_unfilled_at: Option<Instant>,
    /// The last value of `gapwatch_gap_unfilled_seconds`.
    unfilled: f64,
    /// How far behind the wall clock the detector runs (see [`FeedMonitor::start`]).
    clock_lag: chrono::TimeDelta,
    future_log: FutureLog,
    /// The feed's lease: only its holder saves gap events.
    lease: watch::Receiver<LeaseView>,
    /// Whether this replica held the lease at the last sync.
    led: bool,
    /// With a shared store: when the feed's state was last read back.
    last_sync: Option<Instant>,
    /// … and the open gap it held then (start, id).
    shared_gap: Option<(DateTime<Utc>, i64)>,
    /// Audited feeds: every id observed, on its way to the ledger.
    ledger: Option<LedgerBuffer>,
    /// While the store fails: when it is tried next, and how many tries failed.
    store_retry_at: Option<Instant>,
    store_failures: u32,
}

/// Rate limit for the "event time in the future" warning: a vendor that stamps
/// every record wrongly must not flood the log.
#[derive(Default)]
struct FutureLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

const FUTURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether `t` is later than `now` + `skew`.
pub fn is_future(t: DateTime<Utc>, now: DateTime<Utc>, skew: Duration) -> bool {
    chrono::TimeDelta::from_std(skew)
        .ok()
        .and_then(|s| now.checked_add_signed(s))
        .is_some_and(|limit| t > limit)
}

impl FeedMonitor {
    /// Restores the feed's detector from the store.
    ///
    /// `clock_lag`: the detector (and everything it stamps: detection and
    /// closing times, freshness) runs this far behind the wall clock. Zero for
    /// feeds seen live; for passive feeds, whose inflow is known only minutes
    /// late, see [`crate::watch::inflow::clock_lag`].
    pub async fn start(
        config: Arc<FeedConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        edge_ids: usize,
        clock_lag: Duration,
    ) -> Result<(FeedMonitor, FeedHandle), crate::store::StoreError> {
        let clock_lag = chrono::TimeDelta::from_std(clock_lag).unwrap_or(chrono::TimeDelta::zero());
        let mut restored = store.detector_state(&config.name).await?;
        let now = Utc::now() - clock_lag;
        if let Some(stored) = restored
            .last_event
            .filter(|t| is_future(*t, now, config.freshness.max_future_skew))
        {
            // Saved by a version that trusted every event time; it would keep
            // the feed "fresh" until that date. Silence counts from this start.
            let repaired = crate::store::from_ms(crate::store::ms(now));
            store
                .repair_last_event(&config.name, repaired, Utc::now())
                .await?;
            metrics.reject(&config.name, InputSource::State, Rejection::FutureEventTime);
            tracing::warn!(
                feed = %config.name,
                stored = %stored.to_rfc3339(),
                repaired_to = %repaired.to_rfc3339(),
                "stored newest event time is in the future; repaired"
            );
            restored.last_event = Some(repaired);
        }
        let open_gap_id = if restored.open_gap_start.is_some() {
            store
                .gaps(&crate::store::GapFilter {
                    partition: None,
                    feed: Some(config.name.clone()),
                    state: Some("open".into()),
                    limit: Some(10),
                })
                .await?
                .into_iter()
                .find(|g| g.kind == crate::store::GapKind::Detected)
                .map(|g| g.id)
        } else {
            None
        };
        let detector = Detector::new(
            config.freshness.max_silence,
            config.freshness.window.clone(),
            restored,
        );
        metrics.init_feed(&config.name);
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let initial = FeedStatus {
            name: config.name.clone(),
            mode: config.watch.mode.as_str(),
            last_event: restored.last_event,
            freshness_seconds: None,
            active: detector.is_active(now),
            open_gap: None,
            records_observed: 0,
            leader: None,
            verified_until: None,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let fill_wakeup = Arc::new(Notify::new());
        let unwritten = Unwritten::default();
        let ledger = config.audit.as_ref().and_then(|_| match config.watch.mode {
            WatchMode::Relay => Some(LedgerBuffer::new(Origin::Relayed, unwritten.clone())),
            WatchMode::Report => Some(LedgerBuffer::new(Origin::Reported, unwritten.clone())),
            WatchMode::Passive => None,
        });
        let handle = FeedHandle {
            name: config.name.clone(),
            config: config.clone(),
            observations: tx,
            status: status_rx,
            fill_wakeup: fill_wakeup.clone(),
            clock_lag,
            verified_until: Arc::new(watch::channel(None).0),
            unwritten: unwritten.clone(),
        };
        let monitor = FeedMonitor {
            config,
            detector,
            store,
            metrics,
            rx,
            status: status_tx,
            fill_wakeup,
            recent: VecDeque::with_capacity(edge_ids),
            edge_ids,
            after_edge: None,
            after_pending: Vec::new(),
            unwritten,
            before_edge: Vec::new(),
            open_gap_id,
            unsaved: VecDeque::new(),
            observed: 0,
            last_saved: restored.last_event,
            future_log: FutureLog::default(),
            last_save_at: None,
            last_unfilled_at: None,
            unfilled: 0.0,
            clock_lag,
            lease: watch::channel(LeaseView::held()).1,
            led: true,
            last_sync: None,
            ledger,
            shared_gap: None,
            store_retry_at: None,
            store_failures: 0,
        };
        Ok((monitor, handle))
    }

    /// Saves gap events only while this replica holds the feed's lease; the
    /// rest of the time the feed's gap state follows what the holder stored.
    pub fn with_lease(mut self, lease: watch::Receiver<LeaseView>) -> Self {
        self.lease = lease;
        self.led = false;
        self
    }

    /// Runs until `stop` is cancelled, then takes what is still queued, saves,
    /// and returns. Cancel `stop` only after the feed's producers finished.
    pub async fn run(&mut self, stop: CancellationToken) {
        // Before any observation: silence that lasted through our own downtime
        // must be seen first (an observation would otherwise close a gap that
        // was never opened).
        self.tick(self.now()).await;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                batch = self.rx.recv() => match batch {
                    Some(batch) => {
                        self.observe(batch, self.now()).await;
                        // A busy feed never lets the timer branch win.
                        if self.next_wake() <= Instant::now() {
                            self.catch_up().await;
                            self.tick(self.now()).await;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    self.catch_up().await;
                    self.tick(self.now()).await;
                }
                _ = stop.cancelled() => break,
            }
        }
        while let Ok(batch) = self.rx.try_recv() {
            self.observe(batch, self.now()).await;
        }
        self.last_save_at = None;
        self.tick(self.now()).await;
        self.flush_ledger(true).await;
        tracing::debug!(feed = %self.config.name, "feed monitor stopped");
    }

    /// Observes what queued up while the monitor waited on the store, so
    /// the detector never counts its own wait as the feed's silence.
    async fn catch_up(&mut self) {
        // Bounded: the channel holds `CHANNEL_BATCHES` at most.
        for _ in 0..CHANNEL_BATCHES {
            match self.rx.try_recv() {
                Ok(batch) => self.observe(batch, self.now()).await,
                Err(_) => break,
            }
        }
    }

    /// When the monitor has something to do next if nothing is observed: the
    /// detector's deadline, a due save or retry, the unfilled-seconds refresh.
    /// Nothing else wakes an idle feed, so idle cost does not grow with the
    /// number of feeds, and detection happens at the deadline itself.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut deadline_wake = now + IDLE_WAKE;
        if let Some(deadline) = self.detector.next_deadline(self.now()) {
            let wait = (deadline - self.now()).to_std().unwrap_or(Duration::ZERO);
            deadline_wake = now + wait;
        }
        // Everything below needs the store.
        let mut wake = now + IDLE_WAKE;
        if !self.unsaved.is_empty() || (self.after_edge.is_some() && !self.after_pending.is_empty())
        {
            wake = wake.min(now + RETRY);
        }
        if self.detector.state().last_event != self.last_saved {
            wake = wake.min(self.last_save_at.map_or(now, |at| at + SAVE_EVERY));
        }
        if self.store.is_shared() {
            wake = wake.min(self.last_sync.map_or(now, |at| at + SYNC_EVERY));
        }
        if let Some(due) = self.ledger.as_ref().and_then(LedgerBuffer::due) {
            // A failing store is retried at the retry pace, not in a loop.
            wake = wake.min(due.max(now + RETRY.min(crate::audit::ledger::FLUSH_EVERY)));
        }
        let busy = self.open_gap_id.is_some() || self.unfilled > 0.0;
        let every = if busy { UNFILLED_EVERY } else { UNFILLED_IDLE };
        let wake = wake.min(self.last_unfilled_at.map_or(now, |at| at + every));
        deadline_wake.min(self.store_retry_at.map_or(wake, |at| wake.max(at)))
    }

    /// Whether the store may be tried now: while it fails, it is tried
    /// again only after a pause that grows with each failure.
    fn store_due(&self) -> bool {
        self.store_retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Takes note of a store call's outcome for [`FeedMonitor::store_due`].
    fn store_outcome<T, E>(&mut self, result: &Result<T, E>) {
        match result {
            Ok(_) => {
                if self.store_failures > 0 {
                    tracing::info!(feed = %self.config.name, failures = self.store_failures, "state store reachable again");
                }
                self.store_failures = 0;
                self.store_retry_at = None;
            }
            Err(_) => {
                self.store_failures = self.store_failures.saturating_add(1);
                let pause = RETRY
                    .saturating_mul(1 << self.store_failures.min(5).saturating_sub(1))
                    .min(STORE_BACKOFF_MAX);
                self.store_retry_at = Some(Instant::now() + pause);
            }
        }
    }

    /// With a shared store: takes in the newest event any replica saw (so
    /// replicas sharing a queue never see false silence) and, unless this
    /// replica decides the feed's gaps, the holder's open gap. Every replica
    /// remembers the ids it relayed next to the gap's edges, so the fill
    /// skips them whichever replica relayed them.
    async fn sync(&mut self, now: DateTime<Utc>) {
        if !self.store.is_shared()
            || self.last_sync.is_some_and(|at| at.elapsed() < SYNC_EVERY)
            || !self.store_due()
        {
            return;
        }
        self.last_sync = Some(Instant::now());
        let feed = self.config.name.clone();
        let leader = self.lease.borrow().is_mine();
        let stored = self.store.detector_state(&feed).await;
        self.store_outcome(&stored);
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(feed = %feed, error = %e, "cannot read the shared feed state");
                return;
            }
        };
        let gap = match stored.open_gap_start {
            None => None,
            Some(start) if self.shared_gap.map(|g| g.0) == Some(start) => self.shared_gap,
            Some(start) => {
                let found = self.open_detected_gap().await;
                self.store_outcome(&found);
                match found {
                    Ok(Some(id)) => Some((start, id)),
                    _ => return,
                }
            }
        };
        if gap != self.shared_gap && !leader {
            // The holder saves its own edges when it opens and closes the gap.
            let edge_gap = gap.or(self.shared_gap).map(|g| g.1);
            if let Some(gap_id) = edge_gap {
                let edge: Vec<_> = self.recent.iter().cloned().collect();
                let saved = self.store.remember_live(&feed, Some(gap_id), &edge).await;
                self.store_outcome(&saved);
                if let Err(e) = saved {
                    tracing::warn!(feed = %feed, error = %e, "cannot save edge ids");
                    return;
                }
                if gap.is_none() {
                    self.after_edge = Some((gap_id, self.edge_ids));
                }
            }
        }
        self.shared_gap = gap;
        let own = self.detector.state();
        // Gap events this replica could not save yet (the store was down and
        // nobody was known to hold the lease) are decisions still to be
        // applied on top of the stored state, not overwritten by it.
        let deciding = !self.unsaved.is_empty();
        // A new holder adopts the stored gap state; then it is the one deciding.
        if stored.open_gap_start != own.open_gap_start && (!leader || !self.led) && !deciding {
            self.detector = Detector::new(
                self.config.freshness.max_silence,
                self.config.freshness.window.clone(),
                crate::detector::DetectorState {
                    last_event: own.last_event.max(stored.last_event),
                    open_gap_start: stored.open_gap_start,
                },
            );
            self.last_unfilled_at = None;
        }
        if (!leader || !self.led) && !deciding {
            self.open_gap_id = gap.map(|g| g.1);
        }
        if let Some(t) = stored.last_event {
            if let Some(event) = self.detector.observe(t, now) {
                self.unsaved.push_back(event);
            }
        }
        if self.lease.borrow().is_elsewhere() {
            self.unsaved.clear();
        }
        self.led = leader;
    }

    /// The id of the feed's open detected gap in the store.
    async fn open_detected_gap(&self) -> Result<Option<i64>, crate::store::StoreError> {
        Ok(self
            .store
            .gaps(&crate::store::GapFilter {
                partition: None,
                feed: Some(self.config.name.clone()),
                state: Some("open".into()),
                limit: Some(10),
            })
            .await?
            .into_iter()
            .find(|g| g.kind == crate::store::GapKind::Detected)
            .map(|g| g.id))
    }

    /// The detector's clock.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() - self.clock_lag
    }

    async fn observe(&mut self, batch: Vec<Observation>, now: DateTime<Utc>) {
        let feed = self.config.name.as_str();
        self.metrics
            .feed_records_observed
            .with_label_values(&[feed])
            .inc_by(batch.len() as u64);
        self.observed += batch.len() as u64;
        for obs in batch {
            if let Some(ledger) = &mut self.ledger {
                ledger.push(obs.id.clone(), obs.event_time);
            }
            if is_future(obs.event_time, now, self.config.freshness.max_future_skew) {
                self.reject_future(&obs, now);
                continue;
            }
            if let Some(event) = self.detector.observe(obs.event_time, now) {
                self.unsaved.push_back(event);
            }
            if self.recent.len() == self.edge_ids {
                self.recent.pop_front();
            }
            self.recent.push_back((obs.id.clone(), obs.event_time));
            if (!self.unsaved.is_empty() || self.after_edge.is_some())
                && self.after_pending.len() < self.edge_ids
            {
                // The "after" edge starts with the record that closed the
                // gap and holds `edge_ids` at most, however long the store
                // stays away.
                self.unwritten.hold([obs.id.as_str()]);
                self.after_pending.push((obs.id, obs.event_time));
            }
        }
        self.save_events(now).await;
        self.flush_after_edge().await;
        self.flush_ledger(false).await;
        self.publish(now);
    }

    /// Writes the ledger's pending ids when a batch is full or has waited
    /// long enough (`force`: whatever is pending, at shutdown).
    async fn flush_ledger(&mut self, force: bool) {
        if !self.store_due() {
            return;
        }
        let Some(ledger) = &mut self.ledger else {
            return;
        };
        let result = ledger.flush(&self.store, &self.config.name, force).await;
        if let Err(e) = &result {
            tracing::warn!(feed = %self.config.name, pending = ledger.len(), error = %e, "cannot write the ledger; retrying");
        }
        self.store_outcome(&result);
    }

    /// The record was relayed (or accepted) already; only its time is not
    /// believed, so it neither moves freshness nor closes a gap.
    fn reject_future(&mut self, obs: &Observation, now: DateTime<Utc>) {
        let feed = self.config.name.as_str();
        let source = match self.config.watch.mode {
            WatchMode::Report => InputSource::Report,
            WatchMode::Relay | WatchMode::Passive => InputSource::Queue,
        };
        self.metrics
            .reject(feed, source, Rejection::FutureEventTime);
        let log = &mut self.future_log;
        if log.last.is_some_and(|at| at.elapsed() < FUTURE_LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        tracing::warn!(
            feed,
            record_id = %obs.id,
            event_time = %obs.event_time.to_rfc3339(),
            now = %now.to_rfc3339(),
            max_future_skew_s = self.config.freshness.max_future_skew.as_secs(),
            suppressed_since_last = log.suppressed,
            "event time in the future; freshness not moved"
        );
        log.last = Some(std::time::Instant::now());
        log.suppressed = 0;
    }

    async fn tick(&mut self, now: DateTime<Utc>) {
        self.sync(now).await;
        if let Some(event) = self.detector.tick(now) {
            if matches!(event, GapEvent::Opened { .. }) {
                // Saved with the gap, however late that is.
                self.before_edge = self.recent.iter().cloned().collect();
            }
            self.unsaved.push_back(event);
        }
        self.save_events(now).await;
        self.flush_after_edge().await;
        self.save_last_event(now).await;
        self.flush_ledger(false).await;
        self.update_unfilled(now).await;
        self.publish(now);
    }

    /// `gapwatch_gap_unfilled_seconds`, from the store every few seconds.
    async fn update_unfilled(&mut self, now: DateTime<Utc>) {
        let busy = self.open_gap_id.is_some() || self.unfilled > 0.0;
        let every = if busy { UNFILLED_EVERY } else { UNFILLED_IDLE };
        if self.last_unfilled_at.is_some_and(|at| at.elapsed() < every) || !self.store_due() {
            return;
        }
        self.last_unfilled_at = Some(Instant::now());
        let result = self.store.unfilled_seconds(&self.config.name, now).await;
        self.store_outcome(&result);
        match result {
            Ok(s) => {
                self.unfilled = s;
                self.metrics
                    .gap_unfilled
                    .with_label_values(&[&self.config.name])
                    .set(s)
            }
            Err(e) => {
                tracing::warn!(feed = %self.config.name, error = %e, "cannot compute unfilled seconds")
            }
        }
    }

    async fn save_events(&mut self, now: DateTime<Utc>) {
        let lease = self.lease.borrow().clone();
        if lease.is_elsewhere() {
            // The holder decides; this replica follows the store (see `sync`).
            self.unsaved.clear();
        }
        // Not held by anyone known (the store is down): kept until it is.
        let may_save = lease.is_mine() && self.store_due();
        while let Some(event) = self.unsaved.front().copied().filter(|_| may_save) {
            let feed = self.config.name.clone();
            let result = match event {
                GapEvent::Opened { start, detected_at } => {
                    self.on_opened(&feed, start, detected_at).await
                }
                GapEvent::Closed { start, end } => self.on_closed(&feed, start, end, now).await,
            };
            self.store_outcome(&result);
            match result {
                Ok(()) => {
                    self.unsaved.pop_front();
                }
                Err(e) => {
                    tracing::error!(feed = %feed, error = %e, "cannot save gap event; retrying");
                    break;
                }
            }
        }
        if self.unsaved.is_empty() && self.after_edge.is_none() {
            self.unwritten
                .release(self.after_pending.iter().map(|(id, _)| id.as_str()));
            self.after_pending.clear();
        }
    }

    async fn on_opened(
        &mut self,
        feed: &str,
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
    ) -> Result<(), crate::store::StoreError> {
        let fill = match &self.config.backfill {
            Some(b) if b.auto => FillState::Pending,
            _ => FillState::None,
        };
        let id = self
            .store
            .open_gap(feed, "", start, detected_at, fill)
            .await?;
        self.store
            .remember_live(feed, Some(id), &self.before_edge)
            .await?;
        self.before_edge.clear();
        self.open_gap_id = Some(id);
        self.last_unfilled_at = None;
        self.metrics.gap_open.with_label_values(&[feed]).set(1);
        self.metrics.gaps_detected.with_label_values(&[feed]).inc();
        tracing::warn!(
            feed,
            gap_id = id,
            from = %start.to_rfc3339(),
            detected_at = %detected_at.to_rfc3339(),
            silent_seconds = (detected_at - start).num_milliseconds() as f64 / 1000.0,
            fill = fill.as_str(),
            "gap opened"
        );
        self.fill_wakeup.notify_one();
        Ok(())
    }

    async fn on_closed(
        &mut self,
        feed: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), crate::store::StoreError> {
        let id = self.store.close_gap(feed, "", end, now).await?;
        self.open_gap_id = None;
        self.last_unfilled_at = None;
        self.metrics.gap_open.with_label_values(&[feed]).set(0);
        if let Some(id) = id {
            self.after_edge = Some((id, self.edge_ids));
        }
        tracing::info!(
            feed,
            gap_id = id,
            from = %start.to_rfc3339(),
            to = %end.to_rfc3339(),
            gap_seconds = (end - start).num_milliseconds() as f64 / 1000.0,
            "gap closed"
        );
        self.fill_wakeup.notify_one();
        Ok(())
    }

    async fn flush_after_edge(&mut self) {
        let Some((gap_id, remaining)) = self.after_edge else {
            return;
        };
        if self.after_pending.is_empty() || !self.store_due() {
            return;
        }
        let take = remaining.min(self.after_pending.len());
        let mut ids: Vec<_> = self.after_pending.drain(..).collect();
        // Past the edge's size: not edge ids after all.
        let beyond = ids.split_off(take);
        self.unwritten
            .release(beyond.iter().map(|(id, _)| id.as_str()));
        let result = self
            .store
            .remember_live(&self.config.name, Some(gap_id), &ids)
            .await;
        self.store_outcome(&result);
        match result {
            Ok(()) => {
                self.unwritten
                    .release(ids.iter().map(|(id, _)| id.as_str()));
                let left = remaining - take;
                self.after_edge = (left > 0).then_some((gap_id, left));
            }
            Err(e) => {
                tracing::error!(feed = %self.config.name, error = %e, "cannot save edge ids; retrying");
                self.after_pending.splice(0..0, ids);
            }
        }
    }

    async fn save_last_event(&mut self, now: DateTime<Utc>) {
        let Some(last) = self.detector.state().last_event else {
            return;
        };
        let due = self
            .last_save_at
            .is_none_or(|at| at.elapsed() >= SAVE_EVERY);
        if self.last_saved == Some(last) || !due || !self.store_due() {
            return;
        }
        let result = self
            .store
            .save_last_event(&self.config.name, last, now)
            .await;
        self.store_outcome(&result);
        match result {
            Ok(()) => {
                self.last_saved = Some(last);
                self.last_save_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::error!(feed = %self.config.name, error = %e, "cannot save last event")
            }
        }
    }

    fn publish(&self, now: DateTime<Utc>) {
        let feed = self.config.name.as_str();
        let state = self.detector.state();
        if let Some(last) = state.last_event {
            self.metrics
                .feed_last_event
                .with_label_values(&[feed])
                .set(last.timestamp_millis() as f64 / 1000.0);
        }
        let open_gap = match (self.open_gap_id, state.open_gap_start) {
            (Some(id), Some(start)) => Some(OpenGap {
                id,
                start,
                silent_seconds: 0.0,
            }),
            _ => None,
        };
        self.metrics
            .gap_open
            .with_label_values(&[feed])
            .set(i64::from(open_gap.is_some()));
        let mut status = FeedStatus {
            name: self.config.name.clone(),
            mode: self.config.watch.mode.as_str(),
            last_event: state.last_event,
            freshness_seconds: None,
            active: false,
            open_gap,
            records_observed: self.observed,
            leader: self.lease.borrow().holder.clone(),
            verified_until: None,
        };
        status.refresh(now, &self.config.freshness.window);
        status.set_clock_gauges(&self.metrics);
        self.status.send_replace(status);
    }
}

// === impl FeedStatus ===

impl FeedStatus {
    /// Recomputes what changes with the clock alone.
    fn refresh(&mut self, now: DateTime<Utc>, window: &ActiveWindow) {
        let age = |t: DateTime<Utc>| ((now - t).num_milliseconds().max(0) as f64) / 1000.0;
        // An event from the future (within the skew) reads as zero, never negative.
        self.freshness_seconds = self.last_event.map(age);
        self.active = window.is_active(now);
        if let Some(g) = &mut self.open_gap {
            g.silent_seconds = age(g.start);
        }
    }

    fn set_clock_gauges(&self, metrics: &Metrics) {
        let feed = self.name.as_str();
        metrics
            .feed_active
            .with_label_values(&[feed])
            .set(i64::from(self.active));
        if let Some(f) = self.freshness_seconds {
            metrics.feed_freshness.with_label_values(&[feed]).set(f);
        }
    }
}

// === impl FeedHandle ===

impl FeedHandle {
    /// The feed's status as of now. Freshness, activity and silence are
    /// derived when read, so an idle monitor need not wake to keep them true.
    pub fn current(&self) -> FeedStatus {
        let mut status = self.status.borrow().clone();
        status.verified_until = *self.verified_until.borrow();
        status.refresh(Utc::now() - self.clock_lag, &self.config.freshness.window);
        status
    }
}

/// Sets the gauges that move with the clock alone (freshness, active) for
/// every feed; called before each scrape.
pub fn refresh_clock_gauges<'a>(
    metrics: &Metrics,
    feeds: impl IntoIterator<Item = &'a FeedHandle>,
) {
    for h in feeds {
        h.current().set_clock_gauges(metrics);
    }
}

/// Whether a feed's records reach gapwatch one by one (relay, report) or only as
/// per-minute inflow (passive).
pub fn is_precise(mode: WatchMode) -> bool {
    mode != WatchMode::Passive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::GapFilter;

    fn report_feed(extra: &str) -> Arc<FeedConfig> {
        let text = format!(
            "[server]\nadmin_token = \"t\"\n[[feeds]]\nname = \"orders\"\n[feeds.watch]\nmode = \"report\"\n[feeds.freshness]\nmax_silence = \"5m\"\n{extra}"
        );
        let config = Config::from_toml(&text, &Default::default()).expect("valid config");
        Arc::new(config.feeds[0].clone())
    }

    #[tokio::test]
    async fn a_stored_newest_event_in_the_future_is_repaired_at_start() {
        let store = Store::memory().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let sentinel = DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        store
            .save_last_event("orders", sentinel, Utc::now())
            .await
            .unwrap();
        let before = Utc::now();
        let (_monitor, handle) = FeedMonitor::start(
            report_feed(""),
            store.clone(),
            metrics.clone(),
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let stored = store.detector_state("orders").await.unwrap().last_event;
        let repaired = stored.expect("a newest event is kept");
        // Stored to the millisecond.
        let before = before - chrono::TimeDelta::milliseconds(1);
        assert!(repaired >= before && repaired <= Utc::now(), "{repaired}");
        assert_eq!(handle.status.borrow().last_event, Some(repaired));
        assert!(metrics.render().contains(
            r#"gapwatch_rejected_input_total{feed="orders",reason="future_event_time",source="state"} 1"#
        ));
    }

    #[tokio::test]
    async fn event_times_within_the_skew_are_trusted() {
        let store = Store::memory().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let (mut monitor, handle) = FeedMonitor::start(
            report_feed("max_future_skew = \"1m\""),
            store,
            metrics.clone(),
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let now = Utc::now();
        let near = now + chrono::TimeDelta::seconds(30);
        let far = now + chrono::TimeDelta::seconds(90);
        let obs = |id: &str, t| Observation {
            id: id.into(),
            event_time: t,
        };
        monitor
            .observe(vec![obs("a", near), obs("b", far)], now)
            .await;
        monitor.publish(now);
        assert_eq!(handle.status.borrow().last_event, Some(near));
        assert!(metrics.render().contains(
            r#"gapwatch_rejected_input_total{feed="orders",reason="future_event_time",source="report"} 1"#
        ));
    }

    #[tokio::test]
    async fn a_gap_detected_while_nobody_holds_the_lease_is_saved_later_with_its_own_edge() {
        let store = Store::memory().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let (monitor, _handle) =
            FeedMonitor::start(report_feed(""), store.clone(), metrics, 5, Duration::ZERO)
                .await
                .unwrap();
        // The lease cannot be read (the store is away): nobody is known to hold it.
        let (lease, rx) = watch::channel(LeaseView::default());
        let mut monitor = monitor.with_lease(rx);
        // Whole seconds: the store keeps milliseconds.
        let t0 = Utc::now().timestamp() - 3600;
        let at = |s: i64| DateTime::from_timestamp(t0 + s, 0).unwrap();
        let obs = |id: &str, t| Observation {
            id: id.into(),
            event_time: t,
        };
        let before: Vec<_> = (1..=5).map(|i| obs(&format!("a{i}"), at(i))).collect();
        monitor.observe(before, at(5)).await;
        // Five minutes of silence open the gap; then the feed resumes.
        monitor.tick(at(5 + 301)).await;
        let after: Vec<_> = (1..=3)
            .map(|i| obs(&format!("b{i}"), at(400 + i)))
            .collect();
        monitor.observe(after, at(404)).await;
        monitor.tick(at(404)).await;
        let all = GapFilter::default();
        assert!(store.gaps(&all).await.unwrap().is_empty());

        // The lease is this replica's again: the gap is saved, opened and
        // closed, with the ids seen just before the silence as its edge.
        lease.send_replace(LeaseView::held());
        monitor.tick(at(405)).await;
        let gaps = store.gaps(&all).await.unwrap();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].start, at(5));
        assert_eq!(gaps[0].end, Some(at(401)));
        assert_eq!(gaps[0].detected_at, at(306));
        let ids = ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"];
        let known = store.known_ids("orders", &ids).await.unwrap();
        assert_eq!(known.len(), ids.len(), "{known:?}");
    }
}
