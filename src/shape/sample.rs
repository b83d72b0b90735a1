//! The live messages a shape check compares with: a small ring per feed,
//! filled by the relay (each forwarded message's body and attributes) or by
//! the report API (a body the app chose to send along), written to the store
//! so that it outlives a restart and `gapwatch check-shape` can read it.
//!
//! Messages are taken at most one per `spacing` (the check's period divided
//! by the sample's size), so the ring spans about one period of the feed
//! rather than its last second, and a busy feed costs one lock per batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::diff::Attribute;

/// One live message as the app received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct LiveMessage {
    /// Its record id, read as the live side reads it (the ledger id).
    pub(crate) id: String,
    pub(crate) event_time: DateTime<Utc>,
    /// When gapwatch saw it (the ring keeps the newest).
    pub(crate) received_at: DateTime<Utc>,
    /// The message body as received (JSON text).
    pub(crate) body: String,
    pub(crate) attributes: BTreeMap<String, Attribute>,
}

/// A feed's ring of live messages. Shared by the relay (or the report API)
/// that fills it and the checker that reads and saves it.
#[derive(Debug)]
pub(crate) struct Sampler {
    size: usize,
    spacing: chrono::TimeDelta,
    state: Mutex<Ring>,
    /// Woken when a message was taken (the checker saves it).
    taken: Notify,
}

#[derive(Debug, Default)]
struct Ring {
    messages: VecDeque<LiveMessage>,
    last_taken: Option<DateTime<Utc>>,
    /// Taken since the last [`Sampler::unsaved`].
    unsaved: bool,
}

impl Sampler {
    /// Keeps `size` messages, one per `spacing` at most.
    pub(crate) fn new(size: usize, spacing: Duration) -> Self {
        Self {
            size: size.max(1),
            spacing: chrono::TimeDelta::from_std(spacing).unwrap_or(chrono::TimeDelta::MAX),
            state: Mutex::new(Ring::default()),
            taken: Notify::new(),
        }
    }

    /// The ring of a feed whose check runs every `every` over `size` messages.
    pub(crate) fn for_check(size: usize, every: Duration) -> Self {
        Self::new(size, every / u32::try_from(size.max(1)).unwrap_or(u32::MAX))
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a message seen at `now` would be taken: ask before building one.
    pub(crate) fn wants(&self, now: DateTime<Utc>) -> bool {
        self.ring()
            .last_taken
            .is_none_or(|t| now - t >= self.spacing || now < t)
    }

    /// Takes `message` if one is due (see [`Sampler::wants`]); the oldest
    /// goes when the ring is full. A message id already in it is not taken twice.
    pub(crate) fn offer(&self, message: LiveMessage) -> bool {
        let mut ring = self.ring();
        let now = message.received_at;
        let due = ring
            .last_taken
            .is_none_or(|t| now - t >= self.spacing || now < t);
        if !due || ring.messages.iter().any(|m| m.id == message.id) {
            return false;
        }
        ring.last_taken = Some(now);
        ring.messages.push_back(message);
        while ring.messages.len() > self.size {
            ring.messages.pop_front();
        }
        ring.unsaved = true;
        drop(ring);
        self.taken.notify_one();
        true
    }

    /// Puts back what the store kept (at start): older than anything taken since.
    pub(crate) fn restore(&self, mut saved: Vec<LiveMessage>) {
        let mut ring = self.ring();
        saved.sort_by_key(|m| m.received_at);
        for m in saved.into_iter().rev() {
            if ring.messages.len() >= self.size {
                break;
            }
            if !ring.messages.iter().any(|x| x.id == m.id) {
                ring.messages.push_front(m);
            }
        }
    }

    /// The messages held now, oldest first.
    pub(crate) fn messages(&self) -> Vec<LiveMessage> {
        self.ring().messages.iter().cloned().collect()
    }

    /// The messages to save if any was taken since the last call.
    pub(crate) fn unsaved(&self) -> Option<Vec<LiveMessage>> {
        let mut ring = self.ring();
        std::mem::take(&mut ring.unsaved).then(|| ring.messages.iter().cloned().collect())
    }

    /// A save failed: the messages stay unsaved.
    pub(crate) fn save_failed(&self) {
        self.ring().unsaved = true;
    }

    /// Resolves once a message was taken after the last call.
    pub(crate) async fn taken(&self) {
        self.taken.notified().await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + chrono::TimeDelta::seconds(s)
    }

    fn msg(id: &str, s: i64) -> LiveMessage {
        LiveMessage {
            id: id.into(),
            event_time: at(s),
            received_at: at(s),
            body: format!(r#"{{"id":"{id}"}}"#),
            attributes: BTreeMap::new(),
        }
    }

    fn ids(s: &Sampler) -> Vec<String> {
        s.messages().into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn one_per_spacing_newest_kept() {
        let s = Sampler::new(3, Duration::from_secs(10));
        assert!(s.wants(at(0)));
        assert!(s.offer(msg("a", 0)));
        assert!(!s.wants(at(5)));
        assert!(!s.offer(msg("b", 5)), "inside the spacing");
        assert!(s.offer(msg("c", 10)));
        assert!(!s.offer(msg("c", 30)), "an id already held");
        assert!(s.offer(msg("d", 30)));
        assert!(s.offer(msg("e", 40)));
        assert_eq!(ids(&s), ["c", "d", "e"]);
        // A clock that went back does not stop sampling for good.
        assert!(s.offer(msg("f", -100)));
    }

    #[test]
    fn unsaved_until_taken_and_after_a_failed_save() {
        let s = Sampler::for_check(2, Duration::from_secs(20));
        assert!(s.unsaved().is_none());
        s.offer(msg("a", 0));
        assert_eq!(s.unsaved().map(|m| m.len()), Some(1));
        assert!(s.unsaved().is_none());
        s.save_failed();
        assert!(s.unsaved().is_some());
        // for_check: 20 s over 2 messages is one per 10 s.
        assert!(!s.wants(at(9)));
        assert!(s.wants(at(10)));
    }

    #[test]
    fn restore_puts_saved_messages_before_new_ones() {
        let s = Sampler::new(3, Duration::ZERO);
        s.offer(msg("new", 100));
        s.restore(vec![msg("old2", 20), msg("old1", 10), msg("old0", 0)]);
        assert_eq!(ids(&s), ["old1", "old2", "new"]);
        assert!(s.unsaved().is_some(), "the new one still needs saving");
    }
}
