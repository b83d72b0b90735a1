//! Figure 6, AWS calls per hour per feed at the default settings, and what they
//! cost a month. One daemon per watch mode (relay with an idle vendor, passive,
//! report with a `queue_url`) runs against moto with the two timers that set the
//! pace scaled down 60× (`poll_interval` 60 s → 1 s, `cloudwatch_interval`
//! 5 m → 5 s); the relay's 20 s long poll is fixed in code and runs unscaled.
//! Each operation's rate is read from the times `gapwatch_aws_requests_total`
//! moved, then scaled back up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::peers::{Env, Gapwatch, Moto};
use crate::table::{thousands, Figure};

/// How much faster than the default each timed operation runs here.
const SCALE: f64 = 60.0;
/// $ per SQS request and per CloudWatch metric requested (docs/cost.md).
const SQS_PRICE: f64 = 0.40 / 1e6;
const METRIC_PRICE: f64 = 0.01 / 1e3;
const HOURS_PER_MONTH: f64 = 730.0;

fn scale(operation: &str) -> f64 {
    match operation {
        "GetQueueAttributes" | "GetMetricData" => SCALE,
        _ => 1.0,
    }
}

/// (service, operation, outcome) of `gapwatch_aws_requests_total`.
type Series = (String, String, String);

/// `gapwatch_aws_requests_total` samples: series → value.
fn aws_requests(metrics: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("gapwatch_aws_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        if let Ok(v) = value.parse::<f64>() {
            out.insert((label("service"), label("operation"), label("outcome")), v);
        }
    }
    out
}

/// Calls per second of one series from the times it moved: between its first
/// and its last change when it moved at least twice, else count ÷ duration.
fn rate(samples: &[(f64, f64)], duration: f64) -> f64 {
    let mut changes = Vec::new();
    let mut prev = 0.0;
    for &(t, v) in samples {
        if v != prev {
            changes.push((t, v));
            prev = v;
        }
    }
    match (changes.first(), changes.last()) {
        (Some(a), Some(b)) if changes.len() >= 3 && b.0 > a.0 => (b.1 - a.1) / (b.0 - a.0),
        _ => samples.last().map_or(0.0, |s| s.1) / duration,
    }
}

struct Mode {
    name: &'static str,
    feed: String,
    /// CloudWatch metrics per GetMetricData for this feed (src/watch/queue_watcher.rs:
    /// NumberOfMessagesSent of the feed's queue, ApproximateAgeOfOldestMessage
    /// of every queue).
    metrics_per_request: f64,
}

pub async fn per_feed(env: &Env, duration: Duration) -> Result<Vec<Figure>> {
    let dir = env.dir("aws-calls")?;
    let moto = Moto::start(env, &dir).await?;
    let vendor_q = moto.create_queue("vendor-relay").await?;
    let app_q = moto.create_queue("app-relay").await?;
    let passive_q = moto.create_queue("vendor-passive").await?;
    let report_q = moto.create_queue("vendor-report").await?;
    let modes = [
        Mode {
            name: "relay (idle vendor)",
            feed: format!(
                "queue_url = \"{vendor_q}\"\n  [feeds.watch]\n  mode = \"relay\"\n  forward_to = \"{app_q}\""
            ),
            metrics_per_request: 3.0,
        },
        Mode {
            name: "passive",
            feed: format!("queue_url = \"{passive_q}\"\n  [feeds.watch]\n  mode = \"passive\""),
            metrics_per_request: 2.0,
        },
        Mode {
            name: "report (with queue_url)",
            feed: format!("queue_url = \"{report_q}\"\n  [feeds.watch]\n  mode = \"report\""),
            metrics_per_request: 2.0,
        },
    ];
    let mut daemons = Vec::new();
    for (i, m) in modes.iter().enumerate() {
        let d = env.dir(&format!("aws-calls/{i}"))?;
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{{port}}"
# Report feeds need a token (nothing is posted here).
report_token = "bench-report"

[state]
url = "sqlite://{state}/state.db"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
poll_interval = "1s"
cloudwatch_interval = "5s"

[[feeds]]
name = "feed"
{feed}
"#,
            state = d.display(),
            endpoint = moto.endpoint,
            feed = m.feed,
        );
        daemons.push(Gapwatch::start(env, &d, "gapwatch", &config).await?);
    }
    let started = Instant::now();
    let mut samples: Vec<BTreeMap<Series, Vec<(f64, f64)>>> = vec![BTreeMap::new(); daemons.len()];
    while started.elapsed() < duration {
        for (gw, series) in daemons.iter_mut().zip(samples.iter_mut()) {
            gw.check_alive()?;
            let t = started.elapsed().as_secs_f64();
            for (key, v) in aws_requests(&gw.metrics().await?) {
                series.entry(key).or_default().push((t, v));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = started.elapsed().as_secs_f64();

    let mut figures = Vec::new();
    for (m, series) in modes.iter().zip(&samples) {
        let mut ops = Vec::new();
        let (mut sqs_h, mut cw_h) = (0.0, 0.0);
        for ((service, operation, outcome), s) in series {
            if outcome != "ok" {
                bail!("{}: {service} {operation} answered {outcome}", m.name);
            }
            let per_hour = rate(s, secs) * 3600.0 / scale(operation);
            ops.push(format!("{operation} {per_hour:.0}/h"));
            if service == "cloudwatch" {
                cw_h += per_hour;
            } else {
                sqs_h += per_hour;
            }
        }
        let metrics_h = cw_h * m.metrics_per_request;
        let cost = sqs_h * HOURS_PER_MONTH * SQS_PRICE + metrics_h * HOURS_PER_MONTH * METRIC_PRICE;
        figures.push(Figure::new(
            &format!("6. AWS calls per feed, {}", m.name),
            format!(
                "{} SQS calls/h + {} GetMetricData/h × {} metrics = {} metrics/h → ${cost:.2}/month ({})",
                thousands(sqs_h),
                thousands(cw_h),
                m.metrics_per_request,
                thousands(metrics_h),
                ops.join(", ")
            ),
            "docs/cost.md",
            format!(
                "defaults with poll_interval and cloudwatch_interval scaled 60× down, {secs:.0} s against moto; \
                 rate of gapwatch_aws_requests_total per operation between its first and last change, scaled back; \
                 ReceiveMessage (20 s long poll) unscaled; $0.40/10⁶ SQS requests, $0.01/10³ metrics, 730 h"
            ),
        ));
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels() {
        let m = "# HELP x\ngapwatch_aws_requests_total{operation=\"ReceiveMessage\",outcome=\"ok\",service=\"sqs\"} 3\n";
        let r = aws_requests(m);
        assert_eq!(
            r.get(&("sqs".into(), "ReceiveMessage".into(), "ok".into())),
            Some(&3.0)
        );
    }

    #[test]
    fn rate_from_changes() {
        // Moves at 1, 21, 41 s: one call per 20 s.
        let s: Vec<(f64, f64)> = (0..50)
            .map(|t| (t as f64, (1 + (t + 19) / 20 - 1) as f64))
            .map(|(t, v)| (t, if t < 1.0 { 0.0 } else { v }))
            .collect();
        assert!((rate(&s, 50.0) - 0.05).abs() < 1e-9, "{}", rate(&s, 50.0));
    }
}
