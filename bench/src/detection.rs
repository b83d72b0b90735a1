//! Figure 1, detection latency: from the last record before a silence to the
//! gap opening, minus `max_silence`. Read from the gap itself
//! (`detected_at − start − max_silence`), so neither the bench's polling nor
//! the transport delay of the last record enters the figure.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::peers::{Env, Gapwatch, Moto, VendorSim};
use crate::sqs::Drainer;
use crate::table::{median_max, Figure};

const MAX_SILENCE_S: f64 = 2.0;

fn header(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{}/state.db"
"#,
        dir.display()
    )
}

fn time(v: &serde_json::Value, key: &str) -> Result<DateTime<Utc>> {
    v[key]
        .as_str()
        .with_context(|| format!("gap without {key}: {v}"))?
        .parse()
        .with_context(|| format!("gap {key}"))
}

/// Seconds between the silence condition and the gap opening.
fn latency(gap: &serde_json::Value) -> Result<f64> {
    let start = time(gap, "start")?;
    let detected = time(gap, "detected_at")?;
    Ok((detected - start).num_milliseconds() as f64 / 1000.0 - MAX_SILENCE_S)
}

/// Waits for an open gap of `feed` other than those in `seen`.
async fn next_open_gap(
    gw: &mut Gapwatch,
    feed: &str,
    seen: &[i64],
    timeout: Duration,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        gw.check_alive()?;
        let v = gw
            .get(&format!("/api/v1/gaps?feed={feed}&state=open"))
            .await?;
        if let Some(g) = v["gaps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["id"].as_i64().is_some_and(|id| !seen.contains(&id)))
        {
            return Ok(g.clone());
        }
        if Instant::now() > deadline {
            bail!("no gap opened for {feed} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A pause of 0–500 ms that varies between calls, so that silences do not start
/// in step with the detector's 200 ms tick (the bench reacts to a gap opening,
/// which happens on a tick; without it every sample would read the same phase).
async fn jitter() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Scramble the low bits (an odd multiplier is a bijection mod 2^32).
    let ms = nanos.wrapping_mul(0x9e37_79b9) % 500;
    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
}

fn summary(samples: &[f64]) -> String {
    let (median, max) = median_max(samples);
    format!(
        "median {:.0} ms, max {:.0} ms (n={})",
        median * 1000.0,
        max * 1000.0,
        samples.len()
    )
}

/// Report mode: the bench posts one observation stamped now, waits for the
/// gap, and posts the next one (which closes it and starts the next silence).
pub async fn report(env: &Env, reps: usize) -> Result<Figure> {
    let dir = env.dir("detect-report")?;
    let config = format!(
        r#"{}
[monitor]
cloudwatch = false

[[feeds]]
name = "report"
  [feeds.watch]
  mode = "report"
  [feeds.freshness]
  max_silence = "{MAX_SILENCE_S}s"
"#,
        header(&dir)
    );
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let mut samples = Vec::new();
    let mut seen = Vec::new();
    for rep in 0..reps {
        jitter().await;
        let sent = Utc::now();
        gw.post(
            "/api/v1/feeds/report/observations",
            json!([{ "id": format!("obs-{rep}"), "event_time": sent.to_rfc3339_opts(SecondsFormat::Millis, true) }]),
        )
        .await?;
        let gap = next_open_gap(&mut gw, "report", &seen, Duration::from_secs(30)).await?;
        let start = time(&gap, "start")?;
        if (start - sent).num_milliseconds().abs() > 1 {
            bail!("gap starts at {start}, the last observation was at {sent}");
        }
        seen.push(gap["id"].as_i64().context("gap id")?);
        samples.push(latency(&gap)?);
    }
    Ok(Figure::new(
        "1. detection latency, report mode",
        summary(&samples),
        "< 1 s",
        format!(
            "POST one observation stamped now to /api/v1/feeds/{{feed}}/observations, max_silence = {MAX_SILENCE_S}s; \
             latency = detected_at − start − max_silence of the gap from GET /api/v1/gaps; {reps} silences, \
             each started after a random 0–500 ms pause"
        ),
    ))
}

/// Relay mode: vendor-sim publishes 7 records/s into a moto queue, gapwatch
/// relays them to the app queue; the vendor goes silent, the gap opens, the
/// vendor resumes and the gap closes, `reps` times.
pub async fn relay(env: &Env, reps: usize) -> Result<Figure> {
    let dir = env.dir("detect-relay")?;
    let moto = Moto::start(env, &dir).await?;
    let vendor_q = moto.create_queue("vendor-detect").await?;
    let app_q = moto.create_queue("app-detect").await?;
    let sim = VendorSim::start(
        env,
        &dir,
        "vendor-sim",
        &[
            // Not a divisor of the detector's 200 ms tick, so that the last
            // record before each silence falls at a different phase.
            "--rate".into(),
            "7".into(),
            "--queue-url".into(),
            vendor_q.clone(),
            "--endpoint-url".into(),
            moto.endpoint.clone(),
        ],
    )?;
    let config = format!(
        r#"{}
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"

[monitor]
cloudwatch = false

[[feeds]]
name = "relay"
queue_url = "{vendor_q}"
  [feeds.watch]
  mode = "relay"
  forward_to = "{app_q}"
  event_time = "/created_at"
  record_id = "/id"
  [feeds.freshness]
  max_silence = "{MAX_SILENCE_S}s"
"#,
        header(&dir),
        endpoint = moto.endpoint,
    );
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
    let drainer = Drainer::start(&moto.sqs, &app_q, 1);
    // Records must flow before a silence means anything.
    let deadline = Instant::now() + Duration::from_secs(30);
    while drainer.count() < 5 {
        gw.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "no record relayed within 30 s; log:\n{}",
                gw.proc.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut samples = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..reps {
        jitter().await;
        sim.control(
            "/control/silence",
            json!({ "for_seconds": MAX_SILENCE_S + 2.0 }),
        )
        .await?;
        let gap = next_open_gap(&mut gw, "relay", &seen, Duration::from_secs(30)).await?;
        let id = gap["id"].as_i64().context("gap id")?;
        seen.push(id);
        samples.push(latency(&gap)?);
        // Wait for the vendor to resume and the gap to close.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let g = gw.get(&format!("/api/v1/gaps/{id}")).await?;
            if g["state"] == "closed" {
                break;
            }
            if Instant::now() > deadline {
                bail!("gap {id} did not close after the vendor resumed: {g}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drainer.finish(0, Duration::ZERO).await?;
    Ok(Figure::new(
        "1. detection latency, relay mode (moto)",
        summary(&samples),
        "< 1 s",
        format!(
            "vendor-sim publishes 7 records/s to a moto queue, gapwatch relays; POST /control/silence for {}s, \
             max_silence = {MAX_SILENCE_S}s; latency = detected_at − start − max_silence of each gap; {reps} silences, \
             each started after a random 0–500 ms pause",
            MAX_SILENCE_S + 2.0
        ),
    ))
}
