//! `gapwatch run`: wires the feeds' monitors, relays, queue watchers and fillers
//! to the store and the HTTP server, and shuts them down in order on SIGTERM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, Health};
use crate::config::{Config, SinkConfig, WatchMode};
use crate::feed::FeedMonitor;
use crate::fill::sink::Sink;
use crate::fill::source::Source;
use crate::fill::{FillControl, Filler};
use crate::lease::LeaseKeeper;
use crate::metrics::Metrics;
use crate::observe::Extractor;
use crate::store::Store;
use crate::watch::{Relay, SqsQueues};

/// Whether any part of the config talks to AWS.
pub fn needs_aws(config: &Config) -> bool {
    config.feeds.iter().any(|f| {
        f.watch.mode != WatchMode::Report
            || f.queue_url.is_some()
            || matches!(
                f.backfill.as_ref().map(|b| &b.sink),
                Some(SinkConfig::Sqs { .. })
            )
    })
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let replica = crate::lease::replica_name();
    let store = Store::connect(&config.state.url)
        .await
        .with_context(|| format!("opening the state store {}", config.state.url.redacted()))?
        .for_replica(&replica);
    // Leases first: with one replica (SQLite) they are held from the start, so
    // a gap that lasted through our own downtime is seen at once.
    let mut keeper = LeaseKeeper::new(store.clone(), &replica, metrics.clone());
    let leases: HashMap<String, _> = config
        .feeds
        .iter()
        .map(|f| (f.name.clone(), keeper.watch(&f.name)))
        .collect();
    keeper.round().await;
    tracing::info!(replica = %replica, shared = store.is_shared(), "state store open");
    let sdk = if needs_aws(&config) {
        Some(crate::aws::sdk_config(&config.aws).await)
    } else {
        None
    };
    let sqs = sdk.as_ref().map(crate::aws::sqs_client);
    let health = Arc::new(Health::default());

    // Producers (relays, watchers, fillers) stop first; then the monitors take
    // what is still queued and save; then the HTTP server goes.
    let cancel = CancellationToken::new();
    let monitors_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let producers = TaskTracker::new();
    let monitors = TaskTracker::new();

    let mut handles = HashMap::new();
    let mut fill_feeds = Vec::new();
    for feed in &config.feeds {
        let feed = Arc::new(feed.clone());
        let (monitor, handle) = FeedMonitor::start(
            feed.clone(),
            store.clone(),
            metrics.clone(),
            config.state.edge_ids.get(),
            crate::watch::inflow::clock_lag(&config.monitor, feed.watch.mode),
        )
        .await
        .with_context(|| format!("restoring feed {}", feed.name))?;
        let lease = leases[&feed.name].clone();
        monitors.spawn(monitor.with_lease(lease.clone()).run(monitors_stop.clone()));

        if feed.watch.mode == WatchMode::Relay {
            if let (Some(sqs), Some(src), Some(dst)) =
                (&sqs, &feed.queue_url, &feed.watch.forward_to)
            {
                let queues = SqsQueues::new(sqs.clone(), src.clone(), dst.clone(), metrics.clone());
                let relay = Relay::new(
                    feed.name.clone(),
                    queues,
                    Extractor::new(&feed.watch),
                    handle.observations.clone(),
                    metrics.clone(),
                );
                producers.spawn(relay.run(cancel.clone()));
            }
        }

        if let Some(b) = &feed.backfill {
            metrics.init_backfill(&feed.name);
            let source = Source::new(&feed.name, &b.source, metrics.clone())
                .with_context(|| format!("feeds {}: backfill source", feed.name))?;
            let sink = Sink::new(&b.sink, &feed.name, sqs.clone(), metrics.clone(), &store)
                .await
                .map_err(|e| anyhow::anyhow!("feed {}: backfill sink: {e}", feed.name))?;
            let filler = Filler::new(
                feed.clone(),
                store.clone(),
                metrics.clone(),
                source,
                Arc::new(sink),
                "daemon",
            )
            .with_lease(lease.clone());
            producers.spawn(filler.run(handle.fill_wakeup.clone(), cancel.clone()));
        }
        fill_feeds.push((feed.clone(), handle.fill_wakeup.clone()));
        handles.insert(feed.name.clone(), handle);
    }

    if let Some(sdk) = &sdk {
        let watcher = crate::watch::queues::QueueWatcher::new(
            &config,
            crate::aws::sqs_client(sdk),
            crate::aws::cloudwatch_client(sdk),
            metrics.clone(),
            health.clone(),
            &handles,
        );
        producers.spawn(watcher.run(cancel.clone()));
    }
    // Renewed until the monitors stopped: their last saves need the lease.
    let keeper_stop = CancellationToken::new();
    let keeper_task = tokio::spawn(keeper.run(keeper_stop.clone()));
    producers.close();
    monitors.close();

    let state = AppState {
        feeds: Arc::new(handles),
        store: store.clone(),
        metrics: metrics.clone(),
        admin_token: config.server.admin_token.clone(),
        health: health.clone(),
        fills: FillControl::new(store.clone(), fill_feeds, "daemon"),
    };
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    metrics.up.set(1);
    tracing::info!(listen = %addr, feeds = config.feeds.len(), version = env!("CARGO_PKG_VERSION"), "gapwatch started");
    let server = {
        let stop = server_stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };

    shutdown_signal().await;
    let grace = config.server.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: readiness off, draining"
    );
    health.shutting_down();
    metrics.up.set(0);
    cancel.cancel();
    let drained = tokio::time::timeout(grace, producers.wait()).await.is_ok();
    if !drained {
        tracing::warn!("producers did not stop within the grace period");
    }
    monitors_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), monitors.wait()).await;
    keeper_stop.cancel();
    let _ = keeper_task.await;
    store.close().await;
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!(drained, "gapwatch stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
