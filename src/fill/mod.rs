//! Recovery: for each gap, plan chunks over the missing interval, page through
//! the source API, and deliver each record once to the sink.
//!
//! `plan` and `pagination` are pure; `source` and `sink` talk to the outside;
//! `filler` carries a feed's fills out.

pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod filler;
pub(crate) mod pagination;
pub(crate) mod plan;
pub(crate) mod quota;
pub(crate) mod render;
pub(crate) mod sink;
pub(crate) mod source;
pub(crate) mod template;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::FeedConfig;
use crate::store::{Store, StoreError};

pub(crate) use filler::{Filler, GapOutcome};

#[derive(Debug, thiserror::Error)]
pub(crate) enum FillError {
    #[error("unknown feed {0:?}")]
    UnknownFeed(String),
    #[error("feed {0:?} has no [feeds.backfill] section")]
    NoBackfill(String),
    #[error("{0}")]
    BadInterval(String),
    #[error("{0}")]
    BadPartition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a feed's fill pipeline could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("feed {0:?} has no [feeds.backfill] section")]
    NoBackfill(String),
    #[error("feed {feed}: backfill source: {source}")]
    Source {
        feed: String,
        source: source::SourceError,
    },
    #[error("feed {feed}: backfill sink: {source}")]
    Sink {
        feed: String,
        source: sink::SinkBuildError,
    },
}

/// Builds a feed's fill pipeline (source, sink, filler) from its config:
/// the one place the daemon and the command line both get theirs from.
/// `sqs` is needed by an `sqs` sink only; `owner` says whose gaps the filler
/// takes (`daemon`, or `cli` for a one-off run).
pub(crate) async fn build_filler(
    feed: Arc<FeedConfig>,
    store: &Store,
    metrics: Arc<crate::metrics::Metrics>,
    sqs: Option<aws_sdk_sqs::Client>,
    owner: &str,
) -> Result<Filler, BuildError> {
    let b = feed
        .backfill
        .as_ref()
        .ok_or_else(|| BuildError::NoBackfill(feed.name.clone()))?;
    let source = source::Source::new(&feed.name, &b.source, metrics.clone()).map_err(|e| {
        BuildError::Source {
            feed: feed.name.clone(),
            source: e,
        }
    })?;
    let sink = sink::Sink::new(&b.sink, &feed.name, sqs, metrics.clone(), store)
        .await
        .map_err(|source| BuildError::Sink {
            feed: feed.name.clone(),
            source,
        })?;
    Ok(Filler::new(
        feed.clone(),
        store.clone(),
        metrics,
        source,
        Arc::new(sink),
        owner,
    ))
}

/// A feed's config, the notifier that wakes its filler, and the partitions
/// it watches (partitioned feeds).
pub(crate) type FillFeed = (
    Arc<FeedConfig>,
    Arc<Notify>,
    watch::Receiver<Arc<Vec<String>>>,
);

/// Starts fills by hand and wakes fillers. Cheap to clone.
#[derive(Clone)]
pub(crate) struct FillControl {
    store: Store,
    feeds: Arc<HashMap<String, FillFeed>>,
    owner: &'static str,
}

impl FillControl {
    pub(crate) fn new(
        store: Store,
        feeds: impl IntoIterator<Item = FillFeed>,
        owner: &'static str,
    ) -> Self {
        Self {
            store,
            feeds: Arc::new(feeds.into_iter().map(|f| (f.0.name.clone(), f)).collect()),
            owner,
        }
    }

    pub(crate) fn wake(&self, feed: &str) {
        if let Some((_, n, _)) = self.feeds.get(feed) {
            n.notify_one();
        }
    }

