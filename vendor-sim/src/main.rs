//! vendor-sim: plays the third-party vendor for gapwatch's tests, demo and benchmarks.
//!
//! Generates records, publishes the live ones to SQS (except while silenced),
//! keeps the whole history and serves it through a paginated REST API.

mod api;
mod control;
mod history;
mod oauth;
mod publisher;
mod quota;
mod search;
mod sim;
mod timefmt;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use tokio::sync::watch;

use crate::history::History;
use crate::sim::{now_ms, Controls, Faults, Pagination, Settings, Silence, Sim};
use crate::timefmt::{parse_duration, TimeFormat};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address of the REST and control API; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Ids are `<prefix>-<seq>` (seq zero-padded to 12 digits).
    #[arg(long, default_value = "evt")]
    prefix: String,
    /// Live records per second (fractions allowed; 0 = none).
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Pre-seed this many records, spread evenly over the past `--history-span`.
    #[arg(long, default_value_t = 0)]
    history: usize,
    /// How far back the pre-seeded history reaches (`90s`, `15m`, `24h`, `7d`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    history_span: Duration,
    /// SQS queue that receives live records; without it records are only kept.
    #[arg(long)]
    queue_url: Option<String>,
    /// SQS endpoint, e.g. moto at http://127.0.0.1:5055.
    #[arg(long)]
    endpoint_url: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Default pagination style of /v1/events (a request can pick another with `style=`).
    #[arg(long, value_enum, default_value_t = Pagination::Cursor)]
    pagination: Pagination,
    /// How `since` / `until` are read.
    #[arg(long, value_enum, default_value_t = TimeFormat::Auto)]
    time_format: TimeFormat,
    /// Require `Authorization: Bearer <token>` on /v1/events.
    #[arg(long, env = "VENDOR_SIM_TOKEN")]
    token: Option<String>,
    /// Serve `POST /oauth/token` (client credentials) with tokens that expire
    /// after this many seconds; /v1/events then needs a live one.
    #[arg(long, requires_all = ["oauth_client_id", "oauth_client_secret"])]
    oauth_token_ttl: Option<f64>,
    #[arg(long)]
    oauth_client_id: Option<String>,
    #[arg(long)]
    oauth_client_secret: Option<String>,
    /// Probability of answering /v1/events with an error status.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Statuses injected errors pick from.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    error_statuses: Vec<u16>,
    /// `Retry-After` sent with injected 429 / 503.
    #[arg(long)]
    retry_after: Option<String>,
    /// Delay added to every /v1/events answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Every Nth page of /v1/events is not JSON (0 = never).
    #[arg(long, default_value_t = 0)]
    malformed_every: u64,
    /// Cursor styles return the same cursor forever.
    #[arg(long)]
    cursor_loop: bool,
    /// Probability that a live record is lost on its way to SQS while the API
    /// still serves it (a vendor that drops records without going silent).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// How live records are wrapped on their way to SQS (the REST API always
    /// lists bare records): as EventBridge or SNS (without raw delivery) would
    /// deliver them, or in the vendor's own envelope `{"event","data"}` with a
    /// String attribute `event-type`.
    #[arg(long, value_enum, default_value_t = publisher::LiveEnvelope::None)]
    live_envelope: publisher::LiveEnvelope,
    /// Only records with an odd `seq` are published live; the API lists all
    /// (a feed whose queue carries one kind of the records the API lists).
    #[arg(long)]
    live_odd_only: bool,
    /// Records belong to stores `s1`…`sN` in turn (a `store_id` field),
    /// listed at `GET /v1/stores`, each served at `GET
    /// /v1/stores/{store}/events` (or `/v1/events?store_id=`) and silenced on
    /// its own (`POST /control/silence {"store": "s7", …}`); 0: no stores.
    #[arg(long, default_value_t = 0)]
    stores: usize,
    /// Start a silence this many seconds after start.
    #[arg(long)]
    silence_after: Option<f64>,
    /// Length of that silence in seconds (absent: until POST /control/resume).
    #[arg(long, requires = "silence_after")]
    silence_for: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    validate(&cli)?;

    let start_ms = now_ms();
    let mut history = History::new(cli.prefix.clone()).with_stores(cli.stores);
    if cli.history > 0 {
        let span =
            i64::try_from(cli.history_span.as_millis()).context("--history-span too long")?;
        history.seed(cli.history, start_ms - span, start_ms);
    }
    let seeded = history.len();
    let silences = cli
        .silence_after
        .map(|after| {
            let from = start_ms + (after * 1000.0).round() as i64;
            Silence {
                from,
                to: cli.silence_for.map(|f| from + (f * 1000.0).round() as i64),
                store: None,
            }
        })
        .into_iter()
        .collect();
    let sim = Arc::new(Sim::new(
        Settings {
            pagination: cli.pagination,
            time_format: cli.time_format,
            token: cli.token.clone(),
            queue_url: cli.queue_url.clone(),
            oauth: cli.oauth_token_ttl.map(|ttl| oauth::OAuth {
                client_id: cli.oauth_client_id.clone().unwrap_or_default(),
                client_secret: cli.oauth_client_secret.clone().unwrap_or_default(),
                ttl_ms: (ttl * 1000.0).round() as i64,
            }),
        },
        history,
        Controls {
            rate: cli.rate,
            drop_rate: cli.drop_rate,
            silences,
            faults: Faults {
                error_rate: cli.error_rate,
                statuses: cli.error_statuses.clone(),
                latency_ms: cli.latency_ms,
                retry_after: cli.retry_after.clone(),
                malformed_every: cli.malformed_every,
                cursor_loop: cli.cursor_loop,
                page_size_cap: 0,
                bad_link: false,
                endless_page: false,
                error_bodies: 0,
            },
        },
    ));

    let app = Router::new()
        .route("/v1/events", get(api::events))
        .route("/v1/stores", get(api::stores))
        .route("/v1/stores/{store}/events", get(api::store_events))
        .route("/v1/search", post(search::search))
        .route("/v1/days/{date}/events", get(search::day))
        .route("/control/quota", post(control::set_quota))
        .route("/healthz", get(|| async { "ok" }))
        .route("/control/silence", post(control::silence))
        .route("/control/resume", post(control::resume))
        .route(
            "/control/faults",
            post(control::set_faults).get(control::get_faults),
        )
        .route("/control/rate", post(control::set_rate))
        .route("/control/stats", get(control::stats))
        .route("/oauth/token", post(oauth::token))
        .route("/control/revoke_tokens", post(oauth::revoke))
        .route("/control/records", get(control::records))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(queue_url) = cli.queue_url.clone() {
        let publisher = publisher::Publisher {
            client: sqs_client(&cli).await,
            queue_url,
            next: seeded,
            envelope: cli.live_envelope,
            odd_only: cli.live_odd_only,
        };
        tasks.spawn(publisher.run(sim.clone(), stop_rx.clone()));
    }
    {
        let (sim, stop) = (sim.clone(), stop_rx.clone());
        tasks.spawn(async move { sim::generate(&sim, stop).await });
    }

    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "listening": addr.to_string() })
        )?;
        out.flush()?;
    }
    tracing::info!(%addr, seeded, rate = cli.rate, queue = ?cli.queue_url, pagination = ?cli.pagination, "vendor-sim ready");

    let mut server_stop = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = server_stop.changed().await;
    });
    let server = tokio::spawn(async move { server.await });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // In-flight requests may be long (latency injection, huge pages): don't wait forever.
    let drain = async {
        while tasks.join_next().await.is_some() {}
        let _ = server.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period elapsed");
    }
    tracing::info!("stopped");
    Ok(())
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if cli.prefix.is_empty()
        || !cli
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        bail!("--prefix: use letters, digits, '_', '.', '-'");
    }
    if !cli.rate.is_finite() || cli.rate < 0.0 {
        bail!("--rate: must be a number >= 0");
    }
    if !(0.0..=1.0).contains(&cli.drop_rate) {
        bail!("--drop-rate: must be within 0..=1");
    }
    if !(0.0..=1.0).contains(&cli.error_rate) {
        bail!("--error-rate: must be within 0..=1");
    }
    for (name, v) in [
        ("--silence-after", cli.silence_after),
        ("--silence-for", cli.silence_for),
    ] {
        if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
            bail!("{name}: must be a number of seconds >= 0");
        }
    }
    Ok(())
}

async fn sqs_client(cli: &Cli) -> aws_sdk_sqs::Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(cli.region.clone()));
    if let Some(endpoint) = &cli.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "vendor-sim-default",
        ));
    }
    aws_sdk_sqs::Client::new(&loader.load().await)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
