//! The filler of one feed: plans chunks for its gaps, fetches them page by page
//! under the source's rate limit, drops records already seen or delivered,
//! sends the rest to the sink, and checkpoints after every delivered page.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::pagination::PageCursor;
use super::plan::{self, Window};
use super::render::{Rendered, Renderer};
use super::sink::{Sink, SinkError};
use super::source::{Page, Record, Source, SourceError};
use crate::audit::ledger::Unwritten;
use crate::config::{BackfillConfig, FeedConfig};
use crate::internal_events::{
    ChunkStatesMeasured, FillChunkDone, FillChunkFailed, FillFailed, FillFinished, FillPlanned,
    FillRecords, InputRejected, RecordRenderFailed,
};
use crate::lease::LeaseView;
use crate::metrics::{ChunkState, InputSource, Metrics, Rejection};
use crate::retry::{RetryPolicy, Retryable};
use crate::store::{
    Checkpoint, Chunk, FillState, Gap, GapKind, GapState, PageCommit, PageCounts, Store,
    StoreError, CLAIM,
};

/// How often a feed's gaps are looked at when nothing is due and nothing woke
/// the filler (a gap added by another process, say).
const IDLE_PASS: Duration = Duration::from_secs(60);
/// After a pass that failed (the store), the next try.
const PASS_RETRY: Duration = Duration::from_secs(5);
/// A chunk still due right after a pass (it could not start) is tried again after this.
const DUE_RETRY: Duration = Duration::from_secs(1);

/// With several replicas, each one stores the ids it relayed just before a
/// gap's start within a sync of the gap being stored; a fill started earlier
/// would re-send those of them the overlap covers.
const EDGE_WAIT: Duration = crate::feed::SYNC_EVERY.saturating_mul(3);

/// Chunks of a gap planned but not finished at most: a month-long gap is
/// planned this many windows ahead, not all at once.
const PLAN_AHEAD: usize = 64;

/// Chunks still to run or running (failed ones count: they hold the gap).
fn unfinished(chunks: &[Chunk]) -> usize {
    chunks
        .iter()
        .filter(|c| c.state != ChunkState::Done)
        .count()
}

/// How many more windows may be planned, each a chunk per partition in
/// `per_window`: up to [`PLAN_AHEAD`] chunks unfinished, but always one
/// window when none is (a feed of thousands of partitions fills a whole
/// window of them at a time).
fn windows_room(unfinished: usize, per_window: usize) -> usize {
    let per_window = per_window.max(1);
    if unfinished == 0 {
        return (PLAN_AHEAD / per_window).max(1);
    }
    PLAN_AHEAD.saturating_sub(unfinished) / per_window
}

/// Why a chunk attempt failed. The chunk is tried again later (with the one
/// jittered backoff of [`retry`](crate::retry)) while the error is retryable
/// and `max_chunk_attempts` allows; otherwise its gap fails with this reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("more than {max} pages in one chunk: lower backfill.chunk or raise source.max_pages_per_chunk")]
    TooManyPages { max: u64 },
}

impl Retryable for ChunkError {
    fn is_retryable(&self) -> bool {
        match self {
            ChunkError::Source(e) => e.is_retryable(),
            ChunkError::Sink(e) => e.is_retryable(),
            // The database may be back; a lost lease is the new holder's.
            ChunkError::Store(e) => !matches!(e, StoreError::Fenced(_)),
            ChunkError::TooManyPages { .. } => false,
        }
    }
}

/// How paging through a chunk ended, short of an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FetchEnd {
    /// The last page is delivered and checkpointed.
    Done,
    /// Shutdown between pages: the checkpoint is where the next page starts.
    Cancelled,
}

/// The backoff between attempts of a failing chunk: up to 10 minutes.
fn chunk_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(5),
        cap: Duration::from_secs(600),
        max_retries: max_attempts.saturating_sub(1),
    }
}

/// What a pass did to a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GapOutcome {
    /// Work remains (open gap, chunks waiting for a retry).
    InProgress,
    Done,
    Failed(String),
}

