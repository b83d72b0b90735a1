//! Figures 2, 3 and 5 (peak): manual fills (`POST /api/v1/backfills`) from the
//! vendor simulator's pre-seeded history into the file sink and into moto's
//! SQS, unthrottled and under a rate limit. Each fill runs in a fresh daemon,
//! so its `VmHWM` is the peak of that fill alone.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use crate::peers::{Env, Gapwatch, VendorSim};
use crate::procfs::{self, mib};
use crate::table::{thousands, Figure};

/// The vendor with a pre-seeded history that every fill reads from.
pub struct History {
    pub sim: VendorSim,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub len: u64,
}

impl History {
    pub async fn start(env: &Env, len: u64) -> Result<History> {
        Self::start_over(env, "vendor", len, "24h").await
    }

    /// `len` records spread over the past `span` (`24h`, `30d`), in a
    /// simulator of its own named `name`.
    pub async fn start_over(env: &Env, name: &str, len: u64, span: &str) -> Result<History> {
        Self::start_with(env, name, len, span, &[]).await
    }

    /// As [`History::start_over`], with more `vendor-sim` arguments.
    pub async fn start_with(
        env: &Env,
        name: &str,
        len: u64,
        span: &str,
        more: &[String],
    ) -> Result<History> {
        let dir = env.dir(name)?;
        let mut args: Vec<String> = vec![
            "--rate".into(),
            "0".into(),
            "--history".into(),
            len.to_string(),
            "--history-span".into(),
            span.into(),
        ];
        args.extend_from_slice(more);
        let sim = VendorSim::start(env, &dir, "vendor-sim", &args)?;
        let stats = sim.get("/control/stats").await?;
        let t = |k: &str| -> Result<DateTime<Utc>> {
            stats[k]
                .as_str()
                .with_context(|| format!("stats without {k}: {stats}"))?
                .parse()
                .context("stats time")
        };
        let (first, last) = (t("first_created_at")?, t("last_created_at")?);
        let got = stats["history_len"].as_u64().context("history_len")?;
        if got != len {
            bail!("vendor-sim holds {got} records, asked for {len}");
        }
        Ok(History {
            sim,
            first,
            last,
            len,
        })
    }

    /// An interval from the oldest record holding about `n` records.
    pub fn interval(&self, n: u64) -> (DateTime<Utc>, DateTime<Utc>) {
        if n >= self.len {
            return (self.first, self.last + chrono::Duration::milliseconds(1));
        }
        let span = (self.last - self.first).num_milliseconds() as f64;
        let ms = (span * n as f64 / self.len as f64).round() as i64;
        (self.first, self.first + chrono::Duration::milliseconds(ms))
    }
}

/// How a fill is set up.
pub struct FillSpec<'a> {
    pub name: &'a str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The interval is cut into this many chunks …
    pub chunks: u32,
    /// … of which this many run side by side (`backfill.concurrency`).
    pub concurrency: u32,
    /// `limit` of each vendor page.
    pub page: u32,
    pub rate_limit: &'a str,
    /// The `[feeds.backfill.sink]` table's body.
    pub sink: String,
    /// `[aws]` section, for the SQS sink.
    pub aws: Option<&'a str>,
}

pub struct FillResult {
    pub expected: i64,
    pub delivered: i64,
    pub secs: f64,
    pub requests: f64,
    pub gapwatch_cpu: f64,
    pub vendor_cpu: f64,
    pub rss_before: procfs::Status,
    pub after: procfs::Status,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn config(dir: &Path, vendor: &str, spec: &FillSpec) -> String {
    let state = format!("sqlite://{}/state.db", dir.display());
    config_with_state(&state, vendor, spec)
}

/// The config of a fill's daemon with its state at `state` (a `state.url`).
pub fn config_with_state(state: &str, vendor: &str, spec: &FillSpec) -> String {
    let span_ms = (spec.to - spec.from).num_milliseconds().max(1);
    let chunk_ms = (span_ms + i64::from(spec.chunks) - 1) / i64::from(spec.chunks);
    format!(
        r#"
[server]
listen = "127.0.0.1:{{port}}"
admin_token = "bench-admin"

[state]
url = "{state}"
{aws}
[monitor]
cloudwatch = false

[[feeds]]
name = "{name}"
  [feeds.watch]
  mode = "report"
  [feeds.backfill]
  auto = false
  chunk = "{chunk_ms}ms"
  settle = "1s"
  concurrency = {concurrency}
    [feeds.backfill.source]
    url = "{vendor}/v1/events"
    query = {{ since = "{{start}}", until = "{{end}}", limit = "{page}" }}
    headers = {{ Authorization = "Bearer ${{VENDOR_TOKEN}}" }}
    records = "/data"
    record_id = "/id"
    record_time = "/created_at"
    rate_limit = "{rate}"
    timeout = "30s"
    max_retries = 8
    pagination = {{ type = "cursor", cursor = "/next_cursor", param = "cursor" }}
    [feeds.backfill.sink]
{sink}
"#,
        aws = spec.aws.unwrap_or(""),
        name = spec.name,
        page = spec.page,
        rate = spec.rate_limit,
        concurrency = spec.concurrency,
        sink = spec.sink,
    )
}

/// Runs one manual fill in a fresh daemon: from the POST to `fill = done`.
pub async fn run(env: &Env, vendor: &VendorSim, spec: &FillSpec<'_>) -> Result<FillResult> {
    let dir = env.dir(spec.name)?;
    let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config(&dir, &vendor.base, spec)).await?;
    fill_in(&mut gw, vendor, spec).await
}

