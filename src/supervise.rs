//! Long-running tasks under a supervisor. A relay, feed monitor, queue watcher,
//! filler, auditor or the server that panics or returns while it should still
//! run is logged, counted in `gapwatch_task_restarts_total{task}` and started
//! again after a backoff. A task that keeps dying (more than
//! [`RESTART_BUDGET`] restarts within [`BUDGET_WINDOW`]) marks the process as
//! not alive in [`Health`], so `/healthz` fails and Kubernetes restarts the
//! container; the supervisor keeps trying meanwhile, at the capped backoff.
//!
//! Each task is built anew from a factory for every start, over state that
//! survives the failed run (the store, channels, shared handles).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::health::Health;
use crate::internal_events::TaskRestarted;
use crate::metrics::{Metrics, TaskKind};

/// Restarts allowed within [`BUDGET_WINDOW`] before liveness fails.
pub(crate) const RESTART_BUDGET: usize = 5;
pub(crate) const BUDGET_WINDOW: Duration = Duration::from_secs(600);
/// Backoff before the n-th restart in a row: 200 ms, 400 ms, … up to 30 s.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The environment variable of the fault-injection hook, for tests only:
/// `TASK[:N]` makes the first N starts (every start, without `:N`) of every
/// task of that kind (`relay`, `feed_monitor`, `queue_watcher`, `filler`,
/// `server`, …) panic at once, so the supervision path can be exercised
/// against the real binary. Unset in production; a warning is logged when set.
pub(crate) const FAULT_ENV: &str = "GAPWATCH_FAULT_INJECT_PANIC";

/// Starts supervised tasks.
#[derive(Clone)]
pub(crate) struct Supervisor {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fault {
    kind: TaskKind,
    /// None: every start.
    starts: Option<u32>,
}

impl Fault {
    fn parse(spec: &str) -> Option<Fault> {
        let (kind, starts) = match spec.split_once(':') {
            Some((k, n)) => (k, Some(n.trim().parse().ok()?)),
            None => (spec, None),
        };
        let kind = TaskKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == kind.trim())?;
        Some(Fault { kind, starts })
    }

    fn fires(&self, kind: TaskKind, start: u32) -> bool {
        self.kind == kind && self.starts.is_none_or(|n| start < n)
    }
}

impl Supervisor {
    /// `fault`: the value of [`FAULT_ENV`], if set.
    pub(crate) fn new(metrics: Arc<Metrics>, health: Arc<Health>, fault: Option<&str>) -> Self {
        let fault = fault.and_then(|spec| {
            let parsed = Fault::parse(spec);
            match parsed {
                Some(_) => tracing::warn!(
                    spec,
                    "{FAULT_ENV} is set: tasks will panic on purpose (a test hook)"
                ),
                None => tracing::warn!(spec, "{FAULT_ENV} is not TASK[:N]; ignored"),
            }
            parsed
        });
        Self {
            metrics,
            health,
            fault,
        }
    }

