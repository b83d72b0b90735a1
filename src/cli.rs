//! The command line: `run`, `check-config`, `gaps`, `backfill`, `audit`,
//! `check-shape`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, DEFAULT_PATH};
use crate::fill::{FillControl, GapOutcome};
use crate::metrics::Metrics;
use crate::store::{FillState, Gap, GapFilter, Store};

#[derive(Parser, Debug)]
#[command(
    name = "gapwatch",
    version,
    about = "Guards real-time data feeds: freshness, gap detection, automatic recovery"
)]
pub struct Cli {
    /// Log format: JSON lines (default) or text for humans.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConfigArg {
    /// Config file [env: GAPWATCH_CONFIG] [default: /etc/gapwatch/gapwatch.toml]
    #[arg(long, short)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Validate the config and print it resolved, secrets redacted.
    CheckConfig(ConfigArg),
    /// List gaps with their fill progress.
    Gaps {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        feed: Option<String>,
        /// A gap state (open, closed) or fill state (pending, running, done, failed, ignored).
        #[arg(long)]
        state: Option<String>,
        /// Only the gaps of this partition (partitioned feeds).
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Fill an interval by hand (idempotent: what was delivered is not sent again).
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        feed: String,
        /// Start of the interval (RFC 3339), inclusive.
        #[arg(long)]
        from: DateTime<Utc>,
        /// End of the interval (RFC 3339), exclusive.
        #[arg(long)]
        to: DateTime<Utc>,
        /// Partitioned feeds: only this partition (default: every one).
        #[arg(long)]
        partition: Option<String>,
        /// Print the plan (chunks, requests, duration under the rate limit); send nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare the vendor's records over an interval with the ledger and
    /// deliver the missing ones.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        feed: String,
        /// Start of the interval (RFC 3339), inclusive.
        #[arg(long)]
        from: DateTime<Utc>,
        /// End of the interval (RFC 3339), exclusive.
        #[arg(long)]
        to: DateTime<Utc>,
        /// Partitioned feeds: only this partition (default: every one).
        #[arg(long)]
        partition: Option<String>,
        /// Count the missing records and show a sample of their ids; send nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Compare the live messages the daemon sampled (read from the state
    /// store) with what a fill would send for the same records. Exits 0 when
    /// they match, 1 when they differ, 2 when nothing could be compared.
    CheckShape {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        feed: String,
        #[arg(long)]
        json: bool,
    },
}

/// `check-shape` exit codes: a deploy gate tells "differs" from "cannot tell".
pub(crate) const SHAPE_MISMATCH: u8 = 1;
pub(crate) const SHAPE_UNAVAILABLE: u8 = 2;

impl ConfigArg {
    fn path(&self, env: &HashMap<String, String>) -> PathBuf {
        self.config
            .clone()
            .or_else(|| env.get("GAPWATCH_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    fn load(&self, env: &HashMap<String, String>) -> anyhow::Result<Config> {
        let path = self.path(env);
        Config::load(&path, env)
            .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))
    }
}

pub fn main(cli: Cli) -> ExitCode {
    let env: HashMap<String, String> = std::env::vars().collect();
    crate::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command, &env));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, env: &HashMap<String, String>) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(c) => {
            let config = c.load(env)?;
            crate::daemon::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(c) => {
            let config = c.load(env)?;
            println!("# {} is valid", c.path(env).display());
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Gaps {
            config,
            feed,
            state,
            partition,
            json,
        } => {
            let config = config.load(env)?;
            let store = Store::connect(&config.state.url).await?;
            let gaps = store
                .gaps(&GapFilter {
                    partition,
                    feed,
                    state,
                    limit: Some(1000),
                })
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "gaps": gaps }))?
                );
            } else {
                print!("{}", gaps_table(&gaps));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            config,
            feed,
            from,
            to,
            partition,
            dry_run,
            json,
        } => {
            let interval = Interval {
                feed,
                partition,
                from,
                to,
            };
            let span = tracing::info_span!("feed", feed = %interval.feed);
            backfill(config.load(env)?, &interval, dry_run, json)
                .instrument(span)
                .await
        }
        Command::Audit {
            config,
            feed,
            from,
            to,
            partition,
            dry_run,
            json,
        } => {
            let interval = Interval {
                feed,
                partition,
                from,
                to,
            };
            let span = tracing::info_span!("feed", feed = %interval.feed);
            audit(config.load(env)?, &interval, dry_run, json)
                .instrument(span)
                .await
        }
        Command::CheckShape { config, feed, json } => {
            // Whatever keeps the check from running is "cannot tell", not a mismatch.
            let span = tracing::info_span!("feed", feed = %feed);
            let result = async { check_shape(config.load(env)?, &feed, json).await }
                .instrument(span)
                .await;
            Ok(result.unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::from(SHAPE_UNAVAILABLE)
            }))
        }
    }
}

