//! SQS helpers and figure 2 (SQS sink): a plain `SendMessageBatch` loop (the
//! baseline gapwatch's SQS sink is compared with), drainers that keep a moto
//! queue short, and the side-by-side comparison of the two.
//!
//! moto's every request walks every message its queue holds (`Queue.attributes`
//! counts them for each message sent, receive and delete scan the list), so
//! its cost per message grows with the queue's depth: a sequential loop into
//! an undrained queue slows from 16 to 2 batches/s within 300 batches. A fair
//! comparison keeps the depth equally low on both sides: each measured slice
//! gets a fresh moto and the same drainers, and the report names the deepest
//! queue each slice saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use crate::fill::{self, FillSpec, History};
use crate::peers::{Env, Moto};
use crate::procfs;
use crate::table::{thousands, Figure};

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
    /// Most messages held at once (visible + not visible) seen while draining.
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

/// The most messages the queue held at once: visible ones plus those received
/// but not yet deleted (moto's every request walks all of them).
async fn watch_depth(sqs: &aws_sdk_sqs::Client, queue: &str, stop: &AtomicBool) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let mut max = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
        {
            let depth: u64 = r
                .attributes
                .unwrap_or_default()
                .values()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum();
            max = max.max(depth);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
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

// === figure 2: the SQS sink side by side with a plain loop ===

/// Receivers per queue in the comparison: twice the most batches in flight
/// at once (a sender's one request takes a drainer two: receive, delete),
/// so the drain keeps up with either side.
const COMPARE_DRAINERS: usize = 8;

/// One measured slice: `n` messages into a fresh moto's queue.
struct Slice {
    secs: f64,
    n: u64,
    /// CPU of the sender: the loop's thread, or the gapwatch process.
    sender_cpu: f64,
    moto_cpu: f64,
    max_depth: u64,
    redelivered: u64,
}

impl Slice {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }

    fn cpu_per_10k(&self) -> f64 {
        self.sender_cpu * 10_000.0 / self.n as f64
    }
}

/// The plain loop on a thread and runtime of its own with a client of its
/// own, so the thread's CPU time is the loop's alone (drainers run elsewhere).
async fn loop_slice(env: &Env, round: usize, n: u64) -> Result<Slice> {
    let dir = env.dir(&format!("sqs-loop-{round}"))?;
    let moto = Moto::start(env, &dir).await?;
    let queue = moto.create_queue("baseline").await?;
    let moto_cpu0 = procfs::cpu_seconds(moto.proc.pid())?;
    let drainer = Drainer::start(&moto.sqs, &queue, COMPARE_DRAINERS);
    let (client, q) = (moto.client(), queue.clone());
    let (secs, sender_cpu) = tokio::task::spawn_blocking(move || -> Result<(f64, f64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cpu0 = procfs::thread_cpu_seconds()?;
        let secs = rt.block_on(send_loop(&client, &q, "base", n))?;
        Ok((secs, procfs::thread_cpu_seconds()? - cpu0))
    })
    .await
    .context("plain loop thread")??;
    let moto_cpu = procfs::cpu_seconds(moto.proc.pid())? - moto_cpu0;
    let drained = drainer.finish(n, Duration::from_secs(30)).await?;
    let redelivered = drained.check_once("plain loop", n)?;
    Ok(Slice {
        secs,
        n,
        sender_cpu,
        moto_cpu,
        max_depth: drained.max_depth,
        redelivered,
    })
}

/// How the sink is run: `backfill.concurrency` and `sink.in_flight`.
#[derive(Clone, Copy)]
struct SinkShape {
    concurrency: u32,
    in_flight: u32,
}

/// The sink as the plain loop runs (one batch at a time), as configured by
/// default (two chunks side by side, one batch in flight each), and with two
/// batches in flight per chunk.
const SHAPES: [SinkShape; 3] = [
    SinkShape {
        concurrency: 1,
        in_flight: 1,
    },
    SinkShape {
        concurrency: 2,
        in_flight: 1,
    },
    SinkShape {
        concurrency: 2,
        in_flight: 2,
    },
];

