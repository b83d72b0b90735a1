//! One feed's monitor: takes observations (from the relay, the report API or
//! passive inflow), drives the detector on a clock, persists what it decides,
//! and publishes the feed's status.
//!
//! A partitioned feed (`[feeds.partitions]`) has one detector per partition
//! (a *lane*, see [`crate::detector::Lanes`]): each partition is fresh or
//! silent on its own, opens and closes its own gaps and keeps its own edge
//! ids; an unpartitioned feed is one lane, `""`. The feed as a whole (its
//! newest event, freshness, records observed) is kept beside the lanes.

mod partitions;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::ledger::{LedgerBuffer, Unwritten};
use crate::config::{FeedConfig, PartitionList, WatchMode};
use crate::detector::{ActiveWindow, DetectorState, GapEvent, Lanes, Summary};
use crate::internal_events::{
    EventTimeInFuture, FeedFreshnessMeasured, FeedStatePublished, GapClosed, GapOpened,
    PartitionNotWatched, PartitionsCounted, RateLog, RecordsObserved, StoredEventTimeRepaired,
    UnfilledMeasured,
};
use crate::lease::LeaseView;
use crate::metrics::{InputSource, Metrics};
use crate::observe::Observation;
use crate::shape::{Sampler, ShapeStatus};
use crate::store::{FillState, Origin, Store, StoreError};

pub(crate) use partitions::{current as current_partitions, Lister, Listing};

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
/// Partitioned feeds with a shared store read back what changed since their
/// last look (less this margin, for the clocks of other replicas), and
/// everything this often.
const FULL_SYNC_EVERY: Duration = Duration::from_secs(60);
const SYNC_MARGIN: TimeDelta = TimeDelta::seconds(30);
/// How often a partitioned feed's partitions are counted for its status and
/// metrics (a pass over every partition), besides after each gap event.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
/// Partitioned feeds keep, per partition, the ids whose event time is within
/// `backfill.overlap` plus this of the partition's newest event: those a
/// fill of the partition's gap may list again.
const EDGE_MARGIN: TimeDelta = TimeDelta::seconds(5);
/// Capacity of a feed's observation channel, in batches (backpressure beyond).
pub(crate) const CHANNEL_BATCHES: usize = 64;
/// The lane of an unpartitioned feed (and the partition of its gaps).
const WHOLE: &str = "";

/// What `/api/v1/feeds` shows for a feed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct FeedStatus {
    pub(crate) name: String,
    pub(crate) mode: &'static str,
    pub(crate) last_event: Option<DateTime<Utc>>,
    pub(crate) freshness_seconds: Option<f64>,
    pub(crate) active: bool,
    /// The feed's open gap (unpartitioned feeds; see `partitions` otherwise).
    pub(crate) open_gap: Option<OpenGap>,
    pub(crate) records_observed: u64,
    /// The replica holding the feed's lease (it decides the feed's gaps and fills).
    pub(crate) leader: Option<String>,
    /// Audited feeds: every record older than this is proven delivered.
    pub(crate) verified_until: Option<DateTime<Utc>>,
    /// Partitioned feeds: how their partitions stand (each one is listed by
    /// `/api/v1/feeds/{feed}/partitions`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) partitions: Option<PartitionsStatus>,
    /// Feeds with a shape check: the last one (null until a first check).
    pub(crate) shape_check: Option<ShapeStatus>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub(crate) struct OpenGap {
    pub(crate) id: i64,
    pub(crate) start: DateTime<Utc>,
    pub(crate) silent_seconds: f64,
}

/// A partitioned feed's partitions, counted.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub(crate) struct PartitionsStatus {
    pub(crate) total: usize,
    /// With an open gap.
    pub(crate) silent: usize,
    pub(crate) fresh: usize,
    /// Nothing seen yet.
    pub(crate) unseen: usize,
    /// Now minus the newest event of the partition heard from longest ago.
    pub(crate) oldest_freshness_seconds: Option<f64>,
    #[serde(skip)]
    oldest_last_event: Option<DateTime<Utc>>,
}

/// The parts of a running feed that others talk to.
#[derive(Clone)]
pub(crate) struct FeedHandle {
    pub(crate) config: Arc<FeedConfig>,
    pub(crate) observations: mpsc::Sender<Vec<Observation>>,
    pub(crate) status: watch::Receiver<FeedStatus>,
    /// Woken when a gap opens or closes, so fills start at once.
    pub(crate) fill_wakeup: Arc<Notify>,
    /// How far behind the wall clock the feed's detector runs.
    clock_lag: chrono::TimeDelta,
    /// The audit's watermark, published by the feed's auditor.
    pub(crate) verified_until: Arc<watch::Sender<Option<DateTime<Utc>>>>,
    /// Ids observed but not in the store yet, for the fills' dedupe.
    pub(crate) unwritten: Unwritten,
    /// Feeds with a shape check: the live messages it compares with.
    pub(crate) shape_sample: Option<Arc<Sampler>>,
    /// The last shape check, published by the feed's checker.
    pub(crate) shape_status: Arc<watch::Sender<Option<ShapeStatus>>>,
    /// Partitioned feeds: the partitions watched now, sorted (a fill of the
    /// whole feed asks for each).
    pub(crate) partitions: watch::Receiver<Arc<Vec<String>>>,
    /// Where a [`Lister`] hands the vendor's listing to the monitor.
    pub(crate) listing: Arc<watch::Sender<Listing>>,
}

/// What the monitor keeps per partition, beside its detector.
#[derive(Debug, Default)]
struct LaneData {
    /// The newest live ids, kept to be saved as the "before" edge when a gap opens.
    recent: VecDeque<(String, DateTime<Utc>)>,
    /// After a gap closes: its id and how many more live ids to keep as the
    /// "after" edge.
    after_edge: Option<(i64, usize)>,
    after_pending: Vec<(String, DateTime<Utc>)>,
    /// The open gap, once the store has it.
    open_gap_id: Option<i64>,
    /// Gap events of this lane in the monitor's queue.
    unsaved: usize,
    /// With a shared store: the open gap it held at the last sync (start, id).
    shared_gap: Option<(DateTime<Utc>, i64)>,
    /// A record arrived since the last listing was applied (`partitions.from`).
    seen: bool,
}

/// A gap event the store has not taken yet.
struct Pending {
    partition: Arc<str>,
    event: GapEvent,
    /// Opened: the newest live ids of the partition when the detector opened
    /// it, saved with the gap however late that is.
    before_edge: Vec<(String, DateTime<Utc>)>,
}

/// A lane's state in the store, as a sync reads it.
struct StoredLane {
    partition: String,
    last_event: Option<DateTime<Utc>>,
    /// (start, id)
    open_gap: Option<(DateTime<Utc>, i64)>,
}