    /// A fill of `[from, to)` by hand, of one partition or (None) of every
    /// partition watched. With `dry_run` only the plan is returned;
    /// otherwise a `manual` gap is created and its id set in the plan.
    /// Re-running an interval delivers nothing new: delivered ids are
    /// remembered.
    pub(crate) async fn manual(
        &self,
        feed: &str,
        partition: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<FillPlan, FillError> {
        let (config, wakeup, watched) = self
            .feeds
            .get(feed)
            .ok_or_else(|| FillError::UnknownFeed(feed.to_string()))?;
        let watched = watched.borrow().clone();
        let partitions = manual_partitions(config, &watched, partition)?;
        let partition = partition.unwrap_or("");
        let mut plan = dry_run_plan(config, from, to, Utc::now(), partitions)?;
        plan.partition = partition.to_string();
        if dry_run {
            return Ok(plan);
        }
        let gap_id = self
            .store
            .manual_gap(feed, partition, from, to, self.owner, Utc::now())
            .await?;
        tracing::info!(feed, partition, gap_id, from = %from.to_rfc3339(), to = %to.to_rfc3339(), "manual backfill requested");
        wakeup.notify_one();
        plan.gap_id = Some(gap_id);
        plan.dry_run = false;
        Ok(plan)
    }
}

/// How many partitions a manual fill of `partition` (None: every one
/// watched) asks each window for; an error for a partition the feed does
/// not have.
pub(crate) fn manual_partitions(
    config: &FeedConfig,
    watched: &[String],
    partition: Option<&str>,
) -> Result<usize, FillError> {
    let feed = &config.name;
    match (partition, config.is_partitioned()) {
        (Some(_), false) => Err(FillError::BadPartition(format!(
            "feed {feed:?} is not partitioned"
        ))),
        (Some(p), true) if !watched.iter().any(|w| w == p) => Err(FillError::BadPartition(
            format!("feed {feed:?} does not watch partition {p:?}"),
        )),
        (Some(_), true) | (None, false) => Ok(1),
        (None, true) => Ok(watched.len()),
    }
}

/// A planned window, as shown by a dry run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PlannedWindow {
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
}

/// The chunk plan of a manual fill and what it will cost under the rate limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct FillPlan {
    pub(crate) feed: String,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    pub(crate) dry_run: bool,
    /// The partition filled; `""`: every partition (or an unpartitioned feed).
    pub(crate) partition: String,
    /// How many partitions each window is asked for.
    pub(crate) partitions: usize,
    /// The manual gap created for the fill (not set by a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gap_id: Option<i64>,
    /// Windows × partitions.
    pub(crate) chunks: usize,
    /// The first 100 windows.
    pub(crate) windows: Vec<PlannedWindow>,
    pub(crate) estimated_requests: u64,
    pub(crate) estimated_min_duration_seconds: f64,
    pub(crate) rate_limit_per_second: f64,
    pub(crate) time_resolution: String,
    pub(crate) note: &'static str,
}

/// The plan of a manual fill of `[from, to)`, each window asked for
/// `partitions` partitions (1: unpartitioned feeds). Nothing is sent.
pub(crate) fn dry_run_plan(
    config: &FeedConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    partitions: usize,
) -> Result<FillPlan, FillError> {
    let b = config
        .backfill
        .as_ref()
        .ok_or_else(|| FillError::NoBackfill(config.name.clone()))?;
    if from >= to {
        return Err(FillError::BadInterval(format!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    let newest = now - chrono::Duration::from_std(b.settle).unwrap_or_default();
    if to > newest {
        return Err(FillError::BadInterval(format!(
            "to ({}) is later than now - settle ({}): the source may not have published it yet",
            to.to_rfc3339(),
            newest.to_rfc3339()
        )));
    }
    // What the fill will really ask for: the interval widened to the
    // source's resolution, as the filler plans it.
    let res = b.source.time_resolution;
    let target = plan::fill_target(from, Some(to), Duration::ZERO, b.settle, now, res).unwrap_or(
        plan::Window {
            start: from,
            end: to,
        },
    );
    let windows = plan::split(target.start, target.end, b.chunk, res);
    let rate = b.source.rate_limit.per_second();
    let est = plan::estimate(
        windows.clone().count().saturating_mul(partitions.max(1)),
        1,
        rate,
    );
    Ok(FillPlan {
        feed: config.name.clone(),
        from,
        to,
        dry_run: true,
        partition: String::new(),
        partitions: partitions.max(1),
        gap_id: None,
        chunks: est.chunks,
        windows: windows
            .take(100)
            .map(|w| PlannedWindow {
                from: w.start,
                to: w.end,
            })
            .collect(),
        estimated_requests: est.requests,
        estimated_min_duration_seconds: est.min_duration.as_secs_f64(),
        rate_limit_per_second: rate,
        time_resolution: res.to_string(),
        note: "one request per chunk at least; every further page of a chunk adds one request and 1/rate seconds",
    })
}
