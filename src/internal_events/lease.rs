//! Feed leases: which replica decides a feed's gaps and fills.

use super::InternalEvent;
use crate::metrics::Series;

const TARGET: &str = "gapwatch::lease";

/// A renewal round for one feed's lease ended (renewed, taken, lost, or
/// not reached).
pub(crate) struct FeedLeaseChecked<'a> {
    pub(crate) feed: &'a str,
    pub(crate) replica: &'a str,
    /// Whether this replica held the lease before, and holds it now.
    pub(crate) was: bool,
    pub(crate) is: bool,
    /// The fencing token of the lease now.
    pub(crate) token: i64,
    /// Who holds it now, when known.
    pub(crate) holder: Option<&'a str>,
}

impl InternalEvent for FeedLeaseChecked<'_> {
    fn emit(self, series: &Series<'_>) {
        let feed = self.feed;
        if self.is && !self.was {
            tracing::info!(target: TARGET, feed = %feed, replica = %self.replica, token = self.token, "feed lease taken");
        } else if self.was && !self.is {
            tracing::warn!(target: TARGET, feed = %feed, replica = %self.replica, holder = ?self.holder, "feed lease lost");
        }
        series.feed_leader(feed).set(i64::from(self.is));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    fn checked(was: bool, is: bool) -> FeedLeaseChecked<'static> {
        FeedLeaseChecked {
            feed: "orders",
            replica: "pod-a-1",
            was,
            is,
            token: 3,
            holder: Some("pod-b-2"),
        }
    }

    #[test]
    fn feed_lease_checked() {
        let key = "gapwatch_feed_leader{feed=\"orders\"}";
        let e = emit(checked(false, true));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        assert_eq!(e.line()["message"], "feed lease taken");
        assert_eq!(e.line()["token"], 3);
        let e = emit(checked(true, false));
        assert_eq!(e.moved, series(&[(key, 0.0)]));
        assert_eq!(e.line()["message"], "feed lease lost");
        assert_eq!(e.line()["holder"], "Some(\"pod-b-2\")");
        // Renewed: the gauge only.
        let e = emit(checked(true, true));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        assert!(e.logs.is_empty());
    }
}
