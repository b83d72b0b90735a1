//! Where recovered records go: an SQS queue, an HTTP endpoint, or an NDJSON file.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::source::Record;
use crate::aws::classify;
use crate::config::SinkConfig;
use crate::internal_events::AwsRequestCompleted;
use crate::metrics::{AwsOperation, AwsOutcome, Metrics};
use crate::retry::{RetryPolicy, Retryable};
use crate::store::{Store, StoreError};

/// Why a sink could not deliver (part of) a batch. What it did deliver
/// before is in the [`Delivery`] and is committed all the same.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// SQS refused the call (`retryable`: throttling, 5xx, a network
    /// error; else credentials, a missing queue …), or retries ran out.
    #[error("sqs sink: {message}")]
    Sqs { message: String, retryable: bool },
    /// A redirect is a failed delivery: following it would turn the POST
    /// into a GET somewhere else.
    #[error("http sink answered {status}: redirects are not followed, configure the final url")]
    Redirect { status: u16 },
    #[error("http sink answered {status}")]
    HttpStatus { status: u16 },
    /// Connection refused, reset, timed out …, after retries.
    #[error("http sink: {0}")]
    Http(String),
    #[error("file sink {path}: {source}{}", cut_failed.as_ref().map(|c| format!("; cutting the partial page failed too ({c}): it is cut on the next start")).unwrap_or_default())]
    File {
        path: String,
        source: std::io::Error,
        cut_failed: Option<std::io::Error>,
    },
}

/// Why a sink cannot be built from its config (when the daemon or a
/// one-off fill starts).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkBuildError {
    #[error("the sqs sink needs AWS")]
    NoAws,
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid value for header {0:?}")]
    HeaderValue(String),
    #[error("{0}")]
    Client(reqwest::Error),
    /// The file sink's committed length could not be read.
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process (the daemon, another `gapwatch backfill`) writes the
    /// file: two writers would interleave and cut each other's pages.
    #[error("{} is in use by another gapwatch process (use the daemon's POST /api/v1/backfills)", path.display())]
    Locked { path: PathBuf },
    #[error("cannot stat {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot truncate {}: {source}", path.display())]
    Truncate {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl crate::retry::Retryable for SinkError {
    fn is_retryable(&self) -> bool {
        match self {
            SinkError::Sqs { retryable, .. } => *retryable,
            SinkError::Redirect { .. } => false,
            SinkError::HttpStatus { status } => *status >= 500 || matches!(status, 408 | 429),
            SinkError::Http(_) => true,
            // The disk may have room again on the next try.
            SinkError::File { .. } => true,
        }
    }
}

/// What happened to a page handed to a sink.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Indexes (into the page's records) that reached the sink.
    pub(crate) delivered: Vec<usize>,
    /// Indexes the sink refused for good (e.g. too large), with why.
    pub(crate) rejected: Vec<(usize, String)>,
    /// Set when some records could not be delivered now (the page is retried;
    /// what was delivered is recorded so it is not sent again).
    pub(crate) error: Option<SinkError>,
    /// File sink: the output's length with this page in it, to be committed
    /// with the page's checkpoint …
    pub(crate) sink_offset: Option<u64>,
    /// … while this guard keeps other pages out of the file until then.
    pub(crate) hold: Option<tokio::sync::OwnedMutexGuard<FileState>>,
}

/// The message attribute carrying a recovered record's id, so a consumer can
/// drop the rare repeat (a batch re-sent after a crash).
pub(crate) const RECORD_ID_ATTRIBUTE: &str = "gapwatch-record-id";

/// SQS refuses messages (and batches) above 256 KiB.
pub(crate) const SQS_MAX_BYTES: usize = 256 * 1024;
const SQS_ATTEMPTS: u32 = 6;

pub(crate) enum Sink {
    Sqs(SqsSink),
    Http(HttpSink),
    File(FileSink),
}

