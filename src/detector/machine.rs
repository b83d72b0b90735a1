//! The gap state machine: turns observations and the passage of time into gap
//! events. Pure: no I/O, no clock of its own; every method takes `now`.
//!
//! States, per feed:
//! - *never started*: no event seen yet; no gap can open.
//! - *flowing*: silence is being counted (while the window is active) from
//!   `max(newest event time, when it was observed, start of the active period)`.
//! - *gap open*: silence reached `max_silence` inside the window; stays open,
//!   across restarts too, until an event newer than the gap start arrives.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::window::ActiveWindow;

/// What survives a restart. Persist it after every [`GapEvent`] (and
/// periodically for `last_event`); rebuild the [`Detector`] from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct DetectorState {
    /// Event time of the newest record ever observed.
    pub(crate) last_event: Option<DateTime<Utc>>,
    /// Start of the gap that is open now, if any.
    pub(crate) open_gap_start: Option<DateTime<Utc>>,
}

/// A change of gap state, for the store and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapEvent {
    /// The feed has been silent for max_silence inside the active window. `start` = newest event before the silence.
    Opened {
        start: DateTime<Utc>,
        detected_at: DateTime<Utc>,
    },
    /// First event after the silence. Interval of the gap = [start, end).
    Closed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

/// The freshness detector of one feed.
///
/// Silence is counted, while the window is active, from the latest of:
/// - the newest event time seen (`last_event`),
/// - the moment that newest event was observed (kept in memory only), so a
///   feed that delivers steadily but late, or drains a backlog, does not open
///   and close a gap on every tick — staleness of that kind shows in
///   [`Detector::freshness`], not as silence; old or duplicate records do not
///   count, so they cannot hide a silence;
/// - the start of the current active period, so silence that began while the
///   window was closed counts only from when it opened, and restarts from zero
///   each time the window reopens.
///
/// A gap opens when that count reaches `max_silence`.
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    /// `None` when `max_silence` is too large to represent: no gap ever opens.
    max_silence: Option<TimeDelta>,
    window: ActiveWindow,
    state: DetectorState,
    /// When the newest event was observed; not persisted, so after a restart
    /// silence counts from `last_event` and downtime counts as silence.
    newest_observed_at: Option<DateTime<Utc>>,
    /// What `tick` learnt about the current active period, so the steady state
    /// costs one `is_active` plus a one-second scan instead of a full
    /// [`ActiveWindow::active_since`].
    period: Option<Period>,
}

/// The window has been active without a break from `since` (or earlier) until
/// `checked_to`. `since` may be clamped up to the silence floor that was current
/// when it was computed; that is harmless because the floor never decreases and
/// silence is counted from `max(floor, since)`.
#[derive(Clone, Copy, Debug)]
struct Period {
    since: DateTime<Utc>,
    checked_to: DateTime<Utc>,
}

// === impl Detector ===

impl Detector {
    /// Build a detector, possibly from state saved before a restart.
    ///
    /// An open gap stays open. Inconsistent state (a gap start newer than
    /// `last_event`, or without it) is repaired by raising `last_event` to the
    /// gap start, since the gap start is by definition an observed event.
    pub(crate) fn new(
        max_silence: Duration,
        window: ActiveWindow,
        restored: DetectorState,
    ) -> Self {
        let mut state = restored;
        if let Some(start) = state.open_gap_start {
            state.last_event = Some(state.last_event.map_or(start, |l| l.max(start)));
        }
        Self {
            max_silence: TimeDelta::from_std(max_silence).ok(),
            window,
            state,
            newest_observed_at: None,
            period: None,
        }
    }

