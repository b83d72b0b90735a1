//! Passive watching against moto, through the real binary: backlog from SQS
//! `GetQueueAttributes`, inflow and age from CloudWatch `GetMetricData` (seeded
//! by the test with `PutMetricData` into `AWS/SQS`, as moto publishes no SQS
//! metrics itself), gaps from inflow, and a deleted queue.

mod common;

use std::time::Duration;

use aws_sdk_cloudwatch::primitives::DateTime as AwsTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::*;

/// Every loop runs each second; minutes are settled at once (the detector of a
/// passive feed then runs 61 s behind: delay + one minute + one interval).
fn config(moto: &Moto, dir: &std::path::Path, feeds: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"

[state]
url = "sqlite://{state}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
poll_interval = "1s"
cloudwatch_interval = "1s"
cloudwatch_delay = "0s"
cloudwatch_lookback = "2h"
"#,
        state = dir.join("state.db").display(),
        endpoint = moto.endpoint,
    );
    for (name, queue) in feeds {
        s.push_str(&format!(
            r#"
[[feeds]]
name = "{name}"
queue_url = "{queue}"

  [feeds.watch]
  mode = "passive"

  [feeds.freshness]
  max_silence = "2s"
"#
        ));
    }
    s
}

fn cloudwatch(moto: &Moto) -> aws_sdk_cloudwatch::Client {
    let conf = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(&moto.endpoint)
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// Puts one datapoint per minute of `minutes` into `AWS/SQS`, as SQS would.
async fn put_minutes(
    cw: &aws_sdk_cloudwatch::Client,
    queue: &str,
    metric: &str,
    minutes: impl IntoIterator<Item = DateTime<Utc>>,
    value: f64,
) {
    let data: Vec<MetricDatum> = minutes
        .into_iter()
        .map(|m| {
            MetricDatum::builder()
                .metric_name(metric)
                .dimensions(Dimension::builder().name("QueueName").value(queue).build())
                .timestamp(AwsTime::from_secs(m.timestamp()))
                .value(value)
                .unit(StandardUnit::Count)
                .build()
        })
        .collect();
    cw.put_metric_data()
        .namespace("AWS/SQS")
        .set_metric_data(Some(data))
        .send()
        .await
        .expect("put metric data");
}

fn minute_range(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut m = from;
    while m < to {
        out.push(m);
        m += TimeDelta::minutes(1);
    }
    out
}

fn time(v: &serde_json::Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| s.parse().ok())
}

