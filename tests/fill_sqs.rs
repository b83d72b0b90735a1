//! The whole job: the vendor publishes to SQS, gapwatch relays it, the vendor goes
//! silent, the gap is detected and filled from the vendor's API while it is still
//! open, and the app queue ends with every vendor record exactly once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const TOKEN: &str = "vendor-t0ken";

fn config(
    moto: &Moto,
    shape: VendorShape,
    vendor_url: &str,
    vendor_q: &str,
    app_q: &str,
    dir: &std::path::Path,
) -> String {
    format!(
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
        state = dir.join("state.db").display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_source("orders", vendor_q, app_q, &shape.source(vendor_url, 10)),
    )
}

/// `rate` records/s, silent for `silence` seconds.
async fn run(shape: VendorShape, rate: u32, silence: u32, error_rate: f64) {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let mut args = vec![
        "--rate".to_string(),
        rate.to_string(),
        "--queue-url".into(),
        vendor_q.clone(),
        "--endpoint-url".into(),
        moto.endpoint.clone(),
        "--token".into(),
        TOKEN.into(),
        "--pagination".into(),
        shape.sim_style().into(),
    ];
    if error_rate > 0.0 {
        args.extend([
            "--error-rate".into(),
            error_rate.to_string(),
            "--error-statuses".into(),
            "429,500".into(),
            "--retry-after".into(),
            "1".into(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sim = VendorSim::start(&args);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, shape, &sim.base, &vendor_q, &app_q, dir.path()),
        &[("VENDOR_TOKEN", TOKEN)],
    );

    let mut received = Vec::new();
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(3)).await);
    sim.control(
        "/control/silence",
        serde_json::json!({ "for_seconds": silence }),
    )
    .await;

    // The gap opens, and its fill starts while it is still open.
    let mut saw_filling_while_open = false;
    let mut gap_id = None;
    for _ in 0..60 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get("/api/v1/gaps").await;
        if let Some(g) = v["gaps"].as_array().and_then(|g| g.first()) {
            gap_id = g["id"].as_i64();
            if g["state"] == "open" && g["progress"]["records_delivered"].as_i64().unwrap_or(0) > 0
            {
                saw_filling_while_open = true;
            }
            if g["state"] == "closed" {
                break;
            }
        }
    }
    let gap_id = gap_id.expect("a gap was detected");
    assert!(
        saw_filling_while_open,
        "the fill did not start while the gap was open"
    );

    // It finishes after the gap closes.
    let mut done = None;
    for _ in 0..120 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get(&format!("/api/v1/gaps/{gap_id}")).await;
        if v["fill"] == "done" {
            done = Some(v);
            break;
        }
    }
    let gap = done.unwrap_or_else(|| panic!("fill not done; log:\n{}", gw.logs()));

    // Stop the vendor and let everything in flight arrive.
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(5)).await);

    let stats = sim.get("/control/stats").await;
    let history = sim.get("/control/records").await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut recovered = 0;
    for m in &received {
        *got.entry(message_record_id(m)).or_default() += 1;
        if is_recovered(m) {
            recovered += 1;
        }
    }
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicates at the app queue: {dupes:?}");
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} vendor records missing, e.g. {:?}; stats {stats}",
        missing.len(),
        want.len(),
        missing.first()
    );
    assert_eq!(got.len(), want.len());
    let silenced = stats["silenced"].as_i64().unwrap();
    assert!(
        silenced >= i64::from(rate * silence / 2),
        "the silence produced {silenced} records"
    );
    assert_eq!(
        recovered, silenced,
        "recovered exactly the silenced records"
    );
    assert_eq!(gap["progress"]["records_delivered"], silenced);
    // Every query asked for exactly its window: nothing came back outside it.
    assert_eq!(gap["progress"]["records_out_of_window"], 0, "{gap}");
    let m = gw.metrics().await;
    // (Stopping the vendor above opens a new gap: that is the detector working.)
    assert!(sample(&m, r#"gapwatch_gaps_detected_total{feed="orders"}"#).unwrap() >= 1.0);
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_backfill_records_total{feed="orders",outcome="delivered"}"#
        ),
        Some(silenced as f64)
    );
    assert!(sample(
        &m,
        r#"gapwatch_backfill_last_success_timestamp_seconds{feed="orders"}"#
    )
    .is_some());
    assert!(gw.logs().contains("fill finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_vendor_is_recovered_into_the_app_queue_exactly_once() {
    run(VendorShape::Cursor, 10, 10, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_20_percent_429_and_500_answers() {
    run(VendorShape::Cursor, 10, 10, 0.2).await;
}

/// An API that knows whole seconds only: window edges planned inside a second
/// (the gap's start, every follow step) must not lose the records between the
/// edge and the second the API rounds it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_shaped_vendor_loses_nothing_at_second_edges() {
    run(VendorShape::Stripe, 20, 12, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_shaped_vendor_with_10_percent_429_and_10_percent_500() {
    run(VendorShape::Stripe, 20, 12, 0.2).await;
}

/// kill -9 in the middle of a fill into SQS: after the restart nothing is
/// missing, at most one destination batch (10 messages) arrives twice, and
/// every recovered message carries its record id for the consumer to drop
/// such a repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_into_sqs_re_sends_at_most_one_batch() {
    kill_9_mid_fill(1).await;
}

/// With `sink.in_flight = 4` a chunk has up to four batches sent and not
/// yet committed: at most four batches arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fill_with_4_batches_in_flight_re_sends_at_most_4_batches() {
    kill_9_mid_fill(4).await;
}

async fn kill_9_mid_fill(batches_in_flight: usize) {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "600",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let source = VendorShape::Cursor
        .source(&sim.base, 4)
        .replace("limit = \"50\"", "limit = \"100\"");
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

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = true
  chunk = "20m"
  settle = "1s"
  concurrency = 1
{source}    [feeds.backfill.sink]
    type = "sqs"
    queue_url = "{app_q}"
    in_flight = {batches_in_flight}
"#,
        state = dir.path().join("state.db").display(),
        endpoint = moto.endpoint,
    );
    let mut gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    let to = chrono::Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(9);
    let id = start_backfill(&gw, "adm1n", "orders", from, to).await;
    eventually(Duration::from_secs(60), "the fill under way", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["progress"]["records_delivered"].as_i64().unwrap_or(0) >= 120).then_some(())
    })
    .await;
    gw.kill9();
    // Killed in the middle: not everything is in the queue yet.
    let (visible, in_flight) = queue_count(&sqs, &app_q).await;
    assert!(
        visible + in_flight < 500,
        "the fill finished before the kill"
    );
    gw.restart();
    let gap = eventually(Duration::from_secs(90), "the fill done", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["fill"] == "done").then_some(v)
    })
    .await;
    let received = drain(&sqs, &app_q, Duration::from_secs(3)).await;

    let want = vendor_ids(&sim, from, to).await;
    let mut got: HashMap<String, usize> = HashMap::new();
    for m in &received {
        let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
        let body_id = v["id"].as_str().unwrap().to_string();
        let attr = m
            .message_attributes()
            .and_then(|a| a.get("gapwatch-record-id"))
            .and_then(|a| a.string_value())
            .unwrap_or_else(|| panic!("{body_id}: no gapwatch-record-id attribute"));
        assert_eq!(attr, body_id);
        *got.entry(body_id).or_default() += 1;
    }
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} missing after kill -9",
        missing.len(),
        want.len()
    );
    assert_eq!(got.len(), want.len());
    let re_sent: usize = got.values().map(|n| n - 1).sum();
    assert!(
        re_sent <= 10 * batches_in_flight,
        "{re_sent} records re-sent after kill -9 with {batches_in_flight} batches in flight"
    );
    // The store knows each record was delivered once.
    let delivered = gap["progress"]["records_delivered"].as_i64().unwrap();
    assert_eq!(delivered, want.len() as i64, "{gap}");
    eprintln!(
        "kill -9 mid-fill, in_flight {batches_in_flight}: {} records, {re_sent} re-sent",
        want.len()
    );
}