pub(crate) struct FeedMonitor {
    config: Arc<FeedConfig>,
    lanes: Lanes<LaneData>,
    store: Store,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Vec<Observation>>,
    status: watch::Sender<FeedStatus>,
    fill_wakeup: Arc<Notify>,
    edge_ids: usize,
    /// Partitioned feeds: ids further than this from their partition's
    /// newest event are not kept for its "before" edge.
    edge_window: Option<TimeDelta>,
    /// The ids of the lanes' `after_pending` and of the ledger buffer.
    unwritten: Unwritten,
    /// Gap events the store has not taken yet (retried every tick).
    unsaved: VecDeque<Pending>,
    /// Lanes with after-edge ids to write.
    after_ready: BTreeSet<Arc<str>>,
    observed: u64,
    /// The feed's newest event: over every partition, and records whose
    /// partition is unknown or missing.
    last_event: Option<DateTime<Utc>>,
    last_saved: Option<DateTime<Utc>>,
    last_save_at: Option<Instant>,
    /// Partitions whose newest event (or membership) the store lacks.
    dirty: HashSet<Arc<str>>,
    last_partitions_save_at: Option<Instant>,
    /// Partitions no longer watched, for the lease holder to forget.
    retired: Vec<String>,
    last_unfilled_at: Option<Instant>,
    /// The last value of `gapwatch_gap_unfilled_seconds`.
    unfilled: f64,
    /// How far behind the wall clock the detector runs (see [`FeedMonitor::start`]).
    clock_lag: chrono::TimeDelta,
    future_log: RateLog,
    unknown_log: RateLog,
    /// The feed's lease: only its holder saves gap events.
    lease: watch::Receiver<LeaseView>,
    /// Whether this replica held the lease at the last sync.
    led: bool,
    /// With a shared store: when the feed's state was last read back …
    last_sync: Option<Instant>,
    /// … the wall clock when the last good read began (partitioned feeds
    /// read what changed since) …
    synced_since: Option<DateTime<Utc>>,
    /// … and when every partition was last read.
    last_full_sync: Option<Instant>,
    /// Audited feeds: every id observed, on its way to the ledger.
    ledger: Option<LedgerBuffer>,
    /// While the store fails: when it is tried next, and how many tries failed.
    store_retry_at: Option<Instant>,
    store_failures: u32,
    /// Partitioned feeds: the partitions counted, and when.
    summary: Summary,
    summary_at: Option<Instant>,
    /// `partitions.from` feeds: the vendor's latest listing.
    listing: Option<watch::Receiver<Listing>>,
    /// The partitions watched, for fills of the whole feed and the API.
    members: watch::Sender<Arc<Vec<String>>>,
    members_changed: bool,
}

/// Whether `t` is later than `now` + `skew`.
pub(crate) fn is_future(t: DateTime<Utc>, now: DateTime<Utc>, skew: Duration) -> bool {
    chrono::TimeDelta::from_std(skew)
        .ok()
        .and_then(|s| now.checked_add_signed(s))
        .is_some_and(|limit| t > limit)
}