/// One manual fill in a running daemon configured by [`config_with_state`].
pub async fn fill_in(
    gw: &mut Gapwatch,
    vendor: &VendorSim,
    spec: &FillSpec<'_>,
) -> Result<FillResult> {
    let expected = vendor.count(&rfc3339(spec.from), &rfc3339(spec.to)).await?;
    // Let start-up settle before the idle reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = gw.status()?;
    let requests_before = requests(&gw.metrics().await?, spec.name);
    let (gw_cpu0, sim_cpu0) = (gw.cpu_seconds()?, procfs::cpu_seconds(vendor.proc.pid())?);

    let started = Instant::now();
    let v = gw
        .post(
            "/api/v1/backfills",
            json!({ "feed": spec.name, "from": rfc3339(spec.from), "to": rfc3339(spec.to) }),
        )
        .await?;
    let id = v["gap_id"]
        .as_i64()
        .with_context(|| format!("backfill answer: {v}"))?;
    // Generous: 500 records/s would be a disaster, not a figure.
    let timeout = Duration::from_secs(120).max(Duration::from_secs_f64(expected as f64 / 500.0));
    let gap = loop {
        gw.check_alive()?;
        let g = gw.get(&format!("/api/v1/gaps/{id}")).await?;
        match g["fill"].as_str() {
            Some("done") => break g,
            Some("failed") => bail!("fill {} failed: {g}", spec.name),
            _ => {}
        }
        if started.elapsed() > timeout {
            bail!(
                "fill {} not done after {timeout:?}: {}; log:\n{}",
                spec.name,
                g["progress"],
                gw.proc.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let (gw_cpu1, sim_cpu1) = (gw.cpu_seconds()?, procfs::cpu_seconds(vendor.proc.pid())?);
    let after = gw.status()?;
    let requests_after = requests(&gw.metrics().await?, spec.name);
    let delivered = gap["progress"]["records_delivered"]
        .as_i64()
        .context("records_delivered")?;
    let p = &gap["progress"];
    if delivered != expected || p["records_duplicate"] != 0 || p["records_rejected"] != 0 {
        bail!(
            "fill {}: the vendor holds {expected} records in the interval, the fill reports {p}",
            spec.name
        );
    }
    Ok(FillResult {
        expected,
        delivered,
        secs,
        requests: requests_after - requests_before,
        gapwatch_cpu: gw_cpu1 - gw_cpu0,
        vendor_cpu: sim_cpu1 - sim_cpu0,
        rss_before,
        after,
    })
}

/// `gapwatch_backfill_requests_total` of a feed, all statuses.
fn requests(metrics: &str, feed: &str) -> f64 {
    let prefix = "gapwatch_backfill_requests_total{";
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&format!("feed=\"{feed}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every line of the file is one record; each id once, `want` of them.
pub fn check_file(path: &Path, want: i64) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut ids = HashSet::with_capacity(want.max(0) as usize);
    let mut lines = 0i64;
    for line in BufReader::new(f).lines() {
        let line = line?;
        lines += 1;
        // The id is the first field of the vendor's records: `{"id":"…",`.
        let id = line
            .strip_prefix("{\"id\":\"")
            .and_then(|r| r.split('"').next())
            .map(str::to_string)
            .or_else(|| {
                serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            })
            .with_context(|| format!("{}: line {lines} has no id", path.display()))?;
        if !ids.insert(id) {
            bail!("{}: line {lines} repeats a record id", path.display());
        }
    }
    if lines != want {
        bail!("{}: {lines} records, expected {want}", path.display());
    }
    Ok(())
}

pub fn cpu_note(r: &FillResult) -> String {
    format!(
        "gapwatch {:.2} CPU-s ({:.0}% of a core), vendor-sim {:.2} CPU-s",
        r.gapwatch_cpu,
        100.0 * r.gapwatch_cpu / r.secs,
        r.vendor_cpu
    )
}

/// Figure 2 (file sink) for one size; returns the result for the peak figure.
pub async fn file(
    env: &Env,
    history: &History,
    n: u64,
    label: &str,
) -> Result<(Figure, FillResult)> {
    let (from, to) = history.interval(n);
    let name = format!("file-{label}");
    let dir = env.dir(&name)?;
    let path = dir.join("recovered.ndjson");
    let spec = FillSpec {
        name: &name,
        from,
        to,
        chunks: 24,
        concurrency: 2,
        page: 1000,
        rate_limit: "100000/s",
        sink: format!("    type = \"file\"\n    path = \"{}\"", path.display()),
        aws: None,
    };
    let r = run(env, &history.sim, &spec).await?;
    check_file(&path, r.expected)?;
    let figure = Figure::new(
        &format!("2. fill throughput, file sink, {label} records"),
        format!(
            "{} records/s ({} records in {:.2} s)",
            thousands(r.delivered as f64 / r.secs),
            thousands(r.delivered as f64),
            r.secs
        ),
        "≥ 50,000 records/s",
        format!(
            "POST /api/v1/backfills over vendor-sim's history (24 chunks, limit=1000, cursor pages, \
             rate_limit 100000/s, concurrency 2) until GET /api/v1/gaps/{{id}} says done; file checked: each id once; {}; {} requests",
            cpu_note(&r),
            r.requests
        ),
    );
    Ok((figure, r))
}

/// Figure 3: a fill of `requests` pages of `page` records under `rate`/s.
pub async fn rate_limited(
    env: &Env,
    history: &History,
    requests: u64,
    page: u32,
    rate: u32,
) -> Result<Figure> {
    let chunks = 4u32;
    // Each chunk ends with a partial page: aim a little short of whole pages.
    let n = (requests - u64::from(chunks)) * u64::from(page) + u64::from(chunks * page / 2);
    let (from, to) = history.interval(n);
    let dir = env.dir("rate-limited")?;
    let rate_limit = format!("{rate}/s");
    let spec = FillSpec {
        name: "rate-limited",
        from,
        to,
        chunks,
        concurrency: 2,
        page,
        rate_limit: &rate_limit,
        sink: format!(
            "    type = \"file\"\n    path = \"{}\"",
            dir.join("recovered.ndjson").display()
        ),
        aws: None,
    };
    let r = run(env, &history.sim, &spec).await?;
    check_file(&dir.join("recovered.ndjson"), r.expected)?;
    let bound = r.requests / f64::from(rate);
    Ok(Figure::new(
        "3. fill time, rate-limited",
        format!(
            "{:.3} × the lower bound ({:.2} s for {} requests at {rate}/s; bound {:.2} s)",
            r.secs / bound,
            r.secs,
            r.requests,
            bound
        ),
        "≤ 1.1",
        format!(
            "POST /api/v1/backfills of {} records ({chunks} chunks, limit={page}, concurrency 2, rate_limit {rate}/s) \
             until done; requests from gapwatch_backfill_requests_total; bound = requests ÷ rate",
            thousands(r.delivered as f64)
        ),
    ))
}

/// Figure 5 (peak): the daemon's `VmHWM` after the largest fill.
pub fn peak(r: &FillResult, label: &str) -> Figure {
    Figure::new(
        &format!("5. resident memory, peak during the {label}-record fill"),
        format!(
            "VmHWM {:.1} MiB (VmRSS {:.1} MiB before the fill, {:.1} MiB after)",
            mib(r.after.hwm_kib),
            mib(r.rss_before.rss_kib),
            mib(r.after.rss_kib)
        ),
        "< 64 MiB",
        "/proc/PID/status of a daemon started for this fill alone (file sink, 1 report feed)"
            .to_string(),
    )
}

/// Figure 5 (span): a fill over a 30-day gap, from a vendor holding `len`
/// records spread over 30 days, into the file sink in one-hour chunks (720
/// of them): the daemon's peak resident memory, which must not grow with the
/// span (the plan is made a stretch at a time, each chunk holds one page).
pub async fn span_30d(env: &Env, len: u64) -> Result<Figure> {
    let history = History::start_over(env, "vendor-30d", len, "30d").await?;
    let (from, to) = history.interval(len);
    let dir = env.dir("span-30d")?;
    let path = dir.join("recovered.ndjson");
    let spec = FillSpec {
        name: "span-30d",
        from,
        to,
        chunks: 720,
        concurrency: 2,
        page: 1000,
        rate_limit: "100000/s",
        sink: format!("    type = \"file\"\n    path = \"{}\"", path.display()),
        aws: None,
    };
    let r = run(env, &history.sim, &spec).await?;
    check_file(&path, r.expected)?;
    Ok(Figure::new(
        "5. resident memory, peak during a 30-day-span fill",
        format!(
            "VmHWM {:.1} MiB (VmRSS {:.1} MiB before); {} records over {:.1} days in 720 chunks, {:.1} s",
            mib(r.after.hwm_kib),
            mib(r.rss_before.rss_kib),
            thousands(r.delivered as f64),
            (to - from).num_seconds() as f64 / 86_400.0,
            r.secs
        ),
        "< 64 MiB",
        format!(
            "vendor-sim with {} records spread over 30 days; POST /api/v1/backfills over all of it \
             (chunk 1h, limit=1000, concurrency 2, file sink), a daemon started for this fill alone; \
             file checked: each id once; {}; {} requests",
            thousands(len as f64),
            cpu_note(&r),
            r.requests
        ),
    ))
}
