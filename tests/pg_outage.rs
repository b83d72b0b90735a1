//! Postgres goes away for about a minute while gapwatch relays a feed, and the
//! vendor goes silent in the middle of it: relaying and freshness go on,
//! readiness reports the store, and once the database is back the lease is
//! taken again, the gap that opened during the outage is saved and filled, and
//! the ids relayed meanwhile reach the ledger. Nothing is lost or repeated.
//!
//! A second test stops the database in the middle of a fill: the fill pauses
//! and resumes from its checkpoint, losing nothing and repeating at most the
//! one page delivered but not checkpointed.
//!
//! Each test stops its own cluster (`pg_ctl stop -m fast`), so it does not
//! share one with other tests.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::postgres::PgCluster;
use common::*;

const TOKEN: &str = "vendor-t0ken";

async fn metric(gw: &Gapwatch, series: &str) -> Option<f64> {
    sample(&gw.metrics().await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_costs_state_freshness_never_records() {
    let pg = PgCluster::start();
    let state_url = pg.new_database();
    let db = state_url.rsplit('/').next().unwrap().to_string();
    let moto = Moto::start();
    let sqs = moto.sqs();
    let vendor_q = moto.create_queue("vendor-orders").await;
    let app_q = moto.create_queue("app-orders").await;
    let sim = VendorSim::start(&[
        "--rate",
        "5",
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
    // The audit keeps a ledger of every relayed id; it runs rarely and only
    // over windows older than its delay, so it stays out of this test's way.
    let audit = audit_block("1h", "24h", "10m");
    let text = relay_config_with_state(&moto, &state_url, &sim.base, &vendor_q, &app_q, &audit);
    let gw = Gapwatch::start(dir.path(), &text, &[("VENDOR_TOKEN", TOKEN)]);
    let leader = r#"gapwatch_feed_leader{feed="orders"}"#;
    let last_event = r#"gapwatch_feed_last_event_timestamp_seconds{feed="orders"}"#;

    let mut received = drain_for(&sqs, &app_q, Duration::from_secs(4)).await;
    assert!(!received.is_empty(), "nothing relayed before the outage");
    assert_eq!(metric(&gw, leader).await, Some(1.0));
    assert_eq!(gw.get("/readyz").await.0, 200);

    // The database goes away.
    pg.stop();
    let stopped = Instant::now();
    let stopped_at = chrono::Utc::now().timestamp() as f64;

    // Readiness says so (one probe may still see a pooled connection).
    let body = eventually(
        Duration::from_secs(30),
        "/readyz reports the store",
        || async {
            let (status, body) = gw.get("/readyz").await;
            (status == 503 && body["store"] != "ok").then_some(body)
        },
    )
    .await;
    let not_ready_after = stopped.elapsed();
    assert_eq!(body["ready"], false, "{body}");

    // Relaying goes on; then the vendor goes silent for 20 s inside the outage.
    received.extend(drain_for(&sqs, &app_q, Duration::from_secs(3)).await);
    sim.control("/control/silence", serde_json::json!({ "for_seconds": 20 }))
        .await;
    let silenced = chrono::Utc::now().timestamp() as f64;
    while stopped.elapsed() < Duration::from_secs(60) {
        received.extend(drain_for(&sqs, &app_q, Duration::from_secs(2)).await);
    }
    let during: Vec<_> = received
        .iter()
        .filter(|m| !is_recovered(m))
        .filter_map(|m| {
            let v: serde_json::Value = serde_json::from_str(m.body()?).ok()?;
            let t = chrono::DateTime::parse_from_rfc3339(v["created_at"].as_str()?).ok()?;
            (t.timestamp() as f64 > silenced + 20.0).then_some(())
        })
        .collect();
    assert!(
        !during.is_empty(),
        "nothing relayed after the vendor resumed while the store was down; logs:\n{}",
        gw.logs()
    );
    // Freshness follows the records, not the store.
    let newest = metric(&gw, last_event).await.expect("a newest event");
    assert!(
        newest > silenced + 20.0,
        "newest event {newest} not past the silence ({silenced} + 20 s); logs:\n{}",
        gw.logs()
    );
    // Nobody may act on the feed's lease while it cannot be renewed, and
    // nobody is named as its holder.
    assert_eq!(metric(&gw, leader).await, Some(0.0));
    let (_, feeds) = gw.get("/api/v1/feeds").await;
    assert!(feeds["feeds"][0]["leader"].is_null(), "{feeds}");
    let (status, _) = gw.get("/readyz").await;
    assert_eq!(status, 503);

    // The database comes back on the same port.
    pg.resume();
    let resumed = Instant::now();
    eventually(Duration::from_secs(30), "/readyz ok again", || async {
        (gw.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let ready_after = resumed.elapsed();
    eventually(Duration::from_secs(30), "the lease taken again", || async {
        (metric(&gw, leader).await == Some(1.0)).then_some(())
    })
    .await;
    let lease_after = resumed.elapsed();

    // The gap that opened while the store was down is saved, once, and filled.
    let mut gap = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        received.extend(drain_for(&sqs, &app_q, Duration::from_secs(1)).await);
        let (_, v) = gw.get("/api/v1/gaps").await;
        if v["gaps"][0]["fill"] == "done" {
            gap = Some(v);
            break;
        }
    }
    let gaps = gap.unwrap_or_else(|| {
        panic!(
            "the outage's gap was not saved and filled; gaps: {}; logs:\n{}",
            pg.psql_in(&db, "SELECT id, state, fill, start_ms, end_ms FROM gaps"),
            gw.logs()
        )
    });
    let gaps = gaps["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let start = chrono::DateTime::parse_from_rfc3339(gaps[0]["start"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64;
    assert!(
        start >= stopped_at - 1.0 && start <= silenced + 1.0,
        "the gap starts at {start}, not at the silence ({silenced}): {gaps:?}"
    );

    // Every vendor record reached the app queue, none more than one batch
    // twice. The vendor stops publishing so the queue can be drained.
    sim.control("/control/rate", serde_json::json!({ "rate": 0.0 }))
        .await;
    received.extend(drain(&sqs, &app_q, Duration::from_secs(5)).await);
    let history = sim.get("/control/records").await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut got: HashMap<String, usize> = HashMap::new();
    for m in &received {
        *got.entry(message_record_id(m)).or_default() += 1;
    }
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} vendor records missing, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );
    let repeated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.len() <= 10,
        "{} records arrived more than once: {repeated:?}",
        repeated.len()
    );
    let recovered = received.iter().filter(|m| is_recovered(m)).count();
    assert!(recovered > 0, "nothing was recovered");

    // The ids relayed while the store was down reached the ledger afterwards.
    let relayed: Vec<String> = received
        .iter()
        .filter(|m| !is_recovered(m))
        .map(message_record_id)
        .collect();
    let stored = eventually(Duration::from_secs(30), "the ledger catches up", || async {
        let n: usize = pg
            .psql_in(&db, "SELECT COUNT(*) FROM record_ids WHERE feed = 'orders'")
            .parse()
            .unwrap();
        (n >= got.len()).then_some(n)
    })
    .await;
    let in_store = pg.psql_in(&db, "SELECT id FROM record_ids WHERE feed = 'orders'");
    let in_store: std::collections::HashSet<&str> = in_store.lines().collect();
    let unrecorded: Vec<_> = relayed
        .iter()
        .filter(|id| !in_store.contains(id.as_str()))
        .collect();
    assert!(
        unrecorded.is_empty(),
        "{} relayed ids never reached the ledger, e.g. {:?}",
        unrecorded.len(),
        unrecorded.first()
    );

    eprintln!(
        "postgres outage: /readyz 503 after {not_ready_after:?}; ready {ready_after:?} and \
         lease back {lease_after:?} after the restart; {} records relayed after the silence \
         while down; {} vendor records, {recovered} recovered, {} more than once; {stored} ids \
         in the ledger",
        during.len(),
        want.len(),
        repeated.len()
    );
}

/// A report-mode feed filled from the simulator into an HTTP sink, slowly
/// enough (4 vendor requests/s) that the fill is still running when the
/// database goes away.
fn fill_config(state_url: &str, vendor_url: &str, sink_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "adm1n"

[state]
url = "{state_url}"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = true
  chunk = "2m"
  settle = "1s"
  concurrency = 1
{source}    [feeds.backfill.sink]
    type = "http"
    url = "{sink_url}/ingest"
"#,
        source = VendorShape::Cursor
            .source(vendor_url, 10)
            .replace("rate_limit = \"50/s\"", "rate_limit = \"4/s\""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_mid_fill_costs_time_never_records() {
    let pg = PgCluster::start();
    let state_url = pg.new_database();
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "2400",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ]);
    let sink = HttpSinkPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &fill_config(&state_url, &sim.base, &sink.base),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    eventually(Duration::from_secs(30), "the lease", || async {
        (metric(&gw, r#"gapwatch_feed_leader{feed="orders"}"#).await == Some(1.0)).then_some(())
    })
    .await;
    let to = chrono::Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(11);
    let id = start_backfill(&gw, "adm1n", "orders", from, to).await;

    // The database goes away once part of the fill is delivered.
    eventually(
        Duration::from_secs(60),
        "a part of the fill delivered",
        || async { (sink.state.records.lock().unwrap().len() >= 300).then_some(()) },
    )
    .await;
    pg.stop();
    let delivered_at_stop = sink.state.records.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let delivered_while_down = sink.state.records.lock().unwrap().len() - delivered_at_stop;
    pg.resume();
    let resumed = Instant::now();

    let gap = eventually(Duration::from_secs(120), "the fill done", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["fill"] == "done" || v["fill"] == "failed").then_some(v)
    })
    .await;
    let done_after = resumed.elapsed();
    assert_eq!(gap["fill"], "done", "{gap}; logs:\n{}", gw.logs());

    // The vendor's records inside the backfilled window.
    let history = sim
        .get(&format!(
            "/control/records?from={}&to={}",
            from.timestamp_millis(),
            to.timestamp_millis()
        ))
        .await;
    let want: Vec<String> = history["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(want.len() > 2000, "{history}");
    let mut got: HashMap<String, usize> = HashMap::new();
    for r in sink.state.records.lock().unwrap().iter() {
        *got.entry(r["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} vendor records missing, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );
    // At most the one POST (a page of 50) sent but not checkpointed.
    let repeated = got.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 50,
        "{repeated} records delivered more than once"
    );
    eprintln!(
        "postgres outage mid-fill: {delivered_at_stop} delivered before the stop, \
         {delivered_while_down} during 25 s without the store, fill done {done_after:?} after \
         the restart; {} vendor records, {repeated} delivered more than once",
        want.len()
    );
}
