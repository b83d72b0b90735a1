//! Durable state: feeds' newest event, gaps, fill chunks with their page
//! checkpoints, and the record ids that must not be delivered twice.
//!
//! Two backends behind one [`Store`]: SQLite (one replica, the embedded
//! default; schema in `migrations/`) and Postgres (any number of replicas;
//! schema in `migrations/postgres/`). Both are applied on open, and the one test
//! suite (`tests.rs`) runs against each.

mod postgres;
mod sql;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::config::StateUrl;
use crate::detector::DetectorState;
use crate::internal_events::StateWriteFailed;
use crate::metrics::{Metrics, WriteFailure};
use postgres::PgStore;
use sqlite::SqliteStore;

/// The state store. Cheap to clone (a pool handle).
#[derive(Clone)]
pub(crate) struct Store {
    backend: Backend,
    /// Set for a daemon replica: its leases, which fence its checkpoint
    /// commits and chunk claims. None (a one-off CLI run) commits unfenced.
    fence: Option<Arc<Fence>>,
    /// How the latest writes went, shared by every clone.
    writes: Arc<Writes>,
}

/// The outcome of the store's writes: whether the disk is full now (reads
/// still work then, so a ping says nothing about it) and a counter of failures.
#[derive(Default)]
struct Writes {
    /// Set by a write that failed for a full disk (the error, when), cleared
    /// by one that succeeds [`FULL_CLEARS_AFTER`] after the last such failure:
    /// on a full disk some small writes still fit in pages the database has
    /// already, and one of them says nothing about the next.
    disk_full: Mutex<Option<(String, std::time::Instant)>>,
    /// Where failed writes are counted (the daemon's metrics).
    metrics: Mutex<Option<Arc<Metrics>>>,
}

/// See [`Writes::disk_full`]: longer than a feed monitor's longest pause
/// between two tries of a failing store, so its next failure comes first.
const FULL_CLEARS_AFTER: Duration = Duration::from_secs(20);

impl Writes {
    fn record<T>(&self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => {
                let mut full = self.disk_full.lock().unwrap_or_else(|e| e.into_inner());
                if full
                    .as_ref()
                    .is_some_and(|(_, at)| at.elapsed() >= FULL_CLEARS_AFTER)
                {
                    *full = None;
                    tracing::info!("state store writable again");
                }
            }
            Err(e) => {
                let reason = e.write_failure();
                let Some(reason) = reason else { return };
                if let Some(m) = &*self.metrics.lock().unwrap_or_else(|e| e.into_inner()) {
                    m.emit(StateWriteFailed { reason });
                }
                if reason == WriteFailure::DiskFull {
                    let mut full = self.disk_full.lock().unwrap_or_else(|e| e.into_inner());
                    if full
                        .replace((e.to_string(), std::time::Instant::now()))
                        .is_none()
                    {
                        tracing::error!(error = %e, "state store disk is full: ids and gap events wait in memory until space returns");
                    }
                }
            }
        }
    }
}

/// This replica's name and the fencing token of each feed lease it holds.
struct Fence {
    replica: String,
    tokens: Mutex<HashMap<String, i64>>,
}

impl Fence {
    fn token(&self, feed: &str) -> Option<i64> {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(feed)
            .copied()
    }

    fn set(&self, feed: &str, token: Option<i64>) {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        match token {
            Some(token) => t.insert(feed.to_string(), token),
            None => t.remove(feed),
        };
    }
}

/// Who holds a feed's lease, as the database saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseInfo {
    pub(crate) holder: String,
    pub(crate) token: i64,
    /// Whether the holder is this replica.
    pub(crate) mine: bool,
}

/// How long a feed lease lasts unless renewed (database time).
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);
/// How long a chunk claim lasts after its last checkpoint: as long as a
/// lease, so a dead replica's chunk is resumed about when its feed is taken.
pub(crate) const CLAIM: Duration = LEASE_TTL;