/// What the render step left out of a page.
#[derive(Debug, Default, Clone, Copy)]
struct Shaped {
    filtered: u64,
    failed: i64,
}

pub(crate) struct Filler {
    feed: Arc<FeedConfig>,
    store: Store,
    metrics: Arc<Metrics>,
    source: Source,
    sink: Arc<Sink>,
    /// Whose gaps this filler takes (`daemon`, or `cli` for a one-off run).
    owner: String,
    /// The feed's lease: only its holder fills.
    lease: watch::Receiver<LeaseView>,
    /// Source record → the message a live consumer reads.
    renderer: Arc<Renderer>,
    /// Ids of the feed not in the store yet: known all the same.
    unwritten: Unwritten,
    /// Partitioned feeds: the partitions watched now; a gap of the whole
    /// feed (a manual fill, an audit window) asks each of them.
    partitions: Option<watch::Receiver<Arc<Vec<String>>>>,
    /// Taken from a page's dedupe to its commit: shared by the fills (their
    /// chunks' windows do not overlap), alone by the audit, whose windows
    /// overlap theirs. Without it an audit window and a fill over the same
    /// records (a gap saved late, after the store was away) both find them
    /// missing and both deliver them.
    turns: Arc<tokio::sync::RwLock<()>>,
}

impl Filler {
    pub(crate) fn new(
        feed: Arc<FeedConfig>,
        store: Store,
        metrics: Arc<Metrics>,
        source: Source,
        sink: Arc<Sink>,
        owner: &str,
    ) -> Self {
        Self {
            store,
            metrics,
            source,
            sink,
            owner: owner.to_string(),
            lease: watch::channel(LeaseView::held()).1,
            renderer: Arc::new(Renderer::new(&feed)),
            unwritten: Unwritten::default(),
            partitions: None,
            turns: Arc::default(),
            feed,
        }
    }

