//! The active window: when a feed is expected to deliver data.
//!
//! Silence outside the window is not a gap, so the detector asks two questions
//! of it: "is this instant active?" and "since when has it been active?". Both
//! are answered at one-second resolution, the resolution of cron expressions.

use std::sync::Arc;

use chrono::{DateTime, DurationRound, FixedOffset, TimeDelta, Utc};
use chrono_tz::Tz;
use cron::{Schedule, TimeUnitSpec};

/// How far back [`ActiveWindow::active_since`] scans before giving up and
/// returning the bound. Longer than a week so that any weekly pattern with at
/// least one inactive second is resolved exactly.
pub(super) const MAX_LOOKBACK: TimeDelta = TimeDelta::days(8);

const SECOND: TimeDelta = TimeDelta::seconds(1);
const MINUTE: TimeDelta = TimeDelta::minutes(1);

/// When data is expected. Built from 6-field cron expressions
/// (`sec min hour dom month dow`, `cron` crate syntax, e.g.
/// `"* * 8-21 * * Mon-Fri"`) evaluated in a timezone. An instant is active if
/// ANY schedule matches it (to the second, evaluated in the timezone). No
/// schedules = always active.
///
/// Cheap to clone (shared schedules): a partitioned feed's detectors, one per
/// partition, all hold the feed's window.
#[derive(Clone, Debug)]
pub(crate) struct ActiveWindow {
    schedules: Arc<[Schedule]>,
    /// Whether each schedule (same index) matches every second of any minute it
    /// matches; lets a whole minute be judged with one lookup instead of 60.
    whole_minutes: Arc<[bool]>,
    tz: Tz,
}

// === impl ActiveWindow ===

impl ActiveWindow {
    /// A window that is active at every instant.
    pub(crate) fn always() -> Self {
        Self::new(Vec::new(), Tz::UTC)
    }

    /// A window active whenever any of `schedules` matches, evaluated in `tz`.
    /// An empty list means always active.
    pub(crate) fn new(schedules: Vec<Schedule>, tz: Tz) -> Self {
        let whole_minutes = schedules.iter().map(|s| s.seconds().is_all()).collect();
        Self {
            schedules: schedules.into(),
            whole_minutes,
            tz,
        }
    }

    /// True when there are no schedules, i.e. every instant is active.
    pub(crate) fn is_always(&self) -> bool {
        self.schedules.is_empty()
    }

    /// Whether the second containing `t` is active.
    pub(crate) fn is_active(&self, t: DateTime<Utc>) -> bool {
        if self.is_always() {
            return true;
        }
        let local = t.with_timezone(&self.tz);
        self.schedules.iter().any(|s| s.includes(local))
    }

    /// The first active second strictly after `t` (`None` if no schedule ever
    /// matches again). For an always-active window: `t` + 1 s.
    pub(crate) fn next_active(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_always() {
            return t.checked_add_signed(SECOND);
        }
        let local = t.with_timezone(&self.tz);
        self.schedules
            .iter()
            .filter_map(|s| s.after(&local).next())
            .map(|l| l.with_timezone(&Utc))
            .min()
    }

    /// Start of the active period that contains `t`, but never earlier than
    /// `floor`: the result is `max(period start, floor)`, so it is `floor` when
    /// the window was active all the way from `floor` to `t` (and also when
    /// `floor` is later than `t`). `None` if `t` is not active.
    ///
    /// The period start is second-aligned: the first second of an unbroken run
    /// of active seconds that ends with the second containing `t`.
    ///
    /// The scan is bounded: it goes back at most [`MAX_LOOKBACK`] from `t`, and
    /// returns `t - MAX_LOOKBACK` (or `floor`, if later) when the window was
    /// active that whole time. An [`ActiveWindow::always`] window needs no scan
    /// and returns `floor`. Cost: one check per minute scanned, plus up to 60
    /// per minute at the edges of the period (or everywhere, for schedules whose
    /// seconds field is not `*`).
    pub(crate) fn active_since(
        &self,
        t: DateTime<Utc>,
        floor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !self.is_active(t) {
            return None;
        }
        if self.is_always() {
            return Some(floor);
        }
        let bound = t
            .checked_sub_signed(MAX_LOOKBACK)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let lower = floor.max(bound);
        let t_sec = trunc(t, SECOND);
        if t_sec <= lower {
            return Some(lower);
        }

        // The rest of the minute that contains `t`, second by second.
        let minute = trunc(t_sec, MINUTE);
        let mut cur = t_sec;
        while cur > minute {
            let prev = cur - SECOND;
            if prev < lower {
                return Some(lower);
            }
            if !self.is_active(prev) {
                return Some(cur.max(lower));
            }
            cur = prev;
        }

        // Whole minutes, newest first, until one has an inactive second.
        let mut m = minute;
        while m > lower {
            let Some(start) = m.checked_sub_signed(MINUTE) else {
                return Some(lower);
            };
            if let Some(inactive) = self.last_inactive_second_in_minute(start) {
                return Some((inactive + SECOND).max(lower));
            }
            m = start;
        }
        Some(lower)
    }