/// A fencing token to check: (replica, token). None: unfenced.
pub(crate) type FenceArg<'a> = Option<(&'a str, i64)>;

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend the store is.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),* $(,)?)) => {
        match &$self.backend {
            Backend::Sqlite(s) => s.$method($($arg),*).await,
            Backend::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

/// [`dispatch!`] for a method that writes: its outcome says whether the
/// store can be written ([`Store::disk_full`]) and failures are counted.
macro_rules! dispatch_write {
    ($self:ident.$method:ident($($arg:expr),* $(,)?)) => {{
        let result = dispatch!($self.$method($($arg),*));
        $self.writes.record(&result);
        result
    }};
}

impl Store {
    /// Opens the store `url` names (creating and migrating it as needed).
    pub(crate) async fn connect(url: &StateUrl) -> Result<Store, StoreError> {
        match url {
            StateUrl::Sqlite(path) => Self::open(path).await,
            StateUrl::Postgres(url) => Self::postgres(url.expose()).await,
        }
    }

    /// Opens (creating if needed) a SQLite database file and applies migrations.
    pub(crate) async fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::open(path).await?),
            fence: None,
            writes: Arc::default(),
        })
    }

    /// A private in-memory SQLite database, for tests.
    #[cfg(test)]
    pub(crate) async fn memory() -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Sqlite(SqliteStore::memory().await?),
            fence: None,
            writes: Arc::default(),
        })
    }

    /// Connects to a Postgres database and applies migrations.
    pub(crate) async fn postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Postgres(PgStore::connect(url).await?),
            fence: None,
            writes: Arc::default(),
        })
    }

    /// The store as used by the daemon replica `replica`: checkpoint commits
    /// and chunk claims then need a lease of that replica, taken with
    /// [`Store::acquire_lease`].
    pub(crate) fn for_replica(mut self, replica: &str) -> Store {
        self.fence = Some(Arc::new(Fence {
            replica: replica.to_string(),
            tokens: Mutex::new(HashMap::new()),
        }));
        self
    }

    /// Counts failed writes in `gapwatch_state_write_failures_total`.
    pub(crate) fn count_write_failures(self, metrics: Arc<Metrics>) -> Store {
        metrics.init_state_writes();
        *self
            .writes
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(metrics);
        self
    }

    /// Why the store cannot be written now, if its latest write failed for
    /// a full disk (reads still work; `/readyz` says so).
    pub(crate) fn disk_full(&self) -> Option<String> {
        self.writes
            .disk_full
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(e, _)| e.clone())
    }

    /// Whether several replicas may share this store (Postgres). A SQLite
    /// file has one writer: its leases are always held.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    fn fence_for(&self, feed: &str) -> Result<FenceArg<'_>, StoreError> {
        match &self.fence {
            None => Ok(None),
            Some(f) => match f.token(feed) {
                Some(token) => Ok(Some((f.replica.as_str(), token))),
                None => Err(StoreError::Fenced(feed.to_string())),
            },
        }
    }

    // === leases ===

    /// Takes or renews this replica's lease of `feed` for `ttl` (database
    /// time), unless another replica holds an unexpired one. A new holder gets
    /// a greater fencing token. Returns the holder either way.
    pub(crate) async fn acquire_lease(
        &self,
        feed: &str,
        ttl: Duration,
    ) -> Result<LeaseInfo, StoreError> {
        let Some(fence) = &self.fence else {
            return Err(StoreError::Fenced(feed.to_string()));
        };
        let result = match &self.backend {
            Backend::Sqlite(_) => Ok(LeaseInfo {
                holder: fence.replica.clone(),
                token: 1,
                mine: true,
            }),
            Backend::Postgres(s) => s.acquire_lease(feed, &fence.replica, ttl).await,
        };
        if let Ok(lease) = &result {
            fence.set(feed, lease.mine.then_some(lease.token));
        }
        result
    }

    /// Forgets this replica's lease of `feed` locally: it lapsed (the database
    /// could not renew it in time), so nothing may be committed under it.
    pub(crate) fn lapse_lease(&self, feed: &str) {
        if let Some(f) = &self.fence {
            f.set(feed, None);
        }
    }

    /// Claims up to `limit` chunks of a gap that are due at `now` (pending,
    /// or running under a lapsed claim) and marks them running for this
    /// replica for `claim` (database time; each checkpoint renews it);
    /// concurrent claimers skip each other's rows.
    pub(crate) async fn claim_chunks(
        &self,
        feed: &str,
        gap_id: i64,
        now: DateTime<Utc>,
        claim: Duration,
        limit: usize,
    ) -> Result<Vec<Chunk>, StoreError> {
        let fence = self.fence_for(feed)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let result = match &self.backend {
            Backend::Sqlite(s) => s.claim_chunks(gap_id, now, limit).await,
            Backend::Postgres(s) => s.claim_chunks(feed, gap_id, now, claim, limit, fence).await,
        };
        self.writes.record(&result);
        result
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    pub(crate) async fn close(&self) {
        dispatch!(self.close())
    }

    // === feeds ===

    /// The detector state saved for a feed (nothing yet: default).
    pub(crate) async fn detector_state(&self, feed: &str) -> Result<DetectorState, StoreError> {
        dispatch!(self.detector_state(feed))
    }

    /// Records the newest event time (never moves it backwards).
    pub(crate) async fn save_last_event(
        &self,
        feed: &str,
        last_event: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch_write!(self.save_last_event(feed, last_event, now))
    }

    /// Overwrites the newest event time, also downwards: only for repairing a
    /// value that cannot be true (an event time in the future).
    pub(crate) async fn repair_last_event(
        &self,
        feed: &str,
        last_event: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch_write!(self.repair_last_event(feed, last_event, now))
    }

    // === partitions ===

    /// Records the partitions a feed watches and the newest event time of
    /// each (`None`: watched, nothing seen yet). Never moves a time backwards.
    pub(crate) async fn save_partitions(
        &self,
        feed: &str,
        rows: &[(&str, Option<DateTime<Utc>>)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        dispatch_write!(self.save_partitions(feed, rows, now))
    }

    /// Forgets partitions the feed no longer watches; returns how many were known.
    pub(crate) async fn forget_partitions(
        &self,
        feed: &str,
        parts: &[&str],
    ) -> Result<u64, StoreError> {
        dispatch_write!(self.forget_partitions(feed, parts))
    }

    /// The stored state of a partitioned feed's partitions: every one
    /// (`since` None), or those whose newest event or detected gap changed at
    /// or after `since` (written by any replica).
    pub(crate) async fn partition_states(
        &self,
        feed: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<PartitionState>, StoreError> {
        dispatch!(self.partition_states(feed, since))
    }

    /// One page of a feed's partitions in name order, after `after`, of one
    /// state (`silent`: an open gap, `fresh`, `unseen`: no event yet) or all;
    /// with the count of each state over the whole feed.
    pub(crate) async fn partitions_page(
        &self,
        feed: &str,
        state: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<PartitionsPage, StoreError> {
        dispatch!(self.partitions_page(feed, state, after, limit))
    }

    // === gaps ===

    /// Opens a detected gap of a partition (`""`: the whole feed) starting at
    /// `start`; returns its id. If the partition already has an open gap (a
    /// restart raced the detector), returns that one.
    pub(crate) async fn open_gap(
        &self,
        feed: &str,
        partition: &str,
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
        fill: FillState,
    ) -> Result<i64, StoreError> {
        dispatch_write!(self.open_gap(feed, partition, start, detected_at, fill))
    }

    /// Closes the partition's open gap at `end`; returns its id (None: no open gap).
    pub(crate) async fn close_gap(
        &self,
        feed: &str,
        partition: &str,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        dispatch_write!(self.close_gap(feed, partition, end, now))
    }

    /// A closed gap created by hand (`backfill`), to be filled over `[from, to)`
    /// for one partition, or for all of them (and unpartitioned feeds) with `""`.
    /// `owner` is who fills it: `daemon`, or `cli` for a `gapwatch backfill` run.
    pub(crate) async fn manual_gap(
        &self,
        feed: &str,
        partition: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        dispatch_write!(self.manual_gap(feed, partition, from, to, owner, now))
    }

    pub(crate) async fn set_fill(
        &self,
        gap_id: i64,
        fill: FillState,
        error: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        // Served by an unauthenticated GET: no query values, no vendor bodies.
        let error = error.map(crate::redact::text);
        let error = error.as_deref();
        dispatch_write!(self.set_fill(gap_id, fill, error, now))
    }

    /// Puts a failed or ignored gap back to work: failed chunks become pending.
    pub(crate) async fn retry_gap(
        &self,
        gap_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        dispatch_write!(self.retry_gap(gap_id, now))
    }

    pub(crate) async fn gap(&self, id: i64) -> Result<Option<Gap>, StoreError> {
        dispatch!(self.gap(id))
    }

    /// Gaps, newest first (audit windows are not gaps and are left out).
    pub(crate) async fn gaps(&self, filter: &GapFilter) -> Result<Vec<Gap>, StoreError> {
        dispatch!(self.gaps(filter))
    }

    /// Gaps of `owner` whose fill still has work (pending or running), oldest first.
    pub(crate) async fn gaps_to_fill(
        &self,
        feed: &str,
        owner: &str,
    ) -> Result<Vec<Gap>, StoreError> {
        dispatch!(self.gaps_to_fill(feed, owner))
    }

    // === chunks ===

    /// Appends chunks to a gap's plan (indexes continue after the last one):
    /// each window once per partition in `partitions`, in that order (once
    /// for `""` when it is empty).
    pub(crate) async fn add_chunks(
        &self,
        gap_id: i64,
        windows: &[(DateTime<Utc>, DateTime<Utc>)],
        partitions: &[&str],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch_write!(self.add_chunks(gap_id, windows, partitions, now))
    }

    pub(crate) async fn chunks(&self, gap_id: i64) -> Result<Vec<Chunk>, StoreError> {
        dispatch!(self.chunks(gap_id))
    }

    /// Chunks left `running` by a crash go back to `pending`; their checkpoint
    /// stays, so they resume at the page after the last one delivered.
    pub(crate) async fn reset_running(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        dispatch_write!(self.reset_running(feed, now))
    }

    /// The checkpoint of one delivered page, in one transaction: the ids it
    /// delivered, its counts, and where the chunk goes next.
    pub(crate) async fn commit_page(
        &self,
        feed: &str,
        chunk_id: i64,
        gap_id: i64,
        page: PageCommit<'_>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let fence = self.fence_for(feed)?;
        dispatch_write!(self.commit_page(feed, chunk_id, gap_id, page, now, fence))
    }

    /// The committed length of a feed's file sink output, if it wrote to `path`.
    pub(crate) async fn sink_offset(
        &self,
        feed: &str,
        path: &str,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(self.sink_offset(feed, path))
    }

    /// Seconds of the feed's gaps not recovered yet: gaps still to fill (or
    /// without backfill) minus what their finished chunks cover; audit windows apart.
    pub(crate) async fn unfilled_seconds(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<f64, StoreError> {
        dispatch!(self.unfilled_seconds(feed, now))
    }

    /// A chunk attempt failed; it is retried at `next_attempt` unless `give_up`.
    pub(crate) async fn fail_chunk(
        &self,
        chunk_id: i64,
        error: &str,
        next_attempt: DateTime<Utc>,
        give_up: bool,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let error = crate::redact::text(error);
        let error = error.as_str();
        dispatch_write!(self.fail_chunk(chunk_id, error, next_attempt, give_up, now))
    }

    /// Chunk counts by state over the feed's gaps that are still being filled
    /// (audit windows apart: a failed one shows in the audit's metrics).
    pub(crate) async fn chunk_states(
        &self,
        feed: &str,
    ) -> Result<Vec<(ChunkState, i64)>, StoreError> {
        dispatch!(self.chunk_states(feed))
    }

    // === record ids ===

    /// Remembers ids seen live near a gap edge (kept for dedupe).
    pub(crate) async fn remember_live(
        &self,
        feed: &str,
        gap_id: Option<i64>,
        ids: &[(String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        dispatch_write!(self.remember_live(feed, gap_id, ids))
    }

    /// Which of `ids` gapwatch already knows (seen live near an edge, or delivered).
    pub(crate) async fn known_ids(
        &self,
        feed: &str,
        ids: &[&str],
    ) -> Result<HashSet<String>, StoreError> {
        dispatch!(self.known_ids(feed, ids))
    }

    #[cfg(test)]
    pub(crate) async fn count_ids(&self, feed: &str, origin: &str) -> Result<i64, StoreError> {
        dispatch!(self.count_ids(feed, origin))
    }

    // === ledger and audit ===

    /// Adds ids that reached the destination to the ledger, in one
    /// transaction (an id already there keeps its first origin).
    pub(crate) async fn ledger_add(
        &self,
        feed: &str,
        origin: Origin,
        ids: &[(String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        dispatch_write!(self.ledger_add(feed, origin, ids))
    }

    /// Forgets the feed's ids with an event time before `before`; returns how many.
    pub(crate) async fn prune_ledger(
        &self,
        feed: &str,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        dispatch_write!(self.prune_ledger(feed, before))
    }

    /// How many ids the ledger holds for the feed.
    pub(crate) async fn ledger_size(&self, feed: &str) -> Result<i64, StoreError> {
        dispatch!(self.ledger_size(feed))
    }

    /// The feed's audit state; the first call starts it at `now` (the ledger
    /// is complete from then on, so nothing older is ever audited).
    pub(crate) async fn audit_state(
        &self,
        feed: &str,
        now: DateTime<Utc>,
    ) -> Result<AuditState, StoreError> {
        dispatch_write!(self.audit_state(feed, now))
    }

    /// The feed's audit watermark, if any window was verified yet.
    pub(crate) async fn verified_until(
        &self,
        feed: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        dispatch!(self.verified_until(feed))
    }

    // === shape check ===

    /// Adds a feed's sampled live messages (an id already there keeps its
    /// row) and keeps the newest `keep` of every replica's.
    pub(crate) async fn save_shape_sample(
        &self,
        feed: &str,
        messages: &[crate::shape::LiveMessage],
        keep: usize,
    ) -> Result<(), StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        dispatch_write!(self.save_shape_sample(feed, messages, keep))
    }

    /// The feed's sampled live messages, oldest first.
    pub(crate) async fn shape_sample(
        &self,
        feed: &str,
    ) -> Result<Vec<crate::shape::LiveMessage>, StoreError> {
        dispatch!(self.shape_sample(feed))
    }

    /// Keeps the feed's last shape check (values arrive redacted).
    pub(crate) async fn save_shape_check(
        &self,
        feed: &str,
        status: &crate::shape::ShapeStatus,
    ) -> Result<(), StoreError> {
        dispatch_write!(self.save_shape_check(feed, status))
    }

    pub(crate) async fn shape_check(
        &self,
        feed: &str,
    ) -> Result<Option<crate::shape::ShapeStatus>, StoreError> {
        dispatch!(self.shape_check(feed))
    }

    /// Moves the audit watermark forward to `until` (never backwards).
    pub(crate) async fn set_verified_until(
        &self,
        feed: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        dispatch_write!(self.set_verified_until(feed, until, now))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("state store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state store: cannot create directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("state store: corrupt row: {0}")]
    Corrupt(String),
    /// This replica does not hold the feed's lease (any more): what it was
    /// about to commit is refused; the holder redoes it from the checkpoint.
    #[error("feed {0}: lease not held by this replica; commit refused")]
    Fenced(String),
}

impl StoreError {
    /// How a failed write is counted (None: not a failure of the store, such
    /// as a lost lease refusing a commit).
    fn write_failure(&self) -> Option<WriteFailure> {
        match self {
            StoreError::Fenced(_) | StoreError::Corrupt(_) => None,
            StoreError::Db(e) if is_disk_full(e) => Some(WriteFailure::DiskFull),
            _ => Some(WriteFailure::Error),
        }
    }
}

/// SQLite's `SQLITE_FULL` (13, "database or disk is full"), Postgres'
/// `disk_full` (53100), or `ENOSPC` from the file system.
fn is_disk_full(e: &sqlx::Error) -> bool {
    const ENOSPC: i32 = 28;
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // The primary code is the low byte of an extended one.
                code.parse::<i32>().is_ok_and(|c| c & 0xff == 13)
            } else {
                code == "53100"
            }
        }
        sqlx::Error::Io(io) => io.raw_os_error() == Some(ENOSPC),
        _ => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GapKind {
    Detected,
    Manual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GapState {
    Open,
    Closed,
}

/// Where a gap's recovery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FillState {
    /// The feed has no backfill configured.
    None,
    Pending,
    Running,
    Done,
    Failed,
    Ignored,
}

/// Where one chunk of a fill stands. Stored as text (`pending`, `running`,
/// `done`, `failed`); the spelling is also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChunkState {
    /// Waiting for its turn (or for its retry time).
    Pending,
    /// Claimed by a filler, fetching page by page.
    Running,
    /// Every page delivered.
    Done,
    /// Gave up: the gap's fill fails with the chunk's error.
    Failed,
}

impl ChunkState {
    pub(crate) const ALL: &'static [ChunkState] = &[
        ChunkState::Pending,
        ChunkState::Running,
        ChunkState::Done,
        ChunkState::Failed,
    ];

    fn from_row(s: &str) -> Result<ChunkState, StoreError> {
        ChunkState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("chunk state {s}")))
    }
}

impl std::fmt::Display for ChunkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! str_enum {
    ($t:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),+ }
            }
            pub(crate) fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($t::$v),)+ _ => None }
            }
        }
    };
}
str_enum!(GapKind { Detected => "detected", Manual => "manual" });
str_enum!(GapState { Open => "open", Closed => "closed" });
str_enum!(ChunkState {
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
});
str_enum!(FillState {
    None => "none",
    Pending => "pending",
    Running => "running",
    Done => "done",
    Failed => "failed",
    Ignored => "ignored",
});

