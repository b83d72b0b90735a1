//! Which replica makes each feed's decisions. Every replica watches every feed
//! (observations, freshness, metrics), but only the holder of a feed's lease
//! opens and closes its gaps, plans and runs its fills. The keeper takes and
//! renews this replica's leases; the database's clock decides expiry, and the
//! fencing token it hands out makes the store refuse a checkpoint from a
//! replica whose lease was taken over. With SQLite (one replica) every lease
//! is simply held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::internal_events::FeedLeaseChecked;
use crate::metrics::Metrics;
use crate::store::{Store, LEASE_TTL};

/// How often leases are renewed (and free ones taken).
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A holder stops acting this long before the database would let its lease go:
/// the renewal's round trip and the difference between clock rates.
const SAFETY: Duration = Duration::from_secs(2);

/// A feed's lease as this replica last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseView {
    /// The replica holding it (None: not known yet).
    pub(crate) holder: Option<String>,
    /// While this replica holds it: until when it may act (its own monotonic
    /// clock, measured from before the renewal was sent).
    mine_until: Option<Instant>,
    /// Changes with every holder change this replica saw.
    pub(crate) token: i64,
}

impl LeaseView {
    /// Whether this replica may make the feed's decisions now.
    pub(crate) fn is_mine(&self) -> bool {
        self.mine_until.is_some_and(|u| Instant::now() < u)
    }

    /// Whether another replica is known to hold the lease now: its
    /// decisions, not this replica's, are the feed's. False while the lease
    /// cannot be read (the store is down): then nobody is known to decide,
    /// and this replica keeps what it detected until someone can.
    pub(crate) fn is_elsewhere(&self) -> bool {
        self.holder.is_some() && self.mine_until.is_none()
    }

    /// A lease that is always held: for a store with one writer and for tests.
    pub(crate) fn held() -> Self {
        Self {
            holder: Some("local".into()),
            mine_until: Some(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)),
            token: 1,
        }
    }
}

struct Feed {
    name: String,
    view: watch::Sender<LeaseView>,
}

/// Takes and renews this replica's feed leases.
pub(crate) struct LeaseKeeper {
    store: Store,
    replica: String,
    metrics: Arc<Metrics>,
    feeds: Vec<Feed>,
}

impl LeaseKeeper {
    /// `store` must be [`Store::for_replica`] of `replica`.
    pub(crate) fn new(store: Store, replica: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            replica: replica.to_string(),
            metrics,
            feeds: Vec::new(),
        }
    }

    /// Keeps the lease of `feed`; the receiver changes with every renewal.
    pub(crate) fn watch(&mut self, feed: &str) -> watch::Receiver<LeaseView> {
        let (tx, rx) = watch::channel(LeaseView::default());
        self.metrics.init_lease(feed);
        self.feeds.push(Feed {
            name: feed.to_string(),
            view: tx,
        });
        rx
    }

    /// One round over every feed: renew what is held, take what is free.
    pub(crate) async fn round(&self) {
        for feed in &self.feeds {
            self.renew(feed).await;
        }
    }

    async fn renew(&self, feed: &Feed) {
        let sent = Instant::now();
        let before = feed.view.borrow().clone();
        let after = match self.store.acquire_lease(&feed.name, LEASE_TTL).await {
            Ok(lease) => LeaseView {
                holder: Some(lease.holder),
                mine_until: lease.mine.then(|| sent + LEASE_TTL.saturating_sub(SAFETY)),
                token: lease.token,
            },
            Err(error) => {
                // Unknown whether the renewal happened: act only as long as the
                // last one that did allows.
                let still = before.is_mine();
                if !still {
                    self.store.lapse_lease(&feed.name);
                }
                tracing::debug!(feed = %feed.name, %error, holding = still, "cannot renew the feed lease");
                LeaseView {
                    // Once it lapsed, who holds it is unknown until a renewal
                    // gets through again.
                    holder: before.holder.clone().filter(|_| still),
                    mine_until: before.mine_until.filter(|_| still),
                    token: before.token,
                }
            }
        };
        let (was, is) = (before.is_mine(), after.is_mine());
        self.metrics.emit(FeedLeaseChecked {
            feed: &feed.name,
            replica: &self.replica,
            was,
            is,
            token: after.token,
            holder: after.holder.as_deref(),
        });
        // Receivers wake on changes of holder only, not on every renewal.
        feed.view.send_if_modified(|v| {
            let changed = v.holder != after.holder || v.token != after.token || was != is;
            *v = after;
            changed
        });
    }

    /// Renews until `cancel`; then lets the leases go by expiry (a stopping
    /// replica's last checkpoints must still commit).
    pub(crate) async fn run(&self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => self.round().await,
            }
        }
    }
}

/// This process's name among replicas: the pod name (`HOSTNAME`) and the
/// process id, so a restarted process is a new holder.
pub(crate) fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gapwatch".into());
    format!("{host}-{}", std::process::id())
}