impl Sink {
    pub(crate) async fn new(
        config: &SinkConfig,
        feed: &str,
        sqs: Option<aws_sdk_sqs::Client>,
        metrics: Arc<Metrics>,
        store: &Store,
    ) -> Result<Sink, SinkBuildError> {
        Ok(match config {
            SinkConfig::Sqs {
                queue_url,
                message_group_id,
                in_flight,
            } => Sink::Sqs(SqsSink {
                in_flight: in_flight.get(),
                client: sqs.ok_or(SinkBuildError::NoAws)?,
                queue_url: queue_url.clone(),
                fifo: queue_url.ends_with(".fifo"),
                group_id: message_group_id.clone().unwrap_or_else(|| feed.to_string()),
                metrics,
            }),
            SinkConfig::Http {
                url,
                headers,
                timeout,
                max_retries,
                batch,
            } => {
                let mut h = HeaderMap::new();
                for (k, v) in headers {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| SinkBuildError::HeaderName(k.clone()))?;
                    let mut value = HeaderValue::from_str(v.expose())
                        .map_err(|_| SinkBuildError::HeaderValue(k.clone()))?;
                    value.set_sensitive(true);
                    h.insert(name, value);
                }
                Sink::Http(HttpSink {
                    client: reqwest::Client::builder()
                        .default_headers(h)
                        .timeout(*timeout)
                        // A redirected POST turns into a GET elsewhere: the
                        // records would count as delivered without arriving.
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(SinkBuildError::Client)?,
                    url: url.clone(),
                    batch: batch.get(),
                    policy: RetryPolicy {
                        base: Duration::from_millis(200),
                        cap: Duration::from_secs(30),
                        max_retries: *max_retries,
                    },
                })
            }
            SinkConfig::File { path } => {
                let committed = store.sink_offset(feed, &path.to_string_lossy()).await?;
                Sink::File(FileSink::open(path.clone(), committed).await?)
            }
        })
    }

    /// The output file of a file sink (its committed length is checkpointed).
    pub(crate) fn file_path(&self) -> Option<String> {
        match self {
            Sink::File(f) => Some(f.path.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    /// How a page of records (already deduplicated) splits into destination
    /// batches, in order: one `SendMessageBatch` (at most 10 messages and
    /// 256 KiB) for SQS, one POST for HTTP, the whole page for a file. Each
    /// batch is committed as soon as it is acknowledged, and at most
    /// [`in_flight`](Self::in_flight) of a chunk are sent and not yet
    /// committed at once (one by default), so a crash re-sends at most that many.
    pub(crate) fn batches(&self, records: &[Record]) -> Vec<Range<usize>> {
        match self {
            Sink::Sqs(_) => sqs_batches(records),
            Sink::Http(h) => (0..records.len())
                .step_by(h.batch)
                .map(|i| i..(i + h.batch).min(records.len()))
                .collect(),
            Sink::File(_) if records.is_empty() => Vec::new(),
            #[allow(clippy::single_range_in_vec_init)] // one batch: the whole page
            Sink::File(_) => vec![0..records.len()],
        }
    }

    /// How many of a chunk's batches may be on their way at once: each is
    /// still committed on its own as soon as it is acknowledged, so a crash
    /// re-sends at most this many batches of the chunk.
    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Sink::Sqs(s) => s.in_flight,
            // One POST at a time keeps the endpoint's order; the file has
            // one writer.
            Sink::Http(_) | Sink::File(_) => 1,
        }
    }

    /// Delivers one destination batch (see [`batches`](Self::batches)) for
    /// gap `gap_id`; indexes in the result are into `batch`.
    pub(crate) async fn deliver(&self, batch: &[Record], gap_id: i64) -> Delivery {
        match self {
            Sink::Sqs(s) => s.deliver(batch, gap_id).await,
            Sink::Http(s) => s.deliver(batch).await,
            Sink::File(s) => s.deliver(batch).await,
        }
    }
}

/// Bytes a record takes in an SQS batch: its body, its record id attribute,
/// and a margin for the other attributes and their names.
fn sqs_size(r: &Record, body_len: usize) -> usize {
    let attributes: usize = r
        .attributes
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    body_len + r.id.len() + 128 + attributes
}

/// The message body a sink sends for `r`, as text.
fn message_text(r: &Record) -> String {
    // Serializing a Value-backed message cannot fail.
    serde_json::to_string(&r.message()).unwrap_or_default()
}

/// Bytes of [`message_text`], without keeping the text.
fn message_len(r: &Record) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let _ = serde_json::to_writer(&mut n, &r.message());
    n.0
}

