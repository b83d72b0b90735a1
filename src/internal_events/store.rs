//! The state store.

use super::InternalEvent;
use crate::metrics::{Series, WriteFailure};

/// A write to the state store failed (what it carried waits in memory).
pub(crate) struct StateWriteFailed {
    pub(crate) reason: WriteFailure,
}

impl InternalEvent for StateWriteFailed {
    fn emit(self, series: &Series<'_>) {
        series.state_write_failures(self.reason).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    #[test]
    fn state_write_failed() {
        let e = emit(StateWriteFailed {
            reason: WriteFailure::DiskFull,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_state_write_failures_total{reason=\"disk_full\"}",
                1.0
            )])
        );
    }
}
