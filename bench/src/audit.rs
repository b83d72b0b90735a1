//! Figure 9, the audit's cost: vendor requests per hour a feed's completeness
//! audit adds, against the vendor simulator producing `rate` records/s. The
//! app reports nothing, so every record is "missing" and delivered to a file
//! sink; the listing — and so the request count — is the same when nothing is.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::peers::{Env, Gapwatch, VendorSim};
use crate::table::Figure;

fn config(dir: &std::path::Path, vendor: &str, page: u32, every_s: u64) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "sqlite://{state}/state.db"

[monitor]
cloudwatch = false

[[feeds]]
name = "audited"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = false
  chunk = "1h"
  settle = "1s"
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "{page}" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "1000/s"
    timeout = "30s"
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    [feeds.backfill.sink]
    type = "file"
    path = "{state}/recovered.ndjson"
  [feeds.audit]
  every = "{every_s}s"
  delay = "2s"
  lookback = "1h"
"#,
        state = dir.display(),
    )
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

pub async fn cost(env: &Env, rate: u32, page: u32, every_s: u64, span: Duration) -> Result<Figure> {
    let dir = env.dir("audit")?;
    let sim = VendorSim::start(env, &dir, "vendor", &["--rate".into(), rate.to_string()])?;
    let mut gw = Gapwatch::start(
        env,
        &dir,
        "gapwatch",
        &config(&dir, &sim.base, page, every_s),
    )
    .await?;
    let ok_runs = |m: &str| {
        sample(
            m,
            r#"gapwatch_audit_runs_total{feed="audited",outcome="ok"}"#,
        )
        .unwrap_or(0.0)
    };
    // Measure from the end of a window on: whole runs only.
    let deadline = Instant::now() + Duration::from_secs(every_s * 4 + 30);
    let runs0 = loop {
        gw.check_alive()?;
        let runs = ok_runs(&gw.metrics().await?);
        if runs >= 1.0 {
            break runs;
        }
        if Instant::now() > deadline {
            bail!("no audit window finished; log:\n{}", gw.proc.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served = |v: &serde_json::Value| v["served_requests"].as_f64().unwrap_or(0.0);
    let s0 = served(&sim.get("/control/stats").await?);
    let started = Instant::now();
    tokio::time::sleep(span).await;
    gw.check_alive()?;
    let m = gw.metrics().await?;
    let s1 = served(&sim.get("/control/stats").await?);
    let elapsed = started.elapsed().as_secs_f64();
    let runs = ok_runs(&m) - runs0;
    let failed = sample(
        &m,
        r#"gapwatch_audit_runs_total{feed="audited",outcome="failed"}"#,
    )
    .unwrap_or(0.0);
    if failed > 0.0 || runs < 1.0 {
        bail!(
            "audit windows: {runs} ok, {failed} failed; log:\n{}",
            gw.proc.log_tail(20)
        );
    }
    let per_hour = (s1 - s0) / elapsed * 3600.0;
    // One listing of every record once more, plus the last page of each window.
    let per_window = ((f64::from(rate) * every_s as f64) / f64::from(page))
        .ceil()
        .max(1.0);
    let formula = 3600.0 / every_s as f64 * per_window;
    Ok(Figure::new(
        &format!("9. audit cost, {rate} records/s, every {every_s}s, pages of {page}"),
        format!(
            "{per_hour:.0} vendor requests/h ({:.2} per window); formula {formula:.0}/h",
            (s1 - s0) / runs.max(1.0)
        ),
        "README formula",
        format!(
            "report feed, audit every {every_s}s, delay 2s; vendor requests counted by vendor-sim over {elapsed:.0} s ({runs:.0} windows)"
        ),
    ))
}
