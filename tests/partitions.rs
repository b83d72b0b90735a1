//! Partitioned feeds (`[feeds.partitions]`) through the real binary: one
//! silent store among fifty is detected and filled alone, and `/metrics` does
//! not grow with the number of partitions.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;

const ADMIN: &str = "adm1n";
const MAX_SILENCE_S: i64 = 8;

/// The stores listed by the vendor (`partitions.from`).
fn listed(vendor: &str) -> String {
    format!(
        r#"  key = "/store_id"
  from = {{ url = "{vendor}/v1/stores", records = "/stores", value = "/id", every = "1h" }}"#
    )
}

/// A relay feed of the simulator's stores (`partitions`: the body of
/// `[feeds.partitions]`), filled from `/v1/stores/{partition}/events`;
/// `extra` follows the feed.
fn relay_config(
    moto: &Moto,
    vendor: &str,
    vendor_q: &str,
    app_q: &str,
    dir: &std::path::Path,
    partitions: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "{ADMIN}"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false
poll_interval = "2s"

[[feeds]]
name = "orders"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.freshness]
  max_silence = "{MAX_SILENCE_S}s"
  [feeds.partitions]
{partitions}
  # Its lookups of sampled records would ask the vendor for other stores
  # too: this test counts what the fills ask for.
  [feeds.shape]
  enabled = false
  [feeds.backfill]
  auto = true
  chunk = "20s"
  follow_step = "2s"
  overlap = "2s"
  settle = "1s"
  concurrency = 2
    [feeds.backfill.source]
    url = "{vendor}/v1/stores/{{partition}}/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "50" }}
    time_format = "rfc3339"
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "50/s"
    timeout = "10s"
    max_retries = 10
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
{extra}"#,
        state = dir.join("state.db").display(),
        endpoint = moto.endpoint,
    )
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Fifty stores, one record every 3 s each (about 17 messages/s through
/// moto); store s7 goes silent for 30 s while the other 49 keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_store_of_fifty_is_detected_and_filled_alone() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-stores").await;
    let app_q = moto.create_queue("app-stores").await;
    let sim = VendorSim::start(&[
        "--stores",
        "50",
        "--rate",
        "16.667",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--pagination",
        "cursor",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &relay_config(
            &moto,
            &sim.base,
            &vendor_q,
            &app_q,
            dir.path(),
            &listed(&sim.base),
            "",
        ),
        &[],
    );
    let mut received = Vec::new();

    // Every store listed and heard from.
    let started = Instant::now();
    loop {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(500)).await);
        let (_, v) = gw
            .get("/api/v1/feeds/orders/partitions?state=fresh&limit=1000")
            .await;
        if v["fresh"] == 50 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "stores not all fresh: {v}\n{}",
            gw.logs()
        );
    }
    // A manual fill names one watched store, or none.
    let plan = serde_json::json!({
        "feed": "orders", "partition": "s3", "dry_run": true,
        "from": Utc::now() - chrono::Duration::seconds(60),
        "to": Utc::now() - chrono::Duration::seconds(30),
    });
    let (status, v) = gw
        .post("/api/v1/backfills", Some(ADMIN), &plan.to_string())
        .await;
    assert_eq!(
        (status, v["partition"].as_str(), v["partitions"].as_i64()),
        (200, Some("s3"), Some(1)),
        "{v}"
    );
    let mut bad = plan.clone();
    bad["partition"] = "s99".into();
    let (status, v) = gw
        .post("/api/v1/backfills", Some(ADMIN), &bad.to_string())
        .await;
    assert_eq!(status, 400, "{v}");

    sim.control(
        "/control/silence",
        serde_json::json!({ "store": "s7", "for_seconds": 30 }),
    )
    .await;

    // The gap opens for s7 alone, within max_silence + 1 s of its last record.
    let gap = loop {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get("/api/v1/gaps?feed=orders").await;
        let gaps = v["gaps"].as_array().cloned().unwrap_or_default();
        if let Some(g) = gaps.first() {
            assert_eq!(gaps.len(), 1, "only s7 goes silent: {v}");
            break g.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no gap: {}",
            gw.logs()
        );
    };
    assert_eq!(gap["partition"], "s7", "{gap}");
    let detection = (time(&gap["detected_at"]) - time(&gap["start"])).num_milliseconds();
    eprintln!(
        "s7: silent since {}, detected {detection} ms later",
        gap["start"]
    );
    assert!(
        detection <= (MAX_SILENCE_S + 1) * 1000,
        "detected {detection} ms after its last record"
    );
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_feed_partitions{feed="orders",state="silent"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&m, r#"gapwatch_gap_open{feed="orders"}"#), Some(1.0));
    let (_, v) = gw.get("/api/v1/feeds/orders/partitions?state=silent").await;
    assert_eq!(v["partitions"][0]["partition"], "s7", "{v}");
    assert_eq!(v["partitions"][0]["open_gap"]["id"], gap["id"], "{v}");

    // The silence ends, the gap closes and its fill finishes.
    let id = gap["id"].as_i64().unwrap();
    let done = loop {
        received.extend(drain_for(&sqs, &app_q, Duration::from_millis(300)).await);
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        if v["fill"] == "done" {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "fill not done: {v}\n{}",
            gw.logs()
        );
    };
    let (_, v) = gw.get("/api/v1/gaps?feed=orders").await;
    assert_eq!(v["gaps"].as_array().map(Vec::len), Some(1), "{v}");
    // Every chunk asked for s7, and the vendor was asked for nothing else.
    let chunks = done["chunks"].as_array().unwrap();
    assert!(
        !chunks.is_empty() && chunks.iter().all(|c| c["partition"] == "s7"),
        "{done}"
    );
    let stats = sim.get("/control/stats").await;
    let asked: BTreeSet<&str> = stats["requests_by_store"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(asked, BTreeSet::from(["(listing)", "s7"]), "{stats}");

    // Stop the vendor and let everything in flight arrive.
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(5)).await);
    let stats = sim.get("/control/stats").await;
    let history = sim.get("/control/records").await;
    let s7: BTreeSet<String> = sim.get("/control/records?store=s7").await["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let want: Vec<&str> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut recovered = BTreeSet::new();
    for m in &received {
        let id = message_record_id(m);
        if is_recovered(m) {
            let attr = m.message_attributes().unwrap()["gapwatch-record-id"]
                .string_value()
                .unwrap()
                .to_string();
            assert_eq!(attr, id);
            recovered.insert(id.clone());
        }
        *got.entry(id).or_default() += 1;
    }
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicates at the app queue: {dupes:?}");
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(**id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} vendor records missing, e.g. {:?}; stats {stats}",
        missing.len(),
        want.len(),
        missing.first()
    );
    assert_eq!(got.len(), want.len());
    let silenced = stats["silenced"].as_u64().unwrap();
    assert!(silenced >= 8, "s7 was silent for 30 s: {silenced} records");
    assert_eq!(
        recovered.len() as u64,
        silenced,
        "recovered exactly the silenced records"
    );
    assert!(recovered.is_subset(&s7), "recovered only s7's records");
    assert_eq!(done["progress"]["records_delivered"], silenced);
    eprintln!(
        "{} records at the app queue ({} relayed, {} recovered for s7); detection {detection} ms",
        got.len(),
        got.len() - recovered.len(),
        recovered.len()
    );
}

