//! A listed feed's partitions (`partitions.from`), as the vendor lists them.

use std::time::Duration;

use super::InternalEvent;
use crate::metrics::{InputSource, ListingOutcome, Rejection, Series};

const TARGET: &str = "gapwatch::feed::partitions";

/// The vendor listed the feed's partitions.
pub(crate) struct PartitionsListed<'a> {
    pub(crate) feed: &'a str,
    pub(crate) partitions: usize,
    /// Elements of the listing without a usable value (skipped).
    pub(crate) unusable: usize,
}

impl InternalEvent for PartitionsListed<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .partition_listings(self.feed, ListingOutcome::Ok)
            .inc();
        if self.unusable > 0 {
            series
                .rejected_input(self.feed, InputSource::Vendor, Rejection::BadListing)
                .inc();
            tracing::warn!(
                target: TARGET,
                feed = self.feed,
                unusable = self.unusable,
                "partition listing: elements without a usable value skipped"
            );
        }
        tracing::debug!(target: TARGET, feed = self.feed, partitions = self.partitions, "partitions listed");
    }
}

/// The partitions could not be listed; those watched stay.
pub(crate) struct PartitionListingFailed<'a> {
    pub(crate) feed: &'a str,
    /// The source answered, but not with a usable listing.
    pub(crate) bad_listing: bool,
    pub(crate) error: &'a str,
    pub(crate) retry_in: Duration,
}

impl InternalEvent for PartitionListingFailed<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .partition_listings(self.feed, ListingOutcome::Failed)
            .inc();
        if self.bad_listing {
            series
                .rejected_input(self.feed, InputSource::Vendor, Rejection::BadListing)
                .inc();
        }
        tracing::warn!(
            target: TARGET,
            feed = self.feed,
            error = %crate::redact::text(self.error),
            retry_in_s = self.retry_in.as_secs(),
            "cannot list partitions; the partitions watched stay"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    #[test]
    fn partitions_listed() {
        let e = emit(PartitionsListed {
            feed: "orders",
            partitions: 3,
            unusable: 0,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_partition_listings_total{feed=\"orders\",outcome=\"ok\"}",
                1.0
            )])
        );
        assert!(e.messages().is_empty());
        assert_eq!(e.logs[0]["message"], "partitions listed");
        let e = emit(PartitionsListed {
            feed: "orders",
            partitions: 3,
            unusable: 2,
        });
        assert_eq!(
            e.moved,
            series(&[
                ("gapwatch_partition_listings_total{feed=\"orders\",outcome=\"ok\"}", 1.0),
                ("gapwatch_rejected_input_total{feed=\"orders\",reason=\"bad_listing\",source=\"vendor\"}", 1.0),
            ])
        );
        assert_eq!(
            e.line()["message"],
            "partition listing: elements without a usable value skipped"
        );
    }

    #[test]
    fn partition_listing_failed() {
        let e = emit(PartitionListingFailed {
            feed: "orders",
            bad_listing: true,
            error: "records: not an array",
            retry_in: Duration::from_secs(20),
        });
        assert_eq!(
            e.moved,
            series(&[
                ("gapwatch_partition_listings_total{feed=\"orders\",outcome=\"failed\"}", 1.0),
                ("gapwatch_rejected_input_total{feed=\"orders\",reason=\"bad_listing\",source=\"vendor\"}", 1.0),
            ])
        );
        let line = e.line();
        assert_eq!(
            line["message"],
            "cannot list partitions; the partitions watched stay"
        );
        assert_eq!(line["retry_in_s"], 20);
        // The source itself failed: not a bad listing.
        let e = emit(PartitionListingFailed {
            feed: "orders",
            bad_listing: false,
            error: "timeout",
            retry_in: Duration::from_secs(20),
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_partition_listings_total{feed=\"orders\",outcome=\"failed\"}",
                1.0
            )])
        );
    }
}
