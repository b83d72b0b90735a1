//! The relay's seam to SQS: receive from the vendor queue, forward to the
//! destination, delete from the vendor queue.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    SendMessageBatchRequestEntry,
};
use chrono::{DateTime, TimeZone, Utc};

use crate::aws::{classify, AwsFailure};
use crate::internal_events::AwsRequestCompleted;
use crate::metrics::{AwsOperation, AwsOutcome, Metrics};

/// A message received from the vendor queue.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Message {
    pub(crate) message_id: String,
    pub(crate) receipt_handle: String,
    pub(crate) body: String,
    pub(crate) sent: DateTime<Utc>,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
    /// FIFO queues: carried over to the destination.
    pub(crate) group_id: Option<String>,
    pub(crate) dedup_id: Option<String>,
}

/// The outcome of one entry of a batch call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Ok,
    /// Retrying may help (throttling, internal error).
    Retry(String),
    /// Retrying will not help (the message itself is refused).
    Fatal(String),
}

/// Contract: `receive` is only called by a relay that forwards and then deletes
/// every message it returns; there is no receive for peeking.
pub(crate) trait RelayQueues: Send + Sync + 'static {
    /// Long-polls the vendor queue for up to 10 messages.
    fn receive(&self) -> impl Future<Output = Result<Vec<Message>, AwsFailure>> + Send;
    /// Sends the messages, unchanged, to the destination; one entry per message,
    /// in order.
    fn forward(
        &self,
        msgs: &[&Message],
    ) -> impl Future<Output = Result<Vec<Entry>, AwsFailure>> + Send;
    /// Deletes the messages from the vendor queue; one entry per message, in order.
    fn delete(
        &self,
        msgs: &[&Message],
    ) -> impl Future<Output = Result<Vec<Entry>, AwsFailure>> + Send;
}

/// SendMessageBatch refuses batches above 256 KiB (the sum of bodies and
/// attributes); larger groups are split.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

pub(crate) fn message_size(m: &Message) -> usize {
    m.body.len()
        + m.attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + v.data_type().len()
                    + v.string_value().map_or(0, str::len)
                    + v.binary_value().map_or(0, |b| b.as_ref().len())
            })
            .sum::<usize>()
}

/// A failed entry of a batch answer: its index (entry ids are indexes) and
/// whether retrying can help (SQS says the sender is at fault when it cannot).
fn failed_entry(
    id: String,
    code: String,
    message: Option<String>,
    sender_fault: bool,
) -> (Option<usize>, Entry) {
    let msg = format!("{code}: {}", message.unwrap_or_default());
    let entry = if sender_fault {
        Entry::Fatal(msg)
    } else {
        Entry::Retry(msg)
    };
    (id.parse().ok(), entry)
}

// === impl SqsQueues ===

pub(crate) struct SqsQueues {
    client: aws_sdk_sqs::Client,
    source: String,
    destination: String,
    dest_fifo: bool,
    metrics: Arc<Metrics>,
    wait_seconds: i32,
}

impl SqsQueues {
    pub(crate) fn new(
        client: aws_sdk_sqs::Client,
        source: String,
        destination: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let dest_fifo = destination.ends_with(".fifo");
        Self {
            client,
            source,
            destination,
            dest_fifo,
            metrics,
            wait_seconds: 20,
        }
    }

    fn count<T, E, R>(
        &self,
        call: AwsOperation,
        r: &Result<T, aws_sdk_sqs::error::SdkError<E, R>>,
    ) -> Option<AwsFailure>
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let failure = r.as_ref().err().map(classify);
        self.metrics.emit(AwsRequestCompleted {
            call,
            outcome: failure.as_ref().map_or(AwsOutcome::Ok, |f| f.outcome),
        });
        failure
    }
}

impl RelayQueues for SqsQueues {
    async fn receive(&self) -> Result<Vec<Message>, AwsFailure> {
        let r = self
            .client
            .receive_message()
            .queue_url(&self.source)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .message_attribute_names("All")
            .send()
            .await;
        if let Some(f) = self.count(AwsOperation::SqsReceiveMessage, &r) {
            return Err(f);
        }
        let out = r.map_err(|e| classify(&e))?;
        let now = Utc::now();
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let sys = m.attributes.as_ref();
                let get = |k: MessageSystemAttributeName| sys.and_then(|a| a.get(&k)).cloned();
                let sent = get(MessageSystemAttributeName::SentTimestamp)
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .unwrap_or(now);
                Some(Message {
                    message_id: m.message_id?,
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    sent,
                    attributes: m.message_attributes.unwrap_or_default(),
                    group_id: get(MessageSystemAttributeName::MessageGroupId),
                    dedup_id: get(MessageSystemAttributeName::MessageDeduplicationId),
                })
            })
            .collect())
    }

    async fn forward(&self, msgs: &[&Message]) -> Result<Vec<Entry>, AwsFailure> {
        let mut req = self
            .client
            .send_message_batch()
            .queue_url(&self.destination);
        for (i, m) in msgs.iter().enumerate() {
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&m.body)
                .set_message_attributes((!m.attributes.is_empty()).then(|| m.attributes.clone()));
            if self.dest_fifo {
                e = e
                    .message_group_id(m.group_id.clone().unwrap_or_else(|| "gapwatch".into()))
                    .message_deduplication_id(
                        m.dedup_id.clone().unwrap_or_else(|| m.message_id.clone()),
                    );
            }
            req = req.entries(e.build().map_err(|e| AwsFailure {
                outcome: AwsOutcome::Error,
                retryable: false,
                code: None,
                message: e.to_string(),
            })?);
        }
        let r = req.send().await;
        if let Some(f) = self.count(AwsOperation::SqsSendMessageBatch, &r) {
            return Err(f);
        }
        let out = r.map_err(|e| classify(&e))?;
        let mut entries = vec![Entry::Ok; msgs.len()];
        let mut confirmed = vec![false; msgs.len()];
        for ok in out.successful {
            if let Ok(i) = ok.id.parse::<usize>() {
                if let Some(c) = confirmed.get_mut(i) {
                    *c = true;
                }
            }
        }
        for f in out.failed {
            let (i, entry) = failed_entry(f.id, f.code, f.message, f.sender_fault);
            if let Some(i) = i.filter(|i| *i < entries.len()) {
                entries[i] = entry;
                confirmed[i] = true;
            }
        }
        // An entry SQS did not mention was not sent.
        for (e, c) in entries.iter_mut().zip(confirmed) {
            if !c {
                *e = Entry::Retry("not in the batch response".into());
            }
        }
        Ok(entries)
    }

    async fn delete(&self, msgs: &[&Message]) -> Result<Vec<Entry>, AwsFailure> {
        let mut req = self.client.delete_message_batch().queue_url(&self.source);
        for (i, m) in msgs.iter().enumerate() {
            req = req.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .build()
                    .map_err(|e| AwsFailure {
                        outcome: AwsOutcome::Error,
                        retryable: false,
                        code: None,
                        message: e.to_string(),
                    })?,
            );
        }
        let r = req.send().await;
        if let Some(f) = self.count(AwsOperation::SqsDeleteMessageBatch, &r) {
            return Err(f);
        }
        let out = r.map_err(|e| classify(&e))?;
        let mut entries = vec![Entry::Ok; msgs.len()];
        for f in out.failed {
            let (i, entry) = failed_entry(f.id, f.code, f.message, f.sender_fault);
            if let Some(e) = i.and_then(|i| entries.get_mut(i)) {
                *e = entry;
            }
        }
        Ok(entries)
    }
}