/// A gap with the progress of its fill.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Gap {
    pub(crate) id: i64,
    pub(crate) feed: String,
    /// The silent partition of a detected gap; `""`: the whole feed (an
    /// unpartitioned feed, or a manual fill of every partition).
    pub(crate) partition: String,
    pub(crate) kind: GapKind,
    pub(crate) state: GapState,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: Option<DateTime<Utc>>,
    pub(crate) detected_at: DateTime<Utc>,
    pub(crate) closed_at: Option<DateTime<Utc>>,
    pub(crate) fill: FillState,
    pub(crate) last_error: Option<String>,
    pub(crate) progress: Progress,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Progress {
    pub(crate) chunks_total: i64,
    pub(crate) chunks_done: i64,
    pub(crate) chunks_failed: i64,
    pub(crate) pages: i64,
    pub(crate) records_delivered: i64,
    pub(crate) records_duplicate: i64,
    pub(crate) records_rejected: i64,
    /// Records a page carried outside its chunk's window (not delivered by
    /// that chunk: the neighbouring window's query covers them).
    pub(crate) records_out_of_window: i64,
}

/// One chunk of a fill: the half-open window `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) id: i64,
    pub(crate) gap_id: i64,
    pub(crate) idx: i64,
    /// The partition the chunk asks the source for (`""`: unpartitioned).
    pub(crate) partition: String,
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
    pub(crate) state: ChunkState,
    /// The serialized page cursor to resume from (None: first page).
    pub(crate) cursor: Option<String>,
    pub(crate) attempts: i64,
    pub(crate) next_attempt: DateTime<Utc>,
    pub(crate) last_error: Option<String>,
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub(crate) struct GapFilter {
    pub(crate) feed: Option<String>,
    /// A gap state (`open`, `closed`) or a fill state (`running`, `failed`, …).
    pub(crate) state: Option<String>,
    /// Only the gaps of this partition (`""`: those of the whole feed).
    pub(crate) partition: Option<String>,
    pub(crate) limit: Option<i64>,
}

