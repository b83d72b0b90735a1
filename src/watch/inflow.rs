//! The pure part of passive watching: per-minute CloudWatch series of a queue
//! turned into observations and an age, under CloudWatch's settling delay.
//!
//! A minute `[m, m + 60 s)` is *settled* once `m + 60 s <= now − cloudwatch_delay`:
//! before that its datapoint may still be missing or change. Only settled
//! minutes are used. CloudWatch sends no datapoint for a minute without
//! activity, so a hole in a series is a minute of zero inflow — but only while
//! the queue is known to exist; for a missing queue nothing advances.
//!
//! In `passive` mode the newest minute with `NumberOfMessagesSent > 0` stands
//! in for the newest event: each such minute becomes one synthetic
//! observation whose event time is the minute's start, so a gap's interval has
//! minute resolution (it starts at the last minute with inflow and ends at the
//! first minute with inflow after the silence; the fill's overlap covers the
//! rest of those minutes).

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::config::{MonitorConfig, WatchMode};
use crate::observe::Observation;

/// CloudWatch's period for SQS metrics, and the resolution of passive gaps.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);

/// An age datapoint older than this (before the settled horizon) says nothing
/// about the queue now: an empty queue stops reporting its age.
const AGE_STALE: Duration = Duration::from_secs(3 * 60);

/// One CloudWatch datapoint: the start of its minute and its value.
pub(crate) type Point = (DateTime<Utc>, f64);

/// How far behind the wall clock a feed's detector runs.
///
/// Passive feeds see a minute only once it is settled (`cloudwatch_delay` plus
/// the minute itself), and only when CloudWatch is read (every
/// `cloudwatch_interval`). Running the detector that far behind means a steady
/// feed never looks silent between two reads (the newest minute delivered is
/// at most about a minute behind the detector's clock), so `max_silence` keeps
/// its meaning; detection is late by this lag, which is the price of passive
/// watching. Relay and report feeds see records live: no lag.
pub(crate) fn clock_lag(monitor: &MonitorConfig, mode: WatchMode) -> Duration {
    match mode {
        WatchMode::Passive => monitor.cloudwatch_delay + MINUTE + monitor.cloudwatch_interval,
        WatchMode::Relay | WatchMode::Report => Duration::ZERO,
    }
}

/// The interval one `GetMetricData` read asks for: whole minutes, ending at the
/// start of the current minute, reaching back at least `cloudwatch_lookback`
/// and far enough that two consecutive reads overlap by a few settled minutes
/// (GetMetricData costs per metric, not per datapoint).
pub(crate) fn query_window(
    now: DateTime<Utc>,
    monitor: &MonitorConfig,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let end = floor_minute(now);
    let needed = monitor.cloudwatch_delay + 2 * monitor.cloudwatch_interval + 3 * MINUTE;
    let lookback = monitor.cloudwatch_lookback.max(needed);
    let minutes = lookback.as_secs().div_ceil(60).min(60 * 24 * 14);
    (end - TimeDelta::minutes(minutes as i64), end)
}

/// Minutes ending at or before this are settled.
pub(crate) fn settled_before(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    now - TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX)
}

pub(crate) fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

fn minute_end(m: DateTime<Utc>) -> DateTime<Utc> {
    m + TimeDelta::minutes(1)
}

/// Turns one queue's `NumberOfMessagesSent` series into observations, each
/// minute with inflow at most once and in time order.
///
/// Only a watermark (the newest minute sent) is kept: a minute at or before it
/// can no longer move the detector's newest event, so datapoints that arrive
/// late for such minutes are ignored, while late datapoints for newer minutes
/// are sent whenever they show up.
#[derive(Clone, Debug)]
pub(crate) struct InflowTracker {
    queue: String,
    newest_sent: Option<DateTime<Utc>>,
}

// === impl InflowTracker ===

impl InflowTracker {
    /// `newest_event` is the feed's newest event restored from the store, so a
    /// restart does not send the lookback again.
    pub(crate) fn new(queue: &str, newest_event: Option<DateTime<Utc>>) -> Self {
        Self {
            queue: queue.to_string(),
            newest_sent: newest_event,
        }
    }

