//! The daemon's readiness.

use std::net::SocketAddr;
use std::time::Duration;

use super::InternalEvent;
use crate::metrics::Series;

const TARGET: &str = "gapwatch::daemon";

/// Every task is started and the server listens: the daemon is ready.
pub(crate) struct DaemonStarted {
    pub(crate) listen: SocketAddr,
    pub(crate) feeds: usize,
}

impl InternalEvent for DaemonStarted {
    fn emit(self, series: &Series<'_>) {
        series.ready().set(1);
        tracing::info!(target: TARGET, listen = %self.listen, feeds = self.feeds, version = env!("CARGO_PKG_VERSION"), "gapwatch started");
    }
}

/// SIGTERM: readiness goes off and the tasks drain within `grace`.
pub(crate) struct ShutdownStarted {
    pub(crate) grace: Duration,
}

impl InternalEvent for ShutdownStarted {
    fn emit(self, series: &Series<'_>) {
        tracing::info!(
            target: TARGET,
            grace_s = self.grace.as_secs(),
            "shutting down: readiness off, draining"
        );
        series.ready().set(0);
    }
}

/// `/readyz` answered (its body says why when not ready).
pub(crate) struct ReadinessChecked {
    pub(crate) ready: bool,
}

impl InternalEvent for ReadinessChecked {
    fn emit(self, series: &Series<'_>) {
        series.ready().set(i64::from(self.ready));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, emit_on, series};
    use crate::metrics::Metrics;

    #[test]
    fn readiness_follows_start_checks_and_shutdown() {
        let m = Metrics::new();
        let e = emit_on(
            &m,
            DaemonStarted {
                listen: "127.0.0.1:9464".parse().unwrap(),
                feeds: 2,
            },
        );
        assert_eq!(e.moved, series(&[("gapwatch_ready{}", 1.0)]));
        let line = e.line();
        assert_eq!(line["message"], "gapwatch started");
        assert_eq!(line["listen"], "127.0.0.1:9464");
        assert_eq!(line["feeds"], 2);
        let e = emit_on(&m, ReadinessChecked { ready: false });
        assert_eq!(e.moved, series(&[("gapwatch_ready{}", 0.0)]));
        assert!(e.logs.is_empty());
        emit_on(&m, ReadinessChecked { ready: true });
        let e = emit_on(
            &m,
            ShutdownStarted {
                grace: Duration::from_secs(30),
            },
        );
        assert_eq!(e.moved, series(&[("gapwatch_ready{}", 0.0)]));
        assert_eq!(
            e.line()["message"],
            "shutting down: readiness off, draining"
        );
        assert_eq!(e.line()["grace_s"], 30);
        // A fresh process is not ready before it started.
        assert!(emit(ReadinessChecked { ready: false }).moved.is_empty());
    }
}