/// What `backfill` and `audit` work on.
struct Interval {
    feed: String,
    /// Partitioned feeds: one partition (None: every one).
    partition: Option<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// The partitions a one-off run of a partitioned feed works on (see
/// [`crate::feed::current_partitions`]); empty for other feeds.
async fn watched_partitions(
    config: &Config,
    feed: &crate::config::FeedConfig,
) -> anyhow::Result<Vec<String>> {
    let (Some(p), Some(b)) = (&feed.partitions, &feed.backfill) else {
        return Ok(Vec::new());
    };
    if let crate::config::PartitionList::Values(v) = &p.list {
        return Ok(v.clone());
    }
    let store = Store::connect(&config.state.url).await?;
    let source = crate::fill::source::Source::new(&feed.name, &b.source, Arc::new(Metrics::new()))?;
    let watched = crate::feed::current_partitions(feed, &store, &source).await;
    store.close().await;
    Ok(watched?)
}

/// `gapwatch check-shape`: the sample the daemon saved, checked now.
async fn check_shape(config: Config, feed: &str, json: bool) -> anyhow::Result<ExitCode> {
    use crate::metrics::ShapeOutcome;
    let feed_config = config
        .feed(feed)
        .with_context(|| format!("unknown feed {feed:?}"))?;
    let (Some(b), Some(_)) = (&feed_config.backfill, &feed_config.shape) else {
        anyhow::bail!(
            "feed {feed:?} has no shape check: it needs [feeds.backfill], relay mode with watch.record_id and watch.event_time or report mode, and [feeds.shape] not disabled"
        );
    };
    let store = Store::connect(&config.state.url).await?;
    let sample = store.shape_sample(feed).await;
    store.close().await;
    let sample = sample?;
    let source = crate::fill::source::Source::new(feed, &b.source, Arc::new(Metrics::new()))?;
    let report = crate::shape::check(feed_config, &source, &sample, Utc::now()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", shape_text(&report));
    }
    Ok(match report.outcome {
        ShapeOutcome::Match => ExitCode::SUCCESS,
        ShapeOutcome::Mismatch => ExitCode::from(SHAPE_MISMATCH),
        ShapeOutcome::Unavailable => ExitCode::from(SHAPE_UNAVAILABLE),
    })
}

/// What `gapwatch check-shape` prints: the outcome, then per differing
/// record where it differs and both values.
pub(crate) fn shape_text(r: &crate::shape::ShapeReport) -> String {
    use crate::metrics::ShapeOutcome;
    use crate::shape::Part;
    let mut out = match r.outcome {
        ShapeOutcome::Match => format!(
            "feed {}: match: {} sampled record(s) rendered as their live messages ({} not found at the source, {} request(s))\n",
            r.feed, r.compared, r.not_found, r.requests
        ),
        ShapeOutcome::Mismatch => format!(
            "feed {}: MISMATCH: {} of {} sampled record(s) compared differ ({} request(s)); recovered messages would not look live\n",
            r.feed,
            r.compared - r.matched,
            r.compared,
            r.requests
        ),
        ShapeOutcome::Unavailable => format!(
            "feed {}: unavailable: {}\n",
            r.feed,
            r.reason.as_deref().unwrap_or("nothing could be compared")
        ),
    };
    if r.outcome != ShapeOutcome::Unavailable {
        if let Some(reason) = &r.reason {
            out.push_str(&format!("  (cut short: {reason})\n"));
        }
    }
    let side = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
    for m in &r.mismatches {
        out.push_str(&format!("  record {}\n", m.record_id));
        for f in &m.findings {
            let place = match (f.part, f.path.as_str()) {
                (Part::Body, "") => "body (the whole body)".to_string(),
                (Part::Body | Part::Attribute, p) => format!("{} {p}", f.part.as_str()),
                (Part::Filter, _) => "backfill.filter".to_string(),
                (Part::Render, _) => "backfill.render / attributes".to_string(),
            };
            out.push_str(&format!(
                "    {place}\n      live:      {}\n      recovered: {}\n",
                side(&f.live),
                side(&f.recovered)
            ));
        }
    }
    out
}

/// `gapwatch audit`: the ledger holds every id that reached the destination,
/// so a fill of the interval delivers exactly the missing records; a dry run
/// only lists and compares (every partition of a partitioned feed, or the
/// one named).
async fn audit(
    config: Config,
    interval: &Interval,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (feed, from, to) = (interval.feed.as_str(), interval.from, interval.to);
    let feed_config = config
        .feed(feed)
        .with_context(|| format!("unknown feed {feed:?}"))?
        .clone();
    if feed_config.audit.is_none() {
        anyhow::bail!(
            "feed {feed:?} has no [feeds.audit] section: without it the ledger does not hold every relayed or reported id"
        );
    }
    if !dry_run {
        return backfill(config, interval, false, json).await;
    }
    let b = feed_config
        .backfill
        .as_ref()
        .with_context(|| format!("feed {feed:?} has no [feeds.backfill] section"))?;
    if from >= to {
        anyhow::bail!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        );
    }
    let watched = watched_partitions(&config, &feed_config).await?;
    crate::fill::manual_partitions(&feed_config, &watched, interval.partition.as_deref())?;
    let partitions = match &interval.partition {
        Some(p) => vec![p.clone()],
        None => watched,
    };
    let metrics = Arc::new(Metrics::new());
    let store = Store::connect(&config.state.url).await?;
    let source = crate::fill::source::Source::new(feed, &b.source, metrics)?;
    let report =
        crate::audit::list_missing(&feed_config, &source, &store, &partitions, from, to).await?;
    store.close().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "feed {feed}: [{}, {}): {} record(s) listed, {} missing from the ledger ({} request(s))",
            report.from.to_rfc3339(),
            report.to.to_rfc3339(),
            report.listed,
            report.missing,
            report.requests
        );
        for id in &report.sample {
            println!("  missing {id}");
        }
        if report.missing > report.sample.len() as u64 {
            println!(
                "  … and {} more",
                report.missing - report.sample.len() as u64
            );
        }
        println!("(dry run: nothing was sent)");
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// The table `gapwatch gaps` prints.
pub(crate) fn gaps_table(gaps: &[Gap]) -> String {
    let mut out = format!(
        "{:<6} {:<16} {:<12} {:<8} {:<6} {:<20} {:<20} {:<8} {:>11} {:>9} {:>9} {:>8}  {}\n",
        "ID",
        "FEED",
        "PARTITION",
        "KIND",
        "STATE",
        "FROM",
        "TO",
        "FILL",
        "CHUNKS",
        "DELIVERED",
        "DUPLICATE",
        "REJECTED",
        "ERROR"
    );
    for g in gaps {
        // "-": the whole feed (unpartitioned, or a fill of every partition).
        let partition = if g.partition.is_empty() {
            "-"
        } else {
            g.partition.as_str()
        };
        out.push_str(&format!(
            "{:<6} {:<16} {:<12} {:<8} {:<6} {:<20} {:<20} {:<8} {:>11} {:>9} {:>9} {:>8}  {}\n",
            g.id,
            g.feed,
            partition,
            g.kind.as_str(),
            g.state.as_str(),
            fmt_time(Some(g.start)),
            fmt_time(g.end),
            g.fill.as_str(),
            format!("{}/{}", g.progress.chunks_done, g.progress.chunks_total),
            g.progress.records_delivered,
            g.progress.records_duplicate,
            g.progress.records_rejected,
            g.last_error.as_deref().unwrap_or("")
        ));
    }
    if gaps.is_empty() {
        out.push_str("(no gaps)\n");
    }
    out
}