/// Consecutive runs of at most 10 records and 256 KiB; a record too large
/// for SQS alone gets a batch of its own (and is rejected there).
fn sqs_batches(records: &[Record]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let n = sqs_size(r, message_len(r));
        if i > start && (i - start == 10 || size + n > SQS_MAX_BYTES) {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < records.len() {
        out.push(start..records.len());
    }
    out
}

// === impl SqsSink ===

pub(crate) struct SqsSink {
    /// Batches of one chunk sent side by side.
    in_flight: usize,
    client: aws_sdk_sqs::Client,
    queue_url: String,
    fifo: bool,
    group_id: String,
    metrics: Arc<Metrics>,
}

/// A FIFO deduplication id derived from the record id alone, so a record sent
/// twice within SQS's 5-minute window is dropped by SQS too.
pub(crate) fn dedup_id(record_id: &str) -> String {
    let ok = !record_id.is_empty()
        && record_id.len() <= 128
        && record_id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        return record_id.to_string();
    }
    // Two independent 64-bit FNV-1a hashes: deterministic across runs and builds.
    let fnv = |seed: u64| {
        record_id.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "h-{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
}

impl SqsSink {
    /// One `SendMessageBatch` (see [`sqs_batches`]), retrying failed entries.
    async fn deliver(&self, records: &[Record], gap_id: i64) -> Delivery {
        let mut d = Delivery::default();
        let mut batch = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let body = message_text(r);
            if sqs_size(r, body.len()) > SQS_MAX_BYTES {
                d.rejected.push((
                    i,
                    format!("record is {} bytes, over SQS's 256 KiB limit", body.len()),
                ));
            } else {
                batch.push((i, body));
            }
        }
        if !batch.is_empty() {
            if let Err(e) = self.send_batch(&batch, records, gap_id, &mut d).await {
                d.error = Some(e);
            }
        }
        d
    }

    async fn send_batch(
        &self,
        batch: &[(usize, String)],
        records: &[Record],
        gap_id: i64,
        d: &mut Delivery,
    ) -> Result<(), SinkError> {
        let policy = RetryPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            max_retries: SQS_ATTEMPTS,
        };
        let mut pending: Vec<&(usize, String)> = batch.iter().collect();
        for attempt in 1..=SQS_ATTEMPTS + 1 {
            let mut req = self.client.send_message_batch().queue_url(&self.queue_url);
            for (i, body) in &pending {
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes(
                        "gapwatch-gap-id",
                        MessageAttributeValue::builder()
                            .data_type("Number")
                            .string_value(gap_id.to_string())
                            .build()
                            .map_err(request_error)?,
                    )
                    .message_attributes(
                        RECORD_ID_ATTRIBUTE,
                        MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(&records[*i].id)
                            .build()
                            .map_err(request_error)?,
                    )
                    .message_attributes(
                        "gapwatch-backfill",
                        MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value("true")
                            .build()
                            .map_err(request_error)?,
                    );
                for (name, value) in &records[*i].attributes {
                    e = e.message_attributes(
                        name,
                        MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(value)
                            .build()
                            .map_err(request_error)?,
                    );
                }
                if self.fifo {
                    e = e
                        .message_group_id(&self.group_id)
                        .message_deduplication_id(dedup_id(&records[*i].id));
                }
                req = req.entries(e.build().map_err(request_error)?);
            }
            let last = match req.send().await {
                Ok(out) => {
                    self.metrics.emit(AwsRequestCompleted {
                        call: AwsOperation::SqsSendMessageBatch,
                        outcome: AwsOutcome::Ok,
                    });
                    let mut retry = Vec::new();
                    let failed: std::collections::HashMap<String, _> =
                        out.failed.into_iter().map(|f| (f.id.clone(), f)).collect();
                    for p in pending {
                        match failed.get(&p.0.to_string()) {
                            None => d.delivered.push(p.0),
                            Some(f) if f.sender_fault => d.rejected.push((
                                p.0,
                                format!("{}: {}", f.code, f.message.clone().unwrap_or_default()),
                            )),
                            Some(_) => retry.push(p),
                        }
                    }
                    pending = retry;
                    if pending.is_empty() {
                        return Ok(());
                    }
                    "some entries failed".to_string()
                }
                Err(e) => {
                    let f = classify(&e);
                    self.metrics.emit(AwsRequestCompleted {
                        call: AwsOperation::SqsSendMessageBatch,
                        outcome: f.outcome,
                    });
                    if !f.retryable {
                        return Err(SinkError::Sqs {
                            message: f.to_string(),
                            retryable: false,
                        });
                    }
                    f.to_string()
                }
            };
            let delay = policy.delay(attempt, None, &mut rand::rng());
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => {
                    return Err(SinkError::Sqs {
                        message: last,
                        retryable: true,
                    })
                }
            }
        }
        Err(SinkError::Sqs {
            message: "retries exhausted".into(),
            retryable: true,
        })
    }
}

