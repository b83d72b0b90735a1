//! Publishes live records to the vendor's SQS queue, skipping silenced (and
//! dropped) ones.
//!
//! Follows the history by index, so nothing is buffered twice and a slow queue
//! delays publication without losing records: every batch is retried until it
//! is accepted (or the simulator stops).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
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
    pub envelope: LiveEnvelope,
    /// Publish only odd `seq` records.
    pub odd_only: bool,
}

/// String attributes of a live message.
type Attributes = Vec<(&'static str, &'static str)>;

/// What live records are wrapped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveEnvelope {
    None,
    Eventbridge,
    Sns,
    /// `{"event": "order.created", "data": <record>}` plus attribute `event-type`.
    Custom,
}

/// The static fields of the simulated EventBridge bus and SNS topic.
pub const DETAIL_TYPE: &str = "order.created";
pub const EVENT_SOURCE: &str = "partner.vendor-sim";
pub const ACCOUNT: &str = "123456789012";
pub const TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:vendor-orders";

impl LiveEnvelope {
    /// The message body and the attributes of one record.
    fn wrap(self, record: serde_json::Value, seq: u64, created_at: &str) -> (String, Attributes) {
        use serde_json::json;
        let id = format!("{:08x}-0000-4000-8000-{:012x}", seq as u32, seq);
        match self {
            LiveEnvelope::None => (record.to_string(), Vec::new()),
            LiveEnvelope::Eventbridge => (
                json!({
                    "version": "0",
                    "id": id,
                    "detail-type": DETAIL_TYPE,
                    "source": EVENT_SOURCE,
                    "account": ACCOUNT,
                    "time": format!("{}Z", &created_at[..19]),
                    "region": "us-east-1",
                    "resources": [],
                    "detail": record,
                })
                .to_string(),
                Vec::new(),
            ),
            LiveEnvelope::Sns => (
                json!({
                    "Type": "Notification",
                    "MessageId": id,
                    "TopicArn": TOPIC_ARN,
                    "Message": record.to_string(),
                    "Timestamp": created_at,
                    "SignatureVersion": "1",
                })
                .to_string(),
                Vec::new(),
            ),
            LiveEnvelope::Custom => (
                json!({ "event": DETAIL_TYPE, "data": record }).to_string(),
                vec![("event-type", DETAIL_TYPE)],
            ),
        }
    }
}

impl Publisher {
    pub async fn run(mut self, sim: Arc<Sim>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (bodies, upto) = {
                let history = sim.history();
                let upto = history.len().min(self.next + BATCH * PARALLEL);
                let bodies: Vec<(u64, String, Attributes)> = (self.next..upto)
                    .filter(|&i| !history.records()[i].silenced && !history.records()[i].dropped)
                    .filter(|&i| !self.odd_only || i % 2 == 0)
                    .map(|i| {
                        let view = history.view(i);
                        if self.envelope == LiveEnvelope::None {
                            let body = serde_json::to_string(&view).unwrap_or_default();
                            return (view.seq, body, Vec::new());
                        }
                        let record = serde_json::to_value(view).unwrap_or_default();
                        let created_at = record["created_at"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let (body, attributes) = self.envelope.wrap(record, view.seq, &created_at);
                        (view.seq, body, attributes)
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
                    .filter_map(|(seq, body, attributes)| {
                        let mut e = SendMessageBatchRequestEntry::builder()
                            .id(format!("r{seq}"))
                            .message_body(body);
                        for (name, value) in attributes {
                            e = e.message_attributes(
                                *name,
                                MessageAttributeValue::builder()
                                    .data_type("String")
                                    .string_value(*value)
                                    .build()
                                    .ok()?,
                            );
                        }
                        e.build().ok()
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
