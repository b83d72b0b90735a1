//! Recovery through every pagination style, resumption after kill -9, idempotent
//! re-runs, and broken pages — against the vendor simulator over real HTTP, with
//! the file sink and a real SQLite file.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;

const TOKEN: &str = "vendor-t0ken";
const ADMIN: &str = "adm1n";

/// The pagination styles of DESIGN.md as the simulator serves them:
/// (feed and style name, records pointer, pagination config).
const STYLES: &[(&str, &str, &str)] = &[
    ("none", "/data", r#"{ type = "none" }"#),
    (
        "cursor",
        "/data",
        r#"{ type = "cursor", cursor = "/next_cursor", param = "cursor" }"#,
    ),
    (
        "cursor_last",
        "/data",
        r#"{ type = "cursor", cursor_from_last_record = "/id", param = "starting_after", has_more = "/has_more" }"#,
    ),
    (
        "next_url",
        "/data",
        r#"{ type = "next_url", next = "/links/next" }"#,
    ),
    ("link_header", "", r#"{ type = "link_header" }"#),
    (
        "page",
        "/data",
        r#"{ type = "page", param = "page", start = 1, size_param = "per_page", size = 40 }"#,
    ),
    (
        "offset",
        "/data",
        r#"{ type = "offset", param = "offset", limit_param = "limit", limit = 40 }"#,
    ),
];

/// One report-mode feed per pagination style, each with its own file sink,
/// asking for windows in RFC 3339 with milliseconds.
fn config(vendor: &str, dir: &Path, extra: &str) -> String {
    config_in(vendor, dir, extra, "rfc3339")
}

/// The same, with `{start}`/`{end}` written in `time_format`; with `unix_s`
/// a `stripe` feed (newest first, `created` in unix seconds) joins them.
fn config_in(vendor: &str, dir: &Path, extra: &str, time_format: &str) -> String {
    let mut out = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "{ADMIN}"

[state]
url = "sqlite://{state}"
"#,
        state = dir.join("state.db").display()
    );
    let stripe = (
        "stripe",
        "/data",
        r#"{ type = "cursor", cursor_from_last_record = "/id", param = "starting_after", has_more = "/has_more" }"#,
    );
    let with_stripe = time_format == "unix_s";
    for (style, records, pagination) in STYLES.iter().chain(with_stripe.then_some(&stripe)) {
        let (query, record_time, record_format) = if *style == "stripe" {
            (
                r#"{ "created[gte]" = "{start}", "created[lt]" = "{end}", limit = "100", style = "stripe" }"#.to_string(),
                "/created",
                "unix_s",
            )
        } else {
            (
                format!(
                    r#"{{ since = "{{start}}", until = "{{end}}", limit = "40", style = "{style}" }}"#
                ),
                "/created_at",
                "rfc3339",
            )
        };
        out.push_str(&format!(
            r#"
[[feeds]]
name = "{style}"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = true
  chunk = "2m"
  settle = "1s"
  concurrency = 2
  {extra}
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {query}
    time_format = "{time_format}"
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "{records}"
    record_id = "/id"
    record_time = "{record_time}"
    record_time_format = "{record_format}"
    rate_limit = "200/s"
    timeout = "10s"
    max_retries = 6
    pagination = {pagination}
    [feeds.backfill.sink]
    type = "file"
    path = "{file}"
"#,
            file = dir.join(format!("{style}.ndjson")).display(),
        ));
    }
    out
}

async fn backfill(gw: &Gapwatch, feed: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    start_backfill(gw, ADMIN, feed, from, to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pagination_style_recovers_each_record_once() {
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
    let mut gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), ""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(7);
    let want = vendor_ids(&sim, from, to).await;
    assert!(want.len() > 350, "history too small: {}", want.len());

    let styles = [
        "none",
        "cursor",
        "cursor_last",
        "next_url",
        "link_header",
        "page",
        "offset",
    ];
    let mut gaps = Vec::new();
    for style in styles {
        gaps.push((style, backfill(&gw, style, from, to).await));
    }
    for (style, id) in gaps {
        let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
        let got = file_ids(&dir.path().join(format!("{style}.ndjson")));
        let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "{style}: duplicates {dupes:?}");
        let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "{style}: {} missing, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        assert_eq!(
            got.len(),
            want.len(),
            "{style}: records outside the interval were delivered"
        );
        assert_eq!(
            gap["progress"]["records_delivered"],
            want.len() as i64,
            "{style}"
        );
        assert_eq!(
            gap["progress"]["chunks_total"], 4,
            "{style}: 7 min in 2 min chunks"
        );
    }

    // Re-running a filled interval delivers nothing new.
    let id = backfill(&gw, "cursor", from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(30)).await;
    assert_eq!(gap["progress"]["records_delivered"], 0);
    assert_eq!(gap["progress"]["records_duplicate"], want.len() as i64);
    assert_eq!(
        file_ids(&dir.path().join("cursor.ndjson")).len(),
        want.len()
    );

    // A dry run plans and sends nothing.
    let (from_s, to_s) = (from.to_rfc3339(), to.to_rfc3339());
    let out = gw.cli(&[
        "backfill",
        "--feed",
        "offset",
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--dry-run",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("4 chunk(s)") && text.contains("dry run"),
        "{text}"
    );

    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_backfill_records_total{feed="none",outcome="delivered"}"#
        ),
        Some(want.len() as f64)
    );
    // At least one page of 40 per 40 records, plus each chunk's short last page.
    let pages = sample(
        &m,
        r#"gapwatch_backfill_requests_total{feed="page",status="200"}"#,
    )
    .unwrap();
    assert!(
        pages >= (want.len() / 40) as f64 + 1.0,
        "{pages} page requests"
    );

    // The same re-run from the command line. The daemon holds the feed's file
    // sink, so the command refuses to write it while the daemon runs …
    let args = [
        "backfill", "--feed", "page", "--from", &from_s, "--to", &to_s, "--json",
    ];
    let out = gw.cli(&args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another gapwatch process"),
        "{stderr}"
    );
    // … and fills by itself once the daemon is gone: nothing new.
    assert!(gw
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let out = gw.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["progress"]["records_delivered"], 0);
    assert_eq!(v["progress"]["records_duplicate"], want.len() as i64);
    assert_eq!(file_ids(&dir.path().join("page.ndjson")).len(), want.len());
}

