//! Liveness and readiness: written by the tasks (a queue that cannot be read, a
//! task past its restart budget, shutdown under way) and read by the HTTP
//! server's `/healthz` and `/readyz`. Lives apart from the server so the
//! signals layer does not depend on the HTTP layer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Health {
    shutting_down: AtomicBool,
    /// Problems with AWS resources, by resource (queue name, CloudWatch), reported
    /// once per change.
    problems: Mutex<BTreeMap<String, String>>,
    /// Tasks that kept dying past their restart budget, with the last reason:
    /// the process is not alive any more in the sense that matters
    /// (`/healthz` fails, so Kubernetes restarts the container).
    failed_tasks: Mutex<BTreeMap<String, String>>,
}

impl Health {
    pub(crate) fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Sets or clears the problem of a resource; returns whether it changed (so
    /// the caller logs only changes).
    pub(crate) fn set_problem(&self, resource: &str, problem: Option<String>) -> bool {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(msg) => p.insert(resource.to_string(), msg.clone()).as_ref() != Some(&msg),
            None => p.remove(resource).is_some(),
        }
    }

    pub(crate) fn problems(&self) -> BTreeMap<String, String> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A task exhausted its restart budget: liveness fails from now on.
    pub(crate) fn task_failed(&self, task: &str, reason: &str) {
        self.failed_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.to_string(), reason.to_string());
    }

    /// Tasks past their restart budget (empty: alive).
    pub(crate) fn failed_tasks(&self) -> BTreeMap<String, String> {
        self.failed_tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_report_changes_only() {
        let h = Health::default();
        assert!(h.set_problem("q", Some("gone".into())));
        assert!(!h.set_problem("q", Some("gone".into())));
        assert!(h.set_problem("q", None));
        assert!(h.problems().is_empty());
    }

    #[test]
    fn a_failed_task_is_remembered() {
        let h = Health::default();
        assert!(h.failed_tasks().is_empty());
        h.task_failed("feed_monitor orders", "panicked: boom");
        assert_eq!(
            h.failed_tasks()
                .get("feed_monitor orders")
                .map(String::as_str),
            Some("panicked: boom")
        );
    }
}
