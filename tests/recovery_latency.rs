//! How soon after the vendor resumes is an outage fully recovered? The closing
//! fill is planned at the instant the gap's last window is settled
//! (gap end + overlap + settle) and fetched at once, so the last recovered
//! record should reach the app queue about settle + overlap after the resume.
//! The figures are printed, not asserted (the machine may be loaded);
//! completeness is asserted.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "vendor-t0ken";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20s_outage_is_recovered_soon_after_the_vendor_resumes() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "10",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--token",
        TOKEN,
        "--pagination",
        "cursor",
    ]);
    let dir = tempfile::tempdir().unwrap();
    // relay_feed_with_backfill: max_silence 3 s, settle 1 s, overlap 2 s.
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false

{feed}"#,
        state = dir.path().join("state.db").display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_backfill("orders", &vendor_q, &app_q, &sim.base, 10),
    );
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);

    let mut received: Vec<(Instant, aws_sdk_sqs::types::Message)> = Vec::new();
    let mut take = |batch: Vec<aws_sdk_sqs::types::Message>| {
        let at = Instant::now();
        received.extend(batch.into_iter().map(|m| (at, m)));
    };
    take(drain_for(&sqs, &app_q, Duration::from_secs(2)).await);
    sim.control("/control/silence", serde_json::json!({})).await;
    let silenced_at = Instant::now();
    while silenced_at.elapsed() < Duration::from_secs(20) {
        take(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
    }
    sim.control("/control/resume", serde_json::json!({})).await;
    let resumed_at = Instant::now();

    let mut gap = None;
    while resumed_at.elapsed() < Duration::from_secs(90) {
        take(drain_for(&sqs, &app_q, Duration::from_millis(200)).await);
        let (_, v) = gw.get("/api/v1/gaps").await;
        if let Some(g) = v["gaps"].as_array().and_then(|g| g.first()) {
            if g["fill"] == "done" {
                gap = Some(g.clone());
                break;
            }
        }
    }
    let gap = gap.unwrap_or_else(|| panic!("fill not done; log:\n{}", gw.logs()));
    let done_after = resumed_at.elapsed();
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    // In short rounds, so each message is stamped close to its arrival.
    let mut idle_since = Instant::now();
    while idle_since.elapsed() < Duration::from_secs(4) {
        let batch = drain_for(&sqs, &app_q, Duration::from_millis(200)).await;
        if !batch.is_empty() {
            idle_since = Instant::now();
        }
        take(batch);
    }

    let stats = sim.get("/control/stats").await;
    let silenced = stats["silenced"].as_i64().unwrap();
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut last_recovered = None;
    for (at, m) in &received {
        let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
        *got.entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
        if m.message_attributes()
            .is_some_and(|a| a.contains_key("gapwatch-backfill"))
        {
            last_recovered = Some(last_recovered.map_or(*at, |l: Instant| l.max(*at)));
        }
    }
    let history = sim.get("/control/records").await;
    let missing = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|id| !got.contains_key(*id))
        .count();
    assert_eq!(missing, 0, "vendor records missing; stats {stats}");
    assert!(got.values().all(|n| *n == 1), "a record arrived twice");
    assert!(silenced >= 150, "the outage produced {silenced} records");
    assert_eq!(gap["progress"]["records_delivered"], silenced);
    let last = last_recovered.expect("recovered records reached the app queue");
    let latency = last.saturating_duration_since(resumed_at);
    println!(
        "recovery latency: last recovered record at the app queue {:.2} s after the vendor resumed \
         (fill marked done after {:.2} s); floor settle + overlap = 3 s, target <= 5 s; \
         outage 20 s, {silenced} records recovered",
        latency.as_secs_f64(),
        done_after.as_secs_f64()
    );
}