    #[cfg(test)]
    pub(crate) fn newest_sent(&self) -> Option<DateTime<Utc>> {
        self.newest_sent
    }

    /// The observations for the settled minutes with inflow in `points` (any
    /// order, duplicates and holes allowed) newer than anything sent before.
    /// Nothing happens unless `queue_exists`: a missing queue's silence is not
    /// the vendor's, and its minutes must not count as zero inflow.
    pub(crate) fn take(
        &mut self,
        points: &[Point],
        settled_before: DateTime<Utc>,
        queue_exists: bool,
    ) -> Vec<Observation> {
        if !queue_exists {
            return Vec::new();
        }
        let mut minutes: Vec<DateTime<Utc>> = points
            .iter()
            .filter(|(_, v)| v.is_finite() && *v > 0.0)
            .map(|(t, _)| floor_minute(*t))
            .filter(|m| minute_end(*m) <= settled_before)
            .filter(|m| self.newest_sent.is_none_or(|n| *m > n))
            .collect();
        minutes.sort_unstable();
        minutes.dedup();
        if let Some(last) = minutes.last() {
            self.newest_sent = Some(*last);
        }
        minutes
            .into_iter()
            .map(|m| Observation {
                id: format!("inflow:{}:{}", self.queue, m.timestamp()),
                event_time: m,
                partition: None,
            })
            .collect()
    }
}

/// The newest settled minute with inflow in `points`, if any.
pub(crate) fn newest_inflow(
    points: &[Point],
    settled_before: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    points
        .iter()
        .filter(|(_, v)| v.is_finite() && *v > 0.0)
        .map(|(t, _)| floor_minute(*t))
        .filter(|m| minute_end(*m) <= settled_before)
        .max()
}

