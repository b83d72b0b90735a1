//! SQS helpers: a plain `SendMessageBatch` loop (the baseline gapwatch's SQS
//! sink is compared with) and drainers that keep a moto queue short, because
//! moto's receive slows down as a queue fills.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use tokio::task::JoinHandle;

/// A record body shaped like the vendor simulator's (`id`, `created_at`, `seq`, `payload`).
pub fn body(prefix: &str, seq: u64) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        r#"{{"id":"{prefix}-{seq:012}","created_at":"{now}","seq":{seq},"payload":"order {seq}: sku {} qty {} price {}.{:02}"}}"#,
        (seq * 35_761) % 100_000,
        seq % 5 + 1,
        (seq * 419) % 1000,
        seq % 100
    )
}

/// Sends `n` bodies in batches of 10 from one sequential loop, with the three
/// message attributes gapwatch's sink adds; returns the seconds it took.
pub async fn send_loop(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    prefix: &str,
    n: u64,
) -> Result<f64> {
    send_paced(sqs, queue, prefix, n, None).await
}

/// [`send_loop`], waiting whenever more than `backlog` of what was sent is not
/// yet `consumed` (moto's requests cost more the deeper its queue).
pub async fn send_paced(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    prefix: &str,
    n: u64,
    gate: Option<(Arc<AtomicU64>, u64)>,
) -> Result<f64> {
    let started = std::time::Instant::now();
    let mut seq = 0u64;
    while seq < n {
        if let Some((consumed, backlog)) = &gate {
            while seq > consumed.load(Ordering::Relaxed) + backlog {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let mut req = sqs.send_message_batch().queue_url(queue);
        let end = (seq + 10).min(n);
        for s in seq..end {
            req = req.entries(
                SendMessageBatchRequestEntry::builder()
                    .id((s - seq).to_string())
                    .message_body(body(prefix, s + 1))
                    .message_attributes(
                        "gapwatch-record-id",
                        string_attr(&format!("{prefix}-{:012}", s + 1)),
                    )
                    .message_attributes("gapwatch-gap-id", string_attr("1"))
                    .message_attributes("gapwatch-backfill", string_attr("true"))
                    .build()?,
            );
        }
        let r = req.send().await.context("SendMessageBatch")?;
        if !r.failed.is_empty() {
            bail!("SendMessageBatch: {} entries failed", r.failed.len());
        }
        seq = end;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn string_attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data type is set")
}

/// Receivers per drained queue: enough that moto's queues stay short even
/// while gapwatch sends from two chunks at once.
pub const DRAINERS: usize = 4;

/// Record id → the SQS message ids that carried it.
type Carriers = HashMap<String, Vec<String>>;

/// What drainers saw.
#[derive(Debug, Default)]
pub struct Drained {
    pub ids: Carriers,
    /// Largest `ApproximateNumberOfMessages` seen while draining.
    pub max_depth: u64,
}

impl Drained {
    /// Every record exactly once, `want` of them. A message received twice
    /// (SQS is at-least-once: moto redelivers what was not deleted within the
    /// visibility timeout) is not a duplicate; the same record in two messages is.
    pub fn check_once(&self, what: &str, want: u64) -> Result<u64> {
        let mut redelivered = 0u64;
        for (id, msgs) in &self.ids {
            let mut distinct = msgs.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() > 1 {
                bail!(
                    "{what}: record {id} arrived in {} different messages",
                    distinct.len()
                );
            }
            redelivered += (msgs.len() - 1) as u64;
        }
        if self.ids.len() as u64 != want {
            bail!(
                "{what}: {} distinct records arrived, expected {want}",
                self.ids.len()
            );
        }
        Ok(redelivered)
    }
}

/// Receivers that delete what they get and note it by record id, plus a
/// watcher of the queue's depth.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    pub received: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Result<Carriers>>>,
    depth: JoinHandle<u64>,
}

impl Drainer {
    pub fn start(sqs: &aws_sdk_sqs::Client, queue: &str, receivers: usize) -> Drainer {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let tasks = (0..receivers)
            .map(|_| {
                let (sqs, queue, stop, received) = (
                    sqs.clone(),
                    queue.to_string(),
                    stop.clone(),
                    received.clone(),
                );
                tokio::spawn(async move { drain(&sqs, &queue, &stop, &received).await })
            })
            .collect();
        let depth = {
            let (sqs, queue, stop) = (sqs.clone(), queue.to_string(), stop.clone());
            tokio::spawn(async move { watch_depth(&sqs, &queue, &stop).await })
        };
        Drainer {
            stop,
            received,
            tasks,
            depth,
        }
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until `want` messages arrived (or `idle` passes without one), then
    /// stops.
    pub async fn finish(self, want: u64, idle: Duration) -> Result<Drained> {
        let mut last = self.count();
        let mut last_change = std::time::Instant::now();
        while self.count() < want && last_change.elapsed() < idle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.count() != last {
                last = self.count();
                last_change = std::time::Instant::now();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Drained::default();
        for t in self.tasks {
            for (id, msgs) in t.await.context("drainer task")?? {
                out.ids.entry(id).or_default().extend(msgs);
            }
        }
        out.max_depth = self.depth.await.unwrap_or(0);
        Ok(out)
    }
}

async fn watch_depth(sqs: &aws_sdk_sqs::Client, queue: &str, stop: &AtomicBool) -> u64 {
    let mut max = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
        {
            let depth = r
                .attributes
                .unwrap_or_default()
                .values()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            max = max.max(depth);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    max
}

async fn drain(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> Result<Carriers> {
    let mut ids = Carriers::new();
    while !stop.load(Ordering::Relaxed) {
        let r = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .context("drainer ReceiveMessage")?;
        let msgs = r.messages.unwrap_or_default();
        if msgs.is_empty() {
            continue;
        }
        let mut del = sqs.delete_message_batch().queue_url(queue);
        for (i, m) in msgs.iter().enumerate() {
            del = del.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()?,
            );
            let message_id = m.message_id().unwrap_or_default().to_string();
            let id = m
                .body()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("<no id: {message_id}>"));
            ids.entry(id).or_default().push(message_id);
        }
        del.send().await.context("drainer DeleteMessageBatch")?;
        received.fetch_add(msgs.len() as u64, Ordering::Relaxed);
    }
    Ok(ids)
}
