//! Request templates and response classification against the vendor
//! simulator over real HTTP: a POST search API with the window and the page in
//! its JSON body, a date-only path API, a cursor in a response header, a 200
//! whose body is an error (`source.error_when`), and the vendor's rate-limit
//! headers. Every record of the window must reach the file sink exactly once.

mod common;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::*;

const TOKEN: &str = "vendor-t0ken";
const ADMIN: &str = "adm1n";

/// One report-mode feed with a file sink and the given source lines (which
/// may end with a `[feeds.backfill.source.body]` table).
struct Feed<'a> {
    name: &'a str,
    /// Extra `[feeds.backfill]` lines.
    backfill: &'a str,
    source: String,
}

fn config(dir: &Path, feeds: &[Feed<'_>]) -> String {
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
    for f in feeds {
        out.push_str(&format!(
            r#"
[[feeds]]
name = "{name}"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  chunk = "2m"
  settle = "1s"
  concurrency = 2
  {backfill}
    [feeds.backfill.sink]
    type = "file"
    path = "{file}"
    [feeds.backfill.source]
    record_time = "/created_at"
    timeout = "10s"
{source}
"#,
            name = f.name,
            backfill = f.backfill,
            source = f.source,
            file = dir.join(format!("{}.ndjson", f.name)).display(),
        ));
    }
    out
}

/// Every id of `want` once in `feed`'s file, and nothing else.
fn assert_once(dir: &Path, feed: &str, want: &[String]) {
    let got = file_ids(&dir.join(format!("{feed}.ndjson")));
    let dupes: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "{feed}: duplicates {dupes:?}");
    let missing: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{feed}: {} of {} missing, e.g. {:?}",
        missing.len(),
        want.len(),
        missing.first()
    );
    assert_eq!(got.len(), want.len(), "{feed}: records outside the window");
}

fn sim_with_history(count: &str, span: &str) -> VendorSim {
    VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        count,
        "--history-span",
        span,
        "--token",
        TOKEN,
    ])
}

/// A POST search API: the window (unix ms, as JSON numbers, which the
/// simulator insists on) and the cursor in the body, or RFC 3339 strings and
/// a page number (a JSON number) in the body; and a cursor read from a
/// response header. No request is refused as malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_and_header_cursors_recover_each_record_once() {
    let sim = sim_with_history("600", "10m");
    let dir = tempfile::tempdir().unwrap();
    let vendor = &sim.base;
    let auth =
        r#"headers = { Authorization = "Bearer ${VENDOR_TOKEN}", X-Window-Start = "{start}" }"#;
    let feeds = [
        Feed {
            name: "search_cursor",
            backfill: "",
            source: format!(
                r#"    url = "{vendor}/v1/search"
    method = "POST"
    time_format = "unix_ms"
    record_time_format = "rfc3339"
    {auth}
    records = "/hits"
    pagination = {{ type = "cursor", cursor = "/next_cursor" }}
    rate_limit = "200/s"
    [feeds.backfill.source.body]
    window = {{ from = "{{start}}", to = "{{end}}" }}
    cursor = "{{cursor}}"
    size = 40"#
            ),
        },
        Feed {
            name: "search_page",
            backfill: "",
            source: format!(
                r#"    url = "{vendor}/v1/search"
    method = "POST"
    {auth}
    records = "/hits"
    pagination = {{ type = "page", size = 40 }}
    rate_limit = "200/s"
    body = '{{"window": {{"from": "{{start}}", "to": "{{end}}"}}, "page": "{{cursor}}", "size": 40}}'"#
            ),
        },
        Feed {
            name: "header_cursor",
            backfill: "",
            source: format!(
                r#"    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "40", style = "header_cursor" }}
    {auth}
    pagination = {{ type = "cursor", cursor_header = "X-Next-Cursor", param = "cursor" }}
    rate_limit = "200/s""#
            ),
        },
    ];
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path(), &feeds),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - TimeDelta::seconds(5);
    let from = to - TimeDelta::minutes(7);
    let want = vendor_ids(&sim, from, to).await;
    assert!(want.len() > 350, "history too small: {}", want.len());
    let mut gaps = Vec::new();
    for f in &feeds {
        gaps.push((f.name, start_backfill(&gw, ADMIN, f.name, from, to).await));
    }
    for (feed, id) in gaps {
        let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
        assert_once(dir.path(), feed, &want);
        assert_eq!(
            gap["progress"]["records_delivered"],
            want.len() as i64,
            "{feed}"
        );
        assert_eq!(gap["progress"]["chunks_total"], 4, "{feed}");
    }
    let stats = sim.get("/control/stats").await;
    assert_eq!(stats["bad_requests"], 0, "{stats}");
    let m = gw.metrics().await;
    for feed in ["search_cursor", "search_page", "header_cursor"] {
        let pages = sample(
            &m,
            &format!(r#"gapwatch_backfill_requests_total{{feed="{feed}",status="200"}}"#),
        )
        .unwrap_or(0.0);
        // More than one page per chunk: paging really happened.
        assert!(pages >= (want.len() / 40) as f64, "{feed}: {pages} pages");
    }
}

