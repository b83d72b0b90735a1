//! The ledger's write side: the ids a feed relayed or had reported, buffered
//! and written in batches (one transaction per batch, never per record).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::store::{Origin, Store, StoreError};

/// A buffer this full is written at once …
pub(crate) const BATCH: usize = 500;
/// … and a buffer with anything in it at least this often.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// While the store is failing, at most this many ids wait; beyond it the
/// oldest are let go (the audit then finds them "missing" and re-delivers
/// them: a repeat, never a loss).
pub(crate) const MAX_PENDING: usize = 100_000;

/// Ids a feed relayed or had reported that are not in the store yet: those
/// waiting in the ledger buffer and the edge ids of a gap not saved yet (the
/// store down, its disk full), and a fill's delivered ids until their
/// checkpoint is committed. A fill's dedupe asks here as well as the store,
/// so a record that reached the app while nothing could be written is not
/// sent again by the fill or the audit.
///
/// A multiset: an id waits for each holder that took it, and stops being
/// unwritten when the last of them lets it go (written, or not needed).
#[derive(Clone, Default)]
pub(crate) struct Unwritten(Arc<Mutex<HashMap<String, u32>>>);

impl Unwritten {
    pub(crate) fn hold<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            *m.entry(id.to_string()).or_default() += 1;
        }
    }

    pub(crate) fn release<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(n) = m.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    m.remove(id);
                }
            }
        }
    }

    /// Which of `ids` are held.
    pub(crate) fn known(&self, ids: &[&str]) -> HashSet<String> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_empty() {
            return HashSet::new();
        }
        ids.iter()
            .filter(|id| m.contains_key(**id))
            .map(|id| id.to_string())
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Ids waiting to be written to the ledger.
pub(crate) struct LedgerBuffer {
    origin: Origin,
    unwritten: Unwritten,
    pending: Vec<(String, DateTime<Utc>)>,
    /// When the oldest pending id came in.
    since: Option<Instant>,
    /// Ids let go since the last warning.
    dropped: u64,
}

impl LedgerBuffer {
    pub(crate) fn new(origin: Origin, unwritten: Unwritten) -> Self {
        Self {
            origin,
            unwritten,
            pending: Vec::new(),
            since: None,
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, id: String, event_time: DateTime<Utc>) {
        if self.pending.len() >= MAX_PENDING {
            let excess = self.pending.len() + 1 - MAX_PENDING;
            let gone: Vec<_> = self.pending.drain(..excess).collect();
            self.unwritten
                .release(gone.iter().map(|(id, _)| id.as_str()));
            self.dropped += excess as u64;
        }
        self.unwritten.hold([id.as_str()]);
        self.pending.push((id, event_time));
        self.since.get_or_insert_with(Instant::now);
    }

    /// When the buffer must be written next (None: it is empty).
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.pending.len() >= BATCH {
            return Some(Instant::now());
        }
        self.since.map(|at| at + FLUSH_EVERY)
    }

    /// Writes what is pending if it is due (or `force`); on failure keeps it.
    pub(crate) async fn flush(
        &mut self,
        store: &Store,
        feed: &str,
        force: bool,
    ) -> Result<usize, StoreError> {
        let due = self.due().is_some_and(|at| at <= Instant::now());
        if self.pending.is_empty() || !(due || force) {
            return Ok(0);
        }
        if self.dropped > 0 {
            tracing::warn!(
                feed,
                dropped = self.dropped,
                "ledger buffer full while the store failed; the audit will re-deliver those ids"
            );
            self.dropped = 0;
        }
        for batch in self.pending.chunks(BATCH) {
            store.ledger_add(feed, self.origin, batch).await?;
        }
        let n = self.pending.len();
        self.unwritten
            .release(self.pending.iter().map(|(id, _)| id.as_str()));
        self.pending.clear();
        self.since = None;
        Ok(n)
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[tokio::test]
    async fn writes_in_batches_when_full_or_when_due() {
        let store = Store::memory().await.unwrap();
        let mut b = LedgerBuffer::new(Origin::Relayed, Unwritten::default());
        assert_eq!(b.due(), None);
        b.push("a".into(), t(0));
        assert!(b.due().is_some_and(|at| at > Instant::now()));
        // Not due yet: nothing written.
        assert_eq!(b.flush(&store, "orders", false).await.unwrap(), 0);
        assert_eq!(store.ledger_size("orders").await.unwrap(), 0);
        // At shutdown, whatever is pending.
        assert_eq!(b.flush(&store, "orders", true).await.unwrap(), 1);
        assert_eq!(store.count_ids("orders", "relayed").await.unwrap(), 1);
        for i in 0..BATCH {
            b.push(format!("r{i}"), t(1));
        }
        // Full: due at once.
        assert!(b.due().is_some_and(|at| at <= Instant::now()));
        assert_eq!(b.flush(&store, "orders", false).await.unwrap(), BATCH);
        assert_eq!(b.len(), 0);
        assert_eq!(b.due(), None);
        assert_eq!(store.ledger_size("orders").await.unwrap(), 1 + BATCH as i64);
    }

    #[test]
    fn unwritten_ids_are_held_until_every_holder_lets_go() {
        let u = Unwritten::default();
        u.hold(["a", "b"]);
        u.hold(["a"]);
        assert_eq!(u.known(&["a", "b", "c"]).len(), 2);
        u.release(["a", "b"]);
        // "a" still waits for its second holder.
        assert_eq!(u.known(&["a", "b"]), HashSet::from(["a".to_string()]));
        u.release(["a", "zzz"]);
        assert_eq!(u.len(), 0);
    }

    #[tokio::test]
    async fn the_buffer_holds_its_ids_as_unwritten_until_written() {
        let store = Store::memory().await.unwrap();
        let u = Unwritten::default();
        let mut b = LedgerBuffer::new(Origin::Relayed, u.clone());
        b.push("a".into(), t(0));
        assert_eq!(u.known(&["a"]).len(), 1);
        b.flush(&store, "orders", true).await.unwrap();
        assert_eq!(u.len(), 0);
        assert_eq!(store.known_ids("orders", &["a"]).await.unwrap().len(), 1);
    }

    #[test]
    fn a_full_buffer_lets_the_oldest_go() {
        let mut b = LedgerBuffer::new(Origin::Reported, Unwritten::default());
        for i in 0..MAX_PENDING + 3 {
            b.push(format!("r{i}"), t(0));
        }
        assert_eq!(b.len(), MAX_PENDING);
        assert_eq!(b.pending[0].0, "r3");
        assert_eq!(b.dropped, 3);
    }
}
