//! Input that was refused or could not be used as it was, where no log line
//! of its own goes with it (the HTTP caller gets the error, or the failure
//! is logged by what it fails: a chunk, a listing).

use super::InternalEvent;
use crate::metrics::{InputSource, Rejection, Series};

/// A piece of input was refused.
pub(crate) struct InputRejected<'a> {
    /// The feed it was for ("" when none is known, e.g. an unknown feed).
    pub(crate) feed: &'a str,
    pub(crate) source: InputSource,
    pub(crate) reason: Rejection,
}

impl InternalEvent for InputRejected<'_> {
    fn emit(self, series: &Series<'_>) {
        series
            .rejected_input(self.feed, self.source, self.reason)
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internal_events::testing::{emit, series};

    #[test]
    fn input_rejected() {
        let e = emit(InputRejected {
            feed: "",
            source: InputSource::Api,
            reason: Rejection::BadRequest,
        });
        assert_eq!(
            e.moved,
            series(&[(
                "gapwatch_rejected_input_total{feed=\"\",reason=\"bad_request\",source=\"api\"}",
                1.0
            )])
        );
        assert!(e.logs.is_empty());
    }
}
