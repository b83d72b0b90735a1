//! `gapwatch run`: wires the feeds' monitors, relays, queue watchers and fillers
//! to the store and the HTTP server, and shuts them down in order on SIGTERM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::{self, AppState};
use crate::audit::Auditor;
use crate::config::{Config, SinkConfig, WatchMode};
use crate::feed::FeedMonitor;
use crate::fill::FillControl;
use crate::health::Health;
use crate::internal_events::{DaemonStarted, ShutdownStarted};
use crate::lease::LeaseKeeper;
use crate::metrics::{Metrics, TaskKind};
use crate::observe::Extractor;
use crate::shape::ShapeChecker;
use crate::store::Store;
use crate::supervise::Supervisor;
use crate::watch::{Relay, SqsQueues};

/// Whether any part of the config talks to AWS.
pub(crate) fn needs_aws(config: &Config) -> bool {
    config.feeds.iter().any(|f| {
        f.watch.mode != WatchMode::Report
            || f.queue_url.is_some()
            || matches!(
                f.backfill.as_ref().map(|b| &b.sink),
                Some(SinkConfig::Sqs { .. })
            )
    })
}

pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let replica = crate::lease::replica_name();
    let store = Store::connect(&config.state.url)
        .await
        .with_context(|| format!("opening the state store {}", config.state.url.redacted()))?
        .for_replica(&replica)
        .count_write_failures(metrics.clone());
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
    let supervisor = Supervisor::new(
        metrics.clone(),
        health.clone(),
        std::env::var(crate::supervise::FAULT_ENV).ok().as_deref(),
    );

    // Producers (relays, watchers, fillers) stop first; then the monitors take
    // what is still queued and save; then the HTTP server goes.
    let cancel = CancellationToken::new();
    let monitors_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let producers = TaskTracker::new();
    let monitors = TaskTracker::new();
    let servers = TaskTracker::new();

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
        // The span its tasks run in (see `crate::supervise`).
        .instrument(tracing::info_span!("feed", feed = %feed.name))
        .await
        .with_context(|| format!("restoring feed {}", feed.name))?;
        let lease = leases[&feed.name].clone();
        let monitor = monitor.with_lease(lease.clone());
        // Behind a lock so that a restarted run takes over the same channel
        // and state; a panicking run drops its guard as it unwinds.
        let monitor = Arc::new(tokio::sync::Mutex::new(monitor));
        let stop = monitors_stop.clone();
        supervisor.spawn(
            &monitors,
            TaskKind::FeedMonitor,
            &feed.name,
            monitors_stop.clone(),
            move || {
                let (monitor, stop) = (monitor.clone(), stop.clone());
                async move { monitor.lock().await.run(stop).await }
            },
        );

        if feed.watch.mode == WatchMode::Relay {
            if let (Some(sqs), Some(src), Some(dst)) =
                (&sqs, &feed.queue_url, &feed.watch.forward_to)
            {
                let queues = SqsQueues::new(sqs.clone(), src.clone(), dst.clone(), metrics.clone());
                let relay = Relay::new(
                    feed.name.clone(),
                    queues,
                    Extractor::new(&feed.watch)
                        .with_partition_key(feed.partitions.as_ref().map(|p| p.key.clone())),
                    handle.observations.clone(),
                    metrics.clone(),
                )
                .with_pollers(feed.watch.pollers.get())
                .with_sampler(handle.shape_sample.clone());
                let relay = Arc::new(relay);
                let stop = cancel.clone();
                supervisor.spawn(
                    &producers,
                    TaskKind::Relay,
                    &feed.name,
                    cancel.clone(),
                    move || {
                        let (relay, stop) = (relay.clone(), stop.clone());
                        async move { relay.run(stop).await }
                    },
                );
            }
        }

        if feed.backfill.is_some() {
            metrics.init_backfill(&feed.name);
            let filler = crate::fill::build_filler(
                feed.clone(),
                &store,
                metrics.clone(),
                sqs.clone(),
                "daemon",
            )
            .await?
            .with_lease(lease.clone())
            .with_unwritten(handle.unwritten.clone())
            .with_partitions(handle.partitions.clone());
            let lister = crate::feed::Lister::new(
                feed.clone(),
                filler.source().clone(),
                metrics.clone(),
                handle.listing.clone(),
            );
            if let Some(lister) = lister {
                // Through the fills' source: one rate limit for both.
                let lister = Arc::new(lister);
                let stop = cancel.clone();
                supervisor.spawn(
                    &producers,
                    TaskKind::PartitionLister,
                    &feed.name,
                    cancel.clone(),
                    move || {
                        let (lister, stop) = (lister.clone(), stop.clone());
                        async move { lister.run(stop).await }
                    },
                );
            }
            if feed.audit.is_some() {
                // Same source (one rate limit) and sink as the fills.
                let auditor = Auditor::new(
                    feed.clone(),
                    store.clone(),
                    metrics.clone(),
                    filler.sibling(crate::audit::OWNER),
                    handle.verified_until.clone(),
                )
                .with_lease(lease.clone());
                // Behind a lock so that a restarted run keeps its state.
                let auditor = Arc::new(tokio::sync::Mutex::new(auditor));
                let stop = cancel.clone();
                supervisor.spawn(
                    &producers,
                    TaskKind::Auditor,
                    &feed.name,
                    cancel.clone(),
                    move || {
                        let (auditor, stop) = (auditor.clone(), stop.clone());
                        async move { auditor.lock().await.run(stop).await }
                    },
                );
            }
            if let Some(sampler) = &handle.shape_sample {
                // The fills' source: one rate limit covers both.
                let checker = ShapeChecker::new(
                    feed.clone(),
                    store.clone(),
                    metrics.clone(),
                    filler.source().clone(),
                    sampler.clone(),
                    handle.shape_status.clone(),
                )
                .with_lease(lease.clone());
                // Behind a lock so that a restarted run keeps its state.
                let checker = Arc::new(tokio::sync::Mutex::new(checker));
                let stop = cancel.clone();
                supervisor.spawn(
                    &producers,
                    TaskKind::ShapeChecker,
                    &feed.name,
                    cancel.clone(),
                    move || {
                        let (checker, stop) = (checker.clone(), stop.clone());
                        async move { checker.lock().await.run(stop).await }
                    },
                );
            }
            let filler = Arc::new(filler);
            let (wakeup, stop) = (handle.fill_wakeup.clone(), cancel.clone());
            supervisor.spawn(
                &producers,
                TaskKind::Filler,
                &feed.name,
                cancel.clone(),
                move || {
                    let (filler, wakeup, stop) = (filler.clone(), wakeup.clone(), stop.clone());
                    async move { filler.run(wakeup, stop).await }
                },
            );
        }
        if feed.audit.is_none() {
            // Without an audit the ledger still holds delivered and edge ids.
            let (store, metrics, feed, lease) =
                (store.clone(), metrics.clone(), feed.clone(), lease.clone());
            let stop = cancel.clone();
            supervisor.spawn(
                &producers,
                TaskKind::Auditor,
                &feed.name.clone(),
                cancel.clone(),
                move || {
                    crate::audit::prune_loop(
                        store.clone(),
                        metrics.clone(),
                        feed.clone(),
                        lease.clone(),
                        stop.clone(),
                    )
                },
            );
        }
        fill_feeds.push((
            feed.clone(),
            handle.fill_wakeup.clone(),
            handle.partitions.clone(),
        ));
        handles.insert(feed.name.clone(), handle);
    }

    if let Some(sdk) = &sdk {
        let watcher = crate::watch::queue_watcher::QueueWatcher::new(
            &config,
            crate::aws::sqs_client(sdk),
            crate::aws::cloudwatch_client(sdk),
            metrics.clone(),
            health.clone(),
            &handles,
        );
        let watcher = Arc::new(tokio::sync::Mutex::new(watcher));
        let stop = cancel.clone();
        supervisor.spawn(
            &producers,
            TaskKind::QueueWatcher,
            "",
            cancel.clone(),
            move || {
                let (watcher, stop) = (watcher.clone(), stop.clone());
                async move { watcher.lock().await.run(stop).await }
            },
        );
    }
    // Renewed until the monitors stopped: their last saves need the lease.
    let keeper_stop = CancellationToken::new();
    let keepers = TaskTracker::new();
    {
        let keeper = Arc::new(keeper);
        let stop = keeper_stop.clone();
        supervisor.spawn(
            &keepers,
            TaskKind::LeaseKeeper,
            "",
            keeper_stop.clone(),
            move || {
                let (keeper, stop) = (keeper.clone(), stop.clone());
                async move { keeper.run(stop).await }
            },
        );
    }
    keepers.close();
    producers.close();
    monitors.close();

    let state = AppState {
        feeds: Arc::new(handles),
        store: store.clone(),
        metrics: metrics.clone(),
        admin_token: config.server.admin_token.clone(),
        report_token: config.server.report_token.clone(),
        health: health.clone(),
        fills: FillControl::new(store.clone(), fill_feeds, "daemon"),
    };
    // Bound once, here, so a bad address fails the start; every (re)start of
    // the server serves a clone of this socket.
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    metrics.emit(DaemonStarted {
        listen: addr,
        feeds: config.feeds.len(),
    });
    {
        let stop = server_stop.clone();
        let router = api::router(state);
        supervisor.spawn(
            &servers,
            TaskKind::Server,
            "",
            server_stop.clone(),
            move || {
                let (stop, router) = (stop.clone(), router.clone());
                let listener = listener
                    .try_clone()
                    .and_then(tokio::net::TcpListener::from_std);
                async move {
                    let listener = match listener {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reuse the server socket");
                            return;
                        }
                    };
                    crate::server::serve(listener, router, stop).await;
                }
            },
        );
    }
    servers.close();

    shutdown_signal().await;
    let grace = config.server.shutdown_grace;
    metrics.emit(ShutdownStarted { grace });
    health.shutting_down();
    cancel.cancel();
    // Everything below fits in the grace: the producers get most of it, the
    // monitors' last saves and the server what is left.
    let deadline = tokio::time::Instant::now() + grace;
    let reserve = (grace / 4).min(Duration::from_secs(5));
    let drained = tokio::time::timeout_at(deadline - reserve, producers.wait())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("producers did not stop within the grace period");
    }
    monitors_stop.cancel();
    let _ = tokio::time::timeout_at(deadline, monitors.wait()).await;
    keeper_stop.cancel();
    let _ = tokio::time::timeout_at(deadline, keepers.wait()).await;
    // Closing waits for connections still lent out (a producer that did not stop).
    let _ = tokio::time::timeout_at(deadline, store.close()).await;
    server_stop.cancel();
    let _ = tokio::time::timeout_at(deadline, servers.wait()).await;
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
