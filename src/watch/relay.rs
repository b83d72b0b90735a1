//! Relay mode: consume the vendor queue, forward every message unchanged to the
//! queue the app reads, delete it only after the forward succeeded, and observe
//! each record.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::queue::{message_size, Entry, Message, RelayQueues, MAX_BATCH_BYTES};
use crate::metrics::{InputSource, Metrics, RelayOutcome};
use crate::observe::{Extractor, Observation};
use crate::retry::RetryPolicy;

/// Tries per batch for entries that failed in a retryable way; what still fails
/// stays in the vendor queue and comes back after its visibility timeout.
const ATTEMPTS: u32 = 6;

pub struct Relay<Q> {
    feed: String,
    queues: Q,
    extractor: Extractor,
    observations: mpsc::Sender<Vec<Observation>>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
}

impl<Q: RelayQueues> Relay<Q> {
    pub fn new(
        feed: String,
        queues: Q,
        extractor: Extractor,
        observations: mpsc::Sender<Vec<Observation>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            feed,
            queues,
            extractor,
            observations,
            metrics,
            policy: RetryPolicy {
                base: Duration::from_millis(200),
                cap: Duration::from_secs(20),
                max_retries: ATTEMPTS,
            },
        }
    }

    #[cfg(test)]
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Runs until `cancel`. A long poll under way is abandoned (it may wait
    /// 20 s, longer than a shutdown may take): whatever SQS handed to it stays
    /// in the vendor queue and becomes visible again after the queue's
    /// visibility timeout, so nothing is lost. A batch already received is
    /// forwarded and deleted before returning.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        tracing::info!(feed = %self.feed, "relay started");
        while !cancel.is_cancelled() {
            let received = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.queues.receive() => r,
            };
            match received {
                Ok(msgs) => {
                    if failures > 0 {
                        tracing::info!(feed = %self.feed, "receiving from the vendor queue again");
                    }
                    failures = 0;
                    if !msgs.is_empty() {
                        self.relay_batch(msgs).await;
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // One line per failure streak, then every 10th, so a dead
                    // queue does not flood the log.
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::error!(feed = %self.feed, error = %e, failures, retryable = e.retryable, "cannot receive from the vendor queue");
                    }
                    let attempt = failures.min(self.policy.max_retries);
                    let delay = self
                        .policy
                        .delay(attempt, None, &mut rand::rng())
                        .unwrap_or(self.policy.cap);
                    // Access denied or a missing queue will not heal quickly.
                    let delay = if e.retryable {
                        delay
                    } else {
                        delay.max(Duration::from_secs(30))
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(feed = %self.feed, "relay stopped");
    }

    /// Forwards, deletes and observes one received batch.
    pub async fn relay_batch(&self, msgs: Vec<Message>) {
        let mut observed = Vec::with_capacity(msgs.len());
        for group in size_groups(&msgs) {
            let forwarded = self.forward(&group).await;
            let failed = group.len() - forwarded.len();
            if failed > 0 {
                self.metrics
                    .relay(&self.feed, RelayOutcome::Failed, failed as u64);
            }
            if forwarded.is_empty() {
                continue;
            }
            self.metrics
                .relay(&self.feed, RelayOutcome::Forwarded, forwarded.len() as u64);
            self.delete(&forwarded).await;
            for m in forwarded {
                let ex = self.extractor.extract(&m.body, &m.message_id, m.sent);
                for p in ex.problems {
                    self.metrics.reject(&self.feed, InputSource::Queue, p);
                }
                observed.push(ex.observation);
            }
        }
        if !observed.is_empty() && self.observations.send(observed).await.is_err() {
            tracing::warn!(feed = %self.feed, "feed monitor is gone; observations dropped");
        }
    }

    /// Returns the messages that reached the destination.
    async fn forward<'a>(&self, group: &[&'a Message]) -> Vec<&'a Message> {
        let mut pending: Vec<&Message> = group.to_vec();
        let mut done = Vec::with_capacity(group.len());
        for attempt in 1..=ATTEMPTS {
            match self.queues.forward(&pending).await {
                Ok(entries) => {
                    let mut retry = Vec::new();
                    for (m, e) in pending.iter().zip(entries) {
                        match e {
                            Entry::Ok => done.push(*m),
                            Entry::Retry(_) => retry.push(*m),
                            Entry::Fatal(reason) => {
                                tracing::error!(feed = %self.feed, message_id = %m.message_id, %reason, "destination refused a message; it stays in the vendor queue");
                            }
                        }
                    }
                    pending = retry;
                }
                Err(e) if e.retryable => {
                    tracing::warn!(feed = %self.feed, error = %e, attempt, "forward failed; retrying");
                }
                Err(e) => {
                    tracing::error!(feed = %self.feed, error = %e, "forward failed; messages stay in the vendor queue");
                    return done;
                }
            }
            if pending.is_empty() {
                break;
            }
            let delay = self.policy.delay(attempt, None, &mut rand::rng());
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
        }
        if !pending.is_empty() {
            tracing::error!(feed = %self.feed, count = pending.len(), "forward kept failing; messages stay in the vendor queue");
        }
        done
    }

    async fn delete(&self, msgs: &[&Message]) {
        let mut pending: Vec<&Message> = msgs.to_vec();
        for attempt in 1..=ATTEMPTS {
            match self.queues.delete(&pending).await {
                Ok(entries) => {
                    pending = pending
                        .iter()
                        .zip(entries)
                        .filter_map(|(m, e)| match e {
                            Entry::Ok => None,
                            Entry::Retry(_) => Some(*m),
                            Entry::Fatal(reason) => {
                                tracing::error!(feed = %self.feed, message_id = %m.message_id, %reason, "cannot delete a forwarded message; it will be delivered again");
                                None
                            }
                        })
                        .collect();
                }
                Err(e) if e.retryable => {
                    tracing::warn!(feed = %self.feed, error = %e, attempt, "delete failed; retrying");
                }
                Err(e) => {
                    tracing::error!(feed = %self.feed, error = %e, count = pending.len(), "cannot delete forwarded messages; they will be delivered again");
                    return;
                }
            }
            if pending.is_empty() {
                return;
            }
            let delay = self.policy.delay(attempt, None, &mut rand::rng());
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
        }
        tracing::error!(feed = %self.feed, count = pending.len(), "delete kept failing; forwarded messages will be delivered again");
    }
}

/// Splits a batch so each SendMessageBatch stays under the size limit.
fn size_groups(msgs: &[Message]) -> Vec<Vec<&Message>> {
    let mut groups: Vec<Vec<&Message>> = Vec::new();
    let mut size = 0;
    for m in msgs {
        let s = message_size(m);
        match groups.last_mut() {
            Some(g) if size + s <= MAX_BATCH_BYTES && g.len() < 10 => {
                g.push(m);
                size += s;
            }
            _ => {
                groups.push(vec![m]);
                size = s;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests;
