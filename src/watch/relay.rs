//! Relay mode: consume the vendor queue, forward every message unchanged to the
//! queue the app reads, delete it only after the forward succeeded, and observe
//! each record.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::relay_queues::{message_size, Entry, Message, RelayQueues, MAX_BATCH_BYTES};
use crate::aws::AwsFailure;
use crate::internal_events::{ForwardFailure, InputRejected, RelayForwardFailed, RelayForwarded};
use crate::metrics::{InputSource, Metrics};
use crate::observe::{Extractor, Observation};
use crate::retry::RetryPolicy;
use crate::shape::{Attribute, LiveMessage, Sampler};

/// Tries per batch for entries that failed in a retryable way; what still fails
/// stays in the vendor queue and comes back after its visibility timeout.
const ATTEMPTS: u32 = 6;

/// Batches a relay loop holds received and not yet deleted while it
/// receives the next one.
const IN_HAND: usize = 2;

pub(crate) struct Relay<Q> {
    feed: String,
    queues: Q,
    extractor: Extractor,
    observations: mpsc::Sender<Vec<Observation>>,
    metrics: Arc<Metrics>,
    policy: RetryPolicy,
    /// Concurrent receive loops.
    pollers: usize,
    /// Message ids in hand or forwarded lately, shared by the loops.
    seen: Seen,
    /// Feeds with a shape check: where forwarded messages are sampled.
    sampler: Option<Arc<Sampler>>,
}

/// How long a forwarded message id is remembered: longer than any
/// visibility timeout a redelivered copy would follow (12 h is SQS's maximum
/// in-flight time; in practice copies come within seconds).
const SEEN_FOR: Duration = Duration::from_secs(15 * 60);
/// At most this many forwarded ids are remembered (the oldest go first).
const SEEN_MAX: usize = 20_000;

/// SQS (standard queues, and moto under concurrent receives) may hand out
/// the same message twice, to two loops at once or again later. The relay
/// forwards each message id once while it remembers it: a copy received
/// while the first is in hand or after it was forwarded is not sent again.
/// Lost at a restart: a kill -9 bound is unchanged.
#[derive(Default)]
struct Seen(std::sync::Mutex<SeenIds>);

#[derive(Default)]
struct SeenIds {
    in_hand: HashSet<String>,
    forwarded: HashSet<String>,
    order: std::collections::VecDeque<(String, std::time::Instant)>,
}

impl Seen {
    /// Splits a received batch into messages to forward and copies of
    /// messages in hand or forwarded already.
    fn claim(&self, msgs: Vec<Message>) -> (Vec<Message>, Vec<Message>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        while s
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > SEEN_FOR)
            || s.order.len() > SEEN_MAX
        {
            if let Some((id, _)) = s.order.pop_front() {
                s.forwarded.remove(&id);
            }
        }
        let mut fresh = Vec::with_capacity(msgs.len());
        let mut copies = Vec::new();
        for m in msgs {
            if s.forwarded.contains(&m.message_id) || !s.in_hand.insert(m.message_id.clone()) {
                copies.push(m);
            } else {
                fresh.push(m);
            }
        }
        (fresh, copies)
    }

    /// `forwarded` reached the destination; every other claimed id of the
    /// batch is released (it comes back and is tried again).
    fn forwarded(&self, forwarded: &[Message]) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        for m in forwarded {
            s.in_hand.remove(&m.message_id);
            if s.forwarded.insert(m.message_id.clone()) {
                s.order.push_back((m.message_id.clone(), now));
            }
        }
    }

    fn release(&self, ids: impl Iterator<Item = String>) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            s.in_hand.remove(&id);
        }
    }

    fn was_forwarded(&self, m: &Message) -> bool {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.forwarded.contains(&m.message_id)
    }
}