/// Counts of one delivered page, committed with its checkpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PageCounts {
    pub(crate) delivered: i64,
    pub(crate) duplicate: i64,
    pub(crate) rejected: i64,
    pub(crate) out_of_window: i64,
}

/// Where a chunk's paging goes after a page was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checkpoint<'a> {
    /// The next page starts at this serialized cursor.
    Next(&'a str),
    /// That was the chunk's last page.
    Done,
    /// The page could not be finished (the sink failed part-way): what was
    /// delivered counts and is never sent again, the cursor stays.
    Stay,
}

/// One page's outcome, committed with its checkpoint in one transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageCommit<'a> {
    pub(crate) delivered: &'a [(String, DateTime<Utc>)],
    pub(crate) counts: PageCounts,
    pub(crate) checkpoint: Checkpoint<'a>,
    /// File sinks: the output file's length once this page is in it.
    pub(crate) sink_offset: Option<(&'a str, u64)>,
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A partition's state in the store, as [`Store::partition_states`] reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartitionState {
    pub(crate) partition: String,
    /// The newest event time any replica saved (None: none, or not read).
    pub(crate) last_event: Option<DateTime<Utc>>,
    /// Its open detected gap: (id, start).
    pub(crate) open_gap: Option<(i64, DateTime<Utc>)>,
}

