//! A partitioned feed's detectors: one [`Detector`] per partition (a
//! *lane*), each silent or fresh on its own, all with the feed's
//! `max_silence` and active window. Pure, like the detector: no I/O, no
//! clock of its own.
//!
//! Time is cheap however many partitions there are: a lane is ticked only
//! when its own deadline ([`Detector::next_deadline`]) has come, found on a
//! min-heap of deadlines. An observation never touches the heap unless the
//! lane had no deadline (a gap just closed, or a first event): the deadline
//! already queued is never later than the real one, so when it comes the lane
//! is ticked (no event) and queued again at its new deadline. Each lane has
//! at most one live heap entry (older ones are recognised and skipped), so
//! memory is one detector and one entry per partition, and a tick costs
//! `O(log n)` per lane that is due, nothing for the others.
//!
//! `T` is the shell's own per-partition data (the feed monitor keeps the
//! lane's recent ids and its open gap id there).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{ActiveWindow, Detector, DetectorState, GapEvent};

/// One partition: its detector, when it is queued to be ticked, the shell's data.
#[derive(Debug)]
pub(crate) struct Lane<T> {
    detector: Detector,
    /// The deadline of its live heap entry (None: not queued: a gap is open,
    /// or no event was seen yet).
    queued: Option<DateTime<Utc>>,
    pub(crate) data: T,
}

impl<T> Lane<T> {
    pub(crate) fn state(&self) -> DetectorState {
        self.detector.state()
    }
}

/// How a feed's partitions stand, counted over every lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) total: usize,
    /// With an open gap.
    pub(crate) silent: usize,
    /// Seen, no open gap.
    pub(crate) fresh: usize,
    /// No event seen yet.
    pub(crate) unseen: usize,
    /// The oldest newest-event among the partitions seen.
    #[serde(skip)]
    pub(crate) oldest_last_event: Option<DateTime<Utc>>,
}

/// The detectors of a feed's partitions, keyed by partition value.
#[derive(Debug)]
pub(crate) struct Lanes<T> {
    max_silence: Duration,
    window: ActiveWindow,
    lanes: HashMap<Arc<str>, Lane<T>>,
    /// (deadline, partition); stale when the lane's `queued` differs.
    heap: BinaryHeap<Reverse<(DateTime<Utc>, Arc<str>)>>,
    /// Lanes ticked so far (for tests and benchmarks: only due lanes are).
    ticked: u64,
}

// === impl Lanes ===

impl<T> Lanes<T> {
    pub(crate) fn new(max_silence: Duration, window: ActiveWindow) -> Self {
        Self {
            max_silence,
            window,
            lanes: HashMap::new(),
            heap: BinaryHeap::new(),
            ticked: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lanes.len()
    }

    pub(crate) fn contains(&self, partition: &str) -> bool {
        self.lanes.contains_key(partition)
    }

    pub(crate) fn get(&self, partition: &str) -> Option<&Lane<T>> {
        self.lanes.get(partition)
    }

    pub(crate) fn get_mut(&mut self, partition: &str) -> Option<&mut Lane<T>> {
        self.lanes.get_mut(partition)
    }

    /// The partition's own name, shared (cheap to keep in queues).
    pub(crate) fn key(&self, partition: &str) -> Option<Arc<str>> {
        self.lanes.get_key_value(partition).map(|(k, _)| k.clone())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Lane<T>)> {
        self.lanes.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Arc<str>, &mut Lane<T>)> {
        self.lanes.iter_mut()
    }

    /// Adds a partition, restored from saved state (as [`Detector::new`]
    /// does). Returns false, changing nothing, if it is there already. Tick
    /// (at [`Lanes::next_deadline`]) before the lane's first observation, as
    /// after any restart.
    pub(crate) fn insert(
        &mut self,
        partition: &str,
        restored: DetectorState,
        data: T,
        now: DateTime<Utc>,
    ) -> bool {
        if self.lanes.contains_key(partition) {
            return false;
        }
        let key: Arc<str> = Arc::from(partition);
        let detector = Detector::new(self.max_silence, self.window.clone(), restored);
        self.lanes.insert(
            key.clone(),
            Lane {
                detector,
                queued: None,
                data,
            },
        );
        self.schedule(&key, now, false);
        true
    }

    /// Removes a partition; its last state and data.
    pub(crate) fn remove(&mut self, partition: &str) -> Option<(DetectorState, T)> {
        // Its heap entry goes stale and is skipped when it comes up.
        self.lanes
            .remove(partition)
            .map(|l| (l.detector.state(), l.data))
    }

    /// Rebuilds a lane's detector from `state` (another replica decided its
    /// gap). Unknown partitions are left alone.
    pub(crate) fn restore(&mut self, partition: &str, state: DetectorState, now: DateTime<Utc>) {
        let Some(key) = self.key(partition) else {
            return;
        };
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.detector = Detector::new(self.max_silence, self.window.clone(), state);
            lane.queued = None;
        }
        self.schedule(&key, now, false);
    }