// === Fidelity: recovered messages as the app parses live ones ===

/// The vendor goes silent for 6 s at 10 records/s; every record the live feed
/// carries reaches the app queue exactly once, readable the way the app reads
/// live ones, with the same top-level keys and (non-gapwatch) attributes.
async fn recovered_look_live(live: Live) {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let mut args = vec![
        "--rate",
        "10",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--token",
        TOKEN,
    ];
    args.extend(live.sim_args());
    let sim = VendorSim::start(&args);
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
        feed = shaped_feed(live, &sim.base, &vendor_q, &app_q),
    );
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);

    let mut received = drain_for(&sqs, &app_q, Duration::from_secs(3)).await;
    sim.control("/control/silence", serde_json::json!({ "for_seconds": 6 }))
        .await;
    let mut gap_id = None;
    for _ in 0..150 {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get("/api/v1/gaps").await;
        if let Some(g) = v["gaps"].as_array().and_then(|g| g.first()) {
            gap_id = g["id"].as_i64();
            if g["state"] == "closed" && g["fill"] == "done" {
                break;
            }
        }
    }
    let gap_id = gap_id.unwrap_or_else(|| panic!("no gap detected; log:\n{}", gw.logs()));
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(4)).await);
    let (_, gap) = gw.get(&format!("/api/v1/gaps/{gap_id}")).await;
    assert_eq!(gap["fill"], "done", "{gap}\n{}", gw.logs());

    let history = sim.get("/control/records").await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .filter(|id| {
            live != Live::OddOnly || id.trim_start_matches("evt-").parse::<u64>().unwrap() % 2 == 1
        })
        .collect();
    let keys = |body: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let attributes = |m: &aws_sdk_sqs::types::Message| -> Vec<(String, String)> {
        let mut a: Vec<(String, String)> = m
            .message_attributes()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.starts_with("gapwatch-"))
            .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_string()))
            .collect();
        a.sort();
        a
    };
    let live_msg = received
        .iter()
        .find(|m| !is_recovered(m))
        .expect("a live message");
    let (live_keys, live_attributes) = (keys(live_msg.body().unwrap()), attributes(live_msg));
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut recovered = 0;
    for m in &received {
        let body = m.body().unwrap();
        let record = live
            .parse(body)
            .unwrap_or_else(|| panic!("{live:?}: the app cannot read {body}"));
        let id = record["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {body}"));
        assert!(record["created_at"].is_string(), "{body}");
        *got.entry(id.to_string()).or_default() += 1;
        if is_recovered(m) {
            recovered += 1;
            assert_eq!(keys(body), live_keys, "top-level keys of {body}");
            assert_eq!(attributes(m), live_attributes, "attributes of {body}");
            let ledger_id = m
                .message_attributes()
                .and_then(|a| a.get("gapwatch-record-id"))
                .and_then(|a| a.string_value());
            assert_eq!(ledger_id, Some(id), "ledger id is the live id");
        }
    }
    assert!(
        recovered >= 20,
        "{recovered} recovered; {gap}\n{}",
        gw.logs()
    );
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "{live:?}: duplicates at the app queue: {dupes:?}"
    );
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{live:?}: {} of {} records missing, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );
    assert_eq!(
        got.len(),
        want.len(),
        "{live:?}: records the live feed does not carry arrived"
    );
    if live == Live::OddOnly {
        let m = gw.metrics().await;
        let filtered = sample(
            &m,
            r#"gapwatch_backfill_records_total{feed="orders",outcome="filtered"}"#,
        )
        .unwrap_or(0.0);
        assert!(filtered >= 10.0, "filtered {filtered}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_wrapped_feed_recovers_as_eventbridge_events() {
    recovered_look_live(Live::EventBridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_wrapped_feed_recovers_as_sns_notifications() {
    recovered_look_live(Live::Sns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_envelope_and_attribute_are_rendered_with_jq() {
    recovered_look_live(Live::Custom).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_queue_does_not_carry_are_filtered() {
    recovered_look_live(Live::OddOnly).await;
}
