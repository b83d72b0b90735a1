//! Publishes live records to the vendor's SQS queue, skipping silenced (and
//! dropped) ones.
//!
//! Follows the history by index, so nothing is buffered twice and a slow queue
//! delays publication without losing records: every batch is retried until it
//! is accepted (or the simulator stops).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sim::{Sim, Stats};

/// SendMessageBatch takes at most ten entries.
const BATCH: usize = 10;
/// Batches in flight at once.
const PARALLEL: usize = 4;
/// After a wake-up, wait this long so that a trickle of records goes out in
/// fuller batches (moto, the usual peer, slows down under many small calls).
const LINGER: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Publisher {
    pub client: Client,
    pub queue_url: String,
    /// Index of the first history record not yet handled (pre-seeded history is never published).
    pub next: usize,
}

impl Publisher {
    pub async fn run(mut self, sim: Arc<Sim>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (bodies, upto) = {
                let history = sim.history();
                let upto = history.len().min(self.next + BATCH * PARALLEL);
                let bodies: Vec<(u64, String)> = (self.next..upto)
                    .filter(|&i| !history.records()[i].silenced && !history.records()[i].dropped)
                    .map(|i| {
                        let view = history.view(i);
                        let body = serde_json::to_string(&view).unwrap_or_default();
                        (view.seq, body)
                    })
                    .collect();
                (bodies, upto)
            };
            if upto == self.next {
                tokio::select! {
                    () = sim.appended.notified() => {}
                    // Belt and braces: a missed wake-up costs at most this much delay.
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(LINGER) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            let mut tasks = JoinSet::new();
            for chunk in bodies.chunks(BATCH) {
                let entries: Vec<SendMessageBatchRequestEntry> = chunk
                    .iter()
                    .filter_map(|(seq, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(format!("r{seq}"))
                            .message_body(body)
                            .build()
                            .ok()
                    })
                    .collect();
                tasks.spawn(send_all(
                    self.client.clone(),
                    self.queue_url.clone(),
                    entries,
                    sim.clone(),
                ));
            }
            tokio::select! {
                _ = async { while tasks.join_next().await.is_some() {} } => {}
                _ = shutdown.changed() => return,
            }
            self.next = upto;
        }
    }
}

/// Sends one batch, resending the entries SQS refused until all are accepted.
async fn send_all(
    client: Client,
    queue_url: String,
    mut entries: Vec<SendMessageBatchRequestEntry>,
    sim: Arc<Sim>,
) {
    let mut backoff = Duration::from_millis(100);
    while !entries.is_empty() {
        let result = client
            .send_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries.clone()))
            .send()
            .await;
        match result {
            Ok(out) => {
                let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                Stats::bump(&sim.stats.published, (entries.len() - failed.len()) as u64);
                if failed.is_empty() {
                    return;
                }
                Stats::bump(&sim.stats.publish_errors, 1);
                tracing::warn!(failed = failed.len(), "sqs refused some entries, resending");
                entries.retain(|e| failed.contains(&e.id()));
            }
            Err(e) => {
                Stats::bump(&sim.stats.publish_errors, 1);
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "send_message_batch failed, retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