async fn gaps(gw: &Gapwatch, feed: &str) -> Vec<serde_json::Value> {
    let (status, body) = gw.get(&format!("/api/v1/gaps?feed={feed}")).await;
    assert_eq!(status, 200, "{body}");
    body["gaps"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_minute_hole_in_inflow_opens_and_closes_a_gap_at_minute_resolution() {
    let moto = Moto::start();
    let queue = moto.create_queue("vendor-passive").await;
    let cw = cloudwatch(&moto);
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let min = TimeDelta::minutes;
    // Inflow from −60 to −46 minutes; nothing for 30 minutes (−45 .. −16).
    put_minutes(
        &cw,
        "vendor-passive",
        "NumberOfMessagesSent",
        minute_range(now - min(60), now - min(45)),
        5.0,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, dir.path(), &[("orders", &queue)]),
        &[],
    );

    // The newest minute with inflow is the newest event; silence after it is a gap.
    let open = eventually(Duration::from_secs(20), "an open gap", || async {
        gaps(&gw, "orders")
            .await
            .into_iter()
            .find(|g| g["state"] == "open")
    })
    .await;
    assert_eq!(
        time(&open["start"]),
        Some(now - min(46)),
        "starts at the last minute with inflow: {open}"
    );

    // Inflow resumes: the first minute with inflow closes the gap.
    put_minutes(
        &cw,
        "vendor-passive",
        "NumberOfMessagesSent",
        minute_range(now - min(15), now - min(4)),
        2.0,
    )
    .await;
    let closed = eventually(Duration::from_secs(20), "the gap closed", || async {
        gaps(&gw, "orders")
            .await
            .into_iter()
            .find(|g| g["state"] == "closed")
    })
    .await;
    assert_eq!(closed["id"], open["id"]);
    assert_eq!(time(&closed["start"]), Some(now - min(46)), "{closed}");
    assert_eq!(time(&closed["end"]), Some(now - min(15)), "{closed}");
    assert_eq!(gaps(&gw, "orders").await.len(), 1, "exactly one gap");

    // The newest minute is the feed's newest event, every minute counted once.
    let feed = eventually(Duration::from_secs(10), "the newest minute", || async {
        let (_, body) = gw.get("/api/v1/feeds").await;
        let f = body["feeds"][0].clone();
        (time(&f["last_event"]) == Some(now - min(5))).then_some(f)
    })
    .await;
    assert_eq!(feed["records_observed"], 15 + 11, "{feed}");
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"gapwatch_gaps_detected_total{feed="orders"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&m, r#"gapwatch_gap_open{feed="orders"}"#), Some(0.0));
    assert!(
        sample(
            &m,
            r#"gapwatch_aws_requests_total{operation="GetMetricData",outcome="ok",service="cloudwatch"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
    assert!(!m.contains("NaN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_and_age_match_the_queues() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let busy = moto.create_queue("vendor-busy").await;
    let idle = moto.create_queue("vendor-idle").await;
    for i in 0..7 {
        sqs.send_message()
            .queue_url(&busy)
            .message_body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .expect("send");
    }
    sqs.send_message()
        .queue_url(&busy)
        .message_body("{}")
        .delay_seconds(600)
        .send()
        .await
        .expect("send delayed");
    // Two messages taken by a consumer and not yet deleted.
    let taken = sqs
        .receive_message()
        .queue_url(&busy)
        .max_number_of_messages(2)
        .visibility_timeout(600)
        .send()
        .await
        .expect("receive");
    assert_eq!(taken.messages().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, dir.path(), &[("busy", &busy), ("idle", &idle)]),
        &[],
    );
    let series =
        |q: &str, state: &str| format!(r#"gapwatch_queue_messages{{queue="{q}",state="{state}"}}"#);
    let m = eventually(Duration::from_secs(15), "backlog metrics", || async {
        let m = gw.metrics().await;
        (sample(&m, &series("vendor-idle", "visible")).is_some()
            && sample(
                &m,
                r#"gapwatch_queue_oldest_message_age_seconds{queue="vendor-idle"}"#,
            )
            .is_some())
        .then_some(m)
    })
    .await;
    assert_eq!(sample(&m, &series("vendor-busy", "visible")), Some(5.0));
    assert_eq!(sample(&m, &series("vendor-busy", "in_flight")), Some(2.0));
    assert_eq!(sample(&m, &series("vendor-busy", "delayed")), Some(1.0));
    for state in ["visible", "in_flight", "delayed"] {
        assert_eq!(sample(&m, &series("vendor-idle", state)), Some(0.0));
    }
    // An empty queue reports no age: 0 because its backlog is known to be empty.
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_queue_oldest_message_age_seconds{queue="vendor-idle"}"#
        ),
        Some(0.0)
    );
    // A busy queue without an age datapoint has no age sample at all.
    assert_eq!(
        sample(
            &m,
            r#"gapwatch_queue_oldest_message_age_seconds{queue="vendor-busy"}"#
        ),
        None,
        "{m}"
    );
    assert!(!m.contains("NaN"));

    // Once CloudWatch has an age for it, that is exported.
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    put_minutes(
        &cloudwatch(&moto),
        "vendor-busy",
        "ApproximateAgeOfOldestMessage",
        [now - TimeDelta::minutes(2)],
        42.0,
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the age of vendor-busy",
        || async {
            let m = gw.metrics().await;
            (sample(
                &m,
                r#"gapwatch_queue_oldest_message_age_seconds{queue="vendor-busy"}"#,
            ) == Some(42.0))
            .then_some(())
        },
    )
    .await;

    // Backlog follows the queue.
    sqs.purge_queue()
        .queue_url(&busy)
        .send()
        .await
        .expect("purge");
    eventually(Duration::from_secs(15), "the purged backlog", || async {
        let m = gw.metrics().await;
        (sample(&m, &series("vendor-busy", "visible")) == Some(0.0)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_reported_and_the_others_go_on() {
    let moto = Moto::start();
    let sqs = moto.sqs();
    let doomed = moto.create_queue("vendor-doomed").await;
    let other = moto.create_queue("vendor-other").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(&moto, dir.path(), &[("doomed", &doomed), ("other", &other)]),
        &[],
    );
    let visible = |q: &str| format!(r#"gapwatch_queue_messages{{queue="{q}",state="visible"}}"#);
    eventually(Duration::from_secs(15), "both queues watched", || async {
        let m = gw.metrics().await;
        (sample(&m, &visible("vendor-doomed")).is_some()
            && sample(&m, &visible("vendor-other")).is_some())
        .then_some(())
    })
    .await;
    let (_, ready) = gw.get("/readyz").await;
    assert_eq!(ready["aws"], "ok", "{ready}");

    sqs.delete_queue()
        .queue_url(&doomed)
        .send()
        .await
        .expect("delete");
    let ready = eventually(
        Duration::from_secs(15),
        "the problem in /readyz",
        || async {
            let (_, body) = gw.get("/readyz").await;
            body["aws"]["vendor-doomed"].is_string().then_some(body)
        },
    )
    .await;
    let problem = ready["aws"]["vendor-doomed"].as_str().unwrap();
    assert!(
        problem.contains("NonExistentQueue") || problem.contains("QueueDoesNotExist"),
        "{problem}"
    );
    assert_eq!(
        ready["ready"], true,
        "a missing queue is not fatal: {ready}"
    );

    // The other queue is still watched, and the deleted one's series are gone.
    sqs.send_message()
        .queue_url(&other)
        .message_body("{}")
        .send()
        .await
        .expect("send");
    let m = eventually(
        Duration::from_secs(15),
        "the other queue's backlog",
        || async {
            let m = gw.metrics().await;
            (sample(&m, &visible("vendor-other")) == Some(1.0)).then_some(m)
        },
    )
    .await;
    assert_eq!(sample(&m, &visible("vendor-doomed")), None, "{m}");
    assert!(
        sample(
            &m,
            r#"gapwatch_aws_requests_total{operation="GetQueueAttributes",outcome="error",service="sqs"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // Reported once per change, not once per retry.
    let logs = gw.logs();
    assert_eq!(logs.matches("queue cannot be read").count(), 1, "{logs}");
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);
}
