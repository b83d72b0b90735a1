//! Which window an audit run covers, and how the watermark moves: plain
//! functions of the audit state and `now`.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::fill::plan::{Resolution, Window};

/// What the next audit window depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Due {
    pub(crate) now: DateTime<Utc>,
    /// Since when the ledger is complete (the audit never looks before it).
    pub(crate) started: DateTime<Utc>,
    pub(crate) verified_until: Option<DateTime<Utc>>,
    pub(crate) lookback: Duration,
    pub(crate) delay: Duration,
    /// The earliest start of a fill still under way: the audit stays behind
    /// it, so a fill's window is audited only after the fill (and an audit
    /// never races a fill for the same ids).
    pub(crate) fill_from: Option<DateTime<Utc>>,
    pub(crate) resolution: Resolution,
}

fn sub(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The window the next audit run covers: from the watermark (or the ledger's
/// start) to `now − delay`, never older than `now − lookback` (the ledger
/// no longer holds those ids), never into a fill still under way. Both ends
/// sit on the source's resolution (start towards the past: re-auditing an
/// instant is harmless; end towards the past: never the unsettled). `None`:
/// nothing is due.
pub(crate) fn due_window(d: &Due) -> Option<Window> {
    let horizon = sub(d.now, d.lookback);
    let from = d.verified_until.unwrap_or(d.started).max(horizon);
    let mut to = sub(d.now, d.delay);
    if let Some(fill) = d.fill_from {
        to = to.min(fill);
    }
    let (start, end) = (d.resolution.floor(from), d.resolution.floor(to));
    (start < end).then_some(Window { start, end })
}

/// The watermark once `window` was audited with every record proven
/// delivered. It never moves backwards; a window that starts after the
/// watermark (the watermark fell out of the lookback) still moves it, as
/// the stretch before can no longer be audited.
pub(crate) fn advance(verified_until: Option<DateTime<Utc>>, window: Window) -> DateTime<Utc> {
    verified_until.map_or(window.end, |v| v.max(window.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ms(s: i64, ms: i64) -> DateTime<Utc> {
        t(s) + TimeDelta::milliseconds(ms)
    }

    fn due(now: i64, started: i64, verified: Option<i64>, fill: Option<i64>) -> Due {
        Due {
            now: t(now),
            started: t(started),
            verified_until: verified.map(t),
            lookback: Duration::from_secs(3600),
            delay: Duration::from_secs(600),
            fill_from: fill.map(t),
            resolution: Resolution::from_millis(1000).unwrap(),
        }
    }

    fn w(a: i64, b: i64) -> Option<Window> {
        Some(Window {
            start: t(a),
            end: t(b),
        })
    }

    #[test]
    fn due_windows() {
        let cases = [
            // (now, started, verified, fill under way) → window
            // First run: from the ledger's start to now − delay.
            (10_000, 8_000, None, None, w(8_000, 9_400)),
            // Not settled yet: the ledger started less than `delay` ago.
            (10_000, 9_500, None, None, None),
            // From the watermark on.
            (10_000, 0, Some(9_000), None, w(9_000, 9_400)),
            // Caught up.
            (10_000, 0, Some(9_400), None, None),
            // A watermark older than the lookback resumes at now − lookback.
            (10_000, 0, Some(1_000), None, w(6_400, 9_400)),
            // A fill under way holds the audit behind its start …
            (10_000, 0, Some(9_000), Some(9_200), w(9_000, 9_200)),
            // … even at the watermark: nothing due until it finished.
            (10_000, 0, Some(9_000), Some(8_000), None),
            // A fill newer than now − delay does not matter.
            (10_000, 0, Some(9_000), Some(9_900), w(9_000, 9_400)),
        ];
        for (now, started, verified, fill, want) in cases {
            assert_eq!(
                due_window(&due(now, started, verified, fill)),
                want,
                "now {now} started {started} verified {verified:?} fill {fill:?}"
            );
        }
    }

    #[test]
    fn windows_sit_on_the_source_resolution() {
        let mut d = due(10_000, 0, None, None);
        d.verified_until = Some(ms(9_000, 250));
        d.now = ms(10_000, 900);
        assert_eq!(
            due_window(&d),
            Some(Window {
                start: t(9_000),
                end: t(9_400),
            })
        );
        d.resolution = Resolution::from_millis(1).unwrap();
        assert_eq!(
            due_window(&d),
            Some(Window {
                start: ms(9_000, 250),
                end: ms(9_400, 900),
            })
        );
    }

    #[test]
    fn the_watermark_only_moves_forward() {
        let win = Window {
            start: t(100),
            end: t(200),
        };
        let cases = [
            (None, t(200)),
            (Some(t(100)), t(200)),
            // A fill's window audited behind the watermark leaves it.
            (Some(t(500)), t(500)),
            // Resumed past a watermark that fell out of the lookback.
            (Some(t(50)), t(200)),
        ];
        for (verified, want) in cases {
            assert_eq!(advance(verified, win), want, "{verified:?}");
        }
    }
}