/// Every style against an API that reads `{start}`/`{end}` as whole unix
/// seconds, with the interval's edges (and so its chunk edges) inside a
/// second, five records a second: the fill covers the whole seconds around
/// the interval, each record once, and nothing comes back outside a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_style_with_edges_inside_a_second_loses_nothing() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "3000",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config_in(&sim.base, dir.path(), "", "unix_s"),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let second = |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).unwrap();
    let to =
        second(Utc::now() - chrono::Duration::seconds(5)) + chrono::Duration::milliseconds(900);
    let from = to - chrono::Duration::minutes(7) + chrono::Duration::milliseconds(350)
        - chrono::Duration::milliseconds(900);
    assert_ne!(from, second(from));
    // What an API of whole seconds can be asked for around [from, to).
    let want = vendor_ids(
        &sim,
        second(from),
        second(to) + chrono::Duration::seconds(1),
    )
    .await;
    assert!(want.len() > 2000, "history too small: {}", want.len());

    let mut gaps = Vec::new();
    for (style, _, _) in STYLES.iter().chain([&("stripe", "", "")]) {
        gaps.push((style, backfill(&gw, style, from, to).await));
    }
    for (style, id) in gaps {
        let gap = wait_fill(&gw, id, "done", Duration::from_secs(90)).await;
        let got = file_ids(&dir.path().join(format!("{style}.ndjson")));
        let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "{style}: duplicates {dupes:?}");
        let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "{style}: {} of {} missing, e.g. {:?}",
            missing.len(),
            want.len(),
            missing.first()
        );
        assert_eq!(
            got.len(),
            want.len(),
            "{style}: records outside the interval"
        );
        assert_eq!(
            gap["progress"]["records_delivered"],
            want.len() as i64,
            "{style}"
        );
        assert_eq!(
            gap["progress"]["records_out_of_window"], 0,
            "{style}: {gap}"
        );
    }
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_backfill_records_total{feed="stripe",outcome="out_of_window"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_killed_mid_way_resumes_and_delivers_each_record_once() {
    // Slow pages so the kill lands in the middle of the fill.
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "2000",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
        "--latency-ms",
        "60",
        "--error-rate",
        "0.2",
        "--error-statuses",
        "429,500",
        "--retry-after",
        "0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), ""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(9);
    let want = vendor_ids(&sim, from, to).await;
    let id = backfill(&gw, "page", from, to).await;
    eventually(Duration::from_secs(60), "some progress", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["progress"]["records_delivered"].as_i64().unwrap_or(0) >= 300).then_some(())
    })
    .await;
    gw.kill9();
    let partial = file_ids(&dir.path().join("page.ndjson")).len();
    assert!(partial < want.len(), "the fill finished before the kill");
    gw.restart();
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(120)).await;
    let got = file_ids(&dir.path().join("page.ndjson"));
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicates after kill -9: {dupes:?}");
    assert_eq!(got.len(), want.len());
    assert!(want.iter().all(|id| got.contains_key(id)));
    assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
    // 429/500 answers were retried, not fatal.
    let m = gw.metrics().await;
    let errors = sample(
        &m,
        r#"gapwatch_backfill_requests_total{feed="page",status="429"}"#,
    )
    .unwrap_or(0.0)
        + sample(
            &m,
            r#"gapwatch_backfill_requests_total{feed="page",status="500"}"#,
        )
        .unwrap_or(0.0);
    assert!(errors > 0.0, "no injected error was seen:\n{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pages_and_cursor_loops_fail_the_fill_saying_why() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "300",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), "max_chunk_attempts = 1"),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(1);

    sim.control(
        "/control/faults",
        serde_json::json!({ "malformed_every": 1 }),
    )
    .await;
    let id = backfill(&gw, "cursor", from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(30)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(err.contains("page is not JSON"), "{err}");

    sim.control(
        "/control/faults",
        serde_json::json!({ "malformed_every": 0, "cursor_loop": true }),
    )
    .await;
    let id = backfill(&gw, "cursor", from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(30)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(err.contains("cursor loop"), "{err}");

    // Fixed at the source: a retry finishes the fill.
    sim.control(
        "/control/faults",
        serde_json::json!({ "cursor_loop": false }),
    )
    .await;
    let (status, _) = gw.post(&format!("/api/v1/gaps/{id}/retry"), None, "").await;
    assert_eq!(status, 401, "retry needs the admin token");
    let (status, _) = gw
        .post(&format!("/api/v1/gaps/{id}/retry"), Some(ADMIN), "")
        .await;
    assert_eq!(status, 200);
    wait_fill(&gw, id, "done", Duration::from_secs(30)).await;
    let m = gw.metrics().await;
    assert!(
        sample(
            &m,
            r#"gapwatch_rejected_input_total{feed="cursor",reason="bad_page",source="vendor"}"#
        )
        .unwrap()
            >= 2.0
    );
}

/// A server that caps the page size below what was asked (15 < 40): a
/// short page is not the last one, paging goes on until an empty page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_capping_the_page_size_is_paged_to_the_end() {
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
    sim.control(
        "/control/faults",
        serde_json::json!({ "page_size_cap": 15 }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), ""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(7);
    let want = vendor_ids(&sim, from, to).await;
    assert!(want.len() > 350, "history too small: {}", want.len());
    for style in ["page", "offset"] {
        let id = backfill(&gw, style, from, to).await;
        let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
        let got = file_ids(&dir.path().join(format!("{style}.ndjson")));
        let missing = want.iter().filter(|id| !got.contains_key(*id)).count();
        assert_eq!(missing, 0, "{style}: {missing} of {} missing", want.len());
        assert_eq!(got.len(), want.len(), "{style}");
        assert!(got.values().all(|n| *n == 1), "{style}: duplicates");
        assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
    }
}

/// A `Link` header that cannot be parsed is a chunk failure naming it, not
/// "no next page" (which would end the chunk after its first page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_link_header_fails_the_chunk_saying_why() {
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
    sim.control("/control/faults", serde_json::json!({ "bad_link": true }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), "max_chunk_attempts = 1"),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(3);
    let id = backfill(&gw, "link_header", from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(30)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(
        err.contains("malformed Link header: unterminated '<' target"),
        "{err}"
    );
    // Repaired at the source, a retry delivers everything once.
    sim.control("/control/faults", serde_json::json!({ "bad_link": false }))
        .await;
    let (status, _) = gw
        .post(&format!("/api/v1/gaps/{id}/retry"), Some(ADMIN), "")
        .await;
    assert_eq!(status, 200);
    wait_fill(&gw, id, "done", Duration::from_secs(30)).await;
    let want = vendor_ids(&sim, from, to).await;
    let got = file_ids(&dir.path().join("link_header.ndjson"));
    assert_eq!(got.len(), want.len());
    assert!(want.iter().all(|id| got.get(id) == Some(&1)));
}

/// A fill of many more chunks than are planned ahead at once (180 one-second
/// chunks): the plan grows as chunks finish, and ends exactly at the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_fill_is_planned_a_stretch_at_a_time() {
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
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), "").replace("chunk = \"2m\"", "chunk = \"1s\""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let second = |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).unwrap();
    let to = second(Utc::now() - chrono::Duration::seconds(5));
    let from = to - chrono::Duration::minutes(3);
    let want = vendor_ids(&sim, from, to).await;
    let id = backfill(&gw, "cursor", from, to).await;
    let most_planned = std::sync::atomic::AtomicI64::new(0);
    let gap = eventually(Duration::from_secs(90), "the fill done", || {
        let (gw, most) = (&gw, &most_planned);
        async move {
            let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
            let p = &v["progress"];
            let open =
                p["chunks_total"].as_i64().unwrap_or(0) - p["chunks_done"].as_i64().unwrap_or(0);
            most.fetch_max(open, std::sync::atomic::Ordering::Relaxed);
            (v["fill"] == "done").then_some(v)
        }
    })
    .await;
    let most_planned = most_planned.into_inner();
    assert_eq!(gap["progress"]["chunks_total"], 180, "{gap}");
    assert!(most_planned <= 64, "{most_planned} chunks planned ahead");
    let got = file_ids(&dir.path().join("cursor.ndjson"));
    assert_eq!(got.len(), want.len());
    assert!(want.iter().all(|id| got.get(id) == Some(&1)));
}

