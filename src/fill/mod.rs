//! Recovery: for each gap, plan chunks over the missing interval, page through
//! the source API, and deliver each record once to the sink.
//!
//! `plan` and `pagination` are pure; `source` and `sink` talk to the outside;
//! `filler` carries a feed's fills out.

pub mod body;
pub mod filler;
pub mod pagination;
pub mod plan;
pub mod sink;
pub mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Notify;

use crate::config::FeedConfig;
use crate::store::{Store, StoreError};

pub use filler::{Filler, GapOutcome};

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("unknown feed {0:?}")]
    UnknownFeed(String),
    #[error("feed {0:?} has no [feeds.backfill] section")]
    NoBackfill(String),
    #[error("{0}")]
    BadInterval(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FillError {
    pub fn status(&self) -> StatusCode {
        match self {
            FillError::UnknownFeed(_) => StatusCode::NOT_FOUND,
            FillError::NoBackfill(_) => StatusCode::CONFLICT,
            FillError::BadInterval(_) => StatusCode::BAD_REQUEST,
            FillError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A feed's config and the notifier that wakes its filler.
type FillFeed = (Arc<FeedConfig>, Arc<Notify>);

/// Starts fills by hand and wakes fillers. Cheap to clone.
#[derive(Clone)]
pub struct FillControl {
    store: Store,
    feeds: Arc<HashMap<String, FillFeed>>,
    owner: &'static str,
}

impl FillControl {
    pub fn new(
        store: Store,
        feeds: impl IntoIterator<Item = (Arc<FeedConfig>, Arc<Notify>)>,
        owner: &'static str,
    ) -> Self {
        Self {
            store,
            feeds: Arc::new(
                feeds
                    .into_iter()
                    .map(|(c, n)| (c.name.clone(), (c, n)))
                    .collect(),
            ),
            owner,
        }
    }

    pub fn wake(&self, feed: &str) {
        if let Some((_, n)) = self.feeds.get(feed) {
            n.notify_one();
        }
    }

    /// A fill of `[from, to)` by hand. With `dry_run` only the plan is returned;
    /// otherwise a `manual` gap is created and its id returned. Re-running an
    /// interval delivers nothing new: delivered ids are remembered.
    pub async fn manual(
        &self,
        feed: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<serde_json::Value, FillError> {
        let (config, wakeup) = self
            .feeds
            .get(feed)
            .ok_or_else(|| FillError::UnknownFeed(feed.to_string()))?;
        let plan = dry_run_plan(config, from, to, Utc::now())?;
        if dry_run {
            return Ok(plan);
        }
        let gap_id = self
            .store
            .manual_gap(feed, from, to, self.owner, Utc::now())
            .await?;
        tracing::info!(feed, gap_id, from = %from.to_rfc3339(), to = %to.to_rfc3339(), "manual backfill requested");
        wakeup.notify_one();
        let mut v = plan;
        v["gap_id"] = json!(gap_id);
        v["dry_run"] = json!(false);
        Ok(v)
    }
}

/// The chunk plan of a manual fill and what it will cost under the rate limit.
pub fn dry_run_plan(
    config: &FeedConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, FillError> {
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
    let est = plan::estimate(windows.clone().count(), 1, rate);
    let shown: Vec<_> = windows
        .take(100)
        .map(|w| json!({ "from": w.start, "to": w.end }))
        .collect();
    Ok(json!({
        "feed": config.name,
        "from": from,
        "to": to,
        "dry_run": true,
        "chunks": est.chunks,
        "windows": shown,
        "estimated_requests": est.requests,
        "estimated_min_duration_seconds": est.min_duration.as_secs_f64(),
        "rate_limit_per_second": rate,
        "time_resolution": res.to_string(),
        "note": "one request per chunk at least; every further page of a chunk adds one request and 1/rate seconds",
    }))
}