    /// A record with this event time was observed at `now`. May close an open gap (returns Closed) when event_time > open gap start. Out-of-order/duplicate events never move last_event backwards. Returns at most one event.
    ///
    /// Never opens a gap: after a restart, call [`Detector::tick`] before the
    /// first `observe`, or silence through the downtime goes unnoticed. Events
    /// in the future (clock skew) are accepted as they are.
    pub(crate) fn observe(
        &mut self,
        event_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<GapEvent> {
        let advanced = self.state.last_event.is_none_or(|l| event_time > l);
        if advanced {
            self.state.last_event = Some(event_time);
            self.newest_observed_at = Some(self.newest_observed_at.map_or(now, |o| o.max(now)));
        }
        let start = self.state.open_gap_start?;
        if event_time > start {
            self.state.open_gap_start = None;
            return Some(GapEvent::Closed {
                start,
                end: event_time,
            });
        }
        None
    }

    /// Advance time. Returns Opened when the silence condition is met. Call often (e.g. every second) or rarely (after a restart) — both must work.
    ///
    /// `detected_at` is this `now`: with rare calls the gap is reported late,
    /// but its `start` is the same.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Option<GapEvent> {
        let last = self.state.last_event?;
        if self.state.open_gap_start.is_some() {
            // Nothing to count while a gap is open; the period is recomputed
            // once it closes, from a floor close to `now`.
            self.period = None;
            return None;
        }
        let floor = self.silence_floor()?;
        let Some(since) = self.period_since(now, floor) else {
            self.period = None;
            return None;
        };
        if !self.window.is_always() {
            self.period = Some(Period {
                since,
                checked_to: now,
            });
        }
        let counted_since = since.max(floor);
        let max_silence = self.max_silence?;
        if now.signed_duration_since(counted_since) >= max_silence {
            self.state.open_gap_start = Some(last);
            self.period = None;
            return Some(GapEvent::Opened {
                start: last,
                detected_at: now,
            });
        }
        None
    }

    /// The earliest instant at which [`Detector::tick`] could open a gap if
    /// nothing is observed before then; `None` while no gap can open (no event
    /// yet, a gap already open, `max_silence` unrepresentable, or a window that
    /// never opens again). Never later than the real opening: the shell may
    /// sleep until it instead of ticking on a timer, which keeps idle feeds free
    /// and detection exact. It may be earlier (the window closed in between);
    /// ticking then yields no event and a new, later deadline.
    pub(crate) fn next_deadline(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.state.open_gap_start.is_some() {
            return None;
        }
        let max_silence = self.max_silence?;
        let floor = self.silence_floor()?;
        if self.window.is_always() {
            return floor.checked_add_signed(max_silence);
        }
        match self.period_since(now, floor) {
            Some(since) => since.max(floor).checked_add_signed(max_silence),
            // Silence counts again only once the window opens.
            None => self.window.next_active(now),
        }
    }

    /// The state to persist.
    pub(crate) fn state(&self) -> DetectorState {
        self.state
    }

    /// now − newest event time, clamped at zero; None if no event ever seen.
    #[cfg(test)]
    pub(crate) fn freshness(&self, now: DateTime<Utc>) -> Option<Duration> {
        let last = self.state.last_event?;
        // A negative age (event from the future) fails `to_std`: report zero.
        Some(
            now.signed_duration_since(last)
                .to_std()
                .unwrap_or(Duration::ZERO),
        )
    }

    /// When the current silence started counting (for an "unfilled seconds"/diagnostics view); None if no event yet or gap open.
    ///
    /// Also `None` while the window is inactive at `now`: silence is not being
    /// counted then. Does not update the cache `tick` keeps, so it may scan.
    #[cfg(test)]
    pub(crate) fn silence_counted_since(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.state.open_gap_start.is_some() {
            return None;
        }
        let floor = self.silence_floor()?;
        self.period_since(now, floor).map(|since| since.max(floor))
    }

    /// The instant silence would count from if the window were always active;
    /// never decreases. `None` before the first event.
    fn silence_floor(&self) -> Option<DateTime<Utc>> {
        let last = self.state.last_event?;
        Some(self.newest_observed_at.map_or(last, |o| o.max(last)))
    }