/// A vendor answering with a body that never ends: the page is refused at
/// `source.max_page_bytes` while it streams in, the chunk fails saying so
/// (at once: asking again would get the same page), the rejection is
/// counted, the daemon stays up, and a restart does not fetch the failed
/// chunk again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_page_fails_the_chunk_saying_why() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "300",
        "--history-span",
        "10m",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    // The default source.max_page_bytes: what a sidecar gets out of the box.
    let config = config(&sim.base, dir.path(), "max_chunk_attempts = 2");
    let mut gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    sim.control(
        "/control/faults",
        serde_json::json!({ "endless_page": true }),
    )
    .await;
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(1);
    let id = backfill(&gw, "cursor", from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(60)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(
        err.contains("larger than source.max_page_bytes (16777216 bytes)"),
        "{err}"
    );
    let peak = peak_rss_kib(gw.pid());
    eprintln!("peak RSS while an endless page was refused: {} KiB", peak);
    assert!(
        peak < 256 * 1024,
        "peak RSS {peak} KiB: a page body is not read with a cap"
    );
    assert!(gw.logs().contains("max_page_bytes"));
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_rejected_input_total{feed="cursor",reason="page_too_large",source="vendor"}"#
        ),
        Some(1.0),
        "the same page would be as large: the chunk fails at once"
    );
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);

    let served = sim.get("/control/stats").await["served_requests"].clone();
    gw.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, gap) = gw.get(&format!("/api/v1/gaps/{id}")).await;
    assert_eq!(gap["fill"], "failed");
    assert_eq!(
        sim.get("/control/stats").await["served_requests"],
        served,
        "the failed chunk was fetched again after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_and_api_errors() {
    let sim = VendorSim::start(&["--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&sim.base, dir.path(), ""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let now = Utc::now().to_rfc3339();
    let body =
        serde_json::json!([{ "id": "a-1", "event_time": now }, { "id": 7, "event_time": now }])
            .to_string();
    let (status, v) = gw
        .post("/api/v1/feeds/cursor/observations", Some(ADMIN), &body)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accepted"], 2);
    let (status, v) = gw
        .post(
            "/api/v1/feeds/cursor/observations",
            Some(ADMIN),
            "{not json",
        )
        .await;
    assert_eq!(status, 400);
    assert!(v["error"].is_string());
    let (status, v) = gw
        .post("/api/v1/feeds/nope/observations", Some(ADMIN), "[]")
        .await;
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("unknown feed"));
    let bad = serde_json::json!([{ "id": "x", "event_time": "yesterday" }]).to_string();
    let (status, v) = gw
        .post("/api/v1/feeds/cursor/observations", Some(ADMIN), &bad)
        .await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("event_time"), "{v}");
    let (status, _) = gw
        .post("/api/v1/feeds/cursor/observations", None, &body)
        .await;
    assert_eq!(status, 401);
    let (status, v) = gw.get("/api/v1/gaps/abc").await;
    assert_eq!(status, 400);
    assert!(v["error"].is_string());
    let (status, _) = gw.get("/api/v1/gaps/999").await;
    assert_eq!(status, 404);
    let (status, _) = gw.get("/api/v1/gaps?state=weird").await;
    assert_eq!(status, 400);
    let (status, v) = gw
        .post(
            "/api/v1/backfills",
            Some(ADMIN),
            r#"{"feed":"cursor","from":"2026-01-02T00:00:00Z","to":"2026-01-01T00:00:00Z"}"#,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = gw.get("/api/v1/feeds").await;
    assert_eq!(status, 200);
    let cursor = v["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "cursor")
        .unwrap()
        .clone();
    eventually(Duration::from_secs(3), "observations counted", || {
        let gw = &gw;
        async move {
            let (_, v) = gw.get("/api/v1/feeds").await;
            let f = v["feeds"]
                .as_array()?
                .iter()
                .find(|f| f["name"] == "cursor")?
                .clone();
            (f["records_observed"] == 2).then_some(())
        }
    })
    .await;
    assert_eq!(cursor["mode"], "report");
    let (status, v) = gw.get("/readyz").await;
    assert_eq!(status, 200, "{v}");
    let m = gw.metrics().await;
    assert!(
        sample(
            &m,
            r#"gapwatch_rejected_input_total{feed="cursor",reason="bad_observation",source="report"}"#
        )
        .unwrap()
            >= 1.0
    );
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// A source behind OAuth2 client credentials whose tokens live 1 s (scaled
/// down from 5 s in a 60 s fill: the fill takes about 8 s under the rate
/// limit, so it needs several refreshes), revoked twice mid-fill on top: every
/// record arrives once, no chunk fails, and the tokens gapwatch counts are the
/// ones the vendor issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_token_expiring_during_the_fill_is_refreshed_without_losing_a_record() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "600",
        "--history-span",
        "10m",
        "--oauth-token-ttl",
        "1",
        "--oauth-client-id",
        "gapwatch",
        "--oauth-client-secret",
        "cl1ent-s3cret",
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
name = "oauth"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  chunk = "2m"
  settle = "1s"
  concurrency = 2
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "40" }}
    record_time = "/created_at"
    rate_limit = "2/s"
    timeout = "10s"
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    auth = {{ type = "oauth2_client_credentials", token_url = "{vendor}/oauth/token", client_id = "gapwatch", client_secret = "${{CLIENT_SECRET}}", scopes = ["events:read"] }}
    [feeds.backfill.sink]
    type = "file"
    path = "{file}"
"#,
        vendor = sim.base,
        state = dir.path().join("state.db").display(),
        file = dir.path().join("oauth.ndjson").display(),
    );
    let gw = Gapwatch::start(dir.path(), &config, &[("CLIENT_SECRET", "cl1ent-s3cret")]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(9);
    let want = vendor_ids(&sim, from, to).await;
    let started = std::time::Instant::now();
    let id = backfill(&gw, "oauth", from, to).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        sim.control("/control/revoke_tokens", serde_json::json!({}))
            .await;
    }
    let gap = eventually(Duration::from_secs(60), "the oauth fill ends", || async {
        let (_, v) = gw.get(&format!("/api/v1/gaps/{id}")).await;
        (v["fill"] == "done" || v["fill"] == "failed").then_some(v)
    })
    .await;
    assert_eq!(gap["fill"], "done", "{gap}");
    let took = started.elapsed();
    let got = file_ids(&dir.path().join("oauth.ndjson"));
    let missing = want.iter().filter(|id| !got.contains_key(*id)).count();
    assert_eq!(missing, 0, "{missing} of {} missing", want.len());
    assert!(got.values().all(|n| *n == 1), "duplicates");
    assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
    for c in gap["chunks"].as_array().unwrap() {
        assert_eq!(c["attempts"], 0, "a chunk failed on the way: {c}");
        assert!(c["last_error"].is_null(), "{c}");
    }

    let stats = sim.get("/control/stats").await;
    let issued = stats["tokens_issued"].as_f64().unwrap();
    let m = gw.metrics().await;
    let counted = sample(
        &m,
        r#"gapwatch_source_token_requests_total{feed="oauth",outcome="ok"}"#,
    )
    .unwrap();
    assert_eq!(
        counted, issued,
        "gapwatch counts the tokens the vendor issued"
    );
    // A token lives 0.8 s in gapwatch's cache (1 s less a fifth): refreshes
    // happened throughout the fill, and concurrent chunks shared them (one
    // fetch per lifetime, not one per chunk), plus one per revocation.
    let lifetimes = took.as_secs_f64() / 0.8;
    assert!(
        took > Duration::from_secs(5),
        "the fill outlived several tokens: {took:?}"
    );
    assert!(issued >= 4.0, "{issued} tokens in {took:?}");
    assert!(
        issued <= lifetimes + 2.0 + 2.0,
        "{issued} tokens in {took:?}: more than one fetch per token lifetime"
    );
    assert_eq!(stats["tokens_refused"], 0);
    let logs = gw.logs();
    assert!(
        !logs.contains("cl1ent-s3cret"),
        "the client secret is in the logs"
    );
    println!(
        "oauth fill: {} records in {took:?}, {issued} tokens, {} 401s from the vendor",
        want.len(),
        stats["unauthorized"]
    );
}