/// A manual fill of `interval` into a fresh moto's queue, from the POST
/// until the gap says done.
async fn sink_slice(
    env: &Env,
    history: &History,
    interval: (DateTime<Utc>, DateTime<Utc>),
    shape: SinkShape,
    round: usize,
) -> Result<Slice> {
    let SinkShape {
        concurrency,
        in_flight,
    } = shape;
    let name = format!("sqs-c{concurrency}-f{in_flight}-{round}");
    let dir = env.dir(&format!("{name}-moto"))?;
    let moto = Moto::start(env, &dir).await?;
    let queue = moto.create_queue("app-fill").await?;
    let moto_cpu0 = procfs::cpu_seconds(moto.proc.pid())?;
    let drainer = Drainer::start(&moto.sqs, &queue, COMPARE_DRAINERS);
    let aws = format!(
        "\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
        moto.endpoint
    );
    let spec = FillSpec {
        name: &name,
        from: interval.0,
        to: interval.1,
        chunks: 4,
        concurrency,
        page: 1000,
        rate_limit: "100000/s",
        sink: format!(
            "    type = \"sqs\"\n    queue_url = \"{queue}\"\n    in_flight = {in_flight}"
        ),
        aws: Some(&aws),
    };
    let r = fill::run(env, &history.sim, &spec).await?;
    let moto_cpu = procfs::cpu_seconds(moto.proc.pid())? - moto_cpu0;
    let n = r.delivered as u64;
    let drained = drainer.finish(n, Duration::from_secs(30)).await?;
    let redelivered = drained.check_once("gapwatch fill into SQS", n)?;
    Ok(Slice {
        secs: r.secs,
        n,
        sender_cpu: r.gapwatch_cpu,
        moto_cpu,
        max_depth: drained.max_depth,
        redelivered,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn moto_note(s: &Slice) -> String {
    format!(
        "moto {:.1} CPU-s ({:.0}% of a core, {:.2} ms per message), depth ≤ {}, {} redelivered",
        s.moto_cpu,
        100.0 * s.moto_cpu / s.secs,
        1000.0 * s.moto_cpu / s.n as f64,
        s.max_depth,
        s.redelivered
    )
}

/// Figure 2 (SQS sink): `rounds` rounds, each measuring the plain loop and
/// the sink in every shape of [`SHAPES`] one after the other (the order reversed every
/// other round, so a drift in the machine's load hits both sides alike); the
/// ratio of each round is taken between slices of that round.
pub async fn sink_vs_loop(
    env: &Env,
    history: &History,
    n: u64,
    rounds: usize,
) -> Result<Vec<Figure>> {
    let shapes = &SHAPES;
    let interval = history.interval(n);
    let mut loops = Vec::new();
    let mut sinks: Vec<Vec<Slice>> = shapes.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        let mut order: Vec<Option<usize>> = std::iter::once(None)
            .chain((0..shapes.len()).map(Some))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            match which {
                None => loops.push(loop_slice(env, round, n).await?),
                Some(i) => {
                    sinks[i].push(sink_slice(env, history, interval, shapes[i], round).await?)
                }
            }
        }
    }
    let mut figures = Vec::new();
    let rates = |v: &[Slice]| {
        v.iter()
            .map(|s| thousands(s.rate()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    figures.push(Figure::new(
        "2. SQS baseline: plain SendMessageBatch loop into moto",
        format!(
            "{} messages/s ({} messages per round); {:.2} CPU-s per 10,000 messages",
            rates(&loops),
            thousands(n as f64),
            mean(&loops.iter().map(Slice::cpu_per_10k).collect::<Vec<_>>())
        ),
        "—",
        format!(
            "each round a fresh moto; one sequential loop of SendMessageBatch (10 bodies of vendor-record size, \
             the sink's 3 attributes) with the Rust AWS SDK on a thread and runtime of its own (CPU = that \
             thread's utime + stime); {COMPARE_DRAINERS} drainers receive+delete meanwhile; {}",
            loops.iter().map(moto_note).collect::<Vec<_>>().join("; ")
        ),
    ));
    for (shape, slices) in shapes.iter().zip(&sinks) {
        let ratios: Vec<f64> = slices
            .iter()
            .zip(&loops)
            .map(|(s, l)| s.rate() / l.rate())
            .collect();
        figures.push(Figure::new(
            &format!(
                "2. fill throughput, SQS sink (moto), concurrency {}, in_flight {}",
                shape.concurrency, shape.in_flight
            ),
            format!(
                "median {:.2} × the plain loop ({} in rounds; {} records/s); gapwatch {:.2} CPU-s per 10,000 records",
                median(&ratios),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                rates(slices),
                mean(&slices.iter().map(Slice::cpu_per_10k).collect::<Vec<_>>())
            ),
            "≥ 0.9 × the plain loop",
            format!(
                "each round a fresh moto; POST /api/v1/backfills of {} records (4 chunks, limit=1000, concurrency {}, \
                 sink.in_flight {}) from the POST until the gap is done; {COMPARE_DRAINERS} drainers meanwhile; each \
                 record in one message; gapwatch CPU = the process's utime + stime (vendor pages, SQLite, HTTP \
                 API included); {}",
                thousands(n as f64),
                shape.concurrency,
                shape.in_flight,
                slices.iter().map(moto_note).collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    Ok(figures)
}

/// Figure 2b: the SQS sink against the bench's endpoint at 20 ms per call
/// ([`crate::fake_sqs`]), beside the plain loop against the same endpoint:
/// moto's cost per message is gone, what is left is the round trip and
/// each side's own CPU.
pub async fn sink_at_latency(env: &Env, history: &History, n: u64) -> Result<Vec<Figure>> {
    let latency = Duration::from_millis(20);
    let interval = history.interval(n);

    let fake = crate::fake_sqs::FakeSqs::start(latency).await?;
    let client = Moto::client_for(&fake.endpoint);
    let queue = crate::fake_sqs::create_queue(&client, "baseline").await?;
    let q = queue.clone();
    let (loop_secs, loop_cpu) = tokio::task::spawn_blocking(move || -> Result<(f64, f64)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cpu0 = procfs::thread_cpu_seconds()?;
        let secs = rt.block_on(send_loop(&client, &q, "base", n))?;
        Ok((secs, procfs::thread_cpu_seconds()? - cpu0))
    })
    .await
    .context("plain loop thread")??;
    if fake.arrivals("baseline").0 != n {
        bail!("plain loop: {} of {n} arrived", fake.arrivals("baseline").0);
    }
    drop(fake);

    let mut out = Vec::new();
    let loop_rate = n as f64 / loop_secs;
    for shape in [SHAPES[0], SHAPES[1]] {
        let fake = crate::fake_sqs::FakeSqs::start(latency).await?;
        let client = Moto::client_for(&fake.endpoint);
        let queue = crate::fake_sqs::create_queue(&client, "app-fill").await?;
        let name = format!("sqs-20ms-c{}", shape.concurrency);
        let aws = format!(
            "\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            fake.endpoint
        );
        let spec = FillSpec {
            name: &name,
            from: interval.0,
            to: interval.1,
            chunks: 4,
            concurrency: shape.concurrency,
            page: 1000,
            rate_limit: "100000/s",
            sink: format!(
                "    type = \"sqs\"\n    queue_url = \"{queue}\"\n    in_flight = {}",
                shape.in_flight
            ),
            aws: Some(&aws),
        };
        let r = fill::run(env, &history.sim, &spec).await?;
        let arrived = fake.arrivals("app-fill").0;
        if arrived != r.delivered as u64 {
            bail!(
                "SQS sink at 20 ms: {arrived} arrived, {} delivered",
                r.delivered
            );
        }
        let rate = r.delivered as f64 / r.secs;
        out.push(Figure::new(
            &format!(
                "2b. fill into the SQS sink at 20 ms per call, concurrency {}, in_flight {}",
                shape.concurrency, shape.in_flight
            ),
            format!(
                "{} records/s ({:.2}× the plain loop's {}); CPU per 10,000 records: gapwatch {:.2} s, the plain loop {:.2} s",
                thousands(rate),
                rate / loop_rate,
                thousands(loop_rate),
                r.gapwatch_cpu * 10_000.0 / r.delivered.max(1) as f64,
                loop_cpu * 10_000.0 / n as f64
            ),
            "≥ 0.9 × the plain loop",
            format!(
                "the bench's in-memory SQS endpoint (20 ms per call) for both; {} records (4 chunks, limit=1000) by \
                 POST /api/v1/backfills until the gap is done; the plain loop: one sequential SendMessageBatch loop \
                 on a thread of its own (CPU = that thread's); gapwatch CPU = the whole process (vendor pages, \
                 SQLite, HTTP API included)",
                thousands(n as f64)
            ),
        ));
    }
    Ok(out)
}
