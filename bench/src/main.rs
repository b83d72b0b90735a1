//! `gapwatch-bench`: gapwatch's figures against local peers (moto's server, the
//! vendor simulator, a SQLite file, a Postgres cluster) — detection latency, fill and relay
//! throughput, footprint and AWS calls — printed as one Markdown table, each
//! figure with how it was measured. Figures are not asserted; a step that
//! breaks (a fill that never finishes, a lost or duplicated record) fails the
//! run. Run it through `scripts/bench.sh`, which builds the release binaries.

mod audit;
mod aws_calls;
mod detection;
mod fake_sqs;
mod fidelity;
mod fill;
mod footprint;
mod peers;
// The tests' throwaway Postgres cluster (std only), started here the same way.
#[path = "../../tests/common/postgres.rs"]
mod pg_cluster;
mod procfs;
mod recovery;
mod relay;
mod relay_latency;
mod scale;
mod sqs;
mod state;
mod table;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use peers::Env;
use table::Figure;

const ALL: &[&str] = &[
    "detection",
    "fill",
    "file",
    "sqs",
    "sqs-latency",
    "span",
    "rate",
    "relay",
    "idle",
    "aws",
    "scale",
    "recovery",
    "audit",
    "state",
    "fidelity",
];

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmarks gapwatch against local peers and prints a table of figures"
)]
struct Args {
    /// Small sizes and one repetition: checks that every step still works (CI).
    #[arg(long)]
    smoke: bool,
    /// Only these benchmarks (comma-separated): detection, fill, sqs, span, rate, relay, idle, aws, scale, recovery, audit, state, fidelity.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where `gapwatch` and `vendor-sim` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// moto's server executable.
    #[arg(long, env = "MOTO_SERVER", default_value = "moto_server")]
    moto_server: String,
    /// Keep the scratch directory (configs, logs, state, recovered files).
    #[arg(long)]
    keep: bool,
    /// Also write the table (with a header naming the run) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Sizes of one run.
struct Sizes {
    detection_reps: usize,
    small_fill: u64,
    big_fill: u64,
    sqs_records: u64,
    /// Records of the SQS sink figure at 20 ms per call (2b).
    sqs_latency_records: u64,
    /// Rounds of the SQS sink-vs-loop comparison.
    sqs_rounds: usize,
    /// Records over the 30-day span (one every 10 s in a full run).
    span_records: u64,
    rate_requests: u64,
    rate_page: u32,
    rate: u32,
    relay_messages: u64,
    /// Messages of the 20 ms-latency relay figure, and the latency run's seconds.
    relay_latency: (u64, u64),
    idle_settle: Duration,
    aws_duration: Duration,
    /// Feed counts of the idle-cost figure, its window and POSTs after it.
    scale_feeds: &'static [usize],
    scale_window: Duration,
    scale_posts: usize,
    outage: Duration,
    /// The audit's cost: records/s, page size, `every` (s), measured span.
    audit: (u32, u32, u64, Duration),
    /// Small backfills of the per-gap state figure (its fill is `big_fill`).
    state_gaps: i64,
}

impl Sizes {
    fn new(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                detection_reps: 1,
                small_fill: 200,
                big_fill: 2_000,
                sqs_records: 200,
                sqs_latency_records: 200,
                sqs_rounds: 1,
                span_records: 8_640,
                rate_requests: 30,
                rate_page: 10,
                rate: 20,
                relay_messages: 200,
                relay_latency: (500, 1),
                idle_settle: Duration::from_secs(3),
                aws_duration: Duration::from_secs(22),
                scale_feeds: &[10, 100],
                scale_window: Duration::from_secs(3),
                scale_posts: 50,
                outage: Duration::from_secs(6),
                audit: (20, 50, 2, Duration::from_secs(6)),
                state_gaps: 20,
            }
        } else {
            Sizes {
                detection_reps: 7,
                small_fill: 100_000,
                big_fill: 1_000_000,
                sqs_records: 2_000,
                sqs_latency_records: 10_000,
                sqs_rounds: 3,
                span_records: 259_200,
                rate_requests: 300,
                rate_page: 100,
                rate: 20,
                relay_messages: 2_000,
                relay_latency: (10_000, 10),
                idle_settle: Duration::from_secs(20),
                aws_duration: Duration::from_secs(100),
                scale_feeds: &[10, 100, 1000],
                scale_window: Duration::from_secs(30),
                scale_posts: 1000,
                outage: Duration::from_secs(20),
                audit: (100, 100, 5, Duration::from_secs(60)),
                state_gaps: 500,
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn progress(msg: &str) {
    eprintln!(
        "[bench {} load {:.2}] {msg}",
        chrono::Local::now().format("%H:%M:%S"),
        procfs::load1()
    );
}

async fn run(args: Args) -> Result<()> {
    for o in &args.only {
        if !ALL.contains(&o.as_str()) {
            bail!("--only: unknown benchmark {o:?}; one of {}", ALL.join(", "));
        }
    }
    let bin_dir = match args.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
            .to_path_buf(),
    };
    for bin in ["gapwatch", "vendor-sim"] {
        if !bin_dir.join(bin).is_file() {
            bail!(
                "{} not found (cargo build --release --workspace)",
                bin_dir.join(bin).display()
            );
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("gapwatch-bench-")
        .tempdir()?;
    let env = Env {
        bin_dir,
        work: scratch.path().to_path_buf(),
        moto_server: args.moto_server.clone(),
    };
    let result = measure(&args, &env).await;
    if args.keep || result.is_err() {
        let kept = scratch.keep();
        progress(&format!(
            "configs, logs and state kept in {}",
            kept.display()
        ));
    }
    result
}

async fn measure(args: &Args, env: &Env) -> Result<()> {
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let sizes = Sizes::new(args.smoke);
    let started = Instant::now();
    let load_before = procfs::load1();
    progress(&format!(
        "{} run, scratch {}",
        if args.smoke { "smoke" } else { "full" },
        env.work.display()
    ));

    let mut figures: Vec<Figure> = Vec::new();
    if wanted("detection") {
        progress("1. detection latency, report mode");
        figures.push(detection::report(env, sizes.detection_reps * 2).await?);
        progress("1. detection latency, relay mode");
        figures.push(detection::relay(env, sizes.detection_reps).await?);
    }
    if wanted("fill")
        || wanted("file")
        || wanted("sqs")
        || wanted("sqs-latency")
        || wanted("rate")
        || wanted("state")
        || wanted("fidelity")
    {
        progress(&format!(
            "seeding vendor-sim with {} records",
            table::thousands(sizes.big_fill as f64)
        ));
        let history = fill::History::start(env, sizes.big_fill).await?;
        // `file`: figure 2's file-sink fills alone (fast; `fill` also runs the SQS ones).
        if wanted("fill") || wanted("file") {
            let label = |n: u64| {
                if n >= 1_000_000 {
                    format!("{}M", n / 1_000_000)
                } else if n >= 1000 {
                    format!("{}k", n / 1000)
                } else {
                    n.to_string()
                }
            };
            for n in [sizes.small_fill, sizes.big_fill] {
                progress(&format!("2. fill into the file sink, {} records", label(n)));
                let (f, r) = fill::file(env, &history, n, &label(n)).await?;
                figures.push(f);
                if n == sizes.big_fill {
                    figures.push(fill::peak(&r, &label(n)));
                }
            }
        }
        if wanted("fill") || wanted("sqs") {
            progress("2. SQS baseline and fill into moto");
            figures.extend(
                sqs::sink_vs_loop(env, &history, sizes.sqs_records, sizes.sqs_rounds).await?,
            );
        }
        if wanted("fill") || wanted("sqs") || wanted("sqs-latency") {
            progress("2b. fill into the SQS sink at 20 ms SQS latency (the bench's endpoint)");
            figures.extend(sqs::sink_at_latency(env, &history, sizes.sqs_latency_records).await?);
        }
        if wanted("rate") {
            progress("3. rate-limited fill");
            figures.push(
                fill::rate_limited(
                    env,
                    &history,
                    sizes.rate_requests,
                    sizes.rate_page,
                    sizes.rate,
                )
                .await?,
            );
        }
        if wanted("fidelity") {
            progress("11. fill into the file sink as listed, EventBridge-wrapped, jq-rendered");
            // Both sizes of figure 2: the short fill carries the start-up, the
            // long one is the steady rate.
            for n in [sizes.small_fill, sizes.big_fill] {
                figures.extend(fidelity::render_cost(env, &history, n).await?);
            }
        }
        if wanted("state") {
            progress("10. state store: the same fill on SQLite and on Postgres, rows and bytes");
            figures.extend(
                state::backends(
                    env,
                    &history,
                    sizes.big_fill,
                    sizes.state_gaps,
                    sizes.small_fill,
                )
                .await?,
            );
        }
    }
    if wanted("span") {
        progress("5. a fill over a 30-day span");
        figures.push(fill::span_30d(env, sizes.span_records).await?);
    }
    if wanted("relay") {
        progress("4. relay throughput");
        figures.extend(relay::throughput(env, sizes.relay_messages).await?);
        progress("4b. relay at 20 ms SQS latency (the bench's endpoint)");
        let (n, secs) = sizes.relay_latency;
        figures.extend(relay_latency::figures(env, n, secs).await?);
    }
    if wanted("idle") {
        progress("5. idle footprint with 10 feeds");
        figures.push(footprint::idle(env, sizes.idle_settle).await?);
    }
    if wanted("scale") {
        for &n in sizes.scale_feeds {
            progress(&format!("7. idle cost with {n} report feeds"));
            figures.push(scale::idle(env, n, sizes.scale_window, sizes.scale_posts).await?);
        }
    }
    if wanted("recovery") {
        progress("8. recovery latency after the vendor resumes");
        figures.push(recovery::after_resume(env, sizes.outage).await?);
    }
    if wanted("aws") {
        progress("6. AWS calls per feed");
        figures.extend(aws_calls::per_feed(env, sizes.aws_duration).await?);
    }
    if wanted("audit") {
        progress("9. the audit's vendor requests");
        let (rate, page, every, span) = sizes.audit;
        figures.push(audit::cost(env, rate, page, every, span).await?);
    }

    let header = format!(
        "gapwatch-bench {}{} — {} — {} CPUs, load average {:.2} before, {:.2} after — {:.0} s",
        if args.smoke { "--smoke" } else { "" },
        if args.only.is_empty() {
            String::new()
        } else {
            format!(" --only {}", args.only.join(","))
        },
        chrono::Local::now().format("%Y-%m-%d %H:%M %Z"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        procfs::load1(),
        started.elapsed().as_secs_f64()
    );
    let table = table::markdown(&figures);
    println!("\n{header}\n\n{table}");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{header}\n\n{table}"))
            .with_context(|| format!("write {}", out.display()))?;
    }
    Ok(())
}