/// `/v1/days/{date}/events`: `time_format = "%Y-%m-%d"` gives a resolution
/// of one day, so the fill asks for whole days (three of them for an
/// interval from 3 days ago to yesterday noon) and every record of those days
/// arrives once, none out of window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_only_path_api_is_filled_a_whole_day_at_a_time() {
    let sim = sim_with_history("800", "4d");
    let dir = tempfile::tempdir().unwrap();
    let vendor = &sim.base;
    let feeds = [Feed {
        name: "days",
        backfill: "",
        source: format!(
            r#"    url = "{vendor}/v1/days/{{start}}/events"
    query = {{ limit = "40" }}
    time_format = "%Y-%m-%d"
    record_time_format = "rfc3339"
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    rate_limit = "200/s""#
        ),
    }];
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path(), &feeds),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let today: DateTime<Utc> = Utc::now().duration_trunc(TimeDelta::days(1)).unwrap();
    let from = today - TimeDelta::days(3) + TimeDelta::hours(5);
    let to = today - TimeDelta::days(1) + TimeDelta::hours(12);
    let want = vendor_ids(&sim, today - TimeDelta::days(3), today).await;
    assert!(want.len() > 500, "history too small: {}", want.len());
    let id = start_backfill(&gw, ADMIN, "days", from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(60)).await;
    assert_once(dir.path(), "days", &want);
    assert_eq!(gap["progress"]["chunks_total"], 3, "one chunk a day: {gap}");
    assert_eq!(gap["progress"]["records_delivered"], want.len() as i64);
    assert_eq!(gap["progress"]["records_out_of_window"], 0, "{gap}");
    let stats = sim.get("/control/stats").await;
    assert_eq!(stats["bad_requests"], 0, "{stats}");
}

