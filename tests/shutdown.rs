//! SIGTERM, through the real binary: during the relay's 20 s long poll and
//! during a fill the process exits 0 within `server.shutdown_grace`, and after
//! a restart every record arrives once.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;

const GRACE: Duration = Duration::from_secs(6);
const TOKEN: &str = "vendor-t0ken";

fn count_ids<'a>(bodies: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    for body in bodies {
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON record");
        *got.entry(v["id"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    got
}

/// Stops the process with SIGTERM; returns how long the exit took.
fn terminate(gw: &mut Gapwatch) -> Duration {
    let began = Instant::now();
    let status = gw
        .terminate(Duration::from_secs(40))
        .unwrap_or_else(|| panic!("gapwatch did not exit; log:\n{}", gw.logs()));
    let took = began.elapsed();
    assert!(status.success(), "exit {status}; log:\n{}", gw.logs());
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_poll_exits_within_the_grace_and_loses_nothing() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    // A receive abandoned at shutdown comes back after this.
    let vendor_q = moto
        .create_queue_with("vendor-orders", &[("VisibilityTimeout", "2")])
        .await;
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "10",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
shutdown_grace = "{grace}s"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false

[[feeds]]
name = "orders"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
"#,
        grace = GRACE.as_secs(),
        state = dir.path().join("state.db").display(),
        endpoint = moto.endpoint,
    );
    let mut gw = Gapwatch::start(dir.path(), &config, &[]);
    let mut received = drain_for(&sqs, &app_q, Duration::from_secs(3)).await;
    // The vendor goes quiet: the relay waits in a long poll.
    sim.control("/control/silence", serde_json::json!({})).await;
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(2)).await);
    let took = terminate(&mut gw);
    println!("exit after SIGTERM during a long poll: {took:?} (grace {GRACE:?})");
    let logs = gw.logs();
    assert!(
        !logs.contains("did not stop within the grace"),
        "log:\n{logs}"
    );
    assert!(took < GRACE, "exit took {took:?}, grace {GRACE:?}");

    // Records published while the relay is down wait in the vendor queue.
    sim.control("/control/resume", serde_json::json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gw.restart();
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(3)).await);
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(5)).await);

    // Silenced records were never published; every published one must arrive.
    let stats = sim.get("/control/stats").await;
    let published = stats["published"].as_u64().unwrap() as usize;
    let got = count_ids(received.iter().filter_map(|m| m.body()));
    assert!(published >= 40, "stats {stats}");
    assert_eq!(got.len(), published, "records lost; stats {stats}");
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "relayed twice: {dupes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_fill_exits_within_the_grace_and_resumes_exactly_once() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "300",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
        "--latency-ms",
        "700",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("recovered.ndjson");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"
shutdown_grace = "{grace}s"

[state]
url = "sqlite://{state}"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  chunk = "2m"
  settle = "1s"
  concurrency = 2
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "10" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "100/s"
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    [feeds.backfill.sink]
    type = "file"
    path = "{out}"
"#,
        grace = GRACE.as_secs(),
        state = dir.path().join("state.db").display(),
        vendor = sim.base,
        out = out.display(),
    );
    let mut gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(7);
    let gap_id = start_backfill(&gw, "adm1n", "orders", from, to).await;
    eventually(Duration::from_secs(30), "a few pages delivered", || {
        let gw = &gw;
        async move {
            let (_, v) = gw.get(&format!("/api/v1/gaps/{gap_id}")).await;
            (v["progress"]["records_delivered"].as_i64().unwrap_or(0) >= 20).then_some(())
        }
    })
    .await;
    let took = terminate(&mut gw);
    println!("exit after SIGTERM during a fill: {took:?} (grace {GRACE:?})");
    assert!(took < GRACE, "exit took {took:?}, grace {GRACE:?}");
    assert!(!gw.logs().contains("did not stop within the grace"));

    gw.restart();
    let gap = eventually(Duration::from_secs(90), "the fill done", || {
        let gw = &gw;
        async move {
            let (_, v) = gw.get(&format!("/api/v1/gaps/{gap_id}")).await;
            (v["fill"] == "done").then_some(v)
        }
    })
    .await;
    let want = sim
        .get(&format!(
            "/control/records?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await;
    let want: Vec<&str> = want["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let got = count_ids(text.lines());
    assert!(got.values().all(|n| *n == 1), "a record written twice");
    let missing = want.iter().filter(|id| !got.contains_key(**id)).count();
    assert_eq!(missing, 0, "{missing} of {} records missing", want.len());
    assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
}
