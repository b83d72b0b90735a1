//! Supervised tasks.

use std::time::Duration;

use super::InternalEvent;
use crate::metrics::{Series, TaskKind};

const TARGET: &str = "gapwatch::supervise";

/// A task panicked or returned while it should still run; it starts again
/// after `backoff`.
pub(crate) struct TaskRestarted<'a> {
    pub(crate) kind: TaskKind,
    /// The task's kind and instance (e.g. `relay orders`).
    pub(crate) task: &'a str,
    pub(crate) reason: &'a str,
    /// Restarts within `window`, this one included.
    pub(crate) restarts: usize,
    pub(crate) window: Duration,
    /// More restarts than the budget allows: liveness now fails.
    pub(crate) budget_exhausted: bool,
    pub(crate) backoff: Duration,
}

impl InternalEvent for TaskRestarted<'_> {
    fn emit(self, series: &Series<'_>) {
        series.task_restarts(self.kind).inc();
        let (task, reason) = (self.task, self.reason);
        if self.budget_exhausted {
            tracing::error!(target: TARGET, task = %task, %reason, restarts = self.restarts, window_s = self.window.as_secs(), "task keeps failing: restart budget exhausted, /healthz now fails");
        } else {
            tracing::error!(target: TARGET, task = %task, %reason, restart_in_ms = self.backoff.as_millis() as u64, "task failed; restarting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    #[test]
    fn task_restarted() {
        let restarted = |budget_exhausted| TaskRestarted {
            kind: TaskKind::FeedMonitor,
            task: "feed_monitor orders",
            reason: "panicked: boom",
            restarts: 2,
            window: Duration::from_secs(600),
            budget_exhausted,
            backoff: Duration::from_millis(400),
        };
        let key = "gapwatch_task_restarts_total{task=\"feed_monitor\"}";
        let e = emit(restarted(false));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        let line = e.line();
        assert_eq!(line["message"], "task failed; restarting");
        assert_eq!(line["task"], "feed_monitor orders");
        assert_eq!(line["reason"], "panicked: boom");
        assert_eq!(line["restart_in_ms"], 400);
        let e = emit(restarted(true));
        assert_eq!(e.moved, series(&[(key, 1.0)]));
        assert_eq!(
            e.line()["message"],
            "task keeps failing: restart budget exhausted, /healthz now fails"
        );
        assert_eq!(e.line()["window_s"], 600);
    }
}