async fn backfill(
    config: Config,
    interval: &Interval,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (feed, from, to) = (interval.feed.as_str(), interval.from, interval.to);
    let partition = interval.partition.as_deref();
    let feed_config = Arc::new(
        config
            .feed(feed)
            .with_context(|| format!("unknown feed {feed:?}"))?
            .clone(),
    );
    let watched = watched_partitions(&config, &feed_config).await?;
    let partitions = crate::fill::manual_partitions(&feed_config, &watched, partition)?;
    if dry_run {
        let mut plan = crate::fill::dry_run_plan(&feed_config, from, to, Utc::now(), partitions)?;
        plan.partition = partition.unwrap_or("").to_string();
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            let scope = match (partition, plan.partitions) {
                (Some(p), _) => format!(" partition {p}"),
                (None, n) if feed_config.is_partitioned() => format!(" ({n} partitions)"),
                _ => String::new(),
            };
            println!(
                "feed {feed}{scope}: [{}, {}) in {} chunk(s); at least {} request(s), at least {:.1}s at {}/s",
                from.to_rfc3339(),
                to.to_rfc3339(),
                plan.chunks,
                plan.estimated_requests,
                plan.estimated_min_duration_seconds,
                plan.rate_limit_per_second
            );
            for w in &plan.windows {
                println!("  chunk {} .. {}", w.from.to_rfc3339(), w.to.to_rfc3339());
            }
            println!("(dry run: nothing was sent)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let metrics = Arc::new(Metrics::new());
    let store = Store::connect(&config.state.url).await?;
    let sqs = if crate::daemon::needs_aws(&config) {
        Some(crate::aws::sqs_client(
            &crate::aws::sdk_config(&config.aws).await,
        ))
    } else {
        None
    };
    let filler = crate::fill::build_filler(feed_config.clone(), &store, metrics, sqs, "cli")
        .await?
        .with_partition_list(watched.clone());
    let control = FillControl::new(
        store.clone(),
        [(
            feed_config.clone(),
            Arc::new(tokio::sync::Notify::new()),
            tokio::sync::watch::channel(Arc::new(watched)).1,
        )],
        "cli",
    );
    let created = control.manual(feed, partition, from, to, false).await?;
    let gap_id = created.gap_id.context("no gap id")?;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
        });
    }
    let outcome = loop {
        let gap = store.gap(gap_id).await?.context("the gap vanished")?;
        let outcome = filler.fill_gap(&gap, &cancel).await?;
        if outcome != GapOutcome::InProgress || cancel.is_cancelled() {
            break outcome;
        }
        // Chunks waiting for a retry: come back when the first is due.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let gap = store.gap(gap_id).await?.context("the gap vanished")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&gap)?);
    } else {
        print!("{}", gaps_table(std::slice::from_ref(&gap)));
    }
    store.close().await;
    Ok(match outcome {
        GapOutcome::Done => ExitCode::SUCCESS,
        _ if gap.fill == FillState::Done => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
