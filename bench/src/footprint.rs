//! Figure 5 (idle): the daemon's resident memory with 10 relay feeds at the
//! default intervals, each with an SQS-sink backfill, against moto.

use std::time::Duration;

use anyhow::Result;

use crate::peers::{Env, Gapwatch, Moto};
use crate::procfs::mib;
use crate::table::Figure;

pub const FEEDS: usize = 10;

pub async fn idle(env: &Env, settle: Duration) -> Result<Figure> {
    let dir = env.dir("idle")?;
    let moto = Moto::start(env, &dir).await?;
    let mut config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{state}/state.db"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
"#,
        state = dir.display(),
        endpoint = moto.endpoint,
    );
    for i in 0..FEEDS {
        let vendor_q = moto.create_queue(&format!("vendor-{i}")).await?;
        let app_q = moto.create_queue(&format!("app-{i}")).await?;
        config.push_str(&format!(
            r#"
[[feeds]]
name = "feed-{i}"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.backfill]
    [feeds.backfill.source]
    url = "http://127.0.0.1:9/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "1000" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
"#
        ));
    }
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let cpu0 = gw.cpu_seconds()?;
    tokio::time::sleep(settle).await;
    gw.check_alive()?;
    let s = gw.status()?;
    let cpu = gw.cpu_seconds()? - cpu0;
    Ok(Figure::new(
        "5. resident memory, idle with 10 feeds",
        format!(
            "VmRSS {:.1} MiB (VmHWM {:.1} MiB); {:.2} CPU-s in {} s idle",
            mib(s.rss_kib),
            mib(s.hwm_kib),
            cpu,
            settle.as_secs()
        ),
        "< 20 MiB",
        format!(
            "/proc/PID/status {} s after start: 10 relay feeds (20 moto queues, long polls, GetQueueAttributes, \
             CloudWatch on), each with an SQS-sink backfill, default intervals",
            settle.as_secs()
        ),
    ))
}