impl FeedMonitor {
    /// Restores the feed's detector (each partition's, for a partitioned
    /// feed) from the store.
    ///
    /// `clock_lag`: the detector (and everything it stamps: detection and
    /// closing times, freshness) runs this far behind the wall clock. Zero for
    /// feeds seen live; for passive feeds, whose inflow is known only minutes
    /// late, see [`crate::watch::inflow::clock_lag`].
    pub(crate) async fn start(
        config: Arc<FeedConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        edge_ids: usize,
        clock_lag: Duration,
    ) -> Result<(FeedMonitor, FeedHandle), StoreError> {
        let clock_lag = chrono::TimeDelta::from_std(clock_lag).unwrap_or(chrono::TimeDelta::zero());
        let mut restored = store.detector_state(&config.name).await?;
        let now = Utc::now() - clock_lag;
        let skew = config.freshness.max_future_skew;
        if let Some(stored) = restored.last_event.filter(|t| is_future(*t, now, skew)) {
            // Saved by a version that trusted every event time; it would keep
            // the feed "fresh" until that date. Silence counts from this start.
            let repaired = crate::store::from_ms(crate::store::ms(now));
            store
                .repair_last_event(&config.name, repaired, Utc::now())
                .await?;
            metrics.emit(StoredEventTimeRepaired {
                feed: &config.name,
                stored,
                repaired_to: repaired,
            });
            restored.last_event = Some(repaired);
        }
        let mut lanes = Lanes::new(
            config.freshness.max_silence,
            config.freshness.window.clone(),
        );
        let mut unsaved = VecDeque::new();
        let mut dirty = HashSet::new();
        let mut retired = Vec::new();
        metrics.init_feed(&config.name);
        match &config.partitions {
            None => {
                let open_gap_id = match restored.open_gap_start {
                    Some(_) => open_detected_gap(&store, &config.name).await?,
                    None => None,
                };
                let data = LaneData {
                    open_gap_id,
                    ..LaneData::default()
                };
                lanes.insert(WHOLE, restored, data, now);
            }
            Some(p) => {
                metrics.init_partitions(&config.name, matches!(p.list, PartitionList::From(_)));
                let stored = store.partition_states(&config.name, None).await?;
                let watched: Vec<String> = match &p.list {
                    PartitionList::Values(v) => v.clone(),
                    // Listed before (or seen live); the next listing may change it.
                    PartitionList::From(_) => stored
                        .iter()
                        .take(p.max.get())
                        .map(|s| s.partition.clone())
                        .collect(),
                };
                let by_name: HashMap<&str, &crate::store::PartitionState> =
                    stored.iter().map(|s| (s.partition.as_str(), s)).collect();
                for name in &watched {
                    let s = by_name.get(name.as_str());
                    let state = DetectorState {
                        // Partition times are only ever saved once trusted.
                        last_event: s
                            .and_then(|s| s.last_event)
                            .filter(|t| !is_future(*t, now, skew)),
                        open_gap_start: s.and_then(|s| s.open_gap).map(|g| g.1),
                    };
                    let data = LaneData {
                        open_gap_id: s.and_then(|s| s.open_gap).map(|g| g.0),
                        ..LaneData::default()
                    };
                    lanes.insert(name, state, data, now);
                    if s.is_none() {
                        dirty.extend(lanes.key(name));
                    }
                }
                for s in &stored {
                    if lanes.contains(&s.partition) {
                        continue;
                    }
                    retired.push(s.partition.clone());
                    if let Some((id, start)) = s.open_gap {
                        tracing::info!(partition = %s.partition, gap_id = id, "partition no longer watched; its open gap closes now");
                        unsaved.push_back(Pending {
                            partition: Arc::from(s.partition.as_str()),
                            event: GapEvent::Closed { start, end: now },
                            before_edge: Vec::new(),
                        });
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let initial = FeedStatus {
            name: config.name.clone(),
            mode: config.watch.mode.as_str(),
            last_event: restored.last_event,
            freshness_seconds: None,
            active: config.freshness.window.is_active(now),
            open_gap: None,
            records_observed: 0,
            leader: None,
            verified_until: None,
            partitions: None,
            shape_check: None,
        };
        let (status_tx, status_rx) = watch::channel(initial);
        let fill_wakeup = Arc::new(Notify::new());
        let unwritten = Unwritten::default();
        let ledger = config.audit.as_ref().and_then(|_| match config.watch.mode {
            WatchMode::Relay => Some(LedgerBuffer::new(Origin::Relayed, unwritten.clone())),
            WatchMode::Report => Some(LedgerBuffer::new(Origin::Reported, unwritten.clone())),
            WatchMode::Passive => None,
        });
        let (members_tx, members_rx) = watch::channel(Arc::new(Vec::new()));
        let (listing_tx, listing_rx) = watch::channel(None);
        let listed = matches!(
            config.partitions.as_ref().map(|p| &p.list),
            Some(PartitionList::From(_))
        );
        let edge_window = config.partitions.as_ref().map(|_| {
            let overlap = config
                .backfill
                .as_ref()
                .map_or(Duration::ZERO, |b| b.overlap);
            TimeDelta::from_std(overlap).unwrap_or(TimeDelta::zero()) + EDGE_MARGIN
        });
        let handle = FeedHandle {
            config: config.clone(),
            observations: tx,
            status: status_rx,
            fill_wakeup: fill_wakeup.clone(),
            clock_lag,
            verified_until: Arc::new(watch::channel(None).0),
            unwritten: unwritten.clone(),
            partitions: members_rx,
            listing: Arc::new(listing_tx),
            shape_sample: config
                .shape
                .as_ref()
                .map(|s| Arc::new(Sampler::for_check(s.sample.get(), s.every))),
            shape_status: Arc::new(watch::channel(None).0),
        };
        let mut monitor = FeedMonitor {
            config,
            lanes,
            store,
            metrics,
            rx,
            status: status_tx,
            fill_wakeup,
            edge_ids,
            edge_window,
            unwritten,
            unsaved,
            after_ready: BTreeSet::new(),
            observed: 0,
            last_event: restored.last_event,
            last_saved: restored.last_event,
            last_save_at: None,
            dirty,
            last_partitions_save_at: None,
            retired,
            last_unfilled_at: None,
            unfilled: 0.0,
            clock_lag,
            future_log: RateLog::default(),
            unknown_log: RateLog::default(),
            lease: watch::channel(LeaseView::held()).1,
            led: true,
            last_sync: None,
            synced_since: None,
            last_full_sync: None,
            ledger,
            store_retry_at: None,
            store_failures: 0,
            summary: Summary::default(),
            summary_at: None,
            listing: listed.then_some(listing_rx),
            members: members_tx,
            members_changed: true,
        };
        monitor.publish_members();
        Ok((monitor, handle))
    }

    /// Saves gap events only while this replica holds the feed's lease; the
    /// rest of the time the feed's gap state follows what the holder stored.
    pub(crate) fn with_lease(mut self, lease: watch::Receiver<LeaseView>) -> Self {
        self.lease = lease;
        self.led = false;
        self
    }

    /// Runs until `stop` is cancelled, then takes what is still queued, saves,
    /// and returns. Cancel `stop` only after the feed's producers finished.
    pub(crate) async fn run(&mut self, stop: CancellationToken) {
        // Before any observation: silence that lasted through our own downtime
        // must be seen first (an observation would otherwise close a gap that
        // was never opened).
        self.tick(self.now()).await;
        loop {
            let wake = self.next_wake();
            let listing = self.listing.clone();
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
                _ = listing_changed(listing) => {
                    self.tick(self.now()).await;
                }
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
        self.last_partitions_save_at = None;
        self.tick(self.now()).await;
        self.flush_ledger(true).await;
        tracing::debug!("feed monitor stopped");
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
    /// earliest deadline of its detectors, a due save or retry, the
    /// unfilled-seconds refresh. Nothing else wakes an idle feed, so idle
    /// cost does not grow with the number of feeds (or partitions), and
    /// detection happens at the deadline itself.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut deadline_wake = now + IDLE_WAKE;
        if let Some(deadline) = self.lanes.next_deadline() {
            let wait = (deadline - self.now()).to_std().unwrap_or(Duration::ZERO);
            deadline_wake = now + wait;
        }
        if self.members_changed {
            deadline_wake = deadline_wake.min(now + SAVE_EVERY);
        }
        // Everything below needs the store.
        let mut wake = now + IDLE_WAKE;
        if !self.unsaved.is_empty()
            || !self.after_ready.is_empty()
            || (!self.retired.is_empty() && self.lease.borrow().is_mine())
        {
            wake = wake.min(now + RETRY);
        }
        if self.last_event != self.last_saved {
            wake = wake.min(self.last_save_at.map_or(now, |at| at + SAVE_EVERY));
        }
        if !self.dirty.is_empty() {
            wake = wake.min(
                self.last_partitions_save_at
                    .map_or(now, |at| at + SAVE_EVERY),
            );
        }
        if self.store.is_shared() {
            wake = wake.min(self.last_sync.map_or(now, |at| at + SYNC_EVERY));
        }
        if let Some(due) = self.ledger.as_ref().and_then(LedgerBuffer::due) {
            // A failing store is retried at the retry pace, not in a loop.
            wake = wake.min(due.max(now + RETRY.min(crate::audit::ledger::FLUSH_EVERY)));
        }
        let every = if self.busy() {
            UNFILLED_EVERY
        } else {
            UNFILLED_IDLE
        };
        let wake = wake.min(self.last_unfilled_at.map_or(now, |at| at + every));
        deadline_wake.min(self.store_retry_at.map_or(wake, |at| wake.max(at)))
    }

    /// Whether the feed has an open gap or unfilled time (the unfilled
    /// seconds are then refreshed more often).
    fn busy(&self) -> bool {
        self.unfilled > 0.0 || self.any_open_gap()
    }

    /// Whether a gap of the feed (of any partition) is open in the store.
    fn any_open_gap(&self) -> bool {
        match self.config.partitions {
            None => self
                .lanes
                .get(WHOLE)
                .is_some_and(|l| l.data.open_gap_id.is_some()),
            Some(_) => self.summary.silent > 0,
        }
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
                    tracing::info!(
                        failures = self.store_failures,
                        "state store reachable again"
                    );
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
    /// replica decides the feed's gaps, the holder's open gaps. Every replica
    /// remembers the ids it relayed next to the gaps' edges, so the fill
    /// skips them whichever replica relayed them. A partitioned feed reads
    /// the partitions that changed since its last look (all of them every
    /// [`FULL_SYNC_EVERY`], and when the lease changes hands).
    async fn sync(&mut self, now: DateTime<Utc>) {
        if !self.store.is_shared()
            || self.last_sync.is_some_and(|at| at.elapsed() < SYNC_EVERY)
            || !self.store_due()
        {
            return;
        }
        self.last_sync = Some(Instant::now());
        let started = Utc::now();
        let leader = self.lease.borrow().is_mine();
        let full = self.synced_since.is_none()
            || leader != self.led
            || self
                .last_full_sync
                .is_none_or(|at| at.elapsed() >= FULL_SYNC_EVERY);
        let stored = match self.read_stored(full).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the shared feed state");
                return;
            }
        };
        for s in stored {
            if !self.apply_stored(s, leader, now).await {
                return;
            }
        }
        if self.lease.borrow().is_elsewhere() {
            self.drop_unsaved();
        }
        self.led = leader;
        self.synced_since = Some(started);
        if full {
            self.last_full_sync = Some(Instant::now());
        }
    }

    /// The lanes' state in the store (None: not now, try at the next sync).
    async fn read_stored(&mut self, full: bool) -> Result<Option<Vec<StoredLane>>, StoreError> {
        let feed = self.config.name.clone();
        let stored = self.store.detector_state(&feed).await;
        self.store_outcome(&stored);
        let stored = stored?;
        if self.config.partitions.is_some() {
            // The feed as a whole: the newest event of any replica.
            self.last_event = self.last_event.max(
                stored
                    .last_event
                    .filter(|t| !is_future(*t, Utc::now(), self.config.freshness.max_future_skew)),
            );
            let since = if full {
                None
            } else {
                self.synced_since.map(|s| s - SYNC_MARGIN)
            };
            let states = self.store.partition_states(&feed, since).await;
            self.store_outcome(&states);
            return Ok(Some(
                states?
                    .into_iter()
                    .map(|s| StoredLane {
                        partition: s.partition,
                        last_event: s.last_event,
                        open_gap: s.open_gap.map(|(id, start)| (start, id)),
                    })
                    .collect(),
            ));
        }
        let shared = self.lanes.get(WHOLE).and_then(|l| l.data.shared_gap);
        let open_gap = match stored.open_gap_start {
            None => None,
            Some(start) if shared.map(|g| g.0) == Some(start) => shared,
            Some(start) => {
                let found = open_detected_gap(&self.store, &feed).await;
                self.store_outcome(&found);
                match found {
                    Ok(Some(id)) => Some((start, id)),
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(vec![StoredLane {
            partition: WHOLE.to_string(),
            last_event: stored.last_event,
            open_gap,
        }]))
    }

    /// Takes one lane's stored state in; false when the store failed (the
    /// rest waits for the next sync).
    async fn apply_stored(&mut self, s: StoredLane, leader: bool, now: DateTime<Utc>) -> bool {
        let feed = self.config.name.clone();
        let key = match self.lanes.key(&s.partition) {
            Some(k) => k,
            // Another replica watches it already (listed, or seen live there first).
            None => match self.add_lane(&s.partition, now) {
                Some(k) => k,
                None => return true,
            },
        };
        let gap = s.open_gap;
        let Some(lane) = self.lanes.get_mut(&key) else {
            return true;
        };
        if gap != lane.data.shared_gap && !leader {
            // The holder saves its own edges when it opens and closes the gap.
            let edge_gap = gap.or(lane.data.shared_gap).map(|g| g.1);
            if let Some(gap_id) = edge_gap {
                let edge: Vec<_> = lane.data.recent.iter().cloned().collect();
                let saved = self.store.remember_live(&feed, Some(gap_id), &edge).await;
                self.store_outcome(&saved);
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "cannot save edge ids");
                    return false;
                }
                if gap.is_none() {
                    if let Some(lane) = self.lanes.get_mut(&key) {
                        lane.data.after_edge = Some((gap_id, self.edge_ids));
                        if !lane.data.after_pending.is_empty() {
                            self.after_ready.insert(key.clone());
                        }
                    }
                }
            }
        }
        let Some(lane) = self.lanes.get_mut(&key) else {
            return true;
        };
        lane.data.shared_gap = gap;
        let own = lane.state();
        // Gap events this replica could not save yet (the store was down and
        // nobody was known to hold the lease) are decisions still to be
        // applied on top of the stored state, not overwritten by it.
        let deciding = lane.data.unsaved > 0;
        // A new holder adopts the stored gap state; then it is the one deciding.
        let adopt = (!leader || !self.led) && !deciding;
        if adopt {
            lane.data.open_gap_id = gap.map(|g| g.1);
        }
        if adopt && gap.map(|g| g.0) != own.open_gap_start {
            let state = DetectorState {
                last_event: own.last_event.max(s.last_event),
                open_gap_start: gap.map(|g| g.0),
            };
            self.lanes.restore(&key, state, now);
            self.last_unfilled_at = None;
            self.summary_at = None;
        }
        let skew = self.config.freshness.max_future_skew;
        if let Some(t) = s.last_event.filter(|t| !is_future(*t, now, skew)) {
            if let Some(Some(event)) = self.lanes.observe(&key, t, now) {
                self.queue(key, event);
            }
        }
        true
    }

    /// The detector's clock.
    fn now(&self) -> DateTime<Utc> {
        Utc::now() - self.clock_lag
    }

    async fn observe(&mut self, batch: Vec<Observation>, now: DateTime<Utc>) {
        self.metrics.emit(RecordsObserved {
            feed: &self.config.name,
            count: batch.len(),
        });
        self.observed += batch.len() as u64;
        for obs in batch {
            if let Some(ledger) = &mut self.ledger {
                ledger.push(obs.id.clone(), obs.event_time);
            }
            if is_future(obs.event_time, now, self.config.freshness.max_future_skew) {
                self.reject_future(&obs, now);
                continue;
            }
            if self.last_event.is_none_or(|l| obs.event_time > l) {
                self.last_event = Some(obs.event_time);
            }
            let Some(key) = self.lane_for(&obs, now) else {
                continue;
            };
            let before = self.lanes.get(&key).and_then(|l| l.state().last_event);
            if let Some(Some(event)) = self.lanes.observe(&key, obs.event_time, now) {
                self.queue(key.clone(), event);
            }
            let (edge_ids, edge_window) = (self.edge_ids, self.edge_window);
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let newest = lane.state().last_event;
            let lane_data = &mut lane.data;
            lane_data.seen = true;
            if lane_data.recent.len() == edge_ids {
                lane_data.recent.pop_front();
            }
            lane_data.recent.push_back((obs.id.clone(), obs.event_time));
            if let (Some(window), Some(newest)) = (edge_window, newest) {
                // Older ids are before what a fill of this partition lists again.
                while lane_data
                    .recent
                    .front()
                    .is_some_and(|(_, t)| *t < newest - window)
                {
                    lane_data.recent.pop_front();
                }
            }
            if (lane_data.unsaved > 0 || lane_data.after_edge.is_some())
                && lane_data.after_pending.len() < edge_ids
            {
                // The "after" edge starts with the record that closed the
                // gap and holds `edge_ids` at most, however long the store
                // stays away.
                self.unwritten.hold([obs.id.as_str()]);
                lane_data.after_pending.push((obs.id, obs.event_time));
                if lane_data.after_edge.is_some() {
                    self.after_ready.insert(key.clone());
                }
            }
            if self.config.partitions.is_some() && newest != before {
                self.dirty.insert(key);
            }
        }
        self.save_events(now).await;
        self.flush_after_edges().await;
        self.flush_ledger(false).await;
        self.publish(now);
    }

    /// The lane a record belongs to. A partitioned feed's record without a
    /// partition value (counted where it was read) or with one that is not
    /// watched counts for the feed as a whole only; a listed feed
    /// (`partitions.from`) watches a new value at once, up to `partitions.max`.
    fn lane_for(&mut self, obs: &Observation, now: DateTime<Utc>) -> Option<Arc<str>> {
        if self.config.partitions.is_none() {
            return self.lanes.key(WHOLE);
        }
        let partition = obs.partition.as_deref()?;
        if let Some(key) = self.lanes.key(partition) {
            return Some(key);
        }
        if let Some(key) = self.add_lane(partition, now) {
            tracing::info!(
                partition,
                "partition watched from its first live record (not listed yet)"
            );
            return Some(key);
        }
        self.metrics.emit(PartitionNotWatched {
            feed: &self.config.name,
            source: self.input_source(),
            partition,
            record_id: &obs.id,
            watched: self.lanes.len(),
            log: &mut self.unknown_log,
        });
        None
    }

    /// Watches a new partition of a listed feed (None: a feed of fixed
    /// values, or `partitions.max` reached).
    fn add_lane(&mut self, partition: &str, now: DateTime<Utc>) -> Option<Arc<str>> {
        let p = self.config.partitions.as_ref()?;
        let listed = matches!(p.list, PartitionList::From(_));
        if !listed || partition.is_empty() || self.lanes.len() >= p.max.get() {
            return None;
        }
        self.lanes.insert(
            partition,
            DetectorState::default(),
            LaneData::default(),
            now,
        );
        let key = self.lanes.key(partition)?;
        self.dirty.insert(key.clone());
        self.members_changed = true;
        self.summary_at = None;
        Some(key)
    }

    /// Queues a lane's gap event for the store.
    fn queue(&mut self, partition: Arc<str>, event: GapEvent) {
        let Some(lane) = self.lanes.get_mut(&partition) else {
            return;
        };
        let before_edge = match event {
            // Saved with the gap, however late that is.
            GapEvent::Opened { .. } => lane.data.recent.iter().cloned().collect(),
            GapEvent::Closed { .. } => Vec::new(),
        };
        lane.data.unsaved += 1;
        self.summary_at = None;
        self.unsaved.push_back(Pending {
            partition,
            event,
            before_edge,
        });
    }

    /// A lane's queued event is settled (saved, or left to the lease holder):
    /// once none is left and no after edge is being kept, the ids held for
    /// one are let go.
    fn settled(&mut self, partition: &str) {
        let Some(lane) = self.lanes.get_mut(partition) else {
            return;
        };
        lane.data.unsaved = lane.data.unsaved.saturating_sub(1);
        if lane.data.unsaved == 0 && lane.data.after_edge.is_none() {
            self.unwritten
                .release(lane.data.after_pending.iter().map(|(id, _)| id.as_str()));
            lane.data.after_pending.clear();
        }
    }

    /// Another replica decides the feed's gaps: this one's events are dropped.
    fn drop_unsaved(&mut self) {
        let dropped: Vec<Pending> = self.unsaved.drain(..).collect();
        for p in dropped {
            self.settled(&p.partition);
        }
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
            tracing::warn!(pending = ledger.len(), error = %e, "cannot write the ledger; retrying");
        }
        self.store_outcome(&result);
    }

    /// The record was relayed (or accepted) already; only its time is not
    /// believed, so it neither moves freshness nor closes a gap.
    fn reject_future(&mut self, obs: &Observation, now: DateTime<Utc>) {
        self.metrics.emit(EventTimeInFuture {
            feed: &self.config.name,
            source: self.input_source(),
            record_id: &obs.id,
            event_time: obs.event_time,
            now,
            max_future_skew: self.config.freshness.max_future_skew,
            log: &mut self.future_log,
        });
    }

    /// Where the feed's live records come from (the `source` they are
    /// refused under).
    fn input_source(&self) -> InputSource {
        match self.config.watch.mode {
            WatchMode::Report => InputSource::Report,
            WatchMode::Relay | WatchMode::Passive => InputSource::Queue,
        }
    }

    async fn tick(&mut self, now: DateTime<Utc>) {
        self.apply_listing(now);
        self.sync(now).await;
        for (partition, event) in self.lanes.tick(now) {
            self.queue(partition, event);
        }
        self.save_events(now).await;
        self.flush_after_edges().await;
        self.save_last_event(now).await;
        self.save_partitions().await;
        self.forget_retired().await;
        self.flush_ledger(false).await;
        self.update_unfilled(now).await;
        self.publish_members();
        self.publish(now);
    }

    /// Takes in the vendor's latest listing (`partitions.from`): listed
    /// partitions are watched (up to `partitions.max`); those no longer
    /// listed and not heard from since the previous listing are retired (an
    /// open gap of theirs closes now: the fill recovers up to here).
    fn apply_listing(&mut self, now: DateTime<Utc>) {
        let Some(rx) = &mut self.listing else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let Some(list) = rx.borrow_and_update().clone() else {
            return;
        };
        let Some(max) = self.config.partitions.as_ref().map(|p| p.max.get()) else {
            return;
        };
        let listed: HashSet<&str> = list.iter().map(String::as_str).collect();
        let mut added = 0usize;
        for p in list.iter() {
            if self.lanes.contains(p) {
                continue;
            }
            if self.lanes.len() >= max {
                tracing::warn!(
                    max,
                    listed = list.len(),
                    "more partitions listed than partitions.max; the rest are not watched"
                );
                break;
            }
            self.lanes
                .insert(p, DetectorState::default(), LaneData::default(), now);
            self.dirty.extend(self.lanes.key(p));
            added += 1;
        }
        let gone: Vec<Arc<str>> = self
            .lanes
            .iter()
            .filter(|(k, l)| !listed.contains(&***k) && !l.data.seen)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &gone {
            let Some((state, data)) = self.lanes.remove(key) else {
                continue;
            };
            self.unwritten
                .release(data.after_pending.iter().map(|(id, _)| id.as_str()));
            self.after_ready.remove(key);
            self.dirty.remove(key);
            self.retired.push(key.to_string());
            if let Some(start) = state.open_gap_start {
                tracing::info!(partition = %key, "partition no longer listed; its open gap closes now");
                self.unsaved.push_back(Pending {
                    partition: key.clone(),
                    event: GapEvent::Closed { start, end: now },
                    before_edge: Vec::new(),
                });
            }
        }
        for (_, lane) in self.lanes.iter_mut() {
            lane.data.seen = false;
        }
        self.members_changed = true;
        self.summary_at = None;
        tracing::info!(
            listed = list.len(),
            watched = self.lanes.len(),
            added,
            retired = gone.len(),
            "partitions listed"
        );
    }

    /// `gapwatch_gap_unfilled_seconds`, from the store every few seconds.
    async fn update_unfilled(&mut self, now: DateTime<Utc>) {
        let every = if self.busy() {
            UNFILLED_EVERY
        } else {
            UNFILLED_IDLE
        };
        if self.last_unfilled_at.is_some_and(|at| at.elapsed() < every) || !self.store_due() {
            return;
        }
        self.last_unfilled_at = Some(Instant::now());
        let result = self.store.unfilled_seconds(&self.config.name, now).await;
        self.store_outcome(&result);
        match result {
            Ok(s) => {
                self.unfilled = s;
                self.metrics.emit(UnfilledMeasured {
                    feed: &self.config.name,
                    seconds: s,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute unfilled seconds")
            }
        }
    }

    async fn save_events(&mut self, now: DateTime<Utc>) {
        let lease = self.lease.borrow().clone();
        if lease.is_elsewhere() {
            // The holder decides; this replica follows the store (see `sync`).
            self.drop_unsaved();
        }
        // Not held by anyone known (the store is down): kept until it is.
        let may_save = lease.is_mine() && self.store_due();
        if !may_save {
            return;
        }
        while let Some(pending) = self.unsaved.front_mut() {
            let (partition, event) = (pending.partition.clone(), pending.event);
            let edge = std::mem::take(&mut pending.before_edge);
            let result = match event {
                GapEvent::Opened { start, detected_at } => {
                    self.on_opened(&partition, start, detected_at, &edge).await
                }
                GapEvent::Closed { start, end } => {
                    self.on_closed(&partition, start, end, now).await
                }
            };
            if result.is_err() {
                if let Some(pending) = self.unsaved.front_mut() {
                    pending.before_edge = edge;
                }
            }
            self.store_outcome(&result);
            match result {
                Ok(()) => {
                    self.unsaved.pop_front();
                    self.settled(&partition);
                }
                Err(e) => {
                    tracing::error!(partition = %partition, error = %e, "cannot save gap event; retrying");
                    break;
                }
            }
        }
    }

    async fn on_opened(
        &mut self,
        partition: &str,
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
        before_edge: &[(String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let feed = self.config.name.clone();
        let feed = feed.as_str();
        let fill = match &self.config.backfill {
            Some(b) if b.auto => FillState::Pending,
            _ => FillState::None,
        };
        let id = self
            .store
            .open_gap(feed, partition, start, detected_at, fill)
            .await?;
        self.store
            .remember_live(feed, Some(id), before_edge)
            .await?;
        if let Some(lane) = self.lanes.get_mut(partition) {
            lane.data.open_gap_id = Some(id);
        }
        self.last_unfilled_at = None;
        self.summary_at = None;
        self.metrics.emit(GapOpened {
            feed,
            partition,
            gap_id: id,
            start,
            detected_at,
            fill,
        });
        self.fill_wakeup.notify_one();
        Ok(())
    }

    async fn on_closed(
        &mut self,
        partition: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let feed = self.config.name.clone();
        let feed = feed.as_str();
        let id = self.store.close_gap(feed, partition, end, now).await?;
        self.last_unfilled_at = None;
        self.summary_at = None;
        if let Some(key) = self.lanes.key(partition) {
            if let Some(lane) = self.lanes.get_mut(&key) {
                lane.data.open_gap_id = None;
                if let Some(id) = id {
                    lane.data.after_edge = Some((id, self.edge_ids));
                    if !lane.data.after_pending.is_empty() {
                        self.after_ready.insert(key);
                    }
                }
            }
        }
        self.metrics.emit(GapClosed {
            feed,
            partition,
            gap_id: id,
            start,
            end,
            partitioned: self.config.partitions.is_some(),
        });
        self.fill_wakeup.notify_one();
        Ok(())
    }

    /// Writes the "after" edge ids each lane collected since its gap closed.
    async fn flush_after_edges(&mut self) {
        if self.after_ready.is_empty() || !self.store_due() {
            return;
        }
        let ready: Vec<Arc<str>> = std::mem::take(&mut self.after_ready).into_iter().collect();
        let mut failed = false;
        for key in ready {
            if failed {
                self.after_ready.insert(key);
                continue;
            }
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let Some((gap_id, remaining)) = lane.data.after_edge else {
                continue;
            };
            if lane.data.after_pending.is_empty() {
                continue;
            }
            let take = remaining.min(lane.data.after_pending.len());
            let mut ids: Vec<_> = lane.data.after_pending.drain(..).collect();
            // Past the edge's size: not edge ids after all.
            let beyond = ids.split_off(take);
            self.unwritten
                .release(beyond.iter().map(|(id, _)| id.as_str()));
            let result = self
                .store
                .remember_live(&self.config.name, Some(gap_id), &ids)
                .await;
            self.store_outcome(&result);
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            match result {
                Ok(()) => {
                    self.unwritten
                        .release(ids.iter().map(|(id, _)| id.as_str()));
                    let left = remaining - take;
                    lane.data.after_edge = (left > 0).then_some((gap_id, left));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot save edge ids; retrying");
                    lane.data.after_pending.splice(0..0, ids);
                    self.after_ready.insert(key);
                    failed = true;
                }
            }
        }
    }

    async fn save_last_event(&mut self, now: DateTime<Utc>) {
        let Some(last) = self.last_event else {
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
                tracing::error!(error = %e, "cannot save last event")
            }
        }
    }

    /// Partitioned feeds: the newest event of each partition that moved (and
    /// the partitions newly watched), in one batch at most every [`SAVE_EVERY`].
    async fn save_partitions(&mut self) {
        let due = self
            .last_partitions_save_at
            .is_none_or(|at| at.elapsed() >= SAVE_EVERY);
        if self.dirty.is_empty() || !due || !self.store_due() {
            return;
        }
        let owned: Vec<(Arc<str>, Option<DateTime<Utc>>)> = self
            .dirty
            .iter()
            .filter_map(|k| self.lanes.get(k).map(|l| (k.clone(), l.state().last_event)))
            .collect();
        let rows: Vec<(&str, Option<DateTime<Utc>>)> =
            owned.iter().map(|(k, t)| (k.as_ref(), *t)).collect();
        // The wall clock: other replicas read back what changed since theirs.
        let result = self
            .store
            .save_partitions(&self.config.name, &rows, Utc::now())
            .await;
        self.store_outcome(&result);
        match result {
            Ok(()) => {
                self.dirty.clear();
                self.last_partitions_save_at = Some(Instant::now());
            }
            Err(e) => {
                tracing::error!(partitions = rows.len(), error = %e, "cannot save the partitions' newest events")
            }
        }
    }

    /// The lease holder forgets the partitions no longer watched.
    async fn forget_retired(&mut self) {
        if self.retired.is_empty() || !self.lease.borrow().is_mine() || !self.store_due() {
            return;
        }
        let parts: Vec<&str> = self.retired.iter().map(String::as_str).collect();
        let result = self
            .store
            .forget_partitions(&self.config.name, &parts)
            .await;
        self.store_outcome(&result);
        match result {
            Ok(_) => self.retired.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot forget retired partitions")
            }
        }
    }

    /// The partitions watched, for fills of the whole feed and the API (at
    /// most once a second: a listed feed may add many one at a time).
    fn publish_members(&mut self) {
        if !self.members_changed || self.config.partitions.is_none() {
            return;
        }
        let mut names: Vec<String> = self.lanes.iter().map(|(k, _)| k.to_string()).collect();
        names.sort_unstable();
        self.members.send_replace(Arc::new(names));
        self.members_changed = false;
    }

    fn publish(&mut self, now: DateTime<Utc>) {
        let feed = self.config.name.as_str();
        let partitions = match self.config.partitions {
            None => None,
            Some(_) => {
                if self
                    .summary_at
                    .is_none_or(|at| at.elapsed() >= SUMMARY_EVERY)
                {
                    self.summary = self.lanes.summary(|l| l.data.open_gap_id.is_some());
                    self.summary_at = Some(Instant::now());
                    self.metrics.emit(PartitionsCounted {
                        feed,
                        silent: self.summary.silent,
                        fresh: self.summary.fresh,
                        unseen: self.summary.unseen,
                    });
                }
                Some(PartitionsStatus::from(self.summary))
            }
        };
        let open_gap = self.lanes.get(WHOLE).and_then(|l| {
            match (l.data.open_gap_id, l.state().open_gap_start) {
                (Some(id), Some(start)) => Some(OpenGap {
                    id,
                    start,
                    silent_seconds: 0.0,
                }),
                _ => None,
            }
        });
        let any_open = open_gap.is_some() || partitions.is_some_and(|p| p.silent > 0);
        self.metrics.emit(FeedStatePublished {
            feed,
            last_event: self.last_event,
            gap_open: any_open,
        });
        let mut status = FeedStatus {
            name: self.config.name.clone(),
            mode: self.config.watch.mode.as_str(),
            last_event: self.last_event,
            freshness_seconds: None,
            active: false,
            open_gap,
            records_observed: self.observed,
            leader: self.lease.borrow().holder.clone(),
            verified_until: None,
            partitions,
            shape_check: None,
        };
        status.refresh(now, &self.config.freshness.window);
        status.set_clock_gauges(&self.metrics);
        self.status.send_replace(status);
    }
}

/// The id of the feed's open detected gap of the whole feed in the store.
async fn open_detected_gap(store: &Store, feed: &str) -> Result<Option<i64>, StoreError> {
    Ok(store
        .gaps(&crate::store::GapFilter {
            feed: Some(feed.to_string()),
            state: Some("open".into()),
            partition: Some(WHOLE.to_string()),
            limit: Some(10),
        })
        .await?
        .into_iter()
        .find(|g| g.kind == crate::store::GapKind::Detected)
        .map(|g| g.id))
}

/// Resolves when a listed feed's listing changes (never for other feeds).
async fn listing_changed(listing: Option<watch::Receiver<Listing>>) {
    match listing {
        Some(mut rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

// === impl PartitionsStatus ===

impl From<Summary> for PartitionsStatus {
    fn from(s: Summary) -> Self {
        PartitionsStatus {
            total: s.total,
            silent: s.silent,
            fresh: s.fresh,
            unseen: s.unseen,
            oldest_freshness_seconds: None,
            oldest_last_event: s.oldest_last_event,
        }
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
        if let Some(p) = &mut self.partitions {
            p.oldest_freshness_seconds = p.oldest_last_event.map(age);
        }
    }

    fn set_clock_gauges(&self, metrics: &Metrics) {
        metrics.emit(FeedFreshnessMeasured {
            feed: &self.name,
            active: self.active,
            freshness_seconds: self.freshness_seconds,
            oldest_partition_freshness_seconds: self
                .partitions
                .and_then(|p| p.oldest_freshness_seconds),
        });
    }
}

// === impl FeedHandle ===

impl FeedHandle {
    /// The feed's status as of now. Freshness, activity and silence are
    /// derived when read, so an idle monitor need not wake to keep them true.
    pub(crate) fn current(&self) -> FeedStatus {
        let mut status = self.status.borrow().clone();
        status.verified_until = *self.verified_until.borrow();
        status.shape_check = self.shape_status.borrow().clone();
        status.refresh(Utc::now() - self.clock_lag, &self.config.freshness.window);
        status
    }
}

/// Sets the gauges that move with the clock alone (freshness, active) for
/// every feed; called before each scrape.
pub(crate) fn refresh_clock_gauges<'a>(
    metrics: &Metrics,
    feeds: impl IntoIterator<Item = &'a FeedHandle>,
) {
    for h in feeds {
        h.current().set_clock_gauges(metrics);
    }
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
            partition: None,
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
            partition: None,
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

    const PARTITIONED: &str =
        "[feeds.partitions]\nkey = \"/store\"\nvalues = [\"s1\", \"s2\", \"s3\"]\n";

    fn obs_in(id: &str, t: DateTime<Utc>, partition: Option<&str>) -> Observation {
        Observation {
            id: id.into(),
            event_time: t,
            partition: partition.map(str::to_string),
        }
    }

    /// Whole seconds an hour ago (the store keeps milliseconds).
    fn clock() -> impl Fn(i64) -> DateTime<Utc> {
        let t0 = Utc::now().timestamp() - 3600;
        move |s: i64| DateTime::from_timestamp(t0 + s, 0).unwrap()
    }

    fn sample(metrics: &Metrics, series: &str) -> Option<f64> {
        let text = metrics.render();
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[tokio::test]
    async fn each_partition_opens_and_closes_its_own_gap() {
        let store = Store::memory().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let (mut monitor, handle) = FeedMonitor::start(
            report_feed(PARTITIONED),
            store.clone(),
            metrics.clone(),
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert_eq!(*handle.partitions.borrow().clone(), vec!["s1", "s2", "s3"]);
        let at = clock();
        let batch: Vec<_> = ["s1", "s2", "s3"]
            .iter()
            .map(|p| obs_in(&format!("{p}-1"), at(1), Some(p)))
            .collect();
        monitor.observe(batch, at(1)).await;
        // s1 and s2 keep flowing; s3 has been silent since at(1).
        let batch = vec![
            obs_in("s1-2", at(200), Some("s1")),
            obs_in("s2-2", at(200), Some("s2")),
        ];
        monitor.observe(batch, at(200)).await;
        monitor.tick(at(300)).await;
        assert!(store.gaps(&GapFilter::default()).await.unwrap().is_empty());
        monitor.tick(at(302)).await;
        let gaps = store.gaps(&GapFilter::default()).await.unwrap();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].partition, "s3");
        assert_eq!((gaps[0].start, gaps[0].detected_at), (at(1), at(302)));
        // Its edge: the partition's own ids, not the others'.
        let known = store.known_ids("orders", &["s3-1", "s1-2"]).await.unwrap();
        assert_eq!(known, HashSet::from(["s3-1".to_string()]));
        let status = handle.status.borrow().clone();
        assert_eq!(status.open_gap, None);
        let p = status.partitions.unwrap();
        assert_eq!((p.total, p.silent, p.fresh, p.unseen), (3, 1, 2, 0));
        let series = |state: &str| {
            sample(
                &metrics,
                &format!(r#"gapwatch_feed_partitions{{feed="orders",state="{state}"}}"#),
            )
        };
        assert_eq!(
            (series("silent"), series("fresh"), series("unseen")),
            (Some(1.0), Some(2.0), Some(0.0))
        );
        assert_eq!(
            sample(&metrics, r#"gapwatch_gap_open{feed="orders"}"#),
            Some(1.0)
        );
        // Newest events per partition are in the store.
        let saved = store.partition_states("orders", None).await.unwrap();
        let last: Vec<_> = saved
            .iter()
            .map(|s| (s.partition.as_str(), s.last_event))
            .collect();
        assert_eq!(
            last,
            vec![
                ("s1", Some(at(200))),
                ("s2", Some(at(200))),
                ("s3", Some(at(1)))
            ]
        );

        // A record of no watched partition, or without one, moves the feed
        // as a whole only; the first is counted here (the second where it
        // was read).
        let batch = vec![
            obs_in("zz-1", at(310), Some("zz")),
            obs_in("none-1", at(311), None),
        ];
        monitor.observe(batch, at(311)).await;
        assert_eq!(handle.status.borrow().last_event, Some(at(311)));
        assert_eq!(
            sample(
                &metrics,
                r#"gapwatch_rejected_input_total{feed="orders",reason="unknown_partition",source="report"}"#
            ),
            Some(1.0)
        );
        assert!(store.gaps(&GapFilter::default()).await.unwrap()[0]
            .end
            .is_none());

        // s3 resumes: its gap closes, the others never opened one.
        monitor
            .observe(vec![obs_in("s3-2", at(400), Some("s3"))], at(400))
            .await;
        monitor.tick(at(401)).await;
        let gaps = store.gaps(&GapFilter::default()).await.unwrap();
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].end, Some(at(400)));
        assert_eq!(
            sample(&metrics, r#"gapwatch_gap_open{feed="orders"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&metrics, r#"gapwatch_gaps_detected_total{feed="orders"}"#),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn partitions_come_back_after_a_restart() {
        let store = Store::memory().await.unwrap();
        let at = clock();
        {
            let (mut monitor, _) = FeedMonitor::start(
                report_feed(PARTITIONED),
                store.clone(),
                Arc::new(Metrics::new()),
                10,
                Duration::ZERO,
            )
            .await
            .unwrap();
            monitor
                .observe(vec![obs_in("a", at(1), Some("s1"))], at(1))
                .await;
            monitor
                .observe(vec![obs_in("b", at(100), Some("s2"))], at(100))
                .await;
            monitor.tick(at(302)).await;
        }
        let gaps = store.gaps(&GapFilter::default()).await.unwrap();
        assert_eq!(
            gaps.iter()
                .map(|g| g.partition.as_str())
                .collect::<Vec<_>>(),
            vec!["s1"]
        );
        // Restarted much later: s1's gap is still open, s2's silence through
        // the downtime is seen at once; s3 never delivered and opens nothing.
        let metrics = Arc::new(Metrics::new());
        let (mut monitor, handle) = FeedMonitor::start(
            report_feed(PARTITIONED),
            store.clone(),
            metrics.clone(),
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        monitor.tick(at(1000)).await;
        let gaps = store.gaps(&GapFilter::default()).await.unwrap();
        let parts: Vec<_> = gaps
            .iter()
            .map(|g| (g.partition.as_str(), g.state, g.detected_at))
            .collect();
        assert_eq!(
            parts,
            vec![
                ("s2", crate::store::GapState::Open, at(1000)),
                ("s1", crate::store::GapState::Open, at(302)),
            ]
        );
        let p = handle.status.borrow().partitions.unwrap();
        assert_eq!((p.silent, p.fresh, p.unseen), (2, 0, 1));
        monitor.publish(at(1000));
        let p = handle.current().partitions.unwrap();
        assert!(p.oldest_freshness_seconds.unwrap() > 3000.0, "{p:?}");
        // A partition dropped from the config: its open gap is closed.
        let (mut monitor, _) = FeedMonitor::start(
            report_feed("[feeds.partitions]\nkey = \"/store\"\nvalues = [\"s2\", \"s3\"]\n"),
            store.clone(),
            metrics,
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        monitor.tick(at(1001)).await;
        let s1 = store
            .gaps(&GapFilter {
                partition: Some("s1".into()),
                ..GapFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(s1[0].state, crate::store::GapState::Closed);
        let left: Vec<_> = store
            .partition_states("orders", None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.partition)
            .collect();
        assert_eq!(left, vec!["s2", "s3"]);
    }

    #[tokio::test]
    async fn a_listing_adds_and_retires_partitions_and_live_records_add_them_too() {
        let listed = r#"
[feeds.backfill]
  [feeds.backfill.source]
  url = "http://127.0.0.1:1/v1/stores/{partition}/events"
  query = { since = "{start}", until = "{end}" }
  record_time = "/t"
  [feeds.backfill.sink]
  type = "file"
  path = "/tmp/gapwatch-feed-listing-test.ndjson"
[feeds.partitions]
key = "/store"
from = { url = "http://127.0.0.1:1/v1/stores" }
"#;
        let store = Store::memory().await.unwrap();
        let metrics = Arc::new(Metrics::new());
        let (mut monitor, handle) = FeedMonitor::start(
            report_feed(listed),
            store.clone(),
            metrics,
            10,
            Duration::ZERO,
        )
        .await
        .unwrap();
        let at = clock();
        let list = |names: &[&str]| {
            handle.listing.send_replace(Some(Arc::new(
                names.iter().map(|s| s.to_string()).collect(),
            )));
        };
        list(&["a", "b"]);
        monitor.tick(at(0)).await;
        assert_eq!(*handle.partitions.borrow().clone(), vec!["a", "b"]);
        // A live record of a partition not listed yet watches it at once.
        let batch = vec![
            obs_in("a1", at(1), Some("a")),
            obs_in("b1", at(1), Some("b")),
            obs_in("c1", at(1), Some("c")),
        ];
        monitor.observe(batch, at(1)).await;
        monitor
            .observe(vec![obs_in("a2", at(200), Some("a"))], at(200))
            .await;
        monitor.tick(at(302)).await;
        let open: Vec<_> = store
            .gaps(&GapFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.partition)
            .collect();
        assert_eq!(open, vec!["c", "b"]);
        assert_eq!(*handle.partitions.borrow().clone(), vec!["a", "b", "c"]);
        // Not listed, but heard from since the last listing: kept for now.
        list(&["a", "d"]);
        monitor.tick(at(303)).await;
        assert_eq!(
            *handle.partitions.borrow().clone(),
            vec!["a", "b", "c", "d"]
        );
        // Not listed twice and silent since: retired, their open gaps closed.
        monitor
            .observe(vec![obs_in("a3", at(304), Some("a"))], at(304))
            .await;
        list(&["a"]);
        monitor.tick(at(305)).await;
        assert_eq!(*handle.partitions.borrow().clone(), vec!["a"]);
        let gaps = store.gaps(&GapFilter::default()).await.unwrap();
        assert!(
            gaps.iter()
                .all(|g| g.state == crate::store::GapState::Closed && g.end == Some(at(305))),
            "{gaps:?}"
        );
        let left: Vec<_> = store
            .partition_states("orders", None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.partition)
            .collect();
        assert_eq!(left, vec!["a"]);
    }

    /// Two replicas on one Postgres: the holder of the lease decides a
    /// partition's gap, the other follows it from the store (and adds the
    /// ids it relayed to the gap's edge); once it holds the lease, it closes
    /// the gap it adopted.
    #[tokio::test]
    async fn replicas_follow_the_holders_partition_gaps_through_postgres() {
        let url = crate::store::tests::pg_cluster::shared_cluster().new_database();
        let store_a = Store::postgres(&url).await.unwrap();
        let store_b = Store::postgres(&url).await.unwrap();
        let start = |store: Store| {
            FeedMonitor::start(
                report_feed(PARTITIONED),
                store,
                Arc::new(Metrics::new()),
                10,
                Duration::ZERO,
            )
        };
        let (a, _) = start(store_a.clone()).await.unwrap();
        let (b, hb) = start(store_b.clone()).await.unwrap();
        let mut a = a.with_lease(watch::channel(LeaseView::held()).1);
        let mut elsewhere = LeaseView::default();
        elsewhere.holder = Some("a".into());
        let (lease_b, rx) = watch::channel(elsewhere);
        let mut b = b.with_lease(rx);
        let at = clock();
        // Both relay part of the feed.
        let batch: Vec<_> = ["s1", "s2", "s3"]
            .iter()
            .map(|p| obs_in(&format!("a-{p}"), at(1), Some(p)))
            .collect();
        a.observe(batch, at(1)).await;
        b.observe(vec![obs_in("b-s3", at(1), Some("s3"))], at(1))
            .await;
        a.tick(at(2)).await;
        b.tick(at(2)).await;
        tokio::time::sleep(SYNC_EVERY).await;
        // Only a hears from s1 and s2 later; b learns it from the store.
        let batch = vec![
            obs_in("a-s1-2", at(200), Some("s1")),
            obs_in("a-s2-2", at(200), Some("s2")),
        ];
        a.observe(batch, at(200)).await;
        a.tick(at(302)).await;
        b.tick(at(302)).await;
        let gaps = store_a.gaps(&GapFilter::default()).await.unwrap();
        let parts: Vec<_> = gaps.iter().map(|g| g.partition.as_str()).collect();
        assert_eq!(
            parts,
            vec!["s3"],
            "only the holder decides, and only s3 is silent"
        );
        let known = store_a
            .known_ids("orders", &["a-s3", "b-s3"])
            .await
            .unwrap();
        assert_eq!(
            known.len(),
            2,
            "both replicas' ids are the gap's edge: {known:?}"
        );
        b.publish(at(302));
        let p = hb.status.borrow().partitions.unwrap();
        assert_eq!((p.silent, p.fresh), (1, 2), "b follows the holder");

        // The lease moves to b; s3 resumes there: b closes the gap it adopted.
        lease_b.send_replace(LeaseView::held());
        tokio::time::sleep(SYNC_EVERY).await;
        b.observe(vec![obs_in("b-s3-2", at(400), Some("s3"))], at(400))
            .await;
        b.tick(at(400)).await;
        let gaps = store_b.gaps(&GapFilter::default()).await.unwrap();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].end, Some(at(400)));
        let p = hb.status.borrow().partitions.unwrap();
        assert_eq!(p.silent, 0);
    }
}