impl<Q: RelayQueues> Relay<Q> {
    pub(crate) fn new(
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
            pollers: 1,
            seen: Seen::default(),
            sampler: None,
        }
    }

    /// Offers forwarded messages to the feed's shape sample (at most one a batch).
    pub(crate) fn with_sampler(mut self, sampler: Option<Arc<Sampler>>) -> Self {
        self.sampler = sampler;
        self
    }

    #[cfg(test)]
    pub(crate) fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Concurrent receive loops (`watch.pollers`); see [`Relay::run`].
    pub(crate) fn with_pollers(mut self, pollers: usize) -> Self {
        self.pollers = pollers.max(1);
        self
    }

    /// Runs `pollers` loops until `cancel`. Each loop receives the next batch
    /// while up to [`IN_HAND`] batches it received before are forwarded and
    /// then, each as soon as its forward succeeded, deleted: a loop takes
    /// about one SQS round trip per batch of 10 instead of three. A batch is
    /// deleted only after its forward succeeded, so a kill -9 re-forwards at
    /// most [`IN_HAND`] batches per loop. On a FIFO queue SQS hands out no
    /// message of a group while an earlier one of it is in flight, and each
    /// batch is deleted right after its forward, so order per group holds with
    /// any number of loops.
    ///
    /// A long poll under way at `cancel` is abandoned (it may wait 20 s,
    /// longer than a shutdown may take): whatever SQS handed to it stays in
    /// the vendor queue and becomes visible again after the queue's
    /// visibility timeout, so nothing is lost. Batches already received are
    /// forwarded and deleted before returning.
    pub(crate) async fn run(&self, cancel: CancellationToken) {
        tracing::info!(pollers = self.pollers, "relay started");
        futures::future::join_all((0..self.pollers).map(|_| self.poll(&cancel))).await;
        tracing::info!("relay stopped");
    }

    /// One loop: receives while fewer than [`IN_HAND`] batches are being
    /// forwarded and deleted.
    async fn poll(&self, cancel: &CancellationToken) {
        let mut failures: u32 = 0;
        let mut pause: Option<Duration> = None;
        let mut in_hand = FuturesUnordered::new();
        let mut receiving = None;
        let mut stopping = false;
        loop {
            if receiving.is_none() && !stopping && in_hand.len() < IN_HAND {
                receiving = Some(Box::pin(self.receive_after(pause.take())));
            }
            if receiving.is_none() && in_hand.is_empty() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled(), if !stopping => {
                    stopping = true;
                    receiving = None;
                }
                Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
                received = async { receiving.as_mut().expect("guarded").await }, if receiving.is_some() => {
                    receiving = None;
                    match received {
                        Ok(msgs) => {
                            if failures > 0 {
                                tracing::info!("receiving from the vendor queue again");
                            }
                            failures = 0;
                            if !msgs.is_empty() {
                                in_hand.push(self.relay_batch(msgs));
                            }
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            // One line per failure streak, then every 10th, so a dead
                            // queue does not flood the log.
                            if failures == 1 || failures.is_multiple_of(10) {
                                tracing::error!(error = %e, failures, retryable = e.retryable, "cannot receive from the vendor queue");
                            }
                            let attempt = failures.min(self.policy.max_retries);
                            let delay = self
                                .policy
                                .delay(attempt, None, &mut rand::rng())
                                .unwrap_or(self.policy.cap);
                            // Access denied or a missing queue will not heal quickly.
                            pause = Some(if e.retryable {
                                delay
                            } else {
                                delay.max(Duration::from_secs(30))
                            });
                        }
                    }
                }
            }
        }
    }

    /// A receive, after a pause if the last one failed.
    async fn receive_after(&self, pause: Option<Duration>) -> Result<Vec<Message>, AwsFailure> {
        if let Some(d) = pause {
            tokio::time::sleep(d).await;
        }
        self.queues.receive().await
    }

    /// Forwards, deletes and observes one received batch.
    pub(crate) async fn relay_batch(&self, msgs: Vec<Message>) {
        let (fresh, copies) = self.seen.claim(msgs);
        let claimed: Vec<String> = fresh.iter().map(|m| m.message_id.clone()).collect();
        let mut forwarded = self.forward_batch(fresh).await;
        self.seen.forwarded(&forwarded);
        self.seen.release(claimed.into_iter());
        // A second copy of a message already forwarded is deleted, not sent
        // again; one whose first copy is still under way (or failed) is left
        // to come back after its visibility timeout.
        let (done, waiting): (Vec<_>, Vec<_>) =
            copies.into_iter().partition(|m| self.seen.was_forwarded(m));
        if !done.is_empty() || !waiting.is_empty() {
            tracing::debug!(
                deleted = done.len(),
                left = waiting.len(),
                "the vendor queue delivered messages twice; forwarded once"
            );
        }
        forwarded.extend(done);
        self.delete_batch(forwarded).await;
    }

    /// Forwards one received batch and observes what reached the
    /// destination; returns those messages, to be deleted.
    async fn forward_batch(&self, msgs: Vec<Message>) -> Vec<Message> {
        if msgs.is_empty() {
            return msgs;
        }
        let mut observed = Vec::with_capacity(msgs.len());
        let mut done: HashSet<&str> = HashSet::with_capacity(msgs.len());
        let now = chrono::Utc::now();
        // One question to the sampler a batch: it takes one message per spacing.
        let mut sample = self.sampler.as_ref().filter(|s| s.wants(now));
        for group in size_groups(&msgs) {
            // What fails is counted (and logged) by `forward`.
            let forwarded = self.forward(&group).await;
            if forwarded.is_empty() {
                continue;
            }
            self.metrics.emit(RelayForwarded {
                feed: &self.feed,
                count: forwarded.len(),
            });
            for m in forwarded {
                let ex = self.extractor.extract(&m.body, &m.message_id, m.sent);
                if ex.problems.is_empty() {
                    if let Some(s) = sample.take() {
                        s.offer(live_message(m, &ex.observation, now));
                    }
                }
                for reason in ex.problems {
                    self.metrics.emit(InputRejected {
                        feed: &self.feed,
                        source: InputSource::Queue,
                        reason,
                    });
                }
                observed.push(ex.observation);
                done.insert(m.message_id.as_str());
            }
        }
        if !observed.is_empty() && self.observations.send(observed).await.is_err() {
            tracing::warn!("feed monitor is gone; observations dropped");
        }
        if done.len() == msgs.len() {
            return msgs;
        }
        let done: HashSet<String> = done.into_iter().map(str::to_string).collect();
        msgs.into_iter()
            .filter(|m| done.contains(&m.message_id))
            .collect()
    }

    /// Deletes forwarded messages from the vendor queue.
    async fn delete_batch(&self, forwarded: Vec<Message>) {
        if forwarded.is_empty() {
            return;
        }
        let refs: Vec<&Message> = forwarded.iter().collect();
        for chunk in refs.chunks(10) {
            self.delete(chunk).await;
        }
    }

    /// Returns the messages that reached the destination; those that did
    /// not are counted and logged here, by why.
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
                            Entry::Fatal(reason) => self.metrics.emit(RelayForwardFailed {
                                feed: &self.feed,
                                count: 1,
                                cause: ForwardFailure::Refused {
                                    message_id: &m.message_id,
                                    reason: &reason,
                                },
                            }),
                        }
                    }
                    pending = retry;
                }
                Err(e) if e.retryable => {
                    tracing::warn!(error = %e, attempt, "forward failed; retrying");
                }
                Err(e) => {
                    self.metrics.emit(RelayForwardFailed {
                        feed: &self.feed,
                        count: pending.len(),
                        cause: ForwardFailure::Call(&e),
                    });
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
            self.metrics.emit(RelayForwardFailed {
                feed: &self.feed,
                count: pending.len(),
                cause: ForwardFailure::KeptFailing,
            });
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
                                tracing::error!(message_id = %m.message_id, %reason, "cannot delete a forwarded message; it will be delivered again");
                                None
                            }
                        })
                        .collect();
                }
                Err(e) if e.retryable => {
                    tracing::warn!(error = %e, attempt, "delete failed; retrying");
                }
                Err(e) => {
                    tracing::error!(error = %e, count = pending.len(), "cannot delete forwarded messages; they will be delivered again");
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
        tracing::error!(
            count = pending.len(),
            "delete kept failing; forwarded messages will be delivered again"
        );
    }
}

/// A forwarded message as the shape sample keeps it.
fn live_message(m: &Message, o: &Observation, now: chrono::DateTime<chrono::Utc>) -> LiveMessage {
    use base64::Engine;
    let attributes = m
        .attributes
        .iter()
        .map(|(name, v)| {
            let value = match (v.string_value(), v.binary_value()) {
                (Some(s), _) => s.to_string(),
                (None, Some(b)) => base64::engine::general_purpose::STANDARD.encode(b.as_ref()),
                (None, None) => String::new(),
            };
            let attribute = Attribute {
                data_type: v.data_type().to_string(),
                value,
            };
            (name.clone(), attribute)
        })
        .collect();
    LiveMessage {
        id: o.id.clone(),
        event_time: o.event_time,
        received_at: now,
        body: m.body.clone(),
        attributes,
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
