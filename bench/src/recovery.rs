//! Figure 8: recovery latency. A relay feed with `settle = 1s`, `overlap = 2s`;
//! the vendor goes silent for an outage, then resumes; the time from the resume
//! until the gap's fill is done (its last page delivered to the app queue and
//! checkpointed). The floor is settle + overlap plus one request.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::peers::{Env, Gapwatch, Moto, VendorSim};
use crate::sqs::Drainer;
use crate::table::Figure;

pub async fn after_resume(env: &Env, outage: Duration) -> Result<Figure> {
    let dir = env.dir("recovery")?;
    let moto = Moto::start(env, &dir).await?;
    let vendor_q = moto.create_queue("vendor-recovery").await?;
    let app_q = moto.create_queue("app-recovery").await?;
    let sim = VendorSim::start(
        env,
        &dir,
        "vendor-sim",
        &[
            "--rate".into(),
            "10".into(),
            "--queue-url".into(),
            vendor_q.clone(),
            "--endpoint-url".into(),
            moto.endpoint.clone(),
        ],
    )?;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{state}/state.db"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false

[[feeds]]
name = "orders"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.freshness]
  max_silence = "3s"
  [feeds.backfill]
  chunk = "20s"
  follow_step = "2s"
  overlap = "2s"
  settle = "1s"
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "100" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "50/s"
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
"#,
        state = dir.display(),
        endpoint = moto.endpoint,
        vendor = sim.base,
    );
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let drainer = Drainer::start(&moto.sqs, &app_q, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.control("/control/silence", json!({})).await?;
    tokio::time::sleep(outage).await;
    sim.control("/control/resume", json!({})).await?;
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(60);
    let gap = loop {
        gw.check_alive()?;
        let v = gw.get("/api/v1/gaps").await?;
        if let Some(g) = v["gaps"].as_array().and_then(|g| g.first()) {
            if g["fill"] == "done" {
                break g.clone();
            }
        }
        if Instant::now() > deadline {
            bail!("the fill did not finish within 60 s of the resume: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let latency = resumed.elapsed();
    let stats = sim.get("/control/stats").await?;
    let silenced = stats["silenced"].as_i64().unwrap_or(-1);
    let delivered = gap["progress"]["records_delivered"].as_i64().unwrap_or(-2);
    if delivered != silenced {
        bail!("the fill delivered {delivered} records, the outage silenced {silenced}");
    }
    sim.control("/control/rate", json!({ "rate": 0.0 })).await?;
    drainer.finish(0, Duration::ZERO).await.ok();
    Ok(Figure::new(
        "8. recovery latency after the vendor resumes",
        format!(
            "{:.2} s ({delivered} records of a {} s outage recovered)",
            latency.as_secs_f64(),
            outage.as_secs()
        ),
        "≤ settle + overlap + 2 s = 5 s",
        format!(
            "relay feed (moto) with backfill, settle 1s, overlap 2s, max_silence 3s; vendor-sim at 10 records/s \
             silenced for {} s then resumed; time from POST /control/resume until GET /api/v1/gaps shows the fill \
             done (polled every 50 ms); delivered = silenced checked",
            outage.as_secs()
        ),
    ))
}