    /// Runs `make()` on `tracker` until `stop` is cancelled and the task has
    /// returned; restarts it whenever it panics or returns before that.
    /// `name` tells instances apart in logs and health: the feed the task
    /// works for, or "" for a task of the whole process. Every run is in the
    /// task's span ([`task_span`]), and so is every line logged about it.
    pub(crate) fn spawn<F, Fut>(
        &self,
        tracker: &TaskTracker,
        kind: TaskKind,
        name: &str,
        stop: CancellationToken,
        mut make: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.metrics.init_task(kind);
        let this = self.clone();
        let inner = tracker.clone();
        let span = task_span(kind, name);
        let name = format!("{kind} {name}").trim().to_string();
        let supervised = async move {
            let mut restarts: VecDeque<Instant> = VecDeque::new();
            let mut in_a_row: u32 = 0;
            let mut start: u32 = 0;
            loop {
                let inject = this.fault.is_some_and(|f| f.fires(kind, start));
                start = start.saturating_add(1);
                let task = make();
                let began = Instant::now();
                let run = async move {
                    if inject {
                        panic!("injected panic ({FAULT_ENV})");
                    }
                    task.await
                };
                let result = inner.spawn(run.in_current_span()).await;
                let reason = match result {
                    Ok(()) if stop.is_cancelled() => return,
                    Ok(()) => "returned while it should still run".to_string(),
                    Err(e) if e.is_panic() => {
                        format!("panicked: {}", panic_message(e.into_panic()))
                    }
                    Err(e) => format!("stopped: {e}"),
                };
                if stop.is_cancelled() {
                    tracing::warn!(task = %name, %reason, "task ended during shutdown");
                    return;
                }
                if began.elapsed() >= HEALTHY_RUN {
                    in_a_row = 0;
                }
                in_a_row = in_a_row.saturating_add(1);
                let now = Instant::now();
                restarts.push_back(now);
                while restarts.front().is_some_and(|t| now - *t > BUDGET_WINDOW) {
                    restarts.pop_front();
                }
                let backoff = BACKOFF_BASE
                    .saturating_mul(1 << in_a_row.saturating_sub(1).min(16))
                    .min(BACKOFF_CAP);
                let budget_exhausted = restarts.len() > RESTART_BUDGET;
                if budget_exhausted {
                    this.health.task_failed(&name, &reason);
                }
                this.metrics.emit(TaskRestarted {
                    kind,
                    task: &name,
                    reason: &reason,
                    restarts: restarts.len(),
                    window: BUDGET_WINDOW,
                    budget_exhausted,
                    backoff,
                });
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        };
        tracker.spawn(supervised.instrument(span));
    }
}

/// A task's span: `feed` for a feed's task (its log lines then carry the
/// feed without repeating it), else `task` with its kind.
fn task_span(kind: TaskKind, feed: &str) -> tracing::Span {
    if feed.is_empty() {
        tracing::info_span!("task", task = %kind)
    } else {
        tracing::info_span!("feed", feed = %feed)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn fault_specs() {
        assert_eq!(
            Fault::parse("feed_monitor:2"),
            Some(Fault {
                kind: TaskKind::FeedMonitor,
                starts: Some(2)
            })
        );
        assert_eq!(
            Fault::parse("relay"),
            Some(Fault {
                kind: TaskKind::Relay,
                starts: None
            })
        );
        assert_eq!(Fault::parse("nope"), None);
        assert_eq!(Fault::parse("relay:x"), None);
        let f = Fault::parse("filler:1").unwrap();
        assert!(f.fires(TaskKind::Filler, 0));
        assert!(!f.fires(TaskKind::Filler, 1));
        assert!(!f.fires(TaskKind::Relay, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let sup = Supervisor::new(metrics.clone(), health.clone(), None);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let s = stop.clone();
        sup.spawn(
            &tracker,
            TaskKind::Filler,
            "orders",
            stop.clone(),
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                async move {
                    if n < 2 {
                        panic!("boom {n}");
                    }
                    s.cancelled().await;
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            metrics.value("gapwatch_task_restarts_total{task=\"filler\"}"),
            Some(2.0)
        );
        assert!(health.failed_tasks().is_empty());
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_keeps_dying_fails_liveness() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let sup = Supervisor::new(metrics.clone(), health.clone(), Some("relay"));
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let s = stop.clone();
        sup.spawn(
            &tracker,
            TaskKind::Relay,
            "orders",
            stop.clone(),
            move || {
                let s = s.clone();
                async move { s.cancelled().await }
            },
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        let failed = health.failed_tasks();
        assert!(
            failed
                .get("relay orders")
                .is_some_and(|r| r.contains("injected panic")),
            "{failed:?}"
        );
        assert!(metrics
            .value("gapwatch_task_restarts_total{task=\"relay\"}")
            .is_some_and(|n| n > RESTART_BUDGET as f64));
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_task_and_its_restarts_log_in_the_feed_span() {
        let capture = crate::logging::Capture::start();
        let metrics = Arc::new(Metrics::new());
        let sup = Supervisor::new(metrics, Arc::new(Health::default()), None);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, s) = (runs.clone(), stop.clone());
        sup.spawn(
            &tracker,
            TaskKind::Relay,
            "orders",
            stop.clone(),
            move || {
                let first = r.fetch_add(1, Ordering::SeqCst) == 0;
                let s = s.clone();
                async move {
                    tracing::info!("relay started");
                    if !first {
                        s.cancelled().await;
                    }
                }
            },
        );
        sup.spawn(
            &tracker,
            TaskKind::QueueWatcher,
            "",
            stop.clone(),
            || async {
                tracing::info!("queue watcher started");
            },
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        let lines = capture.lines();
        let feeds = |message: &str, task: &str| -> Vec<serde_json::Value> {
            lines
                .iter()
                .filter(|l| l["message"] == message)
                .filter(|l| l.get("task").is_none_or(|t| t == task))
                .map(|l| l.get("feed").cloned().unwrap_or_default())
                .collect()
        };
        assert_eq!(feeds("relay started", ""), ["orders", "orders"]);
        assert_eq!(feeds("task failed; restarting", "relay orders"), ["orders"]);
        let watcher = lines
            .iter()
            .find(|l| l["message"] == "queue watcher started")
            .unwrap();
        assert_eq!(watcher["task"], "queue_watcher");
        assert!(watcher.get("feed").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_early_is_restarted() {
        let metrics = Arc::new(Metrics::new());
        let sup = Supervisor::new(metrics.clone(), Arc::new(Health::default()), None);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let s = stop.clone();
        sup.spawn(&tracker, TaskKind::Server, "", stop.clone(), move || {
            let first = r.fetch_add(1, Ordering::SeqCst) == 0;
            let s = s.clone();
            async move {
                if !first {
                    s.cancelled().await;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(
            metrics.value("gapwatch_task_restarts_total{task=\"server\"}"),
            Some(1.0)
        );
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
