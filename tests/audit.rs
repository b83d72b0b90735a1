//! The completeness audit against a vendor that never goes silent but loses
//! records on their way to SQS (its API still serves them): every lost record
//! reaches the app queue exactly once, through the audit alone.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;

const TOKEN: &str = "vendor-t0ken";
/// The audit's settings in this test (seconds): `every`, `delay`.
const EVERY: i64 = 3;
const DELAY: i64 = 5;

fn config(
    moto: &Moto,
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

{feed}{audit}"#,
        state = dir.join("state.db").display(),
        endpoint = moto.endpoint,
        feed = relay_feed_with_backfill("orders", vendor_q, app_q, vendor_url, 10),
        audit = audit_block(&format!("{EVERY}s"), "10m", &format!("{DELAY}s")),
    )
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_vendor_is_healed_by_the_audit() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--drop-rate",
        "0.05",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, &sim.base, &vendor_q, &app_q, dir.path()),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    // The ledger is complete from the audit's first run on; records start after it.
    eventually(Duration::from_secs(30), "the daemon ready", || async {
        (gw.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    sim.control("/control/rate", serde_json::json!({ "rate": 10.0 }))
        .await;

    let mut received = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        received.extend(drain_for(&sqs, &app_q, Duration::from_secs(1)).await);
    }

    // Read the watermark and the missing count from one scrape, until the
    // count equals what the vendor dropped before the watermark.
    let (verified_until, missing, dropped, scraped_at) =
        eventually(Duration::from_secs(60), "the audit to catch up", || async {
            let m = gw.metrics().await;
            let now = Utc::now();
            let vu = sample(
                &m,
                r#"gapwatch_audit_verified_until_timestamp_seconds{feed="orders"}"#,
            )?;
            let missing =
                sample(&m, r#"gapwatch_audit_records_missing_total{feed="orders"}"#)? as usize;
            let vu = DateTime::<Utc>::from_timestamp_millis((vu * 1000.0).round() as i64)?;
            let dropped = ids(&sim
                .get(&format!(
                    "/control/records?dropped=true&to={}",
                    vu.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ))
                .await);
            (missing == dropped.len() && missing > 0).then_some((vu, missing, dropped, now))
        })
        .await;
    // `verified_until` trails real time by about delay + every (plus the
    // run's own time on a loaded machine).
    let lag = (scraped_at - verified_until).num_milliseconds() as f64 / 1000.0;
    assert!(
        lag >= (DELAY - 1) as f64 && lag <= (DELAY + EVERY + 20) as f64,
        "verified_until lags {lag}s"
    );
    let (_, feeds) = gw.get("/api/v1/feeds").await;
    let shown: DateTime<Utc> = feeds["feeds"][0]["verified_until"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no verified_until in {feeds}"));
    assert!(shown >= verified_until, "{feeds}");

    // Every dropped record before the watermark is in the app queue exactly once,
    // marked as recovered.
    // (The vendor keeps sending: drain for a while rather than until idle.)
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(4)).await);
    let mut got: HashMap<String, (usize, bool)> = HashMap::new();
    for m in &received {
        let e = got.entry(message_record_id(m)).or_default();
        e.0 += 1;
        e.1 |= is_recovered(m);
    }
    for id in &dropped {
        assert_eq!(
            got.get(id).copied(),
            Some((1, true)),
            "dropped record {id} at the app queue (count, recovered); log:\n{}",
            gw.logs()
        );
    }
    let dupes: Vec<_> = got.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(dupes.is_empty(), "duplicates at the app queue: {dupes:?}");
    let stats = sim.get("/control/stats").await;
    assert!(stats["dropped"].as_u64().unwrap() >= missing as u64);
    // The vendor never went silent: no gap, only the audit.
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"gapwatch_gaps_detected_total{feed="orders"}"#),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            r#"gapwatch_audit_runs_total{feed="orders",outcome="ok"}"#
        )
        .unwrap()
            >= 2.0
    );
    assert!(sample(&m, r#"gapwatch_state_ledger_ids{feed="orders"}"#).is_some());
}

/// A report-mode feed whose app reported all but a few of the vendor's
/// records; its sink is a file.
fn report_config(vendor_url: &str, dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "sqlite://{state}"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  chunk = "1m"
  settle = "1s"
{source}
    [feeds.backfill.sink]
    type = "file"
    path = "{file}"
{audit}"#,
        state = dir.join("state.db").display(),
        source = VendorShape::Cursor.source(vendor_url, 4),
        file = dir.join("recovered.ndjson").display(),
        audit = audit_block("1h", "2h", "5s"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_command_counts_then_delivers_exactly_what_the_ledger_lacks() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "150",
        "--history-span",
        "90s",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gapwatch::start(
        dir.path(),
        &report_config(&sim.base, dir.path()),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let all = ids(&sim.get("/control/records").await);
    assert_eq!(all.len(), 150);
    let unreported: Vec<String> = all.iter().skip(3).step_by(21).cloned().collect();
    let now = Utc::now();
    let reported: Vec<_> = all
        .iter()
        .filter(|id| !unreported.contains(id))
        .map(|id| serde_json::json!({ "id": id, "event_time": now.to_rfc3339() }))
        .collect();
    let (status, v) = gw
        .post(
            "/api/v1/feeds/orders/observations",
            Some("adm1n"),
            &serde_json::Value::Array(reported).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // The daemon writes the ledger in batches; it stops cleanly (the file
    // sink is the command's alone then).
    tokio::time::sleep(Duration::from_secs(2)).await;
    gw.terminate(Duration::from_secs(10));

    let from = (now - chrono::Duration::minutes(3)).to_rfc3339();
    let to = now.to_rfc3339();
    let dry_run = |gw: &Gapwatch| {
        let out = gw.cli(&[
            "audit",
            "--feed",
            "orders",
            "--from",
            &from,
            "--to",
            &to,
            "--dry-run",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = dry_run(&gw);
    assert_eq!(report["listed"], 150, "{report}");
    assert_eq!(report["missing"], unreported.len(), "{report}");
    let mut sample = ids(&serde_json::json!({ "ids": report["sample"] }));
    sample.sort();
    let mut want = unreported.clone();
    want.sort();
    assert_eq!(sample, want);
    assert!(
        !dir.path().join("recovered.ndjson").exists()
            || std::fs::read_to_string(dir.path().join("recovered.ndjson"))
                .unwrap()
                .is_empty()
    );

    let out = gw.cli(&[
        "audit", "--feed", "orders", "--from", &from, "--to", &to, "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_to_string(dir.path().join("recovered.ndjson")).unwrap();
    let mut delivered: Vec<String> = file
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    delivered.sort();
    assert_eq!(delivered, want);
    // Now the ledger holds them too.
    assert_eq!(dry_run(&gw)["missing"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_window_leaves_the_watermark_until_a_run_succeeds() {
    let sim = VendorSim::start(&[
        "--rate",
        "5",
        "--token",
        TOKEN,
        "--error-rate",
        "1.0",
        "--error-statuses",
        "500",
    ]);
    let dir = tempfile::tempdir().unwrap();
    // Every audit window fails at its first error; runs every 2 s.
    let config = report_config(&sim.base, dir.path())
        .replace(
            "  settle = \"1s\"\n",
            "  settle = \"1s\"\n  max_chunk_attempts = 1\n",
        )
        .replace("max_retries = 4", "max_retries = 0")
        .replace(
            &audit_block("1h", "2h", "5s"),
            &audit_block("2s", "10m", "2s"),
        );
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    eventually(Duration::from_secs(30), "the daemon ready", || async {
        (gw.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let ready_at = Utc::now();
    let failed = r#"gapwatch_audit_runs_total{feed="orders",outcome="failed"}"#;
    let verified = r#"gapwatch_audit_verified_until_timestamp_seconds{feed="orders"}"#;
    eventually(
        Duration::from_secs(60),
        "two failed audit windows",
        || async { (sample(&gw.metrics().await, failed)? >= 2.0).then_some(()) },
    )
    .await;
    let m = gw.metrics().await;
    assert_eq!(sample(&m, verified), None, "{m}");
    let (_, feeds) = gw.get("/api/v1/feeds").await;
    assert!(feeds["feeds"][0]["verified_until"].is_null(), "{feeds}");

    // The vendor recovers: the next run starts where the watermark was (the
    // audit's start), so the stretch of the failed windows is audited too.
    sim.control("/control/faults", serde_json::json!({ "error_rate": 0.0 }))
        .await;
    let vu = eventually(Duration::from_secs(60), "a verified window", || async {
        sample(&gw.metrics().await, verified)
    })
    .await;
    let vu = DateTime::<Utc>::from_timestamp_millis((vu * 1000.0).round() as i64).unwrap();
    assert!(vu > ready_at);
    let want = ids(&sim
        .get(&format!(
            "/control/records?from={}&to={}",
            ready_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            vu.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
        .await);
    assert!(want.len() >= 5, "{want:?}");
    // Nothing was reported: every vendor record is missing, so delivered.
    let file = std::fs::read_to_string(dir.path().join("recovered.ndjson")).unwrap();
    let got: std::collections::HashSet<String> = file
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for id in &want {
        assert!(
            got.contains(id),
            "{id} before the watermark was not delivered"
        );
    }
    let m = gw.metrics().await;
    assert!(
        sample(
            &m,
            r#"gapwatch_audit_runs_total{feed="orders",outcome="ok"}"#
        )
        .unwrap()
            >= 1.0
    );
    // Counted once delivered (a window may be under way as this is read).
    let missing = sample(&m, r#"gapwatch_audit_records_missing_total{feed="orders"}"#).unwrap();
    assert!(missing >= want.len() as f64, "{missing} < {}", want.len());
    assert!(missing <= file.lines().count() as f64);
}
