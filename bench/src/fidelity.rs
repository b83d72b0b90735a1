//! Figure 11: what making recovered records look live costs. The same manual fill
//! into the file sink three times, each in a fresh daemon: records as listed,
//! wrapped in an EventBridge envelope, and rendered by a jq program. The render
//! cost per 10,000 records is gapwatch's CPU time above the bare fill's.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::fill::{self, FillResult, FillSpec, History};
use crate::peers::{Env, Gapwatch};
use crate::table::{thousands, Figure};

/// The shapes measured: name, `[feeds.watch]` lines, `[feeds.backfill]` lines,
/// and where the record id sits in a written line.
const SHAPES: [(&str, &str, &str, &str); 3] = [
    ("none", "", "", "/id"),
    (
        "eventbridge",
        "  envelope = \"eventbridge\"\n  envelope_fields = { \"detail-type\" = \"order.created\", source = \"partner.vendor\" }\n",
        "",
        "/detail/id",
    ),
    (
        "jq",
        "",
        "  render = '{event: \"order.created\", data: {id, created_at, seq, payload}}'\n",
        "/data/id",
    ),
];

pub async fn render_cost(env: &Env, history: &History, n: u64) -> Result<Vec<Figure>> {
    let (from, to) = history.interval(n);
    let mut results: Vec<(&str, FillResult)> = Vec::new();
    for (shape, watch, backfill, id_at) in SHAPES {
        let name = format!("fidelity-{shape}-{n}");
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
        let state = format!("sqlite://{}/state.db", dir.display());
        let config = fill::config_with_state(&state, &history.sim.base, &spec)
            .replacen(
                "  mode = \"report\"\n",
                &format!("  mode = \"report\"\n{watch}"),
                1,
            )
            .replacen(
                "  concurrency = 2\n",
                &format!("  concurrency = 2\n{backfill}"),
                1,
            );
        let mut gw = Gapwatch::start(env, &dir, "gapwatch", &config).await?;
        let r = fill::fill_in(&mut gw, &history.sim, &spec).await?;
        check(&path, id_at, r.expected)?;
        results.push((shape, r));
    }
    let per_10k = |r: &FillResult| r.gapwatch_cpu / r.delivered as f64 * 10_000.0 * 1000.0;
    let base = per_10k(&results[0].1);
    let base_n = results[0].1.delivered as f64;
    let mut figures = Vec::new();
    for (shape, r) in &results {
        figures.push(Figure::new(
            &format!("11. fill throughput, file sink, {shape} shape, {} records", thousands(r.delivered as f64)),
            format!(
                "{} records/s ({:.2} s; gapwatch {:.1} CPU-ms per 10,000 records)",
                thousands(r.delivered as f64 / r.secs),
                r.secs,
                per_10k(r)
            ),
            if *shape == "eventbridge" { "≥ 100,000 records/s" } else { "" },
            format!(
                "as figure 2 (24 chunks, limit=1000, concurrency 2), fresh daemon; every line read back as the app would ({}), each id once; {}",
                SHAPES.iter().find(|s| s.0 == *shape).map_or("", |s| s.3),
                fill::cpu_note(r)
            ),
        ));
    }
    let cost = |i: usize| per_10k(&results[i].1) - base;
    figures.push(Figure::new(
        &format!(
            "11. render cost per 10,000 records ({} records)",
            thousands(base_n)
        ),
        format!(
            "EventBridge envelope {:.1} CPU-ms, jq render {:.1} CPU-ms (bare fill {:.1} CPU-ms)",
            cost(1),
            cost(2),
            base
        ),
        "",
        "gapwatch CPU time of the shaped fill minus the bare one, per 10,000 records delivered"
            .into(),
    ));
    Ok(figures)
}

/// Every line is one message whose record id sits at `id_at`; each id once.
fn check(path: &Path, id_at: &str, want: i64) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut ids = HashSet::new();
    let mut lines = 0i64;
    for line in BufReader::new(f).lines() {
        let line = line?;
        lines += 1;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {lines} is not JSON", path.display()))?;
        let id = v
            .pointer(id_at)
            .and_then(|i| i.as_str())
            .with_context(|| format!("{}: line {lines} has nothing at {id_at}", path.display()))?;
        if !ids.insert(id.to_string()) {
            bail!("{}: line {lines} repeats record {id}", path.display());
        }
    }
    if lines != want {
        bail!("{}: {lines} records, expected {want}", path.display());
    }
    Ok(())
}
