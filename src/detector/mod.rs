//! Freshness detection: when is data expected ([`ActiveWindow`]) and has the
//! feed gone silent ([`Detector`]).
//!
//! Pure core: no I/O, no async, no clock of its own. The shell calls
//! [`Detector::observe`] for every record it sees, [`Detector::tick`] at
//! [`Detector::next_deadline`] (and once right after rebuilding from [`DetectorState`] at
//! startup, before the first `observe`), persists [`Detector::state`] after
//! each [`GapEvent`], and acts on the events. A partitioned feed has one
//! detector per partition in [`Lanes`], ticked only when one is due.

mod lanes;
mod machine;
mod window;

pub(crate) use lanes::{Lanes, Summary};
pub(crate) use machine::{Detector, DetectorState, GapEvent};
pub(crate) use window::ActiveWindow;

/// Builders shared by the detector's tests.
#[cfg(test)]
mod test_support {
    use std::str::FromStr;

    use chrono::{DateTime, Utc};
    use chrono_tz::Tz;
    use cron::Schedule;

    use super::ActiveWindow;

    pub(crate) fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
    }

    pub(crate) fn window(exprs: &[&str], tz: Tz) -> ActiveWindow {
        let schedules = exprs
            .iter()
            .map(|e| Schedule::from_str(e).unwrap_or_else(|err| panic!("bad cron {e}: {err}")))
            .collect();
        ActiveWindow::new(schedules, tz)
    }

    pub(crate) fn weekdays_ny() -> ActiveWindow {
        window(&["* * 8-21 * * Mon-Fri"], chrono_tz::America::New_York)
    }
}
