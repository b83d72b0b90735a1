//! The HTTP surface under hostile clients: idle and half-sent connections do
//! not delay `/metrics`; observations always need a token, and an unknown feed
//! is only named after authentication; errors served by the API carry no
//! query values (API keys) from vendor URLs.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;

const ADMIN: &str = "adm1n";
const REPORT: &str = "r3port";
const VENDOR_KEY: &str = "vendor-api-key-s3cr3t";

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "{ADMIN}"
report_token = "{REPORT}"

[state]
url = "sqlite://{state}"

[[feeds]]
name = "orders"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = false
  settle = "1s"
    [feeds.backfill.source]
    # Nothing listens on port 9: every request fails with an error that
    # quotes the URL, API key included.
    url = "http://127.0.0.1:9/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", api_key = "${{VENDOR_KEY}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    max_retries = 0
    timeout = "2s"
    [feeds.backfill.sink]
    type = "file"
    path = "{out}"
"#,
        state = dir.join("state.db").display(),
        out = dir.join("out.ndjson").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_do_not_delay_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path()),
        &[("VENDOR_KEY", VENDOR_KEY)],
    );
    let addr = format!("127.0.0.1:{}", gw.port);
    let mut held = Vec::new();
    for i in 0..400 {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        match i % 4 {
            // Idle: connected, nothing sent.
            0 => {}
            // Headers cut short.
            1 => write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap(),
            // A body announced and never finished, with and without a token.
            2 => write!(
                s,
                "POST /api/v1/feeds/orders/observations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {REPORT}\r\nContent-Length: 100000\r\n\r\n[{{"
            )
            .unwrap(),
            _ => write!(
                s,
                "POST /api/v1/feeds/orders/observations HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n["
            )
            .unwrap(),
        }
        held.push(s);
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let began = Instant::now();
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", gw.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .unwrap();
        worst = worst.max(began.elapsed());
        assert!(text.contains("gapwatch_build_info"));
    }
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);
    println!("GET /metrics with 400 idle or half-sent connections open: worst of 5 {worst:?}");
    // Generous: it answers in milliseconds; this only catches a blocked server.
    assert!(worst < Duration::from_secs(5), "{worst:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observations_need_a_token_and_unknown_feeds_are_named_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path()),
        &[("VENDOR_KEY", VENDOR_KEY)],
    );
    let body = format!(
        r#"[{{"id":"o-1","event_time":"{}"}}]"#,
        Utc::now().to_rfc3339()
    );
    let path = "/api/v1/feeds/orders/observations";
    assert_eq!(gw.post(path, None, &body).await.0, 401);
    assert_eq!(gw.post(path, Some("wrong"), &body).await.0, 401);
    let (status, v) = gw
        .post("/api/v1/feeds/nope/observations", None, &body)
        .await;
    assert_eq!(status, 401, "{v}");
    assert!(!v.to_string().contains("nope"), "{v}");
    assert_eq!(
        gw.post("/api/v1/feeds/nope/observations", Some(REPORT), &body)
            .await
            .0,
        404
    );
    assert_eq!(gw.post(path, Some(REPORT), &body).await.0, 200);
    assert_eq!(gw.post(path, Some(ADMIN), &body).await.0, 200);
    // The report token is not an admin token.
    let backfill = r#"{"feed":"orders","from":"2026-01-01T00:00:00Z","to":"2026-01-01T00:01:00Z"}"#;
    assert_eq!(
        gw.post("/api/v1/backfills", Some(REPORT), backfill).await.0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_url_query_values_never_reach_the_api_or_the_log() {
    // A vendor whose next-URLs loop: the chunk fails with an error that quotes
    // the next URL, which carries the API key in its query.
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "100",
        "--history-span",
        "5m",
        "--pagination",
        "next_url",
        "--cursor-loop",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
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
  auto = false
  settle = "1s"
  max_chunk_attempts = 1
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "10", api_key = "${{VENDOR_KEY}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    pagination = {{ type = "next_url", next = "/links/next" }}
    [feeds.backfill.sink]
    type = "file"
    path = "{out}"
"#,
        state = dir.path().join("state.db").display(),
        vendor = sim.base,
        out = dir.path().join("out.ndjson").display(),
    );
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_KEY", VENDOR_KEY)]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(4);
    let id = start_backfill(&gw, ADMIN, "orders", from, to).await;
    let gap = eventually(Duration::from_secs(30), "the fill failed", || {
        let gw = &gw;
        async move {
            let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
            (v["fill"] == "failed").then_some(v)
        }
    })
    .await;
    let text = gap.to_string();
    assert!(text.contains("loop"), "{text}");
    assert!(!text.contains(VENDOR_KEY), "{text}");
    assert!(text.contains("api_key=***"), "{text}");
    let (_, list) = gw.get("/api/v1/gaps").await;
    assert!(!list.to_string().contains(VENDOR_KEY));
    assert!(!gw.logs().contains(VENDOR_KEY), "the log holds the key");
}