/// A vendor answering 200 with `{"status": "error"}`: `source.error_when`
/// makes it a retryable failure, counted as `status="error_body"`; retried, the
/// fill delivers every record once. With retries that run out, the chunk
/// fails saying why, and a retry after the vendor recovered finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_an_error_body_is_retried_and_every_record_arrives_once() {
    let sim = sim_with_history("600", "10m");
    let dir = tempfile::tempdir().unwrap();
    let vendor = &sim.base;
    let source = |retries: u32| {
        format!(
            r#"    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "40" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    error_when = '.status? == "error"'
    max_retries = {retries}
    rate_limit = "200/s""#
        )
    };
    let feeds = [
        Feed {
            name: "retrying",
            backfill: "",
            source: source(8),
        },
        Feed {
            name: "strict",
            backfill: "max_chunk_attempts = 1",
            source: source(1),
        },
    ];
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path(), &feeds),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - TimeDelta::seconds(5);
    let from = to - TimeDelta::minutes(7);
    let want = vendor_ids(&sim, from, to).await;

    sim.control("/control/faults", serde_json::json!({ "error_bodies": 4 }))
        .await;
    let id = start_backfill(&gw, ADMIN, "retrying", from, to).await;
    let gap = wait_fill(&gw, id, "done", Duration::from_secs(90)).await;
    assert_once(dir.path(), "retrying", &want);
    for c in gap["chunks"].as_array().unwrap() {
        assert_eq!(c["attempts"], 0, "retried within the request: {c}");
    }
    let stats = sim.get("/control/stats").await;
    assert_eq!(stats["error_bodies_served"], 4, "{stats}");
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_backfill_requests_total{feed="retrying",status="error_body"}"#
        ),
        Some(4.0)
    );

    // One retry against many error bodies: the chunk fails, saying why.
    let from = to - TimeDelta::minutes(1);
    let want = vendor_ids(&sim, from, to).await;
    sim.control("/control/faults", serde_json::json!({ "error_bodies": 50 }))
        .await;
    let id = start_backfill(&gw, ADMIN, "strict", from, to).await;
    let gap = wait_fill(&gw, id, "failed", Duration::from_secs(30)).await;
    let err = gap["last_error"].as_str().unwrap();
    assert!(
        err.contains("after 2 attempts") && err.contains("error body (source.error_when)"),
        "{err}"
    );
    sim.control("/control/faults", serde_json::json!({ "error_bodies": 0 }))
        .await;
    let (status, _) = gw
        .post(&format!("/api/v1/gaps/{id}/retry"), Some(ADMIN), "")
        .await;
    assert_eq!(status, 200);
    wait_fill(&gw, id, "done", Duration::from_secs(30)).await;
    assert_once(dir.path(), "strict", &want);
}

/// Two vendors with a quota of 5 requests a second, one announcing it in
/// `X-RateLimit-*` with a unix-time reset, one in the IETF draft's combined
/// `RateLimit` field with seconds to the reset; gapwatch's own `rate_limit`
/// is far above. The fills need several quota windows and never make a
/// request past the quota: no 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_headers_slow_the_source_before_a_429() {
    let x = sim_with_history("600", "10m");
    let ietf = sim_with_history("600", "10m");
    for (sim, headers, reset) in [
        (&x, "x_rate_limit", "epoch"),
        (&ietf, "combined", "seconds"),
    ] {
        sim.control(
            "/control/quota",
            serde_json::json!({ "limit": 5, "window_ms": 1000, "headers": headers, "reset": reset }),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let source = |vendor: &str| {
        format!(
            r#"    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "20" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    rate_limit = "100/s""#
        )
    };
    let feeds = [
        Feed {
            name: "x",
            backfill: "",
            source: source(&x.base),
        },
        Feed {
            name: "ietf",
            backfill: "",
            source: source(&ietf.base),
        },
    ];
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path(), &feeds),
        &[("VENDOR_TOKEN", TOKEN)],
    );
    let to = Utc::now() - TimeDelta::seconds(5);
    let from = to - TimeDelta::minutes(7);
    let want = vendor_ids(&x, from, to).await;
    assert_eq!(want, vendor_ids(&ietf, from, to).await);
    let ids = [
        ("x", &x, start_backfill(&gw, ADMIN, "x", from, to).await),
        (
            "ietf",
            &ietf,
            start_backfill(&gw, ADMIN, "ietf", from, to).await,
        ),
    ];
    for (feed, sim, id) in ids {
        wait_fill(&gw, id, "done", Duration::from_secs(90)).await;
        assert_once(dir.path(), feed, &want);
        let stats = sim.get("/control/stats").await;
        assert_eq!(stats["quota_refused"], 0, "{feed}: {stats}");
        let admitted = stats["quota_admitted"].as_u64().unwrap();
        assert!(
            admitted > 15,
            "{feed}: {admitted} requests fit in 3 windows"
        );
    }
    let m = gw.metrics().await;
    for feed in ["x", "ietf"] {
        assert_eq!(
            sample(
                &m,
                &format!(r#"gapwatch_backfill_requests_total{{feed="{feed}",status="429"}}"#)
            ),
            None,
            "{feed}"
        );
    }
    assert!(
        gw.logs().contains("quota is spent"),
        "the wait for a reset is logged"
    );
}