/// A vendor that answers 404 for a window without records (`empty_on`):
/// the fill ends done with nothing delivered instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_listed_in_empty_on_is_an_empty_window() {
    let sim = VendorSim::start(&["--rate", "0", "--history", "50", "--token", TOKEN]);
    sim.control(
        "/control/faults",
        serde_json::json!({ "error_rate": 1.0, "statuses": [404] }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sim.base, dir.path(), "").replace(
        "    max_retries = 6\n",
        "    max_retries = 6\n    empty_on = [404]\n",
    );
    let gw = Gapwatch::start(dir.path(), &cfg, &[("VENDOR_TOKEN", TOKEN)]);
    let to = Utc::now() - chrono::Duration::seconds(5);
    let from = to - chrono::Duration::minutes(3);
    let id = backfill(&gw, "cursor", from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(30)).await;
    assert_eq!(gap["progress"]["records_delivered"], 0, "{gap}");
    let stats = sim.get("/control/stats").await;
    assert!(stats["errors_injected"].as_u64().unwrap() >= 2, "{stats}");
    // Without empty_on the same answer fails the fill.
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = Gapwatch::start(
        dir2.path(),
        &config(&sim.base, dir2.path(), ""),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let id = backfill(&gw2, "cursor", from, to).await;
    let gap = wait_fill(&gw2, id, "failed", Duration::from_secs(30)).await;
    assert!(gap["last_error"].as_str().unwrap().contains("404"), "{gap}");
}
