//! Which partitions a partitioned feed watches: the fixed `values`, or the
//! vendor's own listing (`partitions.from`), fetched through the backfill
//! source (its auth, headers, rate limit and retries) every `every` by a
//! [`Lister`] and handed to the feed monitor, which adds and retires lanes.
//!
//! A listing that cannot be used (an error, not JSON, no array, or empty)
//! changes nothing: the partitions watched stay as they are, so a vendor
//! glitch never retires every partition at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{FeedConfig, PartitionList, PartitionSource};
use crate::fill::source::{Source, SourceError};
use crate::internal_events::{PartitionListingFailed, PartitionsListed};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The latest usable listing, as the lister hands it to the feed monitor.
pub(crate) type Listing = Option<Arc<Vec<String>>>;

/// After a failed listing, the next try (doubling up to `every`).
const RETRY_FIRST: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ListingError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("partition listing has no array at {pointer:?}")]
    NoArray { pointer: String },
    #[error("partition listing is empty (the partitions watched are kept)")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The partition values in a listing (its decoded body): the array at `records`, each
/// element's value at `value` (strings or numbers, as live records carry
/// them), first occurrence kept, at most `max`. Also how many elements had
/// no usable value.
pub(crate) fn parse_listing(
    json: &Value,
    from: &PartitionSource,
    max: usize,
) -> Result<(Vec<String>, usize), ListingError> {
    let Some(Value::Array(items)) = json.pointer(&from.records) else {
        return Err(ListingError::NoArray {
            pointer: from.records.clone(),
        });
    };
    let mut seen = HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len().min(max));
    let mut unusable = 0;
    for item in items {
        match item
            .pointer(&from.value)
            .and_then(crate::observe::partition_value)
        {
            Some(v) if out.len() < max => {
                if seen.insert(v.clone()) {
                    out.push(v);
                }
            }
            Some(_) => {}
            None => unusable += 1,
        }
    }
    if out.is_empty() {
        return Err(ListingError::Empty);
    }
    Ok((out, unusable))
}

/// Lists a feed's partitions from the vendor once.
pub(crate) async fn list(
    feed: &FeedConfig,
    from: &PartitionSource,
    source: &Source,
) -> Result<(Vec<String>, usize), ListingError> {
    let max = feed.partitions.as_ref().map_or(usize::MAX, |p| p.max.get());
    match source.get(from.url.clone()).await? {
        Some(body) => parse_listing(&body, from, max),
        None => Err(ListingError::Empty),
    }
}

/// The partitions a one-off command (`gapwatch backfill`, `audit`) works
/// on: the fixed values, or those the daemon watched last (in the store), or
/// else a listing of the vendor's. Empty for an unpartitioned feed.
pub(crate) async fn current(
    feed: &FeedConfig,
    store: &Store,
    source: &Source,
) -> Result<Vec<String>, ListingError> {
    let Some(p) = &feed.partitions else {
        return Ok(Vec::new());
    };
    match &p.list {
        PartitionList::Values(v) => Ok(v.clone()),
        PartitionList::From(from) => {
            let stored: Vec<String> = store
                .partition_states(&feed.name, None)
                .await?
                .into_iter()
                .map(|s| s.partition)
                .collect();
            if !stored.is_empty() {
                return Ok(stored);
            }
            Ok(list(feed, from, source).await?.0)
        }
    }
}

/// Lists a `partitions.from` feed's partitions every `every` and hands each
/// usable listing to the feed monitor.
pub(crate) struct Lister {
    feed: Arc<FeedConfig>,
    source: Source,
    metrics: Arc<Metrics>,
    out: Arc<watch::Sender<Listing>>,
}

impl Lister {
    /// None unless the feed's partitions come `from` the vendor.
    pub(crate) fn new(
        feed: Arc<FeedConfig>,
        source: Source,
        metrics: Arc<Metrics>,
        out: Arc<watch::Sender<Listing>>,
    ) -> Option<Self> {
        matches!(
            feed.partitions.as_ref().map(|p| &p.list),
            Some(PartitionList::From(_))
        )
        .then_some(Self {
            feed,
            source,
            metrics,
            out,
        })
    }

    pub(crate) async fn run(&self, cancel: CancellationToken) {
        let Some(PartitionList::From(from)) = self.feed.partitions.as_ref().map(|p| &p.list) else {
            return;
        };
        let name = self.feed.name.as_str();
        let mut retry = RETRY_FIRST.min(from.every);
        loop {
            let wait = match list(&self.feed, from, &self.source).await {
                Ok((values, unusable)) => {
                    self.metrics.emit(PartitionsListed {
                        feed: name,
                        partitions: values.len(),
                        unusable,
                    });
                    self.out.send_replace(Some(Arc::new(values)));
                    retry = RETRY_FIRST.min(from.every);
                    from.every
                }
                Err(e) => {
                    self.metrics.emit(PartitionListingFailed {
                        feed: name,
                        bad_listing: !matches!(e, ListingError::Source(_)),
                        error: &e.to_string(),
                        retry_in: retry,
                    });
                    let wait = retry;
                    retry = (retry * 2).min(from.every);
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(records: &str, value: &str) -> PartitionSource {
        PartitionSource {
            url: "http://vendor.example/v1/stores".parse().unwrap(),
            records: records.into(),
            value: value.into(),
            every: Duration::from_secs(60),
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_listing_gives_each_value_once_up_to_max() {
        let body = json(
            r#"{"stores":[{"id":"s1"},{"id":2},{"id":"s1"},{"name":"x"},{"id":""},{"id":"s3"}]}"#,
        );
        let (values, unusable) = parse_listing(&body, &from("/stores", "/id"), 10).unwrap();
        assert_eq!(values, vec!["s1", "2", "s3"]);
        assert_eq!(unusable, 2);
        let (values, _) = parse_listing(&body, &from("/stores", "/id"), 2).unwrap();
        assert_eq!(values, vec!["s1", "2"]);
        // A bare array of values.
        let (values, _) = parse_listing(&json(r#"["a","b"]"#), &from("", ""), 10).unwrap();
        assert_eq!(values, vec!["a", "b"]);
    }

    #[test]
    fn an_unusable_listing_is_an_error_never_an_empty_list() {
        let f = from("/stores", "/id");
        assert!(matches!(
            parse_listing(&json(r#"{"data":[]}"#), &f, 10),
            Err(ListingError::NoArray { .. })
        ));
        assert!(matches!(
            parse_listing(&json(r#"{"stores":[]}"#), &f, 10),
            Err(ListingError::Empty)
        ));
        assert!(matches!(
            parse_listing(&json(r#"{"stores":[{"x":1}]}"#), &f, 10),
            Err(ListingError::Empty)
        ));
    }
}
