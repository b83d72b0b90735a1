//! Figure 7: idle cost against the number of feeds. N report feeds, each fresh
//! (one observation stamped now) and far from its `max_silence`, so there is
//! nothing to do: CPU seconds per wall second over a window, resident memory,
//! the latency of report POSTs afterwards, and one freshness sample per feed.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{SecondsFormat, Utc};
use serde_json::json;

use crate::peers::{Env, Gapwatch};
use crate::procfs::mib;
use crate::table::Figure;

pub async fn idle(env: &Env, feeds: usize, window: Duration, posts: usize) -> Result<Figure> {
    let dir = env.dir(&format!("scale-{feeds}"))?;
    let mut config = format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{}/state.db"
"#,
        dir.display()
    );
    for i in 0..feeds {
        config.push_str(&format!(
            "\n[[feeds]]\nname = \"feed-{i}\"\n  [feeds.watch]\n  mode = \"report\"\n  [feeds.freshness]\n  max_silence = \"1h\"\n"
        ));
    }
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let now = || Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
    for i in 0..feeds {
        gw.post(
            &format!("/api/v1/feeds/feed-{i}/observations"),
            json!([{ "id": format!("first-{i}"), "event_time": now() }]),
        )
        .await?;
    }
    // Let the first saves happen before the window starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = gw.cpu_seconds()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu = gw.cpu_seconds()? - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    gw.check_alive()?;
    let status = gw.status()?;

    let mut latencies = Vec::with_capacity(posts);
    for k in 0..posts {
        let feed = k * 7919 % feeds;
        let began = Instant::now();
        gw.post(
            &format!("/api/v1/feeds/feed-{feed}/observations"),
            json!([{ "id": format!("obs-{k}"), "event_time": now() }]),
        )
        .await?;
        latencies.push(began.elapsed());
    }
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default();
    let metrics = gw.metrics().await?;
    let samples = metrics
        .lines()
        .filter(|l| l.starts_with("gapwatch_feed_freshness_seconds{"))
        .count();
    if samples != feeds {
        bail!("{samples} freshness samples for {feeds} feeds");
    }
    Ok(Figure::new(
        &format!("7. idle cost, {feeds} report feeds"),
        format!(
            "{:.2} % of a core ({cpu:.2} CPU-s in {wall:.0} s); VmRSS {:.1} MiB; observations p99 {:.1} ms (n={posts}); {samples} freshness samples",
            100.0 * cpu / wall,
            mib(status.rss_kib),
            p99.as_secs_f64() * 1000.0,
        ),
        if feeds >= 1000 { "< 2 % of a core, RSS < 64 MiB, p99 < 50 ms" } else { "—" },
        format!(
            "{feeds} report feeds (max_silence 1h, no backfill), each sent one observation stamped now; \
             utime + stime from /proc/PID/stat over {:.0} s with nothing to do, VmRSS at its end; then {posts} \
             sequential POSTs of one observation to /api/v1/feeds/{{feed}}/observations; one \
             gapwatch_feed_freshness_seconds sample per feed checked",
            window.as_secs_f64()
        ),
    ))
}