    /// The partitions a fill of the whole feed asks for (partitioned feeds).
    pub(crate) fn with_partitions(mut self, partitions: watch::Receiver<Arc<Vec<String>>>) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// [`Filler::with_partitions`] for a one-off run: a fixed list.
    pub(crate) fn with_partition_list(self, partitions: Vec<String>) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(partitions));
        self.with_partitions(rx)
    }

    /// The partitions each window of `gap` is asked for: the gap's own, or
    /// for a gap of the whole feed every partition watched (`[""]`: an
    /// unpartitioned feed). None: a partitioned feed whose partitions are not
    /// known yet (its listing has not come).
    fn chunk_partitions(&self, gap: &Gap) -> Option<Vec<String>> {
        if !gap.partition.is_empty() || !self.feed.is_partitioned() {
            return Some(vec![gap.partition.clone()]);
        }
        let list = self.partitions.as_ref()?.borrow().clone();
        (!list.is_empty()).then(|| list.to_vec())
    }

    /// The feed monitor's ids not written yet (see [`Unwritten`]).
    pub(crate) fn with_unwritten(mut self, unwritten: Unwritten) -> Self {
        self.unwritten = unwritten;
        self
    }

    /// Fills only while this replica holds the feed's lease.
    pub(crate) fn with_lease(mut self, lease: watch::Receiver<LeaseView>) -> Self {
        self.lease = lease;
        self
    }

    /// A filler of the same feed for another owner's gaps, sharing this one's
    /// source (so one rate limit covers both), sink and lease.
    pub(crate) fn sibling(&self, owner: &str) -> Self {
        Self {
            feed: self.feed.clone(),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            source: self.source.clone(),
            sink: self.sink.clone(),
            owner: owner.to_string(),
            lease: self.lease.clone(),
            renderer: self.renderer.clone(),
            unwritten: self.unwritten.clone(),
            partitions: self.partitions.clone(),
            turns: self.turns.clone(),
        }
    }

    /// The feed's source (its rate limit is shared by every clone).
    pub(crate) fn source(&self) -> &Source {
        &self.source
    }

    fn backfill(&self) -> &BackfillConfig {
        // A filler is only built for feeds with a backfill section.
        self.feed
            .backfill
            .as_ref()
            .expect("filler built for a feed with backfill")
    }

    /// The daemon loop: a pass on every wake-up (a gap opened or closed, a
    /// retry by hand) and whenever the next piece of work falls due (a chunk's
    /// retry, the next follow step, the instant a closed gap's last window is
    /// settled), so recovery ends as early as the settle delay allows.
    /// Runs in its feed's span (see [`crate::supervise`]).
    pub(crate) async fn run(&self, wakeup: Arc<Notify>, cancel: CancellationToken) {
        let feed = self.feed.name.clone();
        let mut lease = self.lease.clone();
        match self.store.reset_running(&feed, Utc::now()).await {
            Ok(n) if n > 0 => {
                tracing::info!(chunks = n, "resuming chunks interrupted by a restart")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot reset interrupted chunks"),
        }
        while !cancel.is_cancelled() {
            let wait = match self.pass(&cancel).await {
                Ok(Some(due)) => (due - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) => IDLE_PASS,
                Err(e) => {
                    tracing::error!(error = %e, "fill pass failed");
                    PASS_RETRY
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wakeup.notified() => {}
                // Taking the feed's lease starts work at once.
                _ = lease.changed() => {}
                _ = tokio::time::sleep(wait.min(IDLE_PASS)) => {}
            }
        }
        tracing::debug!("filler stopped");
    }

    /// One pass over every gap of the feed that still has work; returns when
    /// the next piece of work falls due (`None`: nothing is scheduled).
    pub(crate) async fn pass(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if !self.lease.borrow().is_mine() {
            // Another replica fills this feed; taking the lease wakes us.
            return Ok(None);
        }
        let gaps = self
            .store
            .gaps_to_fill(&self.feed.name, &self.owner)
            .await?;
        let mut due: Option<DateTime<Utc>> = None;
        for gap in gaps {
            if cancel.is_cancelled() {
                break;
            }
            if let Some(at) = self.edges_complete_at(&gap).filter(|at| *at > Utc::now()) {
                due = due.into_iter().chain([at]).min();
                continue;
            }
            if self.fill_gap(&gap, cancel).await? == GapOutcome::InProgress {
                let next = self.next_due(&gap, Utc::now()).await?;
                due = due.into_iter().chain(next).min();
            }
        }
        self.update_chunk_gauges().await;
        Ok(due)
    }

    /// With a shared store: when every replica has stored its ids next to a
    /// detected gap's start (None: nothing to wait for).
    fn edges_complete_at(&self, gap: &Gap) -> Option<DateTime<Utc>> {
        (self.store.is_shared() && gap.kind == GapKind::Detected)
            .then(|| gap.detected_at + chrono::Duration::from_std(EDGE_WAIT).unwrap_or_default())
    }

    /// When a gap still in progress has work again: its earliest chunk retry,
    /// or the instant more of its interval is settled enough to plan.
    async fn next_due(
        &self,
        gap: &Gap,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let b = self.backfill();
        let chunks = self.store.chunks(gap.id).await?;
        let soon = now + chrono::Duration::from_std(DUE_RETRY).unwrap_or_default();
        let claim_lapses = now + chrono::Duration::from_std(CLAIM / 2).unwrap_or_default();
        let retry = chunks
            .iter()
            .filter_map(|c| match c.state {
                ChunkState::Pending => Some(c.next_attempt.max(soon)),
                // Between passes none of ours runs: a replica that died holds
                // it, and its claim lapses within `CLAIM`.
                ChunkState::Running => Some(claim_lapses),
                _ => None,
            })
            .min();
        let overlap = match gap.kind {
            GapKind::Manual => Duration::ZERO,
            GapKind::Detected => b.overlap,
        };
        let covered_to = chunks.last().map_or_else(
            || gap.start - chrono::Duration::from_std(overlap).unwrap_or_default(),
            |c| c.end,
        );
        // No room to plan more: the next chunk to finish makes some.
        let per_window = self.chunk_partitions(gap).map_or(1, |p| p.len());
        let room = windows_room(unfinished(&chunks), per_window) > 0;
        let plan = room
            .then(|| {
                plan::next_plan_due(
                    gap.end,
                    overlap,
                    b.settle,
                    covered_to,
                    b.chunk,
                    b.follow_step,
                    b.source.time_resolution,
                )
            })
            .flatten();
        Ok(retry.into_iter().chain(plan).min())
    }

    /// The interval the gap's fill must cover now (None: nothing fetchable yet).
    pub(crate) fn target(&self, gap: &Gap, now: DateTime<Utc>) -> Option<Window> {
        let b = self.backfill();
        let overlap = match gap.kind {
            GapKind::Manual => Duration::ZERO,
            GapKind::Detected => b.overlap,
        };
        let res = b.source.time_resolution;
        plan::fill_target(gap.start, gap.end, overlap, b.settle, now, res)
    }

    /// Plans what is new, runs the chunks that are due, and settles the gap's
    /// fill state.
    #[tracing::instrument(name = "gap", skip_all, fields(gap_id = gap.id))]
    pub(crate) async fn fill_gap(
        &self,
        gap: &Gap,
        cancel: &CancellationToken,
    ) -> Result<GapOutcome, StoreError> {
        let b = self.backfill();
        let now = Utc::now();
        let feed = self.feed.name.as_str();
        let is_final = gap.state == GapState::Closed;
        let chunks = self.store.chunks(gap.id).await?;
        let target = self.target(gap, now);
        let partitions = self.chunk_partitions(gap);
        if partitions.is_none() {
            tracing::info!("the feed's partitions are not known yet (no listing); the fill waits");
        }
        if let (Some(target), Some(partitions)) = (target, &partitions) {
            let covered_to = chunks.last().map_or(target.start, |c| c.end);
            let res = b.source.time_resolution;
            // A long gap is planned a bounded stretch at a time: the rest
            // follows as chunks finish, so neither memory nor the store
            // holds a month of windows at once.
            let room = windows_room(unfinished(&chunks), partitions.len());
            let new: Vec<Window> =
                plan::extend(covered_to, target, b.chunk, b.follow_step, is_final, res)
                    .take(room)
                    .collect();
            if !new.is_empty() {
                let windows: Vec<_> = new.iter().map(|w| (w.start, w.end)).collect();
                let parts: Vec<&str> = partitions.iter().map(String::as_str).collect();
                self.store.add_chunks(gap.id, &windows, &parts, now).await?;
                self.metrics.emit(FillPlanned {
                    feed,
                    partition: &gap.partition,
                    partitions: parts.len(),
                    from: new[0].start,
                    to: new[new.len() - 1].end,
                    chunks: new.len() * parts.len(),
                    following: !is_final,
                });
            }
        }
        if gap.fill == FillState::Pending {
            self.store
                .set_fill(gap.id, FillState::Running, None, now)
                .await?;
        }
        let due = self
            .store
            .claim_chunks(feed, gap.id, now, CLAIM, usize::MAX)
            .await?;
        let concurrency = b.concurrency.get();
        futures::stream::iter(due)
            .for_each_concurrent(concurrency, |chunk| async move {
                if cancel.is_cancelled() {
                    return;
                }
                self.run_chunk(gap.id, chunk, cancel).await;
            })
            .await;
        if !self.lease.borrow().is_mine() {
            // Lost the feed meanwhile: its new holder settles the gap.
            return Ok(GapOutcome::InProgress);
        }

        let chunks = self.store.chunks(gap.id).await?;
        if let Some(failed) = chunks.iter().find(|c| c.state == ChunkState::Failed) {
            let reason = format!(
                "chunk {} [{}, {}) failed {} times: {}",
                failed.idx,
                failed.start.to_rfc3339(),
                failed.end.to_rfc3339(),
                failed.attempts,
                failed.last_error.as_deref().unwrap_or("unknown error")
            );
            self.store
                .set_fill(gap.id, FillState::Failed, Some(&reason), Utc::now())
                .await?;
            self.metrics.emit(FillFailed {
                feed,
                reason: &reason,
            });
            return Ok(GapOutcome::Failed(reason));
        }
        let end = target.map(|t| t.end);
        let complete = is_final
            && chunks.iter().all(|c| c.state == ChunkState::Done)
            && match (chunks.last(), end) {
                (Some(last), Some(end)) => last.end >= end,
                (None, None) => true,
                _ => false,
            }
            && gap.end.is_some_and(|e| {
                // The whole interval (plus overlap) must be older than now − settle.
                let overlap = if gap.kind == GapKind::Manual {
                    Duration::ZERO
                } else {
                    b.overlap
                };
                let wanted = e + chrono::Duration::from_std(overlap).unwrap_or_default();
                end.is_some_and(|end| end >= wanted)
            });
        if complete {
            self.store
                .set_fill(gap.id, FillState::Done, None, Utc::now())
                .await?;
            let g = self.store.gap(gap.id).await?;
            let p = g.map(|g| g.progress).unwrap_or_default();
            self.metrics.emit(FillFinished {
                feed,
                from: gap.start,
                to: gap.end,
                chunks: p.chunks_total,
                delivered: p.records_delivered,
                duplicate: p.records_duplicate,
                rejected: p.records_rejected,
            });
            return Ok(GapOutcome::Done);
        }
        Ok(GapOutcome::InProgress)
    }

    /// Runs one chunk from its checkpoint to its end (or to an error, which
    /// schedules a retry or fails it for good).
    #[tracing::instrument(
        name = "chunk",
        skip_all,
        fields(chunk = chunk.idx, partition = %chunk.partition, from = %chunk.start.to_rfc3339(), to = %chunk.end.to_rfc3339())
    )]
    async fn run_chunk(&self, gap_id: i64, chunk: Chunk, cancel: &CancellationToken) {
        let feed = self.feed.name.as_str();
        let b = self.backfill();
        let result = self.fetch_chunk(gap_id, &chunk, cancel).await;
        if !matches!(result, Ok(FetchEnd::Done)) && !self.lease.borrow().is_mine() {
            // Its checkpoint stands; the feed's new holder resumes from it.
            tracing::warn!("feed lease lost; chunk left to its new holder");
            return;
        }
        match result {
            Ok(FetchEnd::Done) => self.metrics.emit(FillChunkDone {
                feed,
                audit: self.is_audit(),
                at: Utc::now(),
            }),
            Ok(FetchEnd::Cancelled) => {
                if let Err(e) = self
                    .store
                    .fail_chunk(
                        chunk.id,
                        "interrupted by shutdown",
                        Utc::now(),
                        false,
                        Utc::now(),
                    )
                    .await
                {
                    tracing::error!(error = %e, "cannot park chunk");
                }
            }
            Err(error) => {
                let attempts = chunk.attempts + 1;
                let policy = chunk_policy(b.max_chunk_attempts.get());
                let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
                let backoff = policy.delay_for(attempt, &error, &mut rand::rng());
                let give_up = backoff.is_none();
                let now = Utc::now();
                let next = now
                    + chrono::Duration::from_std(backoff.unwrap_or_default()).unwrap_or_default();
                let message = error.to_string();
                if let Err(e) = self
                    .store
                    .fail_chunk(chunk.id, &message, next, give_up, now)
                    .await
                {
                    tracing::error!(error = %e, "cannot record chunk failure");
                }
                self.metrics.emit(FillChunkFailed {
                    feed,
                    attempts,
                    retryable: error.is_retryable(),
                    give_up,
                    retry_in: backoff,
                    error: &message,
                });
            }
        }
    }

    /// Pages through a chunk from its checkpoint to its end.
    async fn fetch_chunk(
        &self,
        gap_id: i64,
        chunk: &Chunk,
        cancel: &CancellationToken,
    ) -> Result<FetchEnd, ChunkError> {
        let feed = self.feed.name.as_str();
        let source = &self.source;
        let pagination = &source.config().pagination;
        let mut at: PageCursor = chunk
            .cursor
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .filter(|c| pagination.accepts(c))
            .unwrap_or_else(|| pagination.first());
        let max_pages = source.config().max_pages_per_chunk;
        let mut pages = 0u64;
        let mut warned_rejection = false;
        let mut warned_out_of_window = false;
        let mut warned_render = false;
        // The next page, asked for while this one is rendered, delivered and
        // committed (its checkpoint still moves only after that commit).
        let mut next_page: Option<AbortOnDropHandle<Result<Page, SourceError>>> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(FetchEnd::Cancelled);
            }
            pages += 1;
            if pages > max_pages {
                return Err(ChunkError::TooManyPages { max: max_pages });
            }
            let fetch = async {
                match next_page.take() {
                    Some(task) => task.await.unwrap_or_else(|e| {
                        Err(SourceError::Request(format!("page fetch stopped: {e}")))
                    }),
                    None => {
                        source
                            .page(chunk.start, chunk.end, &chunk.partition, &at)
                            .await
                    }
                }
            };
            let page = tokio::select! {
                _ = cancel.cancelled() => return Ok(FetchEnd::Cancelled),
                page = fetch => page,
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    use super::source::SourceError as E;
                    let rejection = match e {
                        E::NotJson(_) | E::NoRecords { .. } | E::Pagination(_) => {
                            Some(Rejection::BadPage)
                        }
                        E::PageTooLarge { .. } => Some(Rejection::PageTooLarge),
                        _ => None,
                    };
                    if let Some(reason) = rejection {
                        self.metrics.emit(InputRejected {
                            feed,
                            source: InputSource::Vendor,
                            reason,
                        });
                    }
                    return Err(e.into());
                }
            };
            if let Some(next) = page.next.clone().filter(|_| pages < max_pages) {
                let (source, partition) = (source.clone(), chunk.partition.clone());
                let (start, end) = (chunk.start, chunk.end);
                next_page = Some(AbortOnDropHandle::new(tokio::spawn(
                    async move { source.page(start, end, &partition, &next).await }
                        .instrument(tracing::Span::current()),
                )));
            }
            if page.rejected > 0 && !warned_rejection {
                warned_rejection = true;
                tracing::warn!(
                    rejected = page.rejected,
                    reason = page.first_rejection.as_deref().unwrap_or(""),
                    "records without a usable id or time were skipped"
                );
            }
            // Only what belongs to this chunk: a record outside it is another
            // window's (whose query returns it too) or the vendor's rounding,
            // and is counted either way.
            let mut seen = HashSet::new();
            let total = page.records.len();
            let in_window: Vec<Record> = page
                .records
                .into_iter()
                .filter(|r| r.time >= chunk.start && r.time < chunk.end)
                .collect();
            let out_of_window = (total - in_window.len()) as i64;
            if out_of_window > 0 && !warned_out_of_window {
                warned_out_of_window = true;
                tracing::info!(
                    out_of_window,
                    "the source returned records outside the chunk's window; counted, left to the neighbouring window"
                );
            }
            // Shaped as live messages before dedupe: the ledger holds live ids.
            let (in_window, shaped) = self.render(in_window, &mut warned_render);
            let ids: Vec<&str> = in_window.iter().map(|r| r.id.as_str()).collect();
            let (_shared, _alone);
            if self.is_audit() {
                _alone = self.turns.write().await;
            } else {
                _shared = self.turns.read().await;
            }
            let mut known = self.store.known_ids(feed, &ids).await?;
            known.extend(self.unwritten.known(&ids));
            let mut duplicate = 0i64;
            let fresh: Vec<Record> = in_window
                .into_iter()
                .filter(|r| {
                    let dup = known.contains(&r.id) || !seen.insert(r.id.clone());
                    duplicate += i64::from(dup);
                    !dup
                })
                .collect();
            // Destination batches, each committed with the ids it delivered
            // as soon as it is acknowledged: a kill -9 re-sends at most the
            // batches in flight (`sink.in_flight`, 1 unless configured).
            let sink_path = self.sink.file_path();
            let failed = std::sync::atomic::AtomicBool::new(false);
            let mut deliveries = futures::stream::iter(self.sink.batches(&fresh))
                .map(|range| {
                    let (fresh, failed) = (&fresh, &failed);
                    async move {
                        // After a failure nothing new goes out; what is in
                        // flight still lands and is committed.
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            return (range, None);
                        }
                        let d = self.sink.deliver(&fresh[range.clone()], gap_id).await;
                        if d.error.is_some() {
                            failed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        (range, Some(d))
                    }
                })
                .buffer_unordered(self.sink.in_flight());
            let mut first_error = None;
            while let Some((range, delivery)) = deliveries.next().await {
                let Some(delivery) = delivery else { continue };
                let batch = &fresh[range];
                for (i, why) in delivery.rejected.iter().take(1) {
                    tracing::warn!(record_id = %batch[*i].id, reason = %why, "sink refused a record");
                }
                let delivered: Vec<(String, DateTime<Utc>)> = delivery
                    .delivered
                    .iter()
                    .map(|&i| (batch[i].id.clone(), batch[i].time))
                    .collect();
                let counts = PageCounts {
                    delivered: delivered.len() as i64,
                    rejected: delivery.rejected.len() as i64,
                    ..PageCounts::default()
                };
                let commit = PageCommit {
                    delivered: &delivered,
                    counts,
                    checkpoint: Checkpoint::Stay,
                    sink_offset: sink_path.as_deref().zip(delivery.sink_offset),
                };
                self.commit_delivered(chunk.id, gap_id, commit, cancel)
                    .await?;
                // Only now may another batch go into the file.
                drop(delivery.hold);
                self.count(counts);
                if first_error.is_none() {
                    first_error = delivery.error;
                }
            }
            if let Some(error) = first_error {
                return Err(error.into());
            }
            // The page is delivered: move the checkpoint past it.
            let counts = PageCounts {
                duplicate,
                rejected: page.rejected as i64 + shaped.failed,
                out_of_window,
                ..PageCounts::default()
            };
            if !self.is_audit() {
                self.metrics.emit(FillRecords {
                    feed,
                    filtered: shaped.filtered,
                    ..FillRecords::default()
                });
            }
            let next = page
                .next
                .as_ref()
                .map(|c| serde_json::to_string(c).unwrap_or_default());
            let checkpoint = match &next {
                Some(cursor) => Checkpoint::Next(cursor),
                None => Checkpoint::Done,
            };
            let commit = PageCommit {
                delivered: &[],
                counts,
                checkpoint,
                sink_offset: None,
            };
            self.store
                .commit_page(feed, chunk.id, gap_id, commit, Utc::now())
                .await?;
            self.count(counts);
            match page.next {
                Some(n) => at = n,
                None => return Ok(FetchEnd::Done),
            }
        }
    }

    /// Commits a batch the sink acknowledged. Those records are in the app's
    /// hands: a retry of the chunk would send them again, so a store that
    /// cannot be written (down, its disk full) is waited for, with the ids
    /// held meanwhile as known for the feed's other fills and its audit. Only
    /// a lost lease (the new holder redoes the chunk) or a shutdown gives up:
    /// then at most these batches are sent again.
    async fn commit_delivered(
        &self,
        chunk_id: i64,
        gap_id: i64,
        commit: PageCommit<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let feed = self.feed.name.as_str();
        let ids = || commit.delivered.iter().map(|(id, _)| id.as_str());
        let policy = RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            max_retries: u32::MAX,
        };
        let mut attempt = 0u32;
        loop {
            let result = self
                .store
                .commit_page(feed, chunk_id, gap_id, commit, Utc::now())
                .await;
            let error = match result {
                Ok(()) => {
                    if attempt > 0 {
                        self.unwritten.release(ids());
                        tracing::info!(attempts = attempt + 1, "delivered ids committed");
                    }
                    return Ok(());
                }
                Err(e @ StoreError::Fenced(_)) => e,
                Err(e) if cancel.is_cancelled() => e,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    if attempt == 1 {
                        self.unwritten.hold(ids());
                        tracing::error!(error = %e, records = commit.delivered.len(), "cannot commit delivered records; holding them and retrying");
                    }
                    let delay = policy
                        .delay(attempt.min(16), None, &mut rand::rng())
                        .unwrap_or(policy.cap);
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            if attempt > 0 {
                self.unwritten.release(ids());
            }
            return Err(error);
        }
    }

    /// `records` as the live feed carries them: filtered, rendered, wrapped.
    /// A record whose program fails is counted and left out, never the page;
    /// the first failure of a chunk is logged.
    fn render(&self, records: Vec<Record>, warned: &mut bool) -> (Vec<Record>, Shaped) {
        let mut shaped = Shaped::default();
        if self.renderer.is_identity() {
            return (records, shaped);
        }
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            match self.renderer.apply(r) {
                Rendered::Message(m) => out.push(m),
                Rendered::Filtered => shaped.filtered += 1,
                Rendered::Failed(source_id, e) => {
                    shaped.failed += 1;
                    self.metrics.emit(RecordRenderFailed {
                        feed: &self.feed.name,
                        record_id: &source_id,
                        error: &e,
                        first: !std::mem::replace(warned, true),
                    });
                }
            }
        }
        (out, shaped)
    }

    /// Audit windows list every record of the feed once more: their counts
    /// go to the audit's own metrics, so that fill metrics (and the alerts on
    /// them, such as a stalled fill) keep describing fills.
    fn is_audit(&self) -> bool {
        self.owner == crate::audit::OWNER
    }

    fn count(&self, c: PageCounts) {
        if self.is_audit() {
            return;
        }
        self.metrics.emit(FillRecords {
            feed: &self.feed.name,
            delivered: c.delivered as u64,
            duplicate: c.duplicate as u64,
            rejected: c.rejected as u64,
            out_of_window: c.out_of_window as u64,
            filtered: 0,
        });
    }

    async fn update_chunk_gauges(&self) {
        let feed = self.feed.name.as_str();
        match self.store.chunk_states(feed).await {
            Ok(states) => self.metrics.emit(ChunkStatesMeasured {
                feed,
                states: &states,
            }),
            Err(e) => tracing::warn!(error = %e, "cannot read chunk states"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_partitions_plan_a_window_at_a_time() {
        assert_eq!(windows_room(0, 1), PLAN_AHEAD);
        assert_eq!(windows_room(60, 1), 4);
        assert_eq!(windows_room(0, 50), 1);
        assert_eq!(windows_room(0, 5000), 1);
        assert_eq!(windows_room(1, 5000), 0);
        assert_eq!(windows_room(10, 16), 3);
        assert_eq!(windows_room(PLAN_AHEAD, 1), 0);
    }

    #[test]
    fn chunk_errors_are_retried_only_when_they_may_heal() {
        let mut rng = rand::rng();
        let policy = chunk_policy(10);
        let retryable = [
            ChunkError::from(SourceError::Exhausted {
                attempts: 9,
                last: "status 503".into(),
            }),
            ChunkError::from(SourceError::NotJson("eof".into())),
            ChunkError::from(SinkError::HttpStatus { status: 503 }),
            ChunkError::from(SinkError::Http("connection reset".into())),
        ];
        for e in &retryable {
            assert!(e.is_retryable(), "{e}");
            // Full jitter under the first step's ceiling, then give up after
            // max_chunk_attempts.
            let d = policy.delay_for(1, e, &mut rng).unwrap();
            assert!(d <= Duration::from_secs(5), "{d:?}");
            assert!(policy.delay_for(9, e, &mut rng).is_some());
            assert!(policy.delay_for(10, e, &mut rng).is_none());
        }
        let final_ = [
            ChunkError::from(SourceError::PageTooLarge { max: 1 }),
            ChunkError::from(SourceError::Status {
                status: 401,
                body: String::new(),
            }),
            ChunkError::from(SinkError::Redirect { status: 301 }),
            ChunkError::from(SinkError::HttpStatus { status: 400 }),
            ChunkError::TooManyPages { max: 10 },
            ChunkError::from(StoreError::Fenced("orders".into())),
        ];
        for e in &final_ {
            assert!(!e.is_retryable(), "{e}");
            assert!(policy.delay_for(1, e, &mut rng).is_none(), "{e}");
        }
        assert_eq!(
            ChunkError::TooManyPages { max: 10 }.to_string(),
            "more than 10 pages in one chunk: lower backfill.chunk or raise source.max_pages_per_chunk"
        );
    }
}
