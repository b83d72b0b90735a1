//! Figure 4b, the relay at real SQS latency: against the bench's in-memory
//! SQS endpoint ([`crate::fake_sqs`]) answering every call after 20 ms, as
//! SQS does in-region, instead of moto (whose ~140 sends/s would be the
//! ceiling). Side by side in one run:
//! - gapwatch's relay (default `watch.pollers`) against a plain loop in the
//!   bench with as many workers, each receive → send → delete in turn, over
//!   the same preloaded vendor queue (messages/s from the first message in
//!   the app queue to the last);
//! - the added latency at 500 messages/s: from the vendor's send being
//!   accepted to the relay's send of the same body being accepted (p50, p99);
//! - gapwatch's CPU per 10,000 relayed messages.
//!
//! [`check`] first runs the relay tests' expectations (every message once,
//! attributes unchanged, the vendor queue empty afterwards) against moto and
//! against the endpoint, so the endpoint is not a toy that agrees with itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};

use crate::fake_sqs::{self, FakeSqs};
use crate::peers::{Env, Gapwatch, Moto};
use crate::sqs;
use crate::table::{thousands, Figure};

/// gapwatch's default `watch.pollers`, and the plain loop's workers.
const WORKERS: usize = 4;
const LATENCY: Duration = Duration::from_millis(20);

/// A relay feed `relay` from `vendor_q` to `app_q` at `endpoint`, state in `dir`.
pub fn config(dir: &std::path::Path, endpoint: &str, vendor_q: &str, app_q: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{state}/state.db"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false

[[feeds]]
name = "relay"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.freshness]
  max_silence = "1h"
"#,
        state = dir.display(),
    )
}

fn attribute() -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value("vendor")
        .build()
        .expect("attribute")
}