/// A request that cannot be built (an attribute or entry missing a
/// required field): a bug, not worth retrying.
fn request_error(e: impl std::fmt::Display) -> SinkError {
    SinkError::Sqs {
        message: format!("cannot build the request: {e}"),
        retryable: false,
    }
}

// === impl HttpSink ===

pub(crate) struct HttpSink {
    client: reqwest::Client,
    url: url::Url,
    /// Records per POST; 1: the body is the record, not an array.
    batch: usize,
    policy: RetryPolicy,
}

impl HttpSink {
    /// One POST of the batch (split in halves on a 413).
    async fn deliver(&self, records: &[Record]) -> Delivery {
        let mut d = Delivery::default();
        let indexes: Vec<usize> = (0..records.len()).collect();
        if let Err(e) = self.post(&indexes, records, &mut d).await {
            d.error = Some(e);
        }
        d
    }

    /// Posts `part`; a 413 splits it in halves, down to single records, which
    /// are then rejected as too large.
    async fn post(
        &self,
        part: &[usize],
        records: &[Record],
        d: &mut Delivery,
    ) -> Result<(), SinkError> {
        let mut stack = vec![part.to_vec()];
        while let Some(part) = stack.pop() {
            let single = self.batch == 1 && part.len() == 1;
            let body = if single {
                records[part[0]].message().to_value()
            } else {
                serde_json::Value::Array(
                    part.iter()
                        .map(|&i| records[i].message().to_value())
                        .collect(),
                )
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut req = self.client.post(self.url.clone()).json(&body);
                if single {
                    // One record per request: its id and attributes as headers,
                    // as a webhook receiver reads them.
                    let r = &records[part[0]];
                    let headers = std::iter::once((RECORD_ID_ATTRIBUTE, r.id.as_str()))
                        .chain(r.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    for (name, value) in headers {
                        // A value no header can carry (a control character) is left out.
                        if let Ok(v) = HeaderValue::from_str(value) {
                            req = req.header(name, v);
                        }
                    }
                }
                let (retry_after, err) = match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        d.delivered.extend(&part);
                        break;
                    }
                    Ok(resp) if resp.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
                        if part.len() == 1 {
                            d.rejected
                                .push((part[0], "the http sink answered 413 (too large)".into()));
                        } else {
                            let (a, b) = part.split_at(part.len() / 2);
                            stack.push(b.to_vec());
                            stack.push(a.to_vec());
                        }
                        break;
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let ra = resp
                            .headers()
                            .get(reqwest::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| {
                                crate::retry::parse_retry_after(v, std::time::SystemTime::now())
                            });
                        let status = status.as_u16();
                        if (300..400).contains(&status) {
                            return Err(SinkError::Redirect { status });
                        }
                        let e = SinkError::HttpStatus { status };
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        (ra, e)
                    }
                    Err(e) => (None, SinkError::Http(e.without_url().to_string())),
                };
                let delay = self.policy.delay(attempt, retry_after, &mut rand::rng());
                match delay {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(err),
                }
            }
        }
        Ok(())
    }
}

// === impl FileSink ===

/// Appends one JSON record per line. Every page is fsynced, and the file's new
/// length is committed with the page's checkpoint while other pages wait; on
/// start, bytes past the committed length (a page written just before a crash,
/// whose checkpoint never committed) are cut, so a resumed fill writes them once.
/// The file is locked: one gapwatch process writes it at a time.
pub(crate) struct FileSink {
    path: PathBuf,
    state: Arc<Mutex<FileState>>,
}

#[derive(Debug)]
pub(crate) struct FileState {
    file: tokio::fs::File,
    len: u64,
}