fn report_config(dir: &std::path::Path, partitions: usize) -> String {
    let values: Vec<String> = (0..partitions).map(|i| format!("\"p{i:05}\"")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "{ADMIN}"

[state]
url = "sqlite://{state}"

[[feeds]]
name = "shops"
  [feeds.watch]
  mode = "report"
  [feeds.freshness]
  max_silence = "10s"
  [feeds.partitions]
  key = "/shop"
  values = [{values}]
"#,
        state = dir.join("state.db").display(),
        values = values.join(", "),
    )
}

/// Posts one observation for each of `partitions`, stamped now.
async fn report(gw: &Gapwatch, partitions: impl Iterator<Item = String>, round: u32) {
    let now = Utc::now();
    let obs: Vec<_> = partitions
        .map(|p| serde_json::json!({ "id": format!("{p}-{round}"), "event_time": now, "partition": p }))
        .collect();
    let (status, v) = gw
        .post(
            "/api/v1/feeds/shops/observations",
            Some(ADMIN),
            &serde_json::Value::from(obs).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
}

/// The series of a `/metrics` page (lines that are not comments).
fn series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name))
        .collect()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A report feed of `n` partitions, 10 of them silent: its `/metrics` page
/// and the daemon's resident memory then.
async fn metrics_with_partitions(n: usize) -> (String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(dir.path(), &report_config(dir.path(), n), &[]);
    let names = move || (0..n).map(|i| format!("p{i:05}"));
    report(&gw, names(), 1).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // All but the first ten deliver again: those ten go silent at 10 s, the
    // others at 18 s.
    report(&gw, names().skip(10), 2).await;
    let started = Instant::now();
    let m = loop {
        let m = gw.metrics().await;
        if sample(
            &m,
            r#"gapwatch_feed_partitions{feed="shops",state="silent"}"#,
        ) == Some(10.0)
        {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{m}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_feed_partitions{feed="shops",state="fresh"}"#
        ),
        Some((n - 10) as f64)
    );
    assert!(
        sample(
            &m,
            r#"gapwatch_feed_oldest_partition_freshness_seconds{feed="shops"}"#
        )
        .unwrap()
            >= 10.0
    );

    // The partitions, a page at a time; the silent ones with their gap.
    let mut listed = 0;
    let mut after = String::new();
    loop {
        let (status, v) = gw
            .get(&format!(
                "/api/v1/feeds/shops/partitions?limit=1000&after={after}"
            ))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["total"], n, "{v}");
        listed += v["partitions"].as_array().unwrap().len();
        match v["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(listed, n);
    let (_, v) = gw.get("/api/v1/feeds/shops/partitions?state=silent").await;
    let silent: Vec<&str> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["partition"].as_str().unwrap())
        .collect();
    assert_eq!(
        silent,
        (0..10).map(|i| format!("p{i:05}")).collect::<Vec<_>>()
    );
    let (_, v) = gw.get("/api/v1/gaps?partition=p00003").await;
    assert_eq!(v["gaps"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["gaps"][0]["partition"], "p00003");
    let out = gw.cli(&["gaps", "--feed", "shops", "--partition", "p00004"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("p00004") && !text.contains("p00003"),
        "{text}"
    );
    let (_, v) = gw.get("/api/v1/feeds").await;
    assert_eq!(v["feeds"][0]["partitions"]["silent"], 10, "{v}");
    assert_eq!(v["feeds"][0]["partitions"]["total"], n, "{v}");
    (m, rss_kib(gw.pid()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_do_not_grow_with_the_number_of_partitions() {
    let (small, small_rss) = metrics_with_partitions(50).await;
    let (large, large_rss) = metrics_with_partitions(5_000).await;
    let (a, b) = (series(&small), series(&large));
    eprintln!(
        "/metrics with 50 partitions: {} series, {} bytes; with 5,000: {} series, {} bytes \
         (resident memory {small_rss} / {large_rss} KiB)",
        a.len(),
        small.len(),
        b.len(),
        large.len()
    );
    assert_eq!(a, b, "the same series whatever the number of partitions");
    // Only values differ (counts grow by a digit or two).
    assert!(
        large.len().abs_diff(small.len()) < 200,
        "{} vs {} bytes",
        small.len(),
        large.len()
    );
}

/// A vendor that drops 10% of its records on the way to SQS but never goes
/// silent: the audit lists each store's records over each settled window,
/// delivers exactly the missing ones, and moves the one watermark of the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_lists_every_partition_and_heals_each() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-stores").await;
    let app_q = moto.create_queue("app-stores").await;
    let sim = VendorSim::start(&[
        "--stores",
        "5",
        "--rate",
        "0",
        "--drop-rate",
        "0.1",
        "--queue-url",
        &vendor_q,
        "--endpoint-url",
        &moto.endpoint,
        "--pagination",
        "cursor",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let values = "  key = \"/store_id\"\n  values = [\"s1\", \"s2\", \"s3\", \"s4\", \"s5\"]";
    let audit = audit_block("3s", "10m", "5s");
    let gw = Gapwatch::start(
        dir.path(),
        &relay_config(
            &moto,
            &sim.base,
            &vendor_q,
            &app_q,
            dir.path(),
            values,
            &audit,
        ),
        &[],
    );
    eventually(Duration::from_secs(30), "the daemon ready", || async {
        (gw.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    // The ledger is complete from the audit's first run on; records start after it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    sim.control("/control/rate", serde_json::json!({ "rate": 5.0 }))
        .await;
    let mut received = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        received.extend(drain_for(&sqs, &app_q, Duration::from_secs(1)).await);
    }
    let (verified_until, missing, dropped) =
        eventually(Duration::from_secs(60), "the audit to catch up", || async {
            let m = gw.metrics().await;
            let vu = sample(
                &m,
                r#"gapwatch_audit_verified_until_timestamp_seconds{feed="orders"}"#,
            )?;
            let missing =
                sample(&m, r#"gapwatch_audit_records_missing_total{feed="orders"}"#)? as usize;
            let vu = DateTime::<Utc>::from_timestamp_millis((vu * 1000.0).round() as i64)?;
            let dropped: Vec<String> = sim
                .get(&format!(
                    "/control/records?dropped=true&to={}",
                    vu.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ))
                .await["ids"]
                .as_array()?
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            (missing == dropped.len() && missing > 0).then_some((vu, missing, dropped))
        })
        .await;
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
    // Each store was asked on its own, never the feed as a whole.
    let stats = sim.get("/control/stats").await;
    let asked: BTreeSet<&str> = stats["requests_by_store"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        asked,
        BTreeSet::from(["s1", "s2", "s3", "s4", "s5"]),
        "{stats}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"gapwatch_gaps_detected_total{feed="orders"}"#),
        Some(0.0),
        "the vendor never went silent"
    );
    eprintln!(
        "audit: {missing} missing records delivered across 5 stores, verified until {verified_until}"
    );
}

/// A report feed of stores (`partitions`: the body of `[feeds.partitions]`
/// after its key), filled per store into an NDJSON file; `source_extra` is
/// added to `[feeds.backfill.source]`.
fn file_config(
    vendor: &str,
    dir: &std::path::Path,
    partitions: &str,
    source_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "{ADMIN}"

[state]
url = "sqlite://{state}"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.partitions]
  key = "/store_id"
  {partitions}
  [feeds.shape]
  enabled = false
  [feeds.backfill]
  auto = true
  chunk = "2m"
  settle = "1s"
  concurrency = 2
    [feeds.backfill.source]
    url = "{vendor}/v1/stores/{{partition}}/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "40" }}
    time_format = "rfc3339"
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "200/s"
    timeout = "10s"
    max_retries = 2
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
{source_extra}
    [feeds.backfill.sink]
    type = "file"
    path = "{file}"
"#,
        state = dir.join("state.db").display(),
        file = dir.join("recovered.ndjson").display(),
    )
}

/// A store the vendor answers 404 for (one it no longer knows): with
/// `empty_on = [404]` its windows are empty and the fill ends done, every
/// record of the other stores once; without it, that store's chunks fail
/// saying 404 and the other stores' records still arrive, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_answering_404_is_empty_with_empty_on_and_fails_alone_without() {
    let sim = VendorSim::start(&[
        "--stores",
        "2",
        "--rate",
        "0",
        "--history",
        "120",
        "--history-span",
        "4m",
    ]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(5);
    let want: BTreeSet<String> = vendor_ids(&sim, from, to).await.into_iter().collect();
    assert!(want.len() >= 100, "history in the window: {want:?}");
    let values = r#"values = ["s1", "s2", "s9"]"#;

    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &file_config(&sim.base, dir.path(), values, "    empty_on = [404]"),
        &[],
    );
    let id = start_backfill(&gw, ADMIN, "orders", from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
    let chunks = gap["chunks"].as_array().unwrap();
    let of_s9: Vec<_> = chunks
        .iter()
        .filter(|c| c["partition"] == "s9")
        .cloned()
        .collect();
    assert!(!of_s9.is_empty(), "s9 has chunks of its own: {gap}");
    assert!(of_s9.iter().all(|c| c["state"] == "done"), "{gap}");
    let got = file_ids(&dir.path().join("recovered.ndjson"));
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    let stats = sim.get("/control/stats").await;
    assert!(
        stats["requests_by_store"]["s9"].as_u64().unwrap_or(0) >= 1,
        "s9 was asked: {stats}"
    );
    drop(gw);

    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gapwatch::start(
        dir2.path(),
        &file_config(&sim.base, dir2.path(), values, ""),
        &[],
    );
    let id = start_backfill(&gw2, ADMIN, "orders", from, to).await;
    let gap = wait_fill(&gw2, id, "failed", Duration::from_secs(60)).await;
    let chunks = gap["chunks"].as_array().unwrap();
    for c in chunks {
        let (part, state) = (c["partition"].as_str().unwrap(), &c["state"]);
        if part == "s9" {
            assert_eq!(state, "failed", "{c}");
            assert!(c["last_error"].as_str().unwrap().contains("404"), "{c}");
        } else {
            assert_eq!(state, "done", "{c}");
        }
    }
    let got = file_ids(&dir2.path().join("recovered.ndjson"));
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    eprintln!(
        "{} records of s1 and s2 once each; s9: {} chunks empty with empty_on, failed without ({})",
        want.len(),
        of_s9.len(),
        gap["last_error"]
    );
}

/// A vendor listing its stores a page at a time (two per page), by cursor
/// or by next link: every page is read, so all five stores are watched, and
/// a fill of the feed asks each of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_several_pages_is_read_to_its_end() {
    let sim = VendorSim::start(&[
        "--stores",
        "5",
        "--rate",
        "0",
        "--history",
        "100",
        "--history-span",
        "4m",
    ]);
    let five: BTreeSet<String> = (1..=5).map(|k| format!("s{k}")).collect();
    let pagings = [
        r#"cursor = "/next_cursor", param = "after""#,
        r#"next = "/links/next""#,
    ];
    for (round, paging) in pagings.iter().enumerate() {
        let listing_before = sim.get("/control/stats").await["requests_by_store"]["(listing)"]
            .as_u64()
            .unwrap_or(0);
        let dir = tempfile::tempdir().unwrap();
        let from = format!(
            r#"from = {{ url = "{}/v1/stores?limit=2", records = "/stores", value = "/id", {paging} }}"#,
            sim.base
        );
        let gw = Gapwatch::start(
            dir.path(),
            &file_config(&sim.base, dir.path(), &from, ""),
            &[],
        );
        let watched = eventually(Duration::from_secs(30), "five stores listed", || async {
            let (_, v) = gw.get("/api/v1/feeds/orders/partitions").await;
            let names: BTreeSet<String> = v["partitions"]
                .as_array()?
                .iter()
                .filter_map(|p| p["partition"].as_str().map(str::to_string))
                .collect();
            (names.len() == 5).then_some(names)
        })
        .await;
        assert_eq!(watched, five, "{paging}");
        let stats = sim.get("/control/stats").await;
        let pages = stats["requests_by_store"]["(listing)"].as_u64().unwrap() - listing_before;
        assert!(
            pages >= 3,
            "{paging}: {pages} listing requests for 3 pages: {stats}"
        );
        let to = Utc::now() - chrono::Duration::seconds(5);
        let from_t = to - chrono::Duration::minutes(5);
        let id = start_backfill(&gw, ADMIN, "orders", from_t, to).await;
        let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
        let asked: BTreeSet<String> = gap["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["partition"].as_str().map(str::to_string))
            .collect();
        assert_eq!(asked, five, "{paging}: {gap}");
        let want: BTreeSet<String> = vendor_ids(&sim, from_t, to).await.into_iter().collect();
        let got = file_ids(&dir.path().join("recovered.ndjson"));
        assert!(got.values().all(|n| *n == 1), "{paging}: {got:?}");
        assert_eq!(
            got.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "{paging}"
        );
        eprintln!(
            "round {round} ({paging}): 5 stores from {pages} listing pages, {} records once each",
            got.len()
        );
    }
}