impl PartitionState {
    pub(crate) fn new(partition: String) -> Self {
        PartitionState {
            partition,
            ..PartitionState::default()
        }
    }
}

/// One row of `GET /api/v1/feeds/{feed}/partitions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PartitionRow {
    pub(crate) partition: String,
    pub(crate) last_event: Option<DateTime<Utc>>,
    /// (id, start)
    pub(crate) open_gap: Option<(i64, DateTime<Utc>)>,
}

/// A page of a feed's partitions and the count of each state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartitionsPage {
    pub(crate) silent: i64,
    pub(crate) fresh: i64,
    pub(crate) unseen: i64,
    pub(crate) partitions: Vec<PartitionRow>,
}

/// How an id got into the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Forwarded by the relay.
    Relayed,
    /// Reported by the app (`report` mode).
    Reported,
}

impl Origin {
    // Written to the ledger, never read back: no `parse`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Relayed => "relayed",
            Origin::Reported => "reported",
        }
    }
}

/// Where a feed's audit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AuditState {
    /// Since when the ledger is complete: the audit never looks before it.
    pub(crate) started: DateTime<Utc>,
    /// Every record older than this is proven delivered (None: nothing yet).
    pub(crate) verified_until: Option<DateTime<Utc>>,
}

#[cfg(test)]
pub(crate) mod tests;
