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

use crate::config::{FeedConfig, ListingPages, PartitionList, PartitionSource};
use crate::fill::pagination::resolve_url;
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
    #[error("partition listing page {page} leads back to {url} (the partitions watched are kept)")]
    Loop { page: usize, url: String },
    #[error("partition listing is longer than {MAX_LISTING_PAGES} pages (the partitions watched are kept)")]
    TooManyPages,
    /// Redacted: the address may carry a key in its query.
    #[error("partition listing page {page}: {reason}")]
    BadNext { page: usize, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pages of one listing read at most (`partitions.max` is at most a million:
/// pages of 1,000).
const MAX_LISTING_PAGES: usize = 1_000;

/// The partition values of a listing, page by page: each element's value at
/// `value` (strings or numbers, as live records carry them), first
/// occurrence kept, at most `max`; and how many elements had no usable value.
#[derive(Debug)]
struct Collected {
    seen: HashSet<String>,
    values: Vec<String>,
    unusable: usize,
    max: usize,
}

impl Collected {
    fn new(max: usize) -> Self {
        Self {
            seen: HashSet::new(),
            values: Vec::new(),
            unusable: 0,
            max,
        }
    }

    fn is_full(&self) -> bool {
        self.values.len() >= self.max
    }

    /// Adds the array at `records` of one decoded page.
    fn add(&mut self, json: &Value, from: &PartitionSource) -> Result<(), ListingError> {
        let Some(Value::Array(items)) = json.pointer(&from.records) else {
            return Err(ListingError::NoArray {
                pointer: from.records.clone(),
            });
        };
        for item in items {
            match item
                .pointer(&from.value)
                .and_then(crate::observe::partition_value)
            {
                Some(v) if !self.is_full() => {
                    if self.seen.insert(v.clone()) {
                        self.values.push(v);
                    }
                }
                Some(_) => {}
                None => self.unusable += 1,
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(Vec<String>, usize), ListingError> {
        if self.values.is_empty() {
            return Err(ListingError::Empty);
        }
        Ok((self.values, self.unusable))
    }
}

/// The URL of the listing's page after `page` (at `url`), if there is one.
fn next_page(
    page: &Value,
    url: &url::Url,
    from: &PartitionSource,
    n: usize,
) -> Result<Option<url::Url>, ListingError> {
    let text = |pointer: &str| match page.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    match &from.pages {
        None => Ok(None),
        Some(ListingPages::Next { next }) => match text(next) {
            None => Ok(None),
            // As a fill's next URL: never to another origin, which would be
            // sent the source's credentials.
            Some(s) => resolve_url(url, &s)
                .map(Some)
                .map_err(|e| ListingError::BadNext {
                    page: n,
                    reason: crate::redact::text(&e.to_string()),
                }),
        },
        Some(ListingPages::Cursor { cursor, param }) => Ok(text(cursor).map(|c| {
            let mut next = from.url.clone();
            let kept: Vec<(String, String)> = from
                .url
                .query_pairs()
                .filter(|(k, _)| k != param)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            next.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair(param, &c);
            next
        })),
    }
}

/// Lists a feed's partitions from the vendor once, every page of it.
pub(crate) async fn list(
    feed: &FeedConfig,
    from: &PartitionSource,
    source: &Source,
) -> Result<(Vec<String>, usize), ListingError> {
    let max = feed.partitions.as_ref().map_or(usize::MAX, |p| p.max.get());
    let mut collected = Collected::new(max);
    let mut url = from.url.clone();
    let mut asked = HashSet::from([url.to_string()]);
    for n in 1..=MAX_LISTING_PAGES {
        // An `empty_on` answer is a page without partitions: the last.
        let Some(page) = source.get(url.clone()).await? else {
            return collected.finish();
        };
        collected.add(&page, from)?;
        if collected.is_full() {
            return collected.finish();
        }
        match next_page(&page, &url, from, n)? {
            None => return collected.finish(),
            Some(next) => {
                if !asked.insert(next.to_string()) {
                    return Err(ListingError::Loop {
                        page: n,
                        url: crate::redact::text(next.as_str()),
                    });
                }
                url = next;
            }
        }
    }
    Err(ListingError::TooManyPages)
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
            pages: None,
        }
    }

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    /// The partition values in a one-page listing (its decoded body).
    fn parse_listing(
        json: &Value,
        from: &PartitionSource,
        max: usize,
    ) -> Result<(Vec<String>, usize), ListingError> {
        let mut c = Collected::new(max);
        c.add(json, from)?;
        c.finish()
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
    fn a_page_leads_to_the_next_by_url_or_by_cursor_and_the_last_to_none() {
        let url: url::Url = "http://vendor.example/v1/stores?limit=2&after=s2"
            .parse()
            .unwrap();
        let mut f = from("/stores", "/id");
        f.url = "http://vendor.example/v1/stores?limit=2".parse().unwrap();
        let next = |f: &PartitionSource, page: &str| next_page(&json(page), &url, f, 1);
        assert_eq!(next(&f, r#"{"next":"/v1/stores?p=2"}"#).unwrap(), None);

        f.pages = Some(ListingPages::Next {
            next: "/links/next".into(),
        });
        let relative = next(&f, r#"{"links":{"next":"/v1/stores?page=2"}}"#).unwrap();
        assert_eq!(
            relative.unwrap().as_str(),
            "http://vendor.example/v1/stores?page=2"
        );
        let absolute = next(&f, r#"{"links":{"next":"http://vendor.example/s?page=3"}}"#);
        assert_eq!(
            absolute.unwrap().unwrap().as_str(),
            "http://vendor.example/s?page=3"
        );
        // Another origin would be sent the source's credentials: refused.
        let elsewhere = next(&f, r#"{"links":{"next":"https://evil.example/s?key=k3y"}}"#);
        let Err(e) = elsewhere else {
            panic!("a next page on another origin is followed: {elsewhere:?}")
        };
        let text = e.to_string();
        assert!(text.contains("leaves the source origin"), "{text}");
        assert!(!text.contains("k3y"), "{text}");
        for last in [
            r#"{"links":{"next":null}}"#,
            r#"{"links":{"next":""}}"#,
            "{}",
        ] {
            assert_eq!(next(&f, last).unwrap(), None, "{last}");
        }

        f.pages = Some(ListingPages::Cursor {
            cursor: "/next_cursor".into(),
            param: "after".into(),
        });
        // The listing's own URL with the cursor: other parameters kept, the
        // cursor's replaced, never appended twice.
        let cursor = next(&f, r#"{"next_cursor":"s4"}"#).unwrap().unwrap();
        assert_eq!(
            cursor.as_str(),
            "http://vendor.example/v1/stores?limit=2&after=s4"
        );
        let numeric = next(&f, r#"{"next_cursor":40}"#).unwrap().unwrap();
        assert_eq!(
            numeric.as_str(),
            "http://vendor.example/v1/stores?limit=2&after=40"
        );
        assert_eq!(next(&f, r#"{"next_cursor":null}"#).unwrap(), None);
    }

    #[test]
    fn values_of_every_page_count_once_up_to_max() {
        let f = from("/stores", "/id");
        let mut c = Collected::new(3);
        c.add(&json(r#"{"stores":[{"id":"a"},{"id":"b"}]}"#), &f)
            .unwrap();
        assert!(!c.is_full());
        c.add(
            &json(r#"{"stores":[{"id":"b"},{"id":"c"},{"id":"d"}]}"#),
            &f,
        )
        .unwrap();
        assert!(c.is_full());
        assert_eq!(c.finish().unwrap().0, vec!["a", "b", "c"]);
        let mut c = Collected::new(3);
        c.add(&json(r#"{"stores":[{"id":"a"}]}"#), &f).unwrap();
        assert!(matches!(
            c.add(&json(r#"{"error":"x"}"#), &f),
            Err(ListingError::NoArray { .. })
        ));
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