    /// A record of `partition` with this event time was observed at `now`
    /// (see [`Detector::observe`]). `None` for a partition not watched.
    pub(crate) fn observe(
        &mut self,
        partition: &str,
        event_time: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Option<GapEvent>> {
        let lane = self.lanes.get_mut(partition)?;
        let event = lane.detector.observe(event_time, now);
        if lane.queued.is_none() {
            if let Some(key) = self.key(partition) {
                self.schedule(&key, now, false);
            }
        }
        Some(event)
    }

    /// Ticks the lanes whose deadline has come (and only those); their
    /// gap events, in deadline order.
    pub(crate) fn tick(&mut self, now: DateTime<Utc>) -> Vec<(Arc<str>, GapEvent)> {
        let mut events = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.heap.pop() else {
                break;
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            if lane.queued != Some(at) {
                continue;
            }
            lane.queued = None;
            self.ticked += 1;
            if let Some(event) = lane.detector.tick(now) {
                events.push((key.clone(), event));
            }
            self.schedule(&key, now, true);
        }
        events
    }

    /// The earliest deadline of any lane: when [`Lanes::tick`] has work.
    pub(crate) fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// How the partitions stand, `silent` saying which lanes count as
    /// silent (the shell counts the gaps the store has): one pass over every
    /// lane, so the shell calls it at its own pace (once a second at most),
    /// not per observation.
    pub(crate) fn summary(&self, silent: impl Fn(&Lane<T>) -> bool) -> Summary {
        let mut s = Summary {
            total: self.lanes.len(),
            ..Summary::default()
        };
        for lane in self.lanes.values() {
            let state = lane.detector.state();
            if silent(lane) {
                s.silent += 1;
            } else if state.last_event.is_some() {
                s.fresh += 1;
            } else {
                s.unseen += 1;
            }
            if let Some(last) = state.last_event {
                s.oldest_last_event = Some(s.oldest_last_event.map_or(last, |o| o.min(last)));
            }
        }
        s
    }

    /// Lanes ticked since the start.
    #[cfg(test)]
    pub(crate) fn ticked(&self) -> u64 {
        self.ticked
    }

    /// Queues the lane at its next deadline, if it has one. `ticked`: the
    /// lane was just ticked at `now`, so its deadline is later than `now`
    /// (kept so, that one pass never ticks a lane twice).
    fn schedule(&mut self, key: &Arc<str>, now: DateTime<Utc>, ticked: bool) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        let Some(mut deadline) = lane.detector.next_deadline(now) else {
            lane.queued = None;
            return;
        };
        if ticked && deadline <= now {
            deadline = now + TimeDelta::milliseconds(1);
        }
        lane.queued = Some(deadline);
        self.heap.push(Reverse((deadline, key.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::test_support::{utc, window};
    use proptest::prelude::*;

    const MAX_SILENCE: Duration = Duration::from_secs(10);

    fn secs(n: i64) -> TimeDelta {
        TimeDelta::seconds(n)
    }

    fn open(l: &Lane<()>) -> bool {
        l.state().open_gap_start.is_some()
    }

    fn lanes(names: &[&str], now: DateTime<Utc>) -> Lanes<()> {
        let mut l = Lanes::new(MAX_SILENCE, ActiveWindow::always());
        for n in names {
            assert!(l.insert(n, DetectorState::default(), (), now));
        }
        l
    }

    #[test]
    fn one_silent_partition_opens_its_own_gap_at_its_deadline() {
        let t0 = utc("2026-01-06T10:00:00Z");
        let mut l = lanes(&["s1", "s2", "s3"], t0);
        for p in ["s1", "s2", "s3"] {
            assert_eq!(l.observe(p, t0, t0), Some(None));
        }
        // s1 and s2 keep flowing every 3 s; s3 stops.
        let mut opened = Vec::new();
        for s in 1..=30 {
            let now = t0 + secs(s);
            if s % 3 == 0 {
                for p in ["s1", "s2"] {
                    l.observe(p, now, now);
                }
            }
            for (p, ev) in l.tick(now) {
                opened.push((p.to_string(), ev));
            }
        }
        assert_eq!(
            opened,
            vec![(
                "s3".to_string(),
                GapEvent::Opened {
                    start: t0,
                    detected_at: t0 + secs(10)
                }
            )]
        );
        let summary = l.summary(open);
        assert_eq!(
            (summary.total, summary.silent, summary.fresh, summary.unseen),
            (3, 1, 2, 0)
        );
        assert_eq!(summary.oldest_last_event, Some(t0));
        // s3 resumes: its gap closes; nobody else's was open.
        let now = t0 + secs(31);
        assert_eq!(
            l.observe("s3", now, now),
            Some(Some(GapEvent::Closed {
                start: t0,
                end: now
            }))
        );
        assert_eq!(l.summary(open).silent, 0);
        // And it is watched again: silent once more 10 s later.
        let events = l.tick(now + secs(10));
        assert_eq!(events.len(), 3, "{events:?}");
    }

    #[test]
    fn unknown_partitions_are_not_observed_and_never_started_ones_never_open() {
        let t0 = utc("2026-01-06T10:00:00Z");
        let mut l = lanes(&["a", "b"], t0);
        assert_eq!(l.observe("zz", t0, t0), None);
        l.observe("a", t0, t0);
        assert!(l.tick(t0 + secs(3600)).len() == 1, "only a had started");
        assert_eq!(l.summary(open).unseen, 1);
        assert!(!l.insert("a", DetectorState::default(), (), t0));
        // A removed lane's queued deadline is skipped.
        l.observe("b", t0 + secs(3600), t0 + secs(3600));
        assert!(l.remove("b").is_some());
        assert!(l.tick(t0 + secs(7200)).is_empty());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn only_due_lanes_are_ticked_however_many_partitions() {
        let t0 = utc("2026-01-06T10:00:00Z");
        let names: Vec<String> = (0..5000).map(|i| format!("store-{i}")).collect();
        let mut l = Lanes::new(MAX_SILENCE, ActiveWindow::always());
        for n in &names {
            l.insert(n, DetectorState::default(), (), t0);
        }
        // Every partition delivers once, spread over 5 s.
        for (i, n) in names.iter().enumerate() {
            let at = t0 + TimeDelta::milliseconds(i as i64);
            l.observe(n, at, at);
        }
        // Ticking often while nothing is due costs nothing.
        for ms in (0..9_000).step_by(100) {
            assert!(l.tick(t0 + TimeDelta::milliseconds(ms)).is_empty());
        }
        assert_eq!(l.ticked(), 0);
        // All but one keep delivering every 2 s.
        let mut now = t0;
        let mut opened = Vec::new();
        while now < t0 + secs(40) {
            now += TimeDelta::milliseconds(500);
            if (now - t0).num_milliseconds() % 2000 == 0 {
                for n in names.iter().skip(1) {
                    l.observe(n, now, now);
                }
            }
            opened.extend(l.tick(now));
        }
        assert_eq!(opened.len(), 1);
        assert_eq!(&*opened[0].0, "store-0");
        // Each lane was ticked about once per max_silence, not once per tick.
        let ticks_if_scanned = 5000 * 80;
        assert!(
            l.ticked() < 5000 * 5,
            "{} lane ticks (a scan would cost {ticks_if_scanned})",
            l.ticked()
        );
    }

    #[test]
    fn restored_lanes_tick_at_once_after_downtime_and_follow_another_replica() {
        let t0 = utc("2026-01-06T10:00:00Z");
        let mut l = Lanes::new(MAX_SILENCE, ActiveWindow::always());
        let saved = DetectorState {
            last_event: Some(t0),
            open_gap_start: None,
        };
        l.insert("a", saved, (), t0 + secs(60));
        l.insert(
            "b",
            DetectorState {
                last_event: Some(t0),
                open_gap_start: Some(t0),
            },
            (),
            t0 + secs(60),
        );
        assert_eq!(l.next_deadline(), Some(t0 + secs(10)));
        let events = l.tick(t0 + secs(60));
        assert_eq!(
            events,
            vec![(
                Arc::from("a"),
                GapEvent::Opened {
                    start: t0,
                    detected_at: t0 + secs(60)
                }
            )]
        );
        // Another replica closed b's gap: b is watched again from its newest event.
        l.restore(
            "b",
            DetectorState {
                last_event: Some(t0 + secs(55)),
                open_gap_start: None,
            },
            t0 + secs(61),
        );
        assert_eq!(l.next_deadline(), Some(t0 + secs(65)));
        assert_eq!(l.summary(open).silent, 1);
    }

    #[test]
    fn windows_are_shared_and_respected_per_lane() {
        // Active 08:00-11:59 UTC.
        let w = window(&["* * 8-11 * * *"], chrono_tz::Tz::UTC);
        let mut l: Lanes<()> = Lanes::new(MAX_SILENCE, w);
        let t0 = utc("2026-01-06T11:59:55Z");
        l.insert("a", DetectorState::default(), (), t0);
        l.observe("a", t0, t0);
        // Closed at 12:00: nothing opens until 08:00 + 10 s next day.
        assert!(l.tick(utc("2026-01-07T07:00:00Z")).is_empty());
        let events = l.tick(utc("2026-01-07T08:00:10Z"));
        assert_eq!(events.len(), 1, "{events:?}");
    }

    proptest! {
        /// Ticking only due lanes finds the same gaps as ticking every
        /// partition's detector every second.
        #[test]
        fn matches_one_detector_per_partition_ticked_every_second(
            steps in proptest::collection::vec((0usize..3, 0i64..30, any::<bool>()), 1..60)
        ) {
            let t0 = utc("2026-01-06T10:00:00Z");
            let names = ["a", "b", "c"];
            let mut l = lanes(&names, t0);
            let mut plain: Vec<Detector> = names
                .iter()
                .map(|_| Detector::new(MAX_SILENCE, ActiveWindow::always(), DetectorState::default()))
                .collect();
            let mut now = t0;
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (p, wait, observe) in steps {
                for _ in 0..wait {
                    now += secs(1);
                    got.extend(l.tick(now).into_iter().map(|(k, e)| (k.to_string(), e)));
                    for (i, d) in plain.iter_mut().enumerate() {
                        if let Some(e) = d.tick(now) {
                            want.push((names[i].to_string(), e));
                        }
                    }
                }
                if observe {
                    let a = l.observe(names[p], now, now).flatten();
                    let b = plain[p].observe(now, now);
                    prop_assert_eq!(a, b);
                }
            }
            got.sort_by_key(|(k, e)| (format!("{e:?}"), k.clone()));
            want.sort_by_key(|(k, e)| (format!("{e:?}"), k.clone()));
            prop_assert_eq!(got, want);
        }
    }
}
