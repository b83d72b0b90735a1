//! The shape check against real peers: the vendor publishes live messages in
//! some shape (EventBridge, SNS, its own envelope with an attribute), gapwatch
//! relays and samples them, and — with no outage at all — finds each sampled
//! record at the vendor's API, renders it as a fill would, and says whether
//! recovered messages would look live: a deliberately wrong `render` is
//! caught (metric, `/api/v1/feeds`, `gapwatch check-shape` exit 1 naming the
//! path), a right config matches (exit 0), and the sample outlives kill -9.

mod common;

use std::time::Duration;

use common::*;

const TOKEN: &str = "vendor-t0ken";

/// One feed of the test: its name, live shape and what changes its config.
struct FeedCase {
    name: &'static str,
    live: Live,
    /// An edit of the feed's config: (text, replacement); `("", "")`: none.
    edit: (&'static str, &'static str),
}

/// No edit: the config that recovers the shape right.
const RIGHT: (&str, &str) = ("", "");

/// Checks every 2 s over 5 sampled messages (one per 400 ms).
const SHAPE: &str = "  [feeds.shape]\n  every = \"2s\"\n  sample = 5\n";

struct Setup {
    _moto: Moto,
    _sims: Vec<VendorSim>,
    gw: Gapwatch,
    _dir: tempfile::TempDir,
}

/// Moto, one simulator per feed (2 records/s, live messages in the feed's
/// shape), and gapwatch relaying all of them with a shape check.
async fn start(cases: &[FeedCase]) -> Setup {
    let moto = Moto::start();
    let mut sims = Vec::new();
    let mut feeds = String::new();
    for c in cases {
        let vendor_q = moto.create_queue(&format!("vendor-{}", c.name)).await;
        let app_q = moto.create_queue(&format!("app-{}", c.name)).await;
        let mut args = vec![
            "--rate",
            "2",
            "--queue-url",
            &vendor_q,
            "--endpoint-url",
            &moto.endpoint,
            "--token",
            TOKEN,
        ];
        args.extend(c.live.sim_args());
        let sim = VendorSim::start(&args);
        let feed = shaped_feed(c.live, &sim.base, &vendor_q, &app_q).replacen(
            "name = \"orders\"",
            &format!("name = \"{}\"", c.name),
            1,
        );
        let feed = if c.edit.0.is_empty() {
            feed
        } else {
            assert!(feed.contains(c.edit.0), "{} not in {feed}", c.edit.0);
            feed.replacen(c.edit.0, c.edit.1, 1)
        };
        feeds.push_str(&feed);
        feeds.push_str(SHAPE);
        sims.push(sim);
    }
    let dir = tempfile::tempdir().unwrap();
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    let config = daemon_config(&moto.endpoint, &state, &feeds);
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);
    Setup {
        _moto: moto,
        _sims: sims,
        gw,
        _dir: dir,
    }
}

