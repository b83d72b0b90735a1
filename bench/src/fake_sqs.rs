//! An in-memory SQS endpoint for the relay figures, speaking the JSON protocol
//! the AWS SDKs use (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`):
//! `CreateQueue`, `GetQueueUrl`, `GetQueueAttributes`, `SendMessageBatch`,
//! `ReceiveMessage` (long polls, visibility timeouts) and `DeleteMessageBatch`.
//! Every call waits `latency` before it answers, as a call to SQS in-region
//! does (10–30 ms); moto answers in a few ms but takes only ~140 sends/s, so
//! it cannot show what a relay does at 1,000 messages/s. Used only by the
//! bench: moto stays the functional peer of the tests, and [`check`] runs the
//! relay's test expectations against both.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;

struct Msg {
    id: String,
    body: String,
    attributes: Value,
    sent_ms: i64,
    group: Option<String>,
    receives: u32,
}

#[derive(Default)]
struct Queue {
    visible: VecDeque<Msg>,
    /// Receipt handle → the message and when it becomes visible again.
    in_flight: HashMap<String, (Msg, Instant)>,
    visibility: Duration,
    fifo: bool,
}

impl Queue {
    /// Messages whose visibility timeout ran out go back to the front.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(h, _)| h.clone())
            .collect();
        for h in expired {
            if let Some((m, _)) = self.in_flight.remove(&h) {
                self.visible.push_front(m);
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    next: u64,
    /// Per queue: messages sent to it, the first and the latest send.
    arrivals: HashMap<String, (u64, Instant, Instant)>,
    /// When each body was first sent (to any queue), while tracked.
    first_sent: HashMap<String, Instant>,
    /// For a body sent a second time (to another queue): the time between.
    hops: Vec<Duration>,
    track: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    arrived: Notify,
    latency: Duration,
    base: String,
    calls: std::sync::atomic::AtomicU64,
}

/// A running endpoint; stops when dropped.
pub struct FakeSqs {
    pub endpoint: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSqs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSqs {
    pub async fn start(latency: Duration) -> Result<FakeSqs> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            inner: Mutex::default(),
            arrived: Notify::new(),
            latency,
            base: format!("{endpoint}/123456789012"),
            calls: Default::default(),
        });
        let app = Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeSqs {
            endpoint,
            shared,
            task,
        })
    }

    /// From now on, a body sent to one queue and then to another has the
    /// time between recorded (the relay's added latency).
    pub fn track_hops(&self) {
        self.shared.inner.lock().unwrap().track = true;
    }

    /// The recorded hops so far (see [`FakeSqs::track_hops`]).
    pub fn hops(&self) -> Vec<Duration> {
        self.shared.inner.lock().unwrap().hops.clone()
    }

    /// Messages sent to `queue` so far, and the time from its first to its
    /// latest send.
    pub fn arrivals(&self, queue: &str) -> (u64, Duration) {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .arrivals
            .get(queue)
            .map_or((0, Duration::ZERO), |(n, first, last)| (*n, *last - *first))
    }

    /// (visible, in flight) of `queue`.
    pub fn depth(&self, queue: &str) -> (usize, usize) {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .queues
            .get(queue)
            .map_or((0, 0), |q| (q.visible.len(), q.in_flight.len()))
    }

    /// API calls answered so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn error(code: &str, message: &str) -> Response {
    let body = json!({ "__type": format!("com.amazonaws.sqs#{code}"), "message": message });
    (
        StatusCode::BAD_REQUEST,
        [
            ("content-type", "application/x-amz-json-1.0"),
            (
                "x-amzn-query-error",
                "AWS.SimpleQueueService.NonExistentQueue;Sender",
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    (
        [("content-type", "application/x-amz-json-1.0")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(State(s): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    s.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Half the round trip on the way in, half on the way out: a message
    // sent is visible half a round trip before its sender hears so.
    tokio::time::sleep(s.latency / 2).await;
    let response = serve(&s, &headers, &body).await;
    tokio::time::sleep(s.latency / 2).await;
    response
}

async fn serve(s: &Shared, headers: &HeaderMap, body: &str) -> Response {
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .unwrap_or("")
        .to_string();
    let Ok(req) = serde_json::from_str::<Value>(body) else {
        return error("InvalidParameterValue", "body is not JSON");
    };
    let queue_name = |req: &Value| -> Option<String> {
        let url = req["QueueUrl"].as_str()?;
        url.rsplit('/').next().map(str::to_string)
    };
    match op.as_str() {
        "CreateQueue" => {
            let name = req["QueueName"].as_str().unwrap_or("").to_string();
            let visibility = req["Attributes"]["VisibilityTimeout"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(30);
            let mut inner = s.inner.lock().unwrap();
            inner.queues.entry(name.clone()).or_insert_with(|| Queue {
                visibility: Duration::from_secs(visibility),
                fifo: name.ends_with(".fifo"),
                ..Queue::default()
            });
            ok(json!({ "QueueUrl": format!("{}/{name}", s.base) }))
        }
        "GetQueueUrl" => {
            let name = req["QueueName"].as_str().unwrap_or("");
            if !s.inner.lock().unwrap().queues.contains_key(name) {
                return error("QueueDoesNotExist", "The specified queue does not exist.");
            }
            ok(json!({ "QueueUrl": format!("{}/{name}", s.base) }))
        }
        "GetQueueAttributes" => {
            let mut inner = s.inner.lock().unwrap();
            let Some(q) = queue_name(&req).and_then(|n| inner.queues.get_mut(&n)) else {
                return error("QueueDoesNotExist", "The specified queue does not exist.");
            };
            q.expire(Instant::now());
            ok(json!({ "Attributes": {
                "ApproximateNumberOfMessages": q.visible.len().to_string(),
                "ApproximateNumberOfMessagesNotVisible": q.in_flight.len().to_string(),
                "ApproximateNumberOfMessagesDelayed": "0",
                "VisibilityTimeout": q.visibility.as_secs().to_string(),
            }}))
        }
        "SendMessageBatch" => {
            let entries = req["Entries"].as_array().cloned().unwrap_or_default();
            let mut inner = s.inner.lock().unwrap();
            let name = queue_name(&req).unwrap_or_default();
            if !inner.queues.contains_key(&name) {
                return error("QueueDoesNotExist", "The specified queue does not exist.");
            }
            let mut successful = Vec::new();
            let now = Instant::now();
            let n = entries.len() as u64;
            let a = inner.arrivals.entry(name.clone()).or_insert((0, now, now));
            a.0 += n;
            a.2 = now;
            for e in entries {
                if inner.track {
                    let body = e["MessageBody"].as_str().unwrap_or("").to_string();
                    match inner.first_sent.get(&body) {
                        Some(first) => {
                            let hop = now - *first;
                            inner.hops.push(hop);
                        }
                        None => {
                            inner.first_sent.insert(body, now);
                        }
                    }
                }
                inner.next += 1;
                let id = format!("00000000-0000-4000-8000-{:012}", inner.next);
                let q = inner.queues.get_mut(&name).expect("checked above");
                q.visible.push_back(Msg {
                    id: id.clone(),
                    body: e["MessageBody"].as_str().unwrap_or("").to_string(),
                    attributes: e["MessageAttributes"].clone(),
                    sent_ms: chrono::Utc::now().timestamp_millis(),
                    group: e["MessageGroupId"].as_str().map(str::to_string),
                    receives: 0,
                });
                successful.push(json!({ "Id": e["Id"], "MessageId": id, "MD5OfMessageBody": "" }));
            }
            drop(inner);
            s.arrived.notify_waiters();
            ok(json!({ "Successful": successful, "Failed": [] }))
        }
        "ReceiveMessage" => {
            let max = req["MaxNumberOfMessages"]
                .as_u64()
                .unwrap_or(1)
                .clamp(1, 10) as usize;
            let wait = Duration::from_secs(req["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20));
            let deadline = Instant::now() + wait;
            let name = queue_name(&req).unwrap_or_default();
            loop {
                let arrived = s.arrived.notified();
                let got = {
                    let mut guard = s.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let next = &mut inner.next;
                    let Some(q) = inner.queues.get_mut(&name) else {
                        return error("QueueDoesNotExist", "The specified queue does not exist.");
                    };
                    let now = Instant::now();
                    q.expire(now);
                    let visibility = req["VisibilityTimeout"]
                        .as_u64()
                        .map(Duration::from_secs)
                        .unwrap_or(q.visibility);
                    let mut out = Vec::new();
                    let mut i = 0;
                    while out.len() < max && i < q.visible.len() {
                        // FIFO: nothing of a group while one of it is in flight.
                        let blocked = q.fifo
                            && q.visible[i].group.as_ref().is_some_and(|g| {
                                q.in_flight
                                    .values()
                                    .any(|(m, _)| m.group.as_ref() == Some(g))
                            });
                        if blocked {
                            i += 1;
                            continue;
                        }
                        let mut m = q.visible.remove(i).expect("index in range");
                        m.receives += 1;
                        *next += 1;
                        let handle = format!("rh-{}-{}", m.id, *next);
                        let mut system = json!({
                            "SentTimestamp": m.sent_ms.to_string(),
                            "ApproximateReceiveCount": m.receives.to_string(),
                        });
                        if let Some(g) = &m.group {
                            system["MessageGroupId"] = json!(g);
                        }
                        let mut item = json!({
                            "MessageId": m.id,
                            "ReceiptHandle": handle,
                            "MD5OfBody": "",
                            "Body": m.body,
                            "Attributes": system,
                        });
                        if m.attributes.is_object() {
                            item["MessageAttributes"] = m.attributes.clone();
                        }
                        out.push(item);
                        q.in_flight.insert(handle, (m, now + visibility));
                    }
                    out
                };
                if !got.is_empty() || Instant::now() >= deadline {
                    return ok(json!({ "Messages": got }));
                }
                // Wake on a send, or now and then for visibility timeouts.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), arrived).await;
            }
        }
        "DeleteMessageBatch" => {
            let entries = req["Entries"].as_array().cloned().unwrap_or_default();
            let mut inner = s.inner.lock().unwrap();
            let Some(q) = queue_name(&req).and_then(|n| inner.queues.get_mut(&n)) else {
                return error("QueueDoesNotExist", "The specified queue does not exist.");
            };
            // A handle whose message came back visible (or was deleted) is a
            // no-op, as in SQS.
            for e in &entries {
                if let Some(h) = e["ReceiptHandle"].as_str() {
                    q.in_flight.remove(h);
                }
            }
            let successful: Vec<Value> = entries.iter().map(|e| json!({ "Id": e["Id"] })).collect();
            ok(json!({ "Successful": successful, "Failed": [] }))
        }
        other => error(
            "InvalidAction",
            &format!("not served by the bench endpoint: {other}"),
        ),
    }
}

/// `CreateQueue` through the SDK, returning its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .context("CreateQueue")?
        .queue_url
        .context("no queue url")
}