/// Sends `n` bodies (`prefix`, from `from` on) with `WORKERS * 4` concurrent
/// batch calls.
async fn preload(sqs: &aws_sdk_sqs::Client, queue: &str, prefix: &str, n: u64) -> Result<()> {
    let batches: Vec<u64> = (0..n).step_by(10).collect();
    let mut tasks = Vec::new();
    for part in batches.chunks(batches.len().div_ceil(WORKERS * 4).max(1)) {
        let (sqs, queue, prefix, part) = (
            sqs.clone(),
            queue.to_string(),
            prefix.to_string(),
            part.to_vec(),
        );
        tasks.push(tokio::spawn(async move {
            for start in part {
                send_batch(&sqs, &queue, &prefix, start, (start + 10).min(n)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn send_batch(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    prefix: &str,
    from: u64,
    to: u64,
) -> Result<()> {
    let mut req = sqs.send_message_batch().queue_url(queue);
    for i in from..to {
        req = req.entries(
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(sqs::body(prefix, i))
                .message_attributes("origin", attribute())
                .build()?,
        );
    }
    let out = req.send().await.context("SendMessageBatch")?;
    if !out.failed.is_empty() {
        bail!("SendMessageBatch: {} failed", out.failed.len());
    }
    Ok(())
}

/// The baseline: `WORKERS` loops, each receive → send → delete in turn.
async fn plain_loop(
    sqs: &aws_sdk_sqs::Client,
    from: &str,
    to: &str,
    fake: &FakeSqs,
    n: u64,
) -> Result<()> {
    let app = to.rsplit('/').next().unwrap_or_default().to_string();
    let fake_count = || fake.arrivals(&app).0;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (sqs, from, to) = (sqs.clone(), from.to_string(), to.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let got = sqs
                    .receive_message()
                    .queue_url(&from)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send()
                    .await?;
                let msgs = got.messages.unwrap_or_default();
                if msgs.is_empty() {
                    return anyhow::Ok(());
                }
                let mut send = sqs.send_message_batch().queue_url(&to);
                for (i, m) in msgs.iter().enumerate() {
                    let mut e = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(m.body().unwrap_or_default());
                    for (k, v) in m.message_attributes().into_iter().flatten() {
                        e = e.message_attributes(k, v.clone());
                    }
                    send = send.entries(e.build()?);
                }
                send.send().await?;
                delete_all(&sqs, &from, &msgs).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    if fake_count() < n {
        bail!("plain loop moved {} of {n}", fake_count());
    }
    Ok(())
}

/// Waits until `queue` of `fake` got `n` messages.
async fn arrived(fake: &FakeSqs, queue: &str, n: u64, gw: &mut Gapwatch) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(120).max(Duration::from_millis(n * 2));
    loop {
        let (got, span) = fake.arrivals(queue);
        if got >= n {
            return Ok(span);
        }
        gw.check_alive()?;
        if Instant::now() > deadline {
            bail!("relay moved {got} of {n}; log:\n{}", gw.proc.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh endpoint at [`LATENCY`] with an empty `vendor` and `app` queue.
async fn fresh_endpoint() -> Result<(FakeSqs, aws_sdk_sqs::Client, String, String)> {
    let fake = FakeSqs::start(LATENCY).await?;
    let client = Moto::client_for(&fake.endpoint);
    let vendor = fake_sqs::create_queue(&client, "vendor").await?;
    let app = fake_sqs::create_queue(&client, "app").await?;
    Ok((fake, client, vendor, app))
}

/// Deletes received messages in one batch call.
async fn delete_all(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    msgs: &[aws_sdk_sqs::types::Message],
) -> Result<()> {
    let mut del = sqs.delete_message_batch().queue_url(queue);
    for (i, m) in msgs.iter().enumerate() {
        del = del.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()?,
        );
    }
    del.send().await.context("DeleteMessageBatch")?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn figures(env: &Env, n: u64, latency_seconds: u64) -> Result<Vec<Figure>> {
    let mut out = vec![check(env).await?];
    let dir = env.dir("relay-latency")?;

    // The plain loop.
    let (fake, client, vendor, app) = fresh_endpoint().await?;
    preload(&client, &vendor, "loop", n).await?;
    plain_loop(&client, &vendor, &app, &fake, n).await?;
    let (_, loop_span) = fake.arrivals("app");
    let loop_rate = n as f64 / loop_span.as_secs_f64().max(1e-3);
    drop(fake);

    // gapwatch's relay over the same preloaded queue.
    let (fake, client, vendor, app) = fresh_endpoint().await?;
    preload(&client, &vendor, "relay", n).await?;
    let mut gw = Gapwatch::start(
        env,
        &dir,
        "relay",
        &config(&dir, &fake.endpoint, &vendor, &app),
    )
    .await?;
    let cpu0 = gw.cpu_seconds()?;
    let calls0 = fake.calls();
    let span = arrived(&fake, "app", n, &mut gw).await?;
    let cpu = gw.cpu_seconds()? - cpu0;
    let calls = fake.calls() - calls0;
    let rate = n as f64 / span.as_secs_f64().max(1e-3);
    let (visible, in_flight) = fake.depth("vendor");
    // Deletes of the last batches may still be under way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.depth("vendor") != (0, 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if fake.depth("vendor") != (0, 0) {
        bail!("vendor queue not emptied by the relay: {visible} visible, {in_flight} in flight");
    }
    drop(gw);
    drop(fake);
    out.push(Figure::new(
        "4b. relay at 20 ms SQS latency",
        format!(
            "{} messages/s with pollers = {WORKERS}; plain loop with {WORKERS} workers: {} messages/s ({:.2}×)",
            thousands(rate),
            thousands(loop_rate),
            rate / loop_rate
        ),
        "≥ 1,000 messages/s and ≥ 0.9× the plain loop",
        format!(
            "the bench's in-memory SQS endpoint, every call answered after 20 ms (half before it takes effect, half after); \
             {} messages preloaded into the vendor queue; from the first message sent to the app queue to the last; \
             the plain loop receives (10, long poll), sends the batch, deletes it, in turn, in each worker",
            thousands(n as f64)
        ),
    ));
    out.push(Figure::new(
        "4b. relay CPU at 20 ms latency",
        format!(
            "{:.2} CPU-s per 10,000 messages ({cpu:.2} CPU-s for {}); {} SQS calls per 10,000",
            cpu * 10_000.0 / n as f64,
            thousands(n as f64),
            thousands(calls as f64 * 10_000.0 / n as f64)
        ),
        "—",
        "utime + stime of gapwatch from /proc/PID/stat over the run above".to_string(),
    ));

    // Added latency at 500 messages/s.
    let (fake, client, vendor, app) = fresh_endpoint().await?;
    let mut gw = Gapwatch::start(
        env,
        &dir,
        "latency",
        &config(&dir, &fake.endpoint, &vendor, &app),
    )
    .await?;
    // Let the pollers settle into their long polls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.track_hops();
    let total = 500 * latency_seconds;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut inflight = Vec::new();
    while sent < total {
        // 10 messages every 20 ms, each batch from its own task (a send takes 20 ms).
        let due = started + Duration::from_millis(sent * 2);
        tokio::time::sleep_until(due.into()).await;
        let (c, q) = (client.clone(), vendor.clone());
        let from = sent;
        inflight.push(tokio::spawn(async move {
            send_batch(&c, &q, "lat", from, from + 10).await
        }));
        sent += 10;
    }
    for t in inflight {
        t.await??;
    }
    arrived(&fake, "app", total, &mut gw).await?;
    let mut hops = fake.hops();
    hops.sort();
    if hops.len() as u64 != total {
        bail!("latency: {} hops recorded for {total} messages", hops.len());
    }
    let (p50, p99) = (percentile(&hops, 0.5), percentile(&hops, 0.99));
    drop(gw);
    out.push(Figure::new(
        "4b. relay added latency at 500 messages/s",
        format!(
            "p50 {} ms, p99 {} ms (the endpoint's own round trip: 20 ms)",
            p50.as_millis(),
            p99.as_millis()
        ),
        "p99 < 120 ms (100 ms above the endpoint's latency)",
        format!(
            "{} messages at 500/s (10 every 20 ms) into the vendor queue; from the vendor's send taking effect to the relay's send of the \
             same body taking effect in the app queue",
            thousands(total as f64)
        ),
    ));
    Ok(out)
}

/// The relay tests' expectations, against moto and against the bench's
/// endpoint: 200 messages with an attribute reach the app queue once each,
/// the attribute unchanged, and the vendor queue ends empty.
async fn check(env: &Env) -> Result<Figure> {
    let dir = env.dir("relay-check")?;
    let moto = Moto::start(env, &dir).await?;
    let fake = FakeSqs::start(LATENCY).await?;
    let mut results = Vec::new();
    for (name, endpoint) in [
        ("moto", moto.endpoint.clone()),
        ("endpoint", fake.endpoint.clone()),
    ] {
        let client = Moto::client_for(&endpoint);
        let vendor = fake_sqs::create_queue(&client, "vendor-check").await?;
        let app = fake_sqs::create_queue(&client, "app-check").await?;
        let gw = Gapwatch::start(
            env,
            &dir,
            &format!("check-{name}"),
            &config(&dir, &endpoint, &vendor, &app),
        )
        .await?;
        let started = Instant::now();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut attrs_ok = true;
        for round in 0..4u64 {
            for b in 0..5u64 {
                let from = round * 50 + b * 10;
                send_batch(&client, &vendor, "chk", from, from + 10).await?;
            }
            drain(
                &client,
                &app,
                &mut counts,
                &mut attrs_ok,
                Duration::from_millis(800),
            )
            .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while counts.len() < 200 && Instant::now() < deadline {
            drain(
                &client,
                &app,
                &mut counts,
                &mut attrs_ok,
                Duration::from_millis(500),
            )
            .await?;
        }
        drain(
            &client,
            &app,
            &mut counts,
            &mut attrs_ok,
            Duration::from_secs(2),
        )
        .await?;
        let dupes = counts.values().filter(|n| **n > 1).count();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&vendor)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
            .send()
            .await?;
        let a = attrs.attributes.unwrap_or_default();
        let get =
            |k: aws_sdk_sqs::types::QueueAttributeName| a.get(&k).cloned().unwrap_or_default();
        let left = (
            get(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages),
            get(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        );
        let secs = started.elapsed().as_secs_f64();
        drop(gw);
        if counts.len() != 200 || dupes > 0 || !attrs_ok || left != ("0".into(), "0".into()) {
            bail!(
                "relay check against {name}: {} of 200 arrived, {dupes} twice, attributes kept: {attrs_ok}, vendor queue left {left:?}",
                counts.len()
            );
        }
        results.push(format!("{name} {secs:.1} s"));
    }
    Ok(Figure::new(
        "4b. relay checks, moto vs the bench endpoint",
        "both pass: 200 of 200 once, attributes unchanged, vendor queue empty".to_string(),
        "both pass",
        format!(
            "the expectations of tests/relay.rs (4 rounds of 50 sent and drained), with pollers = {WORKERS}, against each: {}",
            results.join(", ")
        ),
    ))
}

async fn drain(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    counts: &mut HashMap<String, usize>,
    attrs_ok: &mut bool,
    idle: Duration,
) -> Result<()> {
    let mut last = Instant::now();
    while last.elapsed() < idle {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .send()
            .await?;
        let msgs = got.messages.unwrap_or_default();
        if msgs.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        last = Instant::now();
        for m in &msgs {
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap_or("{}"))?;
            *counts
                .entry(body["id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
            let origin = m
                .message_attributes()
                .and_then(|a| a.get("origin"))
                .and_then(|v| v.string_value());
            *attrs_ok &= origin == Some("vendor");
        }
        delete_all(sqs, queue, &msgs).await?;
    }
    Ok(())
}