/// `gapwatch_queue_oldest_message_age_seconds` from `ApproximateAgeOfOldestMessage`:
/// the newest settled datapoint if it is recent; else 0 when the backlog is
/// known to be empty (an empty queue reports no age); else nothing (the series
/// is left absent, never NaN).
pub(crate) fn oldest_age(
    points: &[Point],
    settled_before: DateTime<Utc>,
    backlog_empty: bool,
) -> Option<f64> {
    let stale_before =
        settled_before - TimeDelta::from_std(AGE_STALE + MINUTE).unwrap_or(TimeDelta::MAX);
    let newest = points
        .iter()
        .filter(|(_, v)| v.is_finite() && *v >= 0.0)
        .map(|(t, v)| (floor_minute(*t), *v))
        .filter(|(m, _)| minute_end(*m) <= settled_before && *m >= stale_before)
        .max_by_key(|(m, _)| *m);
    match newest {
        Some((_, v)) => Some(v),
        None if backlog_empty => Some(0.0),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, h, m, s).unwrap()
    }

    fn monitor() -> MonitorConfig {
        MonitorConfig {
            poll_interval: Duration::from_secs(60),
            cloudwatch: true,
            cloudwatch_interval: Duration::from_secs(300),
            cloudwatch_delay: Duration::from_secs(300),
            cloudwatch_lookback: Duration::from_secs(1800),
        }
    }

    fn times(obs: &[Observation]) -> Vec<DateTime<Utc>> {
        obs.iter().map(|o| o.event_time).collect()
    }

    #[test]
    fn sends_minutes_with_inflow_in_order_once_with_stable_ids() {
        let mut tr = InflowTracker::new("vendor", None);
        // Unordered, with a duplicate minute, a zero and a non-aligned timestamp.
        let points = vec![
            (t(10, 3, 0), 4.0),
            (t(10, 1, 0), 1.0),
            (t(10, 2, 0), 0.0),
            (t(10, 1, 0), 2.0),
            (t(10, 4, 30), 1.0),
        ];
        let obs = tr.take(&points, t(10, 10, 0), true);
        assert_eq!(times(&obs), vec![t(10, 1, 0), t(10, 3, 0), t(10, 4, 0)]);
        assert_eq!(
            obs[0].id,
            format!("inflow:vendor:{}", t(10, 1, 0).timestamp())
        );
        // The same series again: nothing new.
        assert!(tr.take(&points, t(10, 11, 0), true).is_empty());
        assert_eq!(tr.newest_sent(), Some(t(10, 4, 0)));
    }

    #[test]
    fn a_hole_is_silence_between_the_minutes_around_it() {
        let mut tr = InflowTracker::new("q", None);
        let mut points: Vec<Point> = (0..15).map(|i| (t(9, i, 0), 3.0)).collect();
        // 30 minutes without datapoints (09:15..09:45), then inflow again.
        points.extend((45..55).map(|i| (t(9, i, 0), 1.0)));
        let obs = tr.take(&points, t(10, 0, 0), true);
        let ts = times(&obs);
        assert_eq!(ts.len(), 25);
        let i = ts.iter().position(|m| *m == t(9, 14, 0)).unwrap();
        assert_eq!(ts[i + 1], t(9, 45, 0));
        assert_eq!((ts[i + 1] - ts[i]).num_minutes(), 31);
    }

    #[test]
    fn unsettled_minutes_wait_for_the_delay() {
        let mut tr = InflowTracker::new("q", None);
        let points = vec![(t(10, 0, 0), 1.0), (t(10, 4, 0), 1.0), (t(10, 5, 0), 1.0)];
        // Settled: minutes ending at or before 10:05:30 (10:04 ends at 10:05).
        let obs = tr.take(&points, t(10, 5, 30), true);
        assert_eq!(times(&obs), vec![t(10, 0, 0), t(10, 4, 0)]);
        // 10:05 settles a minute later and is sent then, once.
        let obs = tr.take(&points, t(10, 6, 0), true);
        assert_eq!(times(&obs), vec![t(10, 5, 0)]);
    }

    #[test]
    fn late_datapoints_count_only_when_newer_than_what_was_sent() {
        let mut tr = InflowTracker::new("q", None);
        let first = vec![(t(10, 0, 0), 1.0), (t(10, 3, 0), 1.0)];
        assert_eq!(tr.take(&first, t(10, 10, 0), true).len(), 2);
        // 10:01 arrived late: older than 10:03 already sent, it cannot move the
        // newest event, so it is dropped. 10:07 arrived late but is newer: sent.
        let later = vec![
            (t(10, 0, 0), 1.0),
            (t(10, 1, 0), 5.0),
            (t(10, 3, 0), 1.0),
            (t(10, 7, 0), 2.0),
        ];
        let obs = tr.take(&later, t(10, 12, 0), true);
        assert_eq!(times(&obs), vec![t(10, 7, 0)]);
    }

    #[test]
    fn a_missing_queue_advances_nothing() {
        let mut tr = InflowTracker::new("q", Some(t(9, 0, 0)));
        let points = vec![(t(10, 0, 0), 1.0)];
        assert!(tr.take(&points, t(10, 10, 0), false).is_empty());
        assert_eq!(tr.newest_sent(), Some(t(9, 0, 0)));
        // Once the queue is known again, the minute is still sent.
        assert_eq!(
            times(&tr.take(&points, t(10, 10, 0), true)),
            vec![t(10, 0, 0)]
        );
    }

    #[test]
    fn restored_newest_event_is_not_sent_again() {
        let mut tr = InflowTracker::new("q", Some(t(10, 2, 0)));
        let points = vec![(t(10, 1, 0), 1.0), (t(10, 2, 0), 1.0), (t(10, 3, 0), 1.0)];
        assert_eq!(
            times(&tr.take(&points, t(10, 9, 0), true)),
            vec![t(10, 3, 0)]
        );
    }

    #[test]
    fn bad_values_are_ignored() {
        let mut tr = InflowTracker::new("q", None);
        let points = vec![
            (t(10, 0, 0), f64::NAN),
            (t(10, 1, 0), f64::INFINITY),
            (t(10, 2, 0), -1.0),
        ];
        assert!(tr.take(&points, t(10, 9, 0), true).is_empty());
        assert_eq!(newest_inflow(&points, t(10, 9, 0)), None);
    }

    #[test]
    fn newest_inflow_ignores_unsettled_minutes() {
        let points = vec![(t(10, 0, 0), 1.0), (t(10, 8, 0), 1.0), (t(10, 5, 0), 0.0)];
        assert_eq!(newest_inflow(&points, t(10, 8, 30)), Some(t(10, 0, 0)));
        assert_eq!(newest_inflow(&points, t(10, 9, 0)), Some(t(10, 8, 0)));
    }

    #[test]
    fn age_is_the_newest_settled_recent_datapoint() {
        let points = vec![(t(10, 5, 0), 30.0), (t(10, 6, 0), 90.0), (t(10, 9, 0), 5.0)];
        // 10:09 is not settled at 10:09:30; 10:06 is the newest settled one.
        assert_eq!(oldest_age(&points, t(10, 9, 30), false), Some(90.0));
        assert_eq!(oldest_age(&points, t(10, 10, 0), false), Some(5.0));
    }

    #[test]
    fn no_age_is_zero_only_when_the_backlog_is_empty() {
        assert_eq!(oldest_age(&[], t(10, 0, 0), true), Some(0.0));
        assert_eq!(oldest_age(&[], t(10, 0, 0), false), None);
        // A datapoint from long before the horizon: the queue stopped reporting.
        let old = vec![(t(9, 30, 0), 600.0)];
        assert_eq!(oldest_age(&old, t(10, 0, 0), true), Some(0.0));
        assert_eq!(oldest_age(&old, t(10, 0, 0), false), None);
        let nan = vec![(t(9, 58, 0), f64::NAN)];
        assert_eq!(oldest_age(&nan, t(10, 0, 0), false), None);
    }

    #[test]
    fn passive_feeds_run_behind_by_delay_minute_and_interval() {
        let m = monitor();
        assert_eq!(clock_lag(&m, WatchMode::Passive), Duration::from_secs(660));
        assert_eq!(clock_lag(&m, WatchMode::Relay), Duration::ZERO);
        assert_eq!(clock_lag(&m, WatchMode::Report), Duration::ZERO);
    }

    #[test]
    fn query_window_is_whole_minutes_and_overlaps_consecutive_reads() {
        let mut m = monitor();
        let (start, end) = query_window(t(10, 30, 17), &m);
        assert_eq!(end, t(10, 30, 0));
        assert_eq!(start, t(10, 0, 0));
        // A lookback too short for delay + two intervals is widened.
        m.cloudwatch_lookback = Duration::from_secs(60);
        let (start, _) = query_window(t(10, 30, 17), &m);
        assert_eq!(start, t(10, 12, 0));
    }

    #[test]
    fn a_steady_feed_never_looks_silent_on_the_lagged_clock() {
        // Inflow every minute; reads every interval at arbitrary seconds. Just
        // before each read, the lagged clock is at most ~a minute past the
        // newest minute delivered.
        let m = monitor();
        let lag = TimeDelta::from_std(clock_lag(&m, WatchMode::Passive)).unwrap();
        let mut tr = InflowTracker::new("q", None);
        let points: Vec<Point> = (0..24 * 60)
            .map(|i| (t(0, 0, 0) + TimeDelta::minutes(i), 1.0))
            .collect();
        let mut read = t(1, 0, 13);
        let mut newest = None;
        while read < t(20, 0, 0) {
            let next = read + TimeDelta::from_std(m.cloudwatch_interval).unwrap();
            tr.take(&points, settled_before(read, m.cloudwatch_delay), true);
            newest = tr.newest_sent().or(newest);
            let silence = (next - lag) - newest.unwrap();
            assert!(
                silence <= TimeDelta::seconds(60),
                "silence {silence} at {next}"
            );
            read = next;
        }
    }
}
