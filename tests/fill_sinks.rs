//! Sinks tell the truth about delivery: an HTTP sink that answers a redirect
//! has not received anything, and a file sink whose write failed half-way
//! keeps no half-written page behind. Against the vendor simulator, a real
//! HTTP endpoint and a real file system that runs out of room.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;

const TOKEN: &str = "vendor-t0ken";
const ADMIN: &str = "adm1n";

/// One report-mode feed `orders` filled from the simulator into `sink`.
fn config(vendor: &str, dir: &Path, sink: &str, backfill_extra: &str) -> String {
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
  [feeds.backfill]
  auto = true
  chunk = "2m"
  settle = "1s"
  concurrency = 1
  {backfill_extra}
{source}    [feeds.backfill.sink]
{sink}
"#,
        state = dir.join("state.db").display(),
        source = VendorShape::Cursor
            .source(vendor, 4)
            .replace("rate_limit = \"50/s\"", "rate_limit = \"200/s\""),
    )
}

async fn backfill(gw: &Gapwatch, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    start_backfill(gw, ADMIN, "orders", from, to).await
}

fn vendor() -> VendorSim {
    VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "600",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ])
}

/// `sink.batch = 1`: a webhook receiver gets one POST per record whose body is
/// the rendered record itself (not an array), with its id and attributes as
/// headers; every record of the window exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sink_with_batch_1_posts_each_rendered_record() {
    let sim = vendor();
    let peer = HttpSinkPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "    type = \"http\"\n    url = \"{}/hook\"\n    batch = 1\n",
        peer.base
    );
    let extra = "render = '{event: \"order.created\", data: {id, created_at}}'\n  attributes = { event-type = '\"order.created\"' }";
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), &sink, extra),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::seconds(40);
    let id = backfill(&gw, from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
    let want = vendor_ids(&sim, from, to).await;
    assert!(want.len() >= 30, "{} records in the window", want.len());
    let hooks = peer.state.hooks.lock().unwrap().clone();
    let mut got: HashMap<String, usize> = HashMap::new();
    for (body, record_id, event_type) in &hooks {
        assert_eq!(body["event"], "order.created", "{body}");
        let keys: Vec<&String> = body["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["id", "created_at"], "{body}");
        let rid = body["data"]["id"].as_str().unwrap();
        assert_eq!(record_id.as_deref(), Some(rid));
        assert_eq!(event_type.as_deref(), Some("order.created"));
        *got.entry(rid.to_string()).or_default() += 1;
    }
    assert!(got.values().all(|n| *n == 1), "a record posted twice");
    let mut got: Vec<String> = got.into_keys().collect();
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
    assert_eq!(hooks.len(), want.len(), "one request per record");
    assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
    assert!(peer.state.records.lock().unwrap().is_empty());
}

/// The next page is asked for while this one is delivered: against a sink
/// that takes 300 ms per POST, the vendor has already served page k + 1 by the
/// time page k's POST is answered (one page at a time, it would have served
/// exactly k). Every record still arrives once, in page order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_page_is_fetched_while_a_page_is_delivered() {
    use std::sync::{Arc, Mutex};
    let sim = Arc::new(vendor());
    /// Per POST: vendor requests served when it was answered, its records.
    type Posts = Arc<Mutex<Vec<(u64, Vec<serde_json::Value>)>>>;
    let posts: Posts = Arc::default();
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::post({
            let (sim, posts) = (sim.clone(), posts.clone());
            move |axum::Json(v): axum::Json<Vec<serde_json::Value>>| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let served = sim.get("/control/stats").await["served_requests"]
                    .as_u64()
                    .unwrap();
                posts.lock().unwrap().push((served, v));
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("    type = \"http\"\n    url = \"{url}\"\n");
    // Pages of 4 records.
    let config =
        config(&sim.base, dir.path(), &sink, "").replace(r#"limit = "50""#, r#"limit = "4""#);
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::seconds(40);
    let before = sim.get("/control/stats").await["served_requests"]
        .as_u64()
        .unwrap();
    let id = backfill(&gw, from, to).await;
    wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
    let posts = posts.lock().unwrap().clone();
    assert!(posts.len() >= 5, "{} pages posted", posts.len());
    // One chunk (chunk = 2m, concurrency 1), pages of 4: POST k carries
    // page k, and page k + 1 was requested before its answer.
    for (k, (served, _)) in posts.iter().enumerate().take(posts.len() - 1) {
        let page = k as u64 + 1;
        assert!(
            served - before > page,
            "page {}: the vendor had served {} pages when its delivery ended",
            page,
            served - before
        );
    }
    let got: Vec<String> = posts
        .iter()
        .flat_map(|(_, v)| v.iter().map(|r| r["id"].as_str().unwrap().to_string()))
        .collect();
    let mut want = vendor_ids(&sim, from, to).await;
    want.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, want, "every record once");
}

/// A 301 from the HTTP sink is a failed delivery: nothing counts as
/// delivered, the fill fails saying why, and the redirect is not followed
/// (following it would turn the POST into a GET and drop the records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sink_answering_301_is_a_failed_delivery() {
    let sim = vendor();
    let peer = HttpSinkPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "    type = \"http\"\n    url = \"{}/moved\"\n    max_retries = 1\n",
        peer.base
    );
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), &sink, "max_chunk_attempts = 1"),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(1);
    let id = backfill(&gw, from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(30)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(err.contains("http sink answered 301"), "{err}");
    assert_eq!(gap["progress"]["records_delivered"], 0, "{gap}");
    assert_eq!(
        peer.state
            .elsewhere_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the redirect was followed"
    );
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_backfill_records_total{feed="orders",outcome="delivered"}"#
        ),
        Some(0.0)
    );
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The disk fills up while a page is being written: part of it reaches the
/// file, the write fails. The partial page is cut before the retry, so once
/// there is room again the file holds every record exactly once, every line
/// whole, and its length is the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sink_write_failing_half_way_leaves_no_partial_page() {
    let sim = vendor();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("recovered.ndjson");
    let sink = format!("    type = \"file\"\n    path = \"{}\"\n", out.display());
    // The output already holds 16 MiB from earlier fills, and the limit
    // leaves room for about 150 more records: the fill stops in the middle
    // of a page, while the state store (far smaller) is not touched by it.
    let line = format!("{{\"id\":\"old\",\"pad\":\"{}\"}}\n", "x".repeat(1000));
    std::fs::write(&out, line.repeat((16 << 20) / line.len())).unwrap();
    let old = std::fs::metadata(&out).unwrap().len();
    let gw = Gapwatch::start_with_file_size_limit(
        dir.path(),
        &config(&sim.base, dir.path(), &sink, "max_chunk_attempts = 50"),
        &[("VENDOR_TOKEN", TOKEN)],
        old + 20_000,
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(7);
    let want = vendor_ids(&sim, from, to).await;
    let id = backfill(&gw, from, to).await;
    let gap = eventually(Duration::from_secs(30), "a failed write", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        let err = v["progress"]["records_delivered"].as_i64().unwrap_or(0) > 0
            && gw.logs().contains("File too large");
        err.then_some(v)
    })
    .await;
    assert_ne!(gap["fill"], "done");
    gw.lift_file_size_limit();
    // The failed chunk is retried after its backoff; ask for it now.
    let (status, _) = gw
        .post(&format!("/api/v1/gaps/{id}/retry"), Some(ADMIN), "")
        .await;
    assert!(status == 200 || status == 409, "retry answered {status}");
    wait_fill(&gw, id, "done", Duration::from_secs(60)).await;

    let lines = file_lines(&out);
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (n, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {n} is not a whole record ({e}): {line:.80}"));
        if v["id"] != "old" {
            *ids.entry(v["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert!(ids.values().all(|n| *n == 1), "duplicates in the file");
    assert_eq!(ids.len(), want.len());
    assert!(want.iter().all(|id| ids.contains_key(id)));
}