    /// Start of the active period containing `now`, clamped to at least
    /// `floor` when it had to be computed from scratch. `None` if inactive.
    fn period_since(&self, now: DateTime<Utc>, floor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.period {
            Some(p) if p.checked_to <= now => {
                // Only the stretch since the previous tick needs checking.
                let since = self.window.active_since(now, p.checked_to)?;
                Some(if since == p.checked_to {
                    p.since
                } else {
                    since
                })
            }
            // First tick, after an inactive spell, or the clock went backwards.
            _ => self.window.active_since(now, floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::test_support::{utc, weekdays_ny, window};
    use chrono::TimeZone;
    use chrono_tz::Tz;
    use proptest::prelude::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    /// Tick every second over `[from, to]`; return the first event.
    fn tick_every_second(
        d: &mut Detector,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<GapEvent> {
        let mut t = from;
        while t <= to {
            if let Some(ev) = d.tick(t) {
                return Some(ev);
            }
            t += secs(1);
        }
        None
    }

    fn opened(start: &str, detected_at: &str) -> Option<GapEvent> {
        Some(GapEvent::Opened {
            start: utc(start),
            detected_at: utc(detected_at),
        })
    }

    /// (name, window, last event, tick from, tick to, expected first event)
    type SilenceCase = (
        &'static str,
        ActiveWindow,
        &'static str,
        &'static str,
        &'static str,
        Option<GapEvent>,
    );

    /// Silence scenarios, ticked every second.
    #[test]
    fn silence_table() {
        let ny = weekdays_ny();
        let night = window(&["* * 8-11,13-17 * * *"], Tz::UTC);
        let cases: Vec<SilenceCase> = vec![
            (
                "always active: opens exactly max_silence after the event",
                ActiveWindow::always(),
                "2026-01-06T10:00:00Z",
                "2026-01-06T10:00:00Z",
                "2026-01-06T11:00:00Z",
                opened("2026-01-06T10:00:00Z", "2026-01-06T10:05:00Z"),
            ),
            (
                "inside the weekday window (Tue 10:00 EST)",
                ny.clone(),
                "2026-01-06T15:00:00Z",
                "2026-01-06T15:00:00Z",
                "2026-01-06T16:00:00Z",
                opened("2026-01-06T15:00:00Z", "2026-01-06T15:05:00Z"),
            ),
            (
                "window closes before max_silence (Fri 21:58 EST); counts again from Mon 08:00 EST",
                ny.clone(),
                "2026-01-10T02:58:00Z",
                "2026-01-10T02:58:00Z",
                "2026-01-12T14:00:00Z",
                opened("2026-01-10T02:58:00Z", "2026-01-12T13:05:00Z"),
            ),
            (
                "silence starting on Saturday counts from Monday's opening",
                ny.clone(),
                "2026-01-10T17:00:00Z",
                "2026-01-10T17:00:00Z",
                "2026-01-12T14:00:00Z",
                opened("2026-01-10T17:00:00Z", "2026-01-12T13:05:00Z"),
            ),
            (
                "spring DST: last event Fri 2026-03-06 21:59:59 EST, Monday opens 08:00 EDT = 12:00Z",
                ny.clone(),
                "2026-03-07T02:59:59Z",
                "2026-03-07T02:59:59Z",
                "2026-03-09T14:00:00Z",
                opened("2026-03-07T02:59:59Z", "2026-03-09T12:05:00Z"),
            ),
            (
                "fall DST: last event Fri 2026-10-30 21:59:00 EDT, Monday opens 08:00 EST = 13:00Z",
                ny.clone(),
                "2026-10-31T01:59:00Z",
                "2026-10-31T01:59:00Z",
                "2026-11-02T14:00:00Z",
                opened("2026-10-31T01:59:00Z", "2026-11-02T13:05:00Z"),
            ),
            (
                "night break: 11:57 event, window shut 12:00-13:00, count restarts at 13:00",
                night.clone(),
                "2026-01-06T11:57:00Z",
                "2026-01-06T11:57:00Z",
                "2026-01-06T14:00:00Z",
                opened("2026-01-06T11:57:00Z", "2026-01-06T13:05:00Z"),
            ),
            (
                "night: silence from 18:00 does not open before the morning",
                night,
                "2026-01-06T17:59:00Z",
                "2026-01-06T17:59:00Z",
                "2026-01-07T08:04:59Z",
                None,
            ),
        ];
        for (name, w, last, from, to, want) in cases {
            let mut d = Detector::new(FIVE_MIN, w, DetectorState::default());
            assert_eq!(d.observe(utc(last), utc(last)), None, "{name}");
            assert_eq!(
                tick_every_second(&mut d, utc(from), utc(to)),
                want,
                "{name}"
            );
            let gap_open = want.map(|_| utc(last));
            assert_eq!(d.state().open_gap_start, gap_open, "{name}");
        }
    }

    #[test]
    fn silence_counted_since_follows_the_window() {
        let mut d = Detector::new(FIVE_MIN, weekdays_ny(), DetectorState::default());
        assert_eq!(
            d.silence_counted_since(utc("2026-01-12T14:00:00Z")),
            None,
            "no event yet"
        );
        d.observe(utc("2026-01-10T02:58:00Z"), utc("2026-01-10T02:58:01Z"));
        // Observed a second after its event time: that is when counting starts.
        assert_eq!(
            d.silence_counted_since(utc("2026-01-10T02:59:00Z")),
            Some(utc("2026-01-10T02:58:01Z"))
        );
        assert_eq!(
            d.silence_counted_since(utc("2026-01-11T12:00:00Z")),
            None,
            "Sunday"
        );
        assert_eq!(
            d.silence_counted_since(utc("2026-01-12T13:03:00Z")),
            Some(utc("2026-01-12T13:00:00Z"))
        );
        assert_eq!(d.tick(utc("2026-01-12T13:05:00Z")).map(|_| ()), Some(()));
        assert_eq!(
            d.silence_counted_since(utc("2026-01-12T13:06:00Z")),
            None,
            "gap open"
        );
    }

    #[test]
    fn feed_that_never_started_opens_nothing() {
        let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
        assert_eq!(
            tick_every_second(
                &mut d,
                utc("2026-01-06T10:00:00Z"),
                utc("2026-01-06T11:00:00Z")
            ),
            None
        );
        assert_eq!(d.freshness(utc("2026-01-06T11:00:00Z")), None);
        assert_eq!(d.state(), DetectorState::default());
        // The first event starts the clock.
        d.observe(utc("2026-01-06T11:00:00Z"), utc("2026-01-06T11:00:00Z"));
        assert_eq!(
            tick_every_second(
                &mut d,
                utc("2026-01-06T11:00:00Z"),
                utc("2026-01-06T12:00:00Z")
            ),
            opened("2026-01-06T11:00:00Z", "2026-01-06T11:05:00Z")
        );
    }

    #[test]
    fn gap_closes_at_first_newer_event_only() {
        let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
        d.observe(utc("2026-01-06T10:00:00Z"), utc("2026-01-06T10:00:00Z"));
        assert_eq!(
            d.tick(utc("2026-01-06T10:07:00Z")),
            opened("2026-01-06T10:00:00Z", "2026-01-06T10:07:00Z")
        );
        // Ticks never reopen or re-announce it.
        assert_eq!(d.tick(utc("2026-01-06T10:20:00Z")), None);
        // Older and equal events don't close it.
        assert_eq!(
            d.observe(utc("2026-01-06T09:59:00Z"), utc("2026-01-06T10:21:00Z")),
            None
        );
        assert_eq!(
            d.observe(utc("2026-01-06T10:00:00Z"), utc("2026-01-06T10:21:00Z")),
            None
        );
        assert_eq!(d.state().open_gap_start, Some(utc("2026-01-06T10:00:00Z")));
        assert_eq!(
            d.observe(utc("2026-01-06T10:30:00Z"), utc("2026-01-06T10:30:01Z")),
            Some(GapEvent::Closed {
                start: utc("2026-01-06T10:00:00Z"),
                end: utc("2026-01-06T10:30:00Z"),
            })
        );
        assert_eq!(
            d.state(),
            DetectorState {
                last_event: Some(utc("2026-01-06T10:30:00Z")),
                open_gap_start: None
            }
        );
        // An out-of-order event from inside the old gap changes nothing.
        assert_eq!(
            d.observe(utc("2026-01-06T10:10:00Z"), utc("2026-01-06T10:30:02Z")),
            None
        );
        assert_eq!(d.state().last_event, Some(utc("2026-01-06T10:30:00Z")));
        // And the silence clock restarted from the closing event's observation.
        assert_eq!(
            tick_every_second(
                &mut d,
                utc("2026-01-06T10:30:02Z"),
                utc("2026-01-06T11:00:00Z")
            ),
            opened("2026-01-06T10:30:00Z", "2026-01-06T10:35:01Z")
        );
    }

    #[test]
    fn out_of_order_and_duplicate_events() {
        let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
        let t0 = utc("2026-01-06T10:00:00Z");
        for (event, seen) in [(10, 10), (5, 11), (10, 12), (3, 200), (7, 280)] {
            assert_eq!(d.observe(t0 + secs(event), t0 + secs(seen)), None);
            assert_eq!(d.state().last_event, Some(t0 + secs(10)));
        }
        assert_eq!(d.freshness(t0 + secs(70)), Some(Duration::from_secs(60)));
        // Stale records do not reset the silence: it counts from when the
        // newest one (t0+10) was observed.
        assert_eq!(d.silence_counted_since(t0 + secs(290)), Some(t0 + secs(10)));
        assert_eq!(
            tick_every_second(&mut d, t0 + secs(280), t0 + secs(1000)),
            opened("2026-01-06T10:00:10Z", "2026-01-06T10:05:10Z")
        );
    }

    #[test]
    fn late_but_steady_delivery_does_not_flap() {
        // Every record arrives 10 minutes after its event time: stale, not silent.
        let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
        let t0 = utc("2026-01-06T10:00:00Z");
        for s in 0..3600 {
            let now = t0 + secs(s);
            if s % 60 == 0 {
                assert_eq!(d.observe(now - secs(600), now), None);
            }
            assert_eq!(d.tick(now), None, "at +{s}s");
        }
        assert_eq!(d.freshness(t0 + secs(3600)), Some(Duration::from_secs(660)));
    }

    #[test]
    fn future_events_are_accepted_and_freshness_clamps() {
        let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
        let now = utc("2026-01-06T10:00:00Z");
        d.observe(now + secs(30), now);
        assert_eq!(d.state().last_event, Some(now + secs(30)));
        assert_eq!(d.freshness(now), Some(Duration::ZERO));
        assert_eq!(d.freshness(now + secs(45)), Some(Duration::from_secs(15)));
        // Silence counts from the (future) event time.
        assert_eq!(
            tick_every_second(&mut d, now, now + secs(1000)),
            opened("2026-01-06T10:00:30Z", "2026-01-06T10:05:30Z")
        );
    }

    #[test]
    fn restart_in_the_middle_of_a_gap() {
        let start = utc("2026-01-06T10:00:00Z");
        let saved = DetectorState {
            last_event: Some(start),
            open_gap_start: Some(start),
        };
        let mut d = Detector::new(FIVE_MIN, weekdays_ny(), saved);
        assert_eq!(d.state(), saved);
        assert_eq!(
            tick_every_second(
                &mut d,
                utc("2026-01-06T18:00:00Z"),
                utc("2026-01-06T18:30:00Z")
            ),
            None
        );
        assert_eq!(
            d.observe(utc("2026-01-06T18:30:05Z"), utc("2026-01-06T18:30:06Z")),
            Some(GapEvent::Closed {
                start,
                end: utc("2026-01-06T18:30:05Z")
            })
        );
        assert_eq!(d.state().open_gap_start, None);
    }

    #[test]
    fn restored_state_is_repaired() {
        let start = utc("2026-01-06T10:00:00Z");
        let cases = [None, Some(start - secs(60))];
        for last_event in cases {
            let d = Detector::new(
                FIVE_MIN,
                ActiveWindow::always(),
                DetectorState {
                    last_event,
                    open_gap_start: Some(start),
                },
            );
            assert_eq!(d.state().last_event, Some(start), "{last_event:?}");
        }
    }

    /// (name, window, last event, restart tick, expected event at that tick)
    #[test]
    fn restart_after_downtime_table() {
        let ny = weekdays_ny();
        let cases: Vec<(&str, ActiveWindow, &str, &str, Option<GapEvent>)> = vec![
            (
                "downtime longer than max_silence, window active throughout: first tick opens",
                ny.clone(),
                "2026-01-06T15:00:00Z",
                "2026-01-06T17:00:00Z",
                opened("2026-01-06T15:00:00Z", "2026-01-06T17:00:00Z"),
            ),
            (
                "downtime exactly max_silence",
                ActiveWindow::always(),
                "2026-01-06T15:00:00Z",
                "2026-01-06T15:05:00Z",
                opened("2026-01-06T15:00:00Z", "2026-01-06T15:05:00Z"),
            ),
            (
                "downtime shorter than max_silence",
                ActiveWindow::always(),
                "2026-01-06T15:00:00Z",
                "2026-01-06T15:04:59Z",
                None,
            ),
            (
                "down over the weekend, back 3 minutes after Monday's opening: not yet",
                ny.clone(),
                "2026-01-10T02:59:59Z",
                "2026-01-12T13:03:00Z",
                None,
            ),
            (
                "down over the weekend, back 6 minutes after Monday's opening",
                ny.clone(),
                "2026-01-10T02:59:59Z",
                "2026-01-12T13:06:00Z",
                opened("2026-01-10T02:59:59Z", "2026-01-12T13:06:00Z"),
            ),
            (
                "back on Sunday: inactive",
                ny.clone(),
                "2026-01-09T20:00:00Z",
                "2026-01-11T20:00:00Z",
                None,
            ),
            (
                "down for three weeks (beyond the lookback bound)",
                ny,
                "2026-01-06T15:00:00Z",
                "2026-01-27T15:00:00Z",
                opened("2026-01-06T15:00:00Z", "2026-01-27T15:00:00Z"),
            ),
        ];
        for (name, w, last, restart, want) in cases {
            let saved = DetectorState {
                last_event: Some(utc(last)),
                open_gap_start: None,
            };
            let mut d = Detector::new(FIVE_MIN, w, saved);
            assert_eq!(d.tick(utc(restart)), want, "{name}");
        }
    }

    #[test]
    fn restart_during_weekend_then_tick_every_second() {
        let saved = DetectorState {
            last_event: Some(utc("2026-03-07T02:59:59Z")),
            open_gap_start: None,
        };
        let mut d = Detector::new(FIVE_MIN, weekdays_ny(), saved);
        assert_eq!(
            tick_every_second(
                &mut d,
                utc("2026-03-08T12:00:00Z"),
                utc("2026-03-09T13:00:00Z")
            ),
            opened("2026-03-07T02:59:59Z", "2026-03-09T12:05:00Z")
        );
    }

    #[test]
    fn huge_max_silence_never_opens() {
        let mut d = Detector::new(
            Duration::MAX,
            ActiveWindow::always(),
            DetectorState::default(),
        );
        d.observe(utc("2026-01-06T10:00:00Z"), utc("2026-01-06T10:00:00Z"));
        assert_eq!(d.tick(utc("2036-01-06T10:00:00Z")), None);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let s = DetectorState {
            last_event: Some(utc("2026-01-06T10:00:00.123Z")),
            open_gap_start: Some(utc("2026-01-06T09:00:00Z")),
        };
        let json = serde_json::to_string(&s).unwrap_or_default();
        let back: Result<DetectorState, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(s));
        let empty: Result<DetectorState, _> =
            serde_json::from_str(r#"{"last_event":null,"open_gap_start":null}"#);
        assert_eq!(empty.ok(), Some(DetectorState::default()));
    }

    // === properties ===

    /// Reference model without caching: the definition, evaluated from scratch.
    struct Model {
        max_silence: TimeDelta,
        window: ActiveWindow,
        last: Option<DateTime<Utc>>,
        observed: Option<DateTime<Utc>>,
        open: Option<DateTime<Utc>>,
    }

    impl Model {
        fn observe(&mut self, e: DateTime<Utc>, now: DateTime<Utc>) -> Option<GapEvent> {
            if self.last.is_none_or(|l| e > l) {
                self.last = Some(e);
                self.observed = Some(self.observed.map_or(now, |o| o.max(now)));
            }
            match self.open {
                Some(start) if e > start => {
                    self.open = None;
                    Some(GapEvent::Closed { start, end: e })
                }
                _ => None,
            }
        }

        fn tick(&mut self, now: DateTime<Utc>) -> Option<GapEvent> {
            let last = self.last?;
            if self.open.is_some() {
                return None;
            }
            let floor = self.observed.map_or(last, |o| o.max(last));
            let since = self.window.active_since(now, floor)?;
            if now - since >= self.max_silence {
                self.open = Some(last);
                return Some(GapEvent::Opened {
                    start: last,
                    detected_at: now,
                });
            }
            None
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Advance the clock by this many seconds, ticking every second.
        Wait(i64),
        /// Advance the clock by this many seconds, then tick once.
        Jump(i64),
        /// Observe an event this many seconds before (negative: after) now.
        Event(i64),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (1i64..400).prop_map(Step::Wait),
            1 => (1i64..7_200).prop_map(Step::Jump),
            1 => (-30i64..900).prop_map(Step::Event),
        ]
    }

    fn arb_window() -> impl Strategy<Value = ActiveWindow> {
        prop_oneof![
            Just(ActiveWindow::always()),
            // Short on/off periods so a few hours of simulation cross many edges.
            Just(window(&["* 0-19,30-44 * * * *"], Tz::UTC)),
            Just(window(&["0-39 * * * * *", "* 50-52 * * * *"], Tz::UTC)),
            Just(window(&["* * 1-3 * * *"], chrono_tz::America::New_York)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Sleeping until `next_deadline` opens the same gap as ticking every
        /// second, never later, and in a handful of wake-ups.
        #[test]
        fn deadlines_detect_no_later_than_ticking(
            w in arb_window(),
            max_silence in 1u64..900,
            age in 0i64..600,
            start_offset in 0i64..86_400,
        ) {
            let t0 = Utc.timestamp_opt(1_772_841_600 + start_offset, 0).single().unwrap_or_default();
            let horizon = t0 + secs(4 * 3600);
            let mut dense = Detector::new(Duration::from_secs(max_silence), w, DetectorState::default());
            dense.observe(t0 - secs(age), t0);
            let mut lazy = dense.clone();
            let mut want = None;
            let mut t = t0;
            while t <= horizon {
                if let Some(ev) = dense.tick(t) {
                    want = Some(ev);
                    break;
                }
                t += secs(1);
            }
            let mut got = None;
            let mut now = t0;
            let mut wakes = 0;
            while let Some(deadline) = lazy.next_deadline(now) {
                now = deadline.max(now);
                if now > horizon {
                    break;
                }
                wakes += 1;
                prop_assert!(wakes < 1_000, "busy loop at {}", now);
                if let Some(ev) = lazy.tick(now) {
                    got = Some(ev);
                    break;
                }
            }
            match (want, got) {
                (Some(GapEvent::Opened { start: ws, detected_at: wd }),
                 Some(GapEvent::Opened { start: gs, detected_at: gd })) => {
                    prop_assert_eq!(ws, gs);
                    prop_assert!(gd <= wd && wd - gd < secs(1), "dense {} lazy {}", wd, gd);
                }
                // Dense ticking runs on whole seconds: within the last second
                // of the horizon only the lazy one may see it.
                (None, Some(GapEvent::Opened { detected_at, .. })) => {
                    prop_assert!(detected_at > horizon - secs(1));
                }
                (None, None) => {}
                other => prop_assert!(false, "dense/lazy disagree: {:?}", other),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Caching in `tick` never changes the outcome, whatever the tick rhythm
        /// and however events interleave.
        #[test]
        fn detector_matches_uncached_model(
            w in arb_window(),
            max_silence in 1u64..900,
            steps in proptest::collection::vec(arb_step(), 1..120),
            start_offset in 0i64..86_400,
        ) {
            // 2026-03-07 00:00 UTC plus an offset: covers the NY spring change.
            let mut now = Utc.timestamp_opt(1_772_841_600 + start_offset, 0).single().unwrap_or_default();
            let max = Duration::from_secs(max_silence);
            let mut d = Detector::new(max, w.clone(), DetectorState::default());
            let mut m = Model {
                max_silence: TimeDelta::seconds(max_silence as i64),
                window: w,
                last: None,
                observed: None,
                open: None,
            };
            for step in steps {
                match step {
                    Step::Wait(s) => {
                        // Dense ticking across the wait, as the daemon does.
                        for _ in 0..s {
                            now += secs(1);
                            prop_assert_eq!(d.tick(now), m.tick(now), "tick at {}", now);
                        }
                    }
                    Step::Jump(s) => {
                        now += secs(s);
                        prop_assert_eq!(d.tick(now), m.tick(now), "tick at {}", now);
                    }
                    Step::Event(age) => {
                        let e = now - secs(age);
                        prop_assert_eq!(d.observe(e, now), m.observe(e, now));
                    }
                }
                prop_assert_eq!(d.state(), DetectorState { last_event: m.last, open_gap_start: m.open });
            }
        }

        /// Sparse ticks report the same gap start as dense ones, never earlier.
        #[test]
        fn sparse_ticks_find_the_same_gap(
            w in arb_window(),
            last_offset in 0i64..86_400,
            stride in 1i64..3_600,
        ) {
            let last = Utc.timestamp_opt(1_772_841_600 + last_offset, 0).single().unwrap_or_default();
            let mut dense = Detector::new(FIVE_MIN, w.clone(), DetectorState::default());
            let mut sparse = Detector::new(FIVE_MIN, w, DetectorState::default());
            dense.observe(last, last);
            sparse.observe(last, last);
            let end = last + TimeDelta::hours(26);
            let first = tick_every_second(&mut dense, last, end);
            let mut t = last;
            let mut got = None;
            while t <= end && got.is_none() {
                got = sparse.tick(t);
                t += secs(stride);
            }
            match (first, got) {
                (Some(GapEvent::Opened { start: a, detected_at: da }), Some(GapEvent::Opened { start: b, detected_at: db })) => {
                    prop_assert_eq!(a, b);
                    prop_assert!(db >= da);
                }
                (None, None) => {}
                (Some(GapEvent::Opened { .. }), None) => {
                    // Sparse ticks can step over a short active period.
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// last_event is the maximum of all event times; freshness is never negative.
        #[test]
        fn last_event_is_the_max(events in proptest::collection::vec(-100_000i64..100_000, 1..50)) {
            let base = utc("2026-01-06T10:00:00Z");
            let mut d = Detector::new(FIVE_MIN, ActiveWindow::always(), DetectorState::default());
            for e in &events {
                d.observe(base + secs(*e), base);
            }
            let max = events.iter().copied().max().map(|e| base + secs(e));
            prop_assert_eq!(d.state().last_event, max);
            let want = max.and_then(|m| (base - m).to_std().ok()).unwrap_or(Duration::ZERO);
            prop_assert_eq!(d.freshness(base), Some(want));
        }
    }
}