impl FileSink {
    /// `committed`: the length checkpointed by the last committed page, if any.
    pub(crate) async fn open(
        path: PathBuf,
        committed: Option<u64>,
    ) -> Result<Self, SinkBuildError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| SinkBuildError::CreateDir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkBuildError::Open {
                path: path.clone(),
                source,
            })?;
        file.try_lock()
            .map_err(|_| SinkBuildError::Locked { path: path.clone() })?;
        let mut len = file
            .metadata()
            .map_err(|source| SinkBuildError::Stat {
                path: path.clone(),
                source,
            })?
            .len();
        if let Some(committed) = committed.filter(|c| *c < len) {
            file.set_len(committed)
                .and_then(|()| file.sync_all())
                .map_err(|source| SinkBuildError::Truncate {
                    path: path.clone(),
                    source,
                })?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = len - committed,
                "cut output of a page whose checkpoint never committed; it will be written again"
            );
            len = committed;
        }
        Ok(Self {
            path,
            state: Arc::new(Mutex::new(FileState {
                file: tokio::fs::File::from_std(file),
                len,
            })),
        })
    }

    async fn deliver(&self, records: &[Record]) -> Delivery {
        let mut buf = Vec::with_capacity(records.len() * 128);
        for r in records {
            // Serializing a serde_json::Value cannot fail.
            let _ = serde_json::to_writer(&mut buf, &r.message());
            buf.push(b'\n');
        }
        let mut state = self.state.clone().lock_owned().await;
        let result = async {
            state.file.write_all(&buf).await?;
            state.file.flush().await?;
            state.file.sync_data().await
        }
        .await;
        match result {
            Ok(()) => {
                state.len += buf.len() as u64;
                Delivery {
                    delivered: (0..records.len()).collect(),
                    sink_offset: Some(state.len),
                    hold: Some(state),
                    ..Delivery::default()
                }
            }
            Err(e) => {
                // Part of the page may be in the file: cut it, so the length
                // committed with the next page is the truth and the retry
                // writes each record once.
                let cut = async {
                    state.file.set_len(state.len).await?;
                    state.file.sync_data().await
                }
                .await;
                Delivery {
                    error: Some(SinkError::File {
                        path: self.path.display().to_string(),
                        source: e,
                        cut_failed: cut.err(),
                    }),
                    ..Delivery::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_ids_are_deterministic_and_valid() {
        assert_eq!(dedup_id("ord-1"), "ord-1");
        let long = "x".repeat(200);
        let a = dedup_id(&long);
        assert_eq!(a, dedup_id(&long));
        assert!(a.len() <= 128);
        assert_ne!(dedup_id("a b"), dedup_id("a  b"));
        assert!(dedup_id("a b").bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }

    #[test]
    fn sqs_batches_hold_10_records_and_256_kib() {
        let rec = |i: usize, bytes: usize| Record {
            id: format!("r{i}"),
            time: chrono::Utc::now(),
            raw: serde_json::json!({ "id": i, "pad": "x".repeat(bytes) }),
            attributes: Vec::new(),
            envelope: None,
        };
        let small: Vec<Record> = (0..25).map(|i| rec(i, 10)).collect();
        assert_eq!(sqs_batches(&small), vec![0..10, 10..20, 20..25]);
        assert_eq!(sqs_batches(&[]), Vec::<Range<usize>>::new());
        // 100 KiB each: two fit in 256 KiB, a third does not.
        let big: Vec<Record> = (0..5).map(|i| rec(i, 100 << 10)).collect();
        assert_eq!(sqs_batches(&big), vec![0..2, 2..4, 4..5]);
        // A record too large for SQS is alone in its batch (and rejected there).
        let mixed = vec![rec(0, 10), rec(1, 300 << 10), rec(2, 10)];
        assert_eq!(sqs_batches(&mixed), vec![0..1, 1..2, 2..3]);
    }

    #[tokio::test]
    async fn file_sink_appends_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/recovered.ndjson");
        let sink = FileSink::open(path.clone(), None).await.unwrap();
        let rec = |i: i32| Record {
            id: i.to_string(),
            time: chrono::Utc::now(),
            raw: serde_json::json!({ "id": i }),
            attributes: Vec::new(),
            envelope: None,
        };
        let d = sink.deliver(&[rec(1), rec(2)]).await;
        assert_eq!(d.delivered, vec![0, 1]);
        // Until the page's checkpoint is committed (the guard dropped), no
        // other page gets into the file.
        let blocked =
            tokio::time::timeout(Duration::from_millis(100), sink.deliver(&[rec(9)])).await;
        assert!(blocked.is_err());
        drop(d);
        let d = sink.deliver(&[rec(3)]).await;
        assert_eq!(d.delivered, vec![0]);
        let committed = d.sink_offset.unwrap();
        drop(d);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");
        assert_eq!(committed, text.len() as u64);

        // A second process cannot write the same file.
        assert!(FileSink::open(path.clone(), None).await.is_err());
        drop(sink);

        // A page written but never committed is cut on the next start.
        let sink = FileSink::open(path.clone(), Some(committed)).await.unwrap();
        drop(sink.deliver(&[rec(4)]).await);
        drop(sink);
        let sink = FileSink::open(path.clone(), Some(committed)).await.unwrap();
        drop(sink);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