    /// The latest inactive second in the UTC minute `[start, start + 60s)`, or
    /// `None` if the whole minute is active.
    fn last_inactive_second_in_minute(&self, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Timezone offsets only change on whole minutes (for every zone in use
        // since 1972), so one conversion serves the whole UTC minute.
        let local: DateTime<FixedOffset> = start.with_timezone(&self.tz).fixed_offset();
        let offset_whole_minutes = local.offset().local_minus_utc() % 60 == 0;
        if offset_whole_minutes
            && self
                .schedules
                .iter()
                .zip(self.whole_minutes.iter())
                .any(|(s, whole)| *whole && s.includes(local))
        {
            return None;
        }
        (0..60)
            .rev()
            .map(|k| TimeDelta::seconds(k))
            .find(|d| !self.schedules.iter().any(|s| s.includes(local + *d)))
            .map(|d| start + d)
    }
}

/// `t` rounded down to a multiple of `unit` (a second or a minute). Cannot fail
/// for those units within chrono's range; falls back to `t` rather than panic.
fn trunc(t: DateTime<Utc>, unit: TimeDelta) -> DateTime<Utc> {
    t.duration_trunc(unit).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::test_support::{utc, weekdays_ny, window};
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// The obvious second-by-second definition, to check the fast scan against.
    fn naive_active_since(
        w: &ActiveWindow,
        t: DateTime<Utc>,
        floor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !w.is_active(t) {
            return None;
        }
        let lower = floor.max(t - MAX_LOOKBACK);
        let mut cur = trunc(t, SECOND);
        while cur > lower {
            let prev = cur - SECOND;
            if !w.is_active(prev) {
                return Some(cur.max(lower));
            }
            cur = prev;
        }
        Some(lower)
    }

    #[test]
    fn is_active_table() {
        let ny = weekdays_ny();
        let cases = [
            // Friday 2026-03-06, EST (UTC-5): 08:00-21:59:59 local = 13:00-02:59:59 UTC.
            ("2026-03-06T12:59:59Z", false),
            ("2026-03-06T13:00:00Z", true),
            ("2026-03-07T02:59:59Z", true),
            ("2026-03-07T03:00:00Z", false),
            // Saturday noon local.
            ("2026-03-07T17:00:00Z", false),
            // Monday 2026-03-09 is EDT (UTC-4): opens at 12:00 UTC, an hour earlier.
            ("2026-03-09T11:59:59Z", false),
            ("2026-03-09T12:00:00Z", true),
            ("2026-03-10T01:59:59Z", true),
            ("2026-03-10T02:00:00Z", false),
            // Monday 2026-11-02 is EST again: opens at 13:00 UTC.
            ("2026-11-02T12:59:59Z", false),
            ("2026-11-02T13:00:00Z", true),
        ];
        for (t, want) in cases {
            assert_eq!(ny.is_active(utc(t)), want, "is_active({t})");
        }
        assert!(ActiveWindow::always().is_active(utc("2026-03-07T17:00:00Z")));
        assert!(ActiveWindow::always().is_always());
        assert!(!ny.is_always());
    }

    #[test]
    fn next_active_is_the_next_opening() {
        let ny = weekdays_ny();
        // Friday 22:00 EST → Monday 08:00 EST.
        assert_eq!(
            ny.next_active(utc("2026-01-10T03:00:00Z")),
            Some(utc("2026-01-12T13:00:00Z"))
        );
        // Spring DST: Monday opens at 08:00 EDT = 12:00Z.
        assert_eq!(
            ny.next_active(utc("2026-03-07T03:00:00Z")),
            Some(utc("2026-03-09T12:00:00Z"))
        );
        assert_eq!(
            ActiveWindow::always().next_active(utc("2026-01-10T03:00:00Z")),
            Some(utc("2026-01-10T03:00:01Z"))
        );
    }

    #[test]
    fn active_since_table() {
        let ny = weekdays_ny();
        let far = utc("2000-01-01T00:00:00Z");
        // (window, t, floor, expected)
        let spring = window(&["* * 1-3 * * *"], chrono_tz::America::New_York);
        let fall = window(&["* * 1 * * *"], chrono_tz::America::New_York);
        let always = ActiveWindow::always();
        let halves = window(&["0-29 * * * * *", "30-59 * 10 * * *"], Tz::UTC);
        let cases: Vec<(&ActiveWindow, &str, DateTime<Utc>, Option<&str>)> = vec![
            // Mid-morning Monday after the spring change: period opened 08:00 EDT.
            (
                &ny,
                "2026-03-09T15:30:10.250Z",
                far,
                Some("2026-03-09T12:00:00Z"),
            ),
            // Floor inside the period wins.
            (
                &ny,
                "2026-03-09T15:30:10Z",
                utc("2026-03-09T14:00:00.5Z"),
                Some("2026-03-09T14:00:00.5Z"),
            ),
            // Floor before the period: the period start wins.
            (
                &ny,
                "2026-03-09T12:00:00Z",
                utc("2026-03-06T20:00:00Z"),
                Some("2026-03-09T12:00:00Z"),
            ),
            // Floor after t is returned as is.
            (
                &ny,
                "2026-03-09T13:00:00Z",
                utc("2026-03-09T13:00:05Z"),
                Some("2026-03-09T13:00:05Z"),
            ),
            // Inactive instant.
            (&ny, "2026-03-08T15:00:00Z", far, None),
            // Monday after the fall change: opened 08:00 EST.
            (
                &ny,
                "2026-11-02T20:00:00Z",
                far,
                Some("2026-11-02T13:00:00Z"),
            ),
            // 2026-03-08 01:00 EST .. 03:59:59 EDT has no 02:xx: one 2h period.
            (
                &spring,
                "2026-03-08T07:59:59Z",
                far,
                Some("2026-03-08T06:00:00Z"),
            ),
            // 2026-11-01 01:xx happens twice (EDT then EST): one 2h period.
            (
                &fall,
                "2026-11-01T06:30:00Z",
                far,
                Some("2026-11-01T05:00:00Z"),
            ),
            // Second-level schedules: the scan must not trust one second per minute.
            (
                &halves,
                "2026-01-05T09:00:20Z",
                far,
                Some("2026-01-05T09:00:00Z"),
            ),
            (
                &halves,
                "2026-01-05T10:59:59Z",
                far,
                Some("2026-01-05T10:00:00Z"),
            ),
            // 10:59:59 (second schedule) runs straight into 11:00:00 (first one).
            (
                &halves,
                "2026-01-05T11:00:05Z",
                far,
                Some("2026-01-05T10:00:00Z"),
            ),
            (
                &halves,
                "2026-01-05T11:01:05Z",
                far,
                Some("2026-01-05T11:01:00Z"),
            ),
            // An always-active window needs no scan: the floor is returned.
            (
                &always,
                "2026-01-05T11:00:05Z",
                far,
                Some("2000-01-01T00:00:00Z"),
            ),
        ];
        for (w, t, floor, want) in cases {
            assert_eq!(
                w.active_since(utc(t), floor),
                want.map(utc),
                "active_since({t}, {floor})"
            );
        }
        // A cron window active every second hits the lookback bound.
        let every = window(&["* * * * * *"], Tz::UTC);
        let t = utc("2026-01-05T11:00:05.7Z");
        assert_eq!(every.active_since(t, far), Some(t - MAX_LOOKBACK));
    }

    #[test]
    fn weekday_window_spans_whole_weekend_back_to_friday() {
        // Daily hours don't matter: a weekly window still resolves within the bound.
        let w = window(&["* * * * * Mon-Fri"], Tz::UTC);
        let t = utc("2026-01-09T23:00:00Z"); // Friday
        assert_eq!(
            w.active_since(t, DateTime::<Utc>::MIN_UTC),
            Some(utc("2026-01-05T00:00:00Z"))
        );
    }

    fn arb_window() -> impl Strategy<Value = ActiveWindow> {
        let one = (0u32..60, 0u32..60, 0u32..60, 0u32..60, 0u32..24, 0u32..24).prop_map(
            |(s1, s2, m1, m2, h1, h2)| {
                format!(
                    "{}-{} {}-{} {}-{} * * *",
                    s1.min(s2),
                    s1.max(s2),
                    m1.min(m2),
                    m1.max(m2),
                    h1.min(h2),
                    h1.max(h2)
                )
            },
        );
        let whole = (0u32..60, 0u32..60)
            .prop_map(|(m1, m2)| format!("* {}-{} * * * *", m1.min(m2), m1.max(m2)));
        (
            proptest::collection::vec(prop_oneof![one, whole], 1..3),
            prop_oneof![
                Just(Tz::UTC),
                Just(chrono_tz::America::New_York),
                Just(chrono_tz::Asia::Kolkata),
            ],
        )
            .prop_map(|(exprs, tz)| {
                let refs: Vec<&str> = exprs.iter().map(String::as_str).collect();
                window(&refs, tz)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The minute-granular scan agrees with the second-by-second definition.
        #[test]
        fn active_since_matches_naive_scan(
            w in arb_window(),
            // Around the 2026 spring DST change and a plain week.
            t_secs in prop_oneof![1_772_900_000i64..1_773_100_000, 1_767_600_000i64..1_767_800_000],
            nanos in 0u32..1_000_000_000,
            back in 0i64..20_000,
        ) {
            let t = Utc.timestamp_opt(t_secs, nanos).single().unwrap_or_default();
            let floor = t - TimeDelta::seconds(back);
            prop_assert_eq!(w.active_since(t, floor), naive_active_since(&w, t, floor));
        }
    }
}
