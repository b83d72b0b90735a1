//! Supervised tasks, through the real binary: a task that panics is restarted
//! and counted; one that keeps dying turns `/healthz` red. Panics are injected
//! with the test hook `GAPWATCH_FAULT_INJECT_PANIC=TASK[:N]` (the first N starts
//! of that kind of task panic; without N, every start).

mod common;

use std::time::Duration;

use common::*;

fn config(dir: &std::path::Path) -> String {
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
  [feeds.freshness]
  max_silence = "1h"
"#,
        state = dir.join("state.db").display(),
    )
}

const RESTARTS: &str = r#"gapwatch_task_restarts_total{task="feed_monitor"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_feed_monitor_is_restarted_counted_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path()),
        &[("GAPWATCH_FAULT_INJECT_PANIC", "feed_monitor:1")],
    );
    eventually(Duration::from_secs(20), "one restart counted", || {
        let gw = &gw;
        async move { sample(&gw.metrics().await, RESTARTS).filter(|v| *v == 1.0) }
    })
    .await;
    // The restarted monitor takes observations again.
    let now = chrono::Utc::now().to_rfc3339();
    let body = format!(r#"[{{"id":"o-1","event_time":"{now}"}}]"#);
    let (status, v) = gw
        .post("/api/v1/feeds/orders/observations", Some("adm1n"), &body)
        .await;
    assert_eq!(status, 200, "{v}");
    eventually(Duration::from_secs(20), "the observation seen", || {
        let gw = &gw;
        async move {
            let (_, v) = gw.get("/api/v1/feeds").await;
            (v["feeds"][0]["records_observed"] == 1).then_some(())
        }
    })
    .await;
    let (status, _) = gw.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&gw.metrics().await, RESTARTS), Some(1.0));
    let logs = gw.logs();
    assert!(logs.contains("task failed; restarting"), "{logs}");
    assert!(logs.contains("injected panic"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_keeps_dying_turns_healthz_red() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gapwatch::start(
        dir.path(),
        &config(dir.path()),
        &[("GAPWATCH_FAULT_INJECT_PANIC", "feed_monitor")],
    );
    let body = eventually(Duration::from_secs(60), "/healthz failing", || {
        let gw = &gw;
        async move {
            let (status, v) = gw.get("/healthz").await;
            (status == 503).then_some(v)
        }
    })
    .await;
    assert_eq!(body["alive"], false);
    assert_eq!(body["failed_tasks"][0], "feed_monitor orders");
    let restarts = sample(&gw.metrics().await, RESTARTS).unwrap_or(0.0);
    assert!(restarts > 5.0, "restarts {restarts}");
    assert!(gw.logs().contains("restart budget exhausted"));
}
