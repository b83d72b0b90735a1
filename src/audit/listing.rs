//! Compare without delivering: the vendor's records over an interval against
//! the ledger (`gapwatch audit --dry-run`). Memory is one page plus a sample.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::FeedConfig;
use crate::fill::plan;
use crate::fill::render::{Rendered, Renderer};
use crate::fill::source::{Source, SourceError};
use crate::store::{Store, StoreError};

/// Ids shown of the missing ones.
pub(crate) const SAMPLE: usize = 20;

/// What an audit of an interval would deliver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MissingReport {
    pub(crate) feed: String,
    pub(crate) from: DateTime<Utc>,
    pub(crate) to: DateTime<Utc>,
    /// Records the vendor listed inside the interval.
    pub(crate) listed: u64,
    /// Of those, the ones the ledger does not hold.
    pub(crate) missing: u64,
    /// The first missing ids (at most [`SAMPLE`]).
    pub(crate) sample: Vec<String>,
    /// Requests made to the vendor.
    pub(crate) requests: u64,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ListingError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("more than {0} pages in one chunk: lower backfill.chunk or raise source.max_pages_per_chunk")]
    TooManyPages(u64),
}

/// Lists `[from, to)` (widened to the source's resolution) page by page,
/// for each of `partitions` (none: an unpartitioned feed), and counts the
/// ids the ledger lacks.
pub(crate) async fn list_missing(
    feed: &FeedConfig,
    source: &Source,
    store: &Store,
    partitions: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<MissingReport, ListingError> {
    let config = source.config();
    let res = config.time_resolution;
    let chunk = feed
        .backfill
        .as_ref()
        .map_or(std::time::Duration::from_secs(3600), |b| b.chunk);
    let (start, end) = (res.floor(from), res.ceil(to));
    let mut report = MissingReport {
        feed: feed.name.clone(),
        from: start,
        to: end,
        ..MissingReport::default()
    };
    let renderer = Renderer::new(feed);
    let whole = [String::new()];
    let partitions = if partitions.is_empty() {
        &whole[..]
    } else {
        partitions
    };
    let windows = plan::split(start, end, chunk, res)
        .flat_map(|w| partitions.iter().map(move |p| (w, p.as_str())));
    for (w, partition) in windows {
        let mut at = config.pagination.first();
        let mut pages = 0u64;
        loop {
            pages += 1;
            if pages > config.max_pages_per_chunk {
                return Err(ListingError::TooManyPages(config.max_pages_per_chunk));
            }
            let page = source.page(w.start, w.end, partition, &at).await?;
            report.requests += 1;
            // Compared as the live feed carries them: filtered, by their live id.
            let rendered: Vec<_> = page
                .records
                .into_iter()
                .filter(|r| r.time >= w.start && r.time < w.end)
                .filter_map(|r| match renderer.apply(r) {
                    Rendered::Message(m) => Some(m),
                    Rendered::Filtered | Rendered::Failed(..) => None,
                })
                .collect();
            let ids: Vec<&str> = rendered.iter().map(|r| r.id.as_str()).collect();
            let known = store.known_ids(&feed.name, &ids).await?;
            report.listed += ids.len() as u64;
            for id in ids.iter().filter(|id| !known.contains(**id)) {
                report.missing += 1;
                if report.sample.len() < SAMPLE {
                    report.sample.push((*id).to_string());
                }
            }
            match page.next {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    Ok(report)
}