/// Waits until feed `feed` has counted a check with `outcome`.
async fn wait_outcome(gw: &Gapwatch, feed: &str, outcome: &str) {
    let series = format!(r#"gapwatch_shape_checks_total{{feed="{feed}",outcome="{outcome}"}}"#);
    eventually(Duration::from_secs(45), &series, || async {
        let m = gw.metrics().await;
        (sample(&m, &series).unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
}

/// `gapwatch check-shape --feed F [--json]`: exit code and stdout.
fn check_shape(gw: &Gapwatch, feed: &str, json: bool) -> (i32, String) {
    let mut args = vec!["check-shape", "--feed", feed];
    if json {
        args.push("--json");
    }
    let out = gw.cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "the vendor token leaked: {stdout}{stderr}"
    );
    (code, format!("{stdout}{stderr}"))
}

/// The feed's `shape_check` in `/api/v1/feeds`.
async fn api_status(gw: &Gapwatch, feed: &str) -> serde_json::Value {
    let (status, v) = gw.get("/api/v1/feeds").await;
    assert_eq!(status, 200, "{v}");
    v["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == feed)
        .unwrap_or_else(|| panic!("no feed {feed} in {v}"))["shape_check"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_wrong_render_is_caught_before_an_outage_and_the_sample_outlives_kill9() {
    let setup = start(&[
        FeedCase {
            name: "right",
            live: Live::EventBridge,
            edit: RIGHT,
        },
        // A render that writes `seq` as text: the app would read a string
        // where live events carry a number.
        FeedCase {
            name: "wrong",
            live: Live::EventBridge,
            edit: (
                "  concurrency = 2\n",
                "  concurrency = 2\n  render = '. + {seq: (.seq | tostring)}'\n",
            ),
        },
    ])
    .await;
    let mut gw = setup.gw;
    wait_outcome(&gw, "wrong", "mismatch").await;
    wait_outcome(&gw, "right", "match").await;

    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"gapwatch_shape_mismatch{feed="wrong"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, r#"gapwatch_shape_mismatch{feed="right"}"#),
        Some(0.0)
    );
    // Found with the vendor live all along: no gap, no fill.
    for feed in ["right", "wrong"] {
        assert_eq!(
            sample(
                &m,
                &format!(r#"gapwatch_gaps_detected_total{{feed="{feed}"}}"#)
            ),
            Some(0.0)
        );
    }
    let wrong = api_status(&gw, "wrong").await;
    assert_eq!(wrong["outcome"], "mismatch", "{wrong}");
    assert_eq!(wrong["part"], "body");
    assert_eq!(wrong["path"], "/detail/seq");
    let (live, recovered) = (
        wrong["live"].as_str().unwrap(),
        wrong["recovered"].as_str().unwrap(),
    );
    assert_eq!(format!("\"{live}\""), recovered, "{wrong}");
    assert!(wrong["record_id"].as_str().unwrap().starts_with("evt-"));
    let right = api_status(&gw, "right").await;
    assert_eq!(right["outcome"], "match", "{right}");
    assert!(right["path"].is_null());
    assert!(gw
        .logs()
        .contains("shape check: recovered messages would differ from live ones"));

    let (code, out) = check_shape(&gw, "wrong", false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MISMATCH"), "{out}");
    assert!(out.contains("body /detail/seq"), "{out}");
    let (code, out) = check_shape(&gw, "right", true);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json");
    assert_eq!(report["outcome"], "match");
    assert!(report["compared"].as_u64().unwrap() >= 1, "{report}");

    // kill -9: the sample the daemon saved is what check-shape reads.
    gw.kill9();
    let (code, out) = check_shape(&gw, "wrong", true);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["sampled"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["mismatches"][0]["findings"][0]["path"],
        "/detail/seq"
    );
    let (code, out) = check_shape(&gw, "right", false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("feed right: match"), "{out}");
    // An unknown feed cannot be checked: "cannot tell", not "differs".
    let (code, out) = check_shape(&gw, "nope", false);
    assert_eq!(code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_envelope_rendered_wrong_is_caught_and_right_ones_match() {
    let setup = start(&[
        FeedCase {
            name: "custom",
            live: Live::Custom,
            edit: RIGHT,
        },
        // The event name misspelt and the routing attribute forgotten.
        FeedCase {
            name: "misspelt",
            live: Live::Custom,
            edit: (
                "  render = '{event: \"order.created\", data: .}'\n  attributes = { event-type = '\"order.created\"' }\n",
                "  render = '{event: \"order_created\", data: .}'\n",
            ),
        },
        FeedCase {
            name: "sns",
            live: Live::Sns,
            edit: RIGHT,
        },
    ])
    .await;
    let gw = setup.gw;
    wait_outcome(&gw, "misspelt", "mismatch").await;
    wait_outcome(&gw, "custom", "match").await;
    // SNS: `Message` compared parsed; MessageId and Timestamp ignored.
    wait_outcome(&gw, "sns", "match").await;

    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"gapwatch_shape_mismatch{feed="misspelt"}"#),
        Some(1.0)
    );
    for feed in ["custom", "sns"] {
        assert_eq!(
            sample(&m, &format!(r#"gapwatch_shape_mismatch{{feed="{feed}"}}"#)),
            Some(0.0),
            "{feed}\n{}",
            gw.logs()
        );
    }
    let status = api_status(&gw, "misspelt").await;
    assert_eq!(status["path"], "/event", "{status}");
    assert_eq!(status["live"], "\"order.created\"");
    assert_eq!(status["recovered"], "\"order_created\"");

    let (code, out) = check_shape(&gw, "misspelt", false);
    eprintln!("gapwatch check-shape --feed misspelt (exit {code}):\n{out}");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("body /event"), "{out}");
    assert!(out.contains("attribute event-type"), "{out}");
    assert!(out.contains("recovered: (absent)"), "{out}");
    for feed in ["custom", "sns"] {
        let (code, out) = check_shape(&gw, feed, false);
        assert_eq!(code, 0, "{feed}: {out}");
    }
}

/// Report mode: the app sends a body along with an observation (optional),
/// and the shape check compares it like a relayed one. No SQS involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_checks_the_bodies_the_app_sends_along() {
    let sim = VendorSim::start(&[
        "--rate",
        "0",
        "--history",
        "20",
        "--history-span",
        "60s",
        "--token",
        TOKEN,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut feeds = String::new();
    // `quiet` never sends a body: nothing to compare.
    for name in ["reported", "extra", "quiet"] {
        feeds.push_str(&format!(
            r#"
[[feeds]]
name = "{name}"
  [feeds.watch]
  mode = "report"
  [feeds.freshness]
  max_silence = "1h"
  [feeds.backfill]
  auto = false
  settle = "1s"
{source}    [feeds.backfill.sink]
    type = "file"
    path = "{sink}"
{SHAPE}"#,
            source = VendorShape::Cursor.source(&sim.base, 3),
            sink = dir.path().join(format!("{name}.ndjson")).display(),
        ));
    }
    let state = format!("sqlite://{}", dir.path().join("state.db").display());
    // No AWS: report feeds with a file sink never call it.
    let config = daemon_config("http://127.0.0.1:9", &state, &feeds);
    let gw = Gapwatch::start(dir.path(), &config, &[("VENDOR_TOKEN", TOKEN)]);

    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/events?limit=5", sim.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = listed["data"][2].clone();
    let observation = |body: serde_json::Value| {
        serde_json::json!([{
            "id": record["id"],
            "event_time": record["created_at"],
            "body": body,
        }])
        .to_string()
    };
    // The app received the record as the API lists it (sent as JSON text)…
    let (status, v) = gw
        .post(
            "/api/v1/feeds/reported/observations",
            Some("adm1n"),
            &observation(serde_json::Value::String(record.to_string())),
        )
        .await;
    assert_eq!(
        (status, &v["accepted"]),
        (200, &serde_json::json!(1)),
        "{v}"
    );
    // … and here with a field the API does not list.
    let mut with_extra = record.clone();
    with_extra["channel"] = serde_json::json!("web");
    let (status, v) = gw
        .post(
            "/api/v1/feeds/extra/observations",
            Some("adm1n"),
            &observation(with_extra),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    wait_outcome(&gw, "reported", "match").await;
    wait_outcome(&gw, "extra", "mismatch").await;
    let status = api_status(&gw, "extra").await;
    assert_eq!(status["path"], "/channel", "{status}");
    assert_eq!(status["live"], "\"web\"");
    assert!(status["recovered"].is_null(), "{status}");
    let (code, out) = check_shape(&gw, "reported", false);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check_shape(&gw, "extra", false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("body /channel"), "{out}");
    wait_outcome(&gw, "quiet", "unavailable").await;
    let status = api_status(&gw, "quiet").await;
    assert_eq!(status["reason"], "no live message sampled yet", "{status}");
    let (code, out) = check_shape(&gw, "quiet", false);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("unavailable: no live message sampled yet"),
        "{out}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_shape_checks_total{feed="quiet",outcome="mismatch"}"#
        ),
        Some(0.0)
    );
    assert_eq!(sample(&m, r#"gapwatch_shape_mismatch{feed="quiet"}"#), None);
}
