//! One live record stamped far in the future (a vendor sentinel, or unix ms read
//! as seconds) must not switch gap detection off: it is relayed, counted as
//! rejected input, and a later outage is still detected and recovered.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const TOKEN: &str = "vendor-t0ken";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2099_record_does_not_blind_the_detector() {
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
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false
poll_interval = "2s"

{feed}"#,
        state = dir.path().join("state.db").display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_backfill("orders", &vendor_q, &app_q, &sim.base, 10),
    );
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);

    let mut received = drain_for(&sqs, &app_q, Duration::from_secs(2)).await;
    sqs.send_message()
        .queue_url(&vendor_q)
        .message_body(r#"{"id":"sentinel-2099","created_at":"2099-01-01T00:00:00Z"}"#)
        .send()
        .await
        .expect("send the sentinel");
    let rejected =
        r#"gapwatch_rejected_input_total{feed="orders",reason="future_event_time",source="queue"}"#;
    eventually(
        Duration::from_secs(30),
        "the future event time counted",
        || {
            let gw = &gw;
            async move { sample(&gw.metrics().await, rejected).filter(|v| *v >= 1.0) }
        },
    )
    .await;
    let (_, feeds) = gw.get("/api/v1/feeds").await;
    let last = feeds["feeds"][0]["last_event"].as_str().unwrap_or_default();
    assert!(
        !last.starts_with("2099"),
        "freshness moved to the sentinel: {feeds}"
    );

    sim.control("/control/silence", serde_json::json!({ "for_seconds": 10 }))
        .await;
    let mut gap_id = None;
    for _ in 0..200 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get("/api/v1/gaps").await;
        if let Some(g) = v["gaps"].as_array().and_then(|g| g.first()) {
            gap_id = g["id"].as_i64();
            if g["fill"] == "done" {
                break;
            }
        }
    }
    let gap_id = gap_id.unwrap_or_else(|| panic!("no gap detected; log:\n{}", gw.logs()));
    let (_, gap) = gw.get(&format!("/api/v1/gaps/{gap_id}")).await;
    assert_eq!(gap["fill"], "done", "fill not done: {gap}");

    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(4)).await);
    let stats = sim.get("/control/stats").await;
    let history = sim.get("/control/records").await;
    let mut got: HashMap<String, usize> = HashMap::new();
    for m in &received {
        let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
        *got.entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        got.get("sentinel-2099"),
        Some(&1),
        "the sentinel is relayed"
    );
    let missing: Vec<_> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .filter(|id| !got.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} vendor records missing, e.g. {:?}; stats {stats}",
        missing.len(),
        missing.first()
    );
    let silenced = stats["silenced"].as_i64().unwrap();
    assert!(silenced >= 50, "the silence produced {silenced} records");
    assert_eq!(gap["progress"]["records_delivered"], silenced);
    let m = gw.metrics().await;
    assert_eq!(sample(&m, rejected), Some(1.0));
    assert!(gw
        .logs()
        .contains("event time in the future; freshness not moved"));
}
