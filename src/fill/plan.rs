//! Chunk planning: which time windows a fill must request, and in what pieces.
//!
//! A gap is filled as a list of consecutive half-open windows ("chunks"), each
//! fetched and checkpointed on its own so a restart resumes mid-gap. While a
//! gap is still open the plan grows at its end ("follow mode"); it never
//! shrinks and never moves its start.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

pub(crate) use crate::timefmt::Resolution;

/// A half-open time interval `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: DateTime<Utc>,
    pub(crate) end: DateTime<Utc>,
}

/// What a `--dry-run` prints about a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlanEstimate {
    /// Number of windows.
    pub(crate) chunks: usize,
    /// `chunks × pages_per_chunk`.
    pub(crate) requests: u64,
    /// The least wall time the requests can take under the rate limit.
    pub(crate) min_duration: Duration,
}

/// The interval a fill of gap `[gap_start, gap_end)` must cover now
/// (`gap_end = None`: the gap is still open), on the source's resolution.
///
/// Covers `[gap_start − overlap, gap_end + overlap)` because the gap's edges
/// are only known to the detector's resolution and late events land just
/// outside them; duplicates from the overlap are cheap, a missed edge is not.
/// Never extends past `now − settle`: the vendor's API is eventually
/// consistent, and a window fetched before it settles would be checkpointed
/// as done while still missing records. `None` when that leaves nothing
/// (the gap is too recent).
///
/// Both ends sit on `res`: the start rounded towards the past and a closed
/// gap's end towards the future (never losing an edge), `now − settle`
/// towards the past (never fetching the unsettled). Every window planned from
/// such a target therefore asks the API exactly for what it covers.
///
/// Saturates at chrono's representable range instead of panicking.
pub(crate) fn fill_target(
    gap_start: DateTime<Utc>,
    gap_end: Option<DateTime<Utc>>,
    overlap: Duration,
    settle: Duration,
    now: DateTime<Utc>,
    res: Resolution,
) -> Option<Window> {
    let start = res.floor(sub(gap_start, overlap));
    let settled = res.floor(sub(now, settle));
    let end = match gap_end {
        Some(e) => res.ceil(add(e, overlap)).min(settled),
        None => settled,
    };
    (start < end).then_some(Window { start, end })
}

/// Splits `[from, to)` into consecutive windows of at most `chunk` (the last
/// may be shorter), lazily: a month of one-second chunks is never held in
/// memory at once. The windows cover the interval exactly, never overlap and
/// are never empty; an empty or inverted interval gives no windows.
///
/// Edges between windows sit on `res` (a window is then at least one `res`
/// long, even if `chunk` is shorter); with `from` and `to` on `res` too, every
/// edge is one the source can be asked for exactly.
///
/// A zero `chunk` cannot make progress and is rejected by config validation;
/// here it means "one window" so a bad value can never loop.
pub(crate) fn split(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    chunk: Duration,
    res: Resolution,
) -> Split {
    let step = TimeDelta::from_std(chunk)
        .ok()
        .filter(|d| *d > TimeDelta::zero());
    Split {
        next: from,
        to,
        step,
        res,
    }
}

/// The windows of [`split`], in order.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    next: DateTime<Utc>,
    to: DateTime<Utc>,
    /// `None`: zero, or longer than chrono can represent: a single window.
    step: Option<TimeDelta>,
    res: Resolution,
}

impl Iterator for Split {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        let start = self.next;
        if start >= self.to {
            return None;
        }
        let end = match self.step.and_then(|d| start.checked_add_signed(d)) {
            Some(e) => {
                let aligned = self.res.floor(e);
                if aligned > start {
                    aligned
                } else {
                    self.res.floor(start) + self.res.step()
                }
            }
            None => self.to,
        }
        .min(self.to);
        self.next = end;
        Some(Window { start, end })
    }
}

/// Follow mode: the windows already planned cover `[target.start, covered_to)`;
/// returns the windows to append so coverage reaches `target.end`, or nothing
/// if the plan should wait.
///
/// - `is_final = false` (gap still open): extend only once at least
///   `min(chunk, follow_step)` is uncovered, then all the way to
///   `target.end` in pieces of at most `chunk`. Waiting for a whole `chunk`
///   would leave an open gap unfilled for up to a chunk (often an hour);
///   waiting for `follow_step` keeps it minutes behind without planning a
///   sliver on every tick.
/// - `is_final = true` (gap closed, or a manual backfill): extend all the
///   way, however small the remainder, so the plan ends exactly at the target.
///
/// New windows start exactly at `covered_to`, keeping the plan contiguous.
/// `target.start` is not consulted: it is fixed for a gap (`gap_start` does
/// not move, so `gap_start − overlap` does not either). If it ever moved
/// earlier (the configured overlap grew across a restart), the extra margin
/// would not be planned, which is harmless: the overlap is slack, not part of
/// the gap. If the target's end fell behind `covered_to` (the gap closed
/// earlier than already planned), nothing is added: over-coverage only costs
/// duplicates.
pub(crate) fn extend(
    covered_to: DateTime<Utc>,
    target: Window,
    chunk: Duration,
    follow_step: Duration,
    is_final: bool,
    res: Resolution,
) -> Split {
    let nothing = split(covered_to, covered_to, chunk, res);
    if covered_to >= target.end {
        return nothing;
    }
    if !is_final {
        let threshold = TimeDelta::from_std(chunk.min(follow_step)).unwrap_or(TimeDelta::MAX);
        if target.end.signed_duration_since(covered_to) < threshold {
            return nothing;
        }
    }
    split(covered_to, target.end, chunk, res)
}

/// The window a source is asked for when fetching `w`: `w` itself when it
/// sits on `res` (every window planned by this module does), else widened
/// to the resolution around it, so a chunk planned before windows were
/// aligned still has its every instant asked for. Records the wider query
/// returns outside `w` belong to a neighbouring chunk.
pub(crate) fn query_window(w: Window, res: Resolution) -> Window {
    Window {
        start: res.floor(w.start),
        end: res.ceil(w.end),
    }
}

/// When [`extend`] next has something worth planning for a gap whose plan
/// covers up to `covered_to`: a closed gap once the rest of its interval
/// (`gap_end + overlap`) is settled, so its last chunk is fetched at the
/// earliest instant it is complete; an open gap once one more
/// `min(chunk, follow_step)` is settled. `None`: the plan is complete.
///
/// Edges sit on `res` (see [`fill_target`]): a closed gap's plan ends at
/// `gap_end + overlap` rounded up, and `now − settle` counts once rounded
/// down, so that is when it is due (earlier, a pass would find nothing new
/// and be due again at once).
pub(crate) fn next_plan_due(
    gap_end: Option<DateTime<Utc>>,
    overlap: Duration,
    settle: Duration,
    covered_to: DateTime<Utc>,
    chunk: Duration,
    follow_step: Duration,
    res: Resolution,
) -> Option<DateTime<Utc>> {
    match gap_end {
        Some(end) => {
            let wanted = res.ceil(add(end, overlap));
            (covered_to < wanted).then(|| add(wanted, settle))
        }
        None => Some(add(
            res.ceil(add(covered_to, chunk.min(follow_step))),
            settle,
        )),
    }
}

/// Sizes a plan for `--dry-run`: `requests = chunks × pages_per_chunk`
/// (saturating), and the least time those requests take when the source
/// allows `rate_per_second`: the first request goes at once and each further
/// one waits `1/rate` (burst allowance ignored, so it is a lower bound only
/// up to the burst size). A rate that is not a positive finite number means
/// no limit: zero.
pub(crate) fn estimate(chunks: usize, pages_per_chunk: u64, rate_per_second: f64) -> PlanEstimate {
    let requests = u64::try_from(chunks)
        .unwrap_or(u64::MAX)
        .saturating_mul(pages_per_chunk);
    let min_duration = if rate_per_second.is_finite() && rate_per_second > 0.0 {
        // u64 → f64 may round for astronomically many requests; this is an estimate.
        Duration::try_from_secs_f64(requests.saturating_sub(1) as f64 / rate_per_second)
            .unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    };
    PlanEstimate {
        chunks,
        requests,
        min_duration,
    }
}

fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn sub(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3600);
    const SEC: Resolution = Resolution::SECOND;

    // The examples below plan at millisecond resolution; the second-resolution
    // cases call the functions of the module directly.
    fn fill_target(
        gap_start: DateTime<Utc>,
        gap_end: Option<DateTime<Utc>>,
        overlap: Duration,
        settle: Duration,
        now: DateTime<Utc>,
    ) -> Option<Window> {
        super::fill_target(
            gap_start,
            gap_end,
            overlap,
            settle,
            now,
            Resolution::MILLISECOND,
        )
    }

    fn split(from: DateTime<Utc>, to: DateTime<Utc>, chunk: Duration) -> Vec<Window> {
        super::split(from, to, chunk, Resolution::MILLISECOND).collect()
    }

    fn extend(
        covered_to: DateTime<Utc>,
        target: Window,
        chunk: Duration,
        step: Duration,
        is_final: bool,
    ) -> Vec<Window> {
        super::extend(
            covered_to,
            target,
            chunk,
            step,
            is_final,
            Resolution::MILLISECOND,
        )
        .collect()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn next_plan_due_table() {
        let s = Duration::from_secs;
        // Closed: once end + overlap is settled, whatever is covered already.
        assert_eq!(
            next_plan_due(
                Some(t("2026-01-01T00:00:20Z")),
                s(2),
                s(1),
                t("2026-01-01T00:00:19Z"),
                HOUR,
                MIN,
                Resolution::MILLISECOND
            ),
            Some(t("2026-01-01T00:00:23Z"))
        );
        // Closed and covered: nothing more to plan.
        assert_eq!(
            next_plan_due(
                Some(t("2026-01-01T00:00:20Z")),
                s(2),
                s(1),
                t("2026-01-01T00:00:22Z"),
                HOUR,
                MIN,
                Resolution::MILLISECOND
            ),
            None
        );
        // Open: one more follow step, settled.
        assert_eq!(
            next_plan_due(
                None,
                s(2),
                s(1),
                t("2026-01-01T00:00:10Z"),
                HOUR,
                s(2),
                Resolution::MILLISECOND
            ),
            Some(t("2026-01-01T00:00:13Z"))
        );
        // Open with a chunk smaller than the follow step.
        assert_eq!(
            next_plan_due(
                None,
                s(2),
                s(1),
                t("2026-01-01T00:00:10Z"),
                s(1),
                MIN,
                Resolution::MILLISECOND
            ),
            Some(t("2026-01-01T00:00:12Z"))
        );
        // Whole seconds: the end (20.25 + 2) is asked for up to 23, settled at 24;
        // a follow step of 1.5 s from 10 reaches the whole second 12.
        assert_eq!(
            next_plan_due(
                Some(t("2026-01-01T00:00:20.250Z")),
                s(2),
                s(1),
                t("2026-01-01T00:00:19Z"),
                HOUR,
                MIN,
                SEC
            ),
            Some(t("2026-01-01T00:00:24Z"))
        );
        assert_eq!(
            next_plan_due(
                None,
                s(2),
                s(1),
                t("2026-01-01T00:00:10Z"),
                HOUR,
                Duration::from_millis(1500),
                SEC
            ),
            Some(t("2026-01-01T00:00:13Z"))
        );
        // And at that instant the plan indeed reaches the end.
        let target = super::fill_target(
            t("2026-01-01T00:00:05Z"),
            Some(t("2026-01-01T00:00:20.250Z")),
            s(2),
            s(1),
            t("2026-01-01T00:00:24Z"),
            SEC,
        )
        .unwrap();
        assert_eq!(target.end, t("2026-01-01T00:00:23Z"));
    }

    fn w(a: &str, b: &str) -> Window {
        Window {
            start: t(a),
            end: t(b),
        }
    }

    /// Asserts that `ws` tile `[from, to)`: contiguous, non-empty, exact.
    fn assert_tiles(ws: &[Window], from: DateTime<Utc>, to: DateTime<Utc>) {
        assert_eq!(ws.first().map(|w| w.start), Some(from));
        assert_eq!(ws.last().map(|w| w.end), Some(to));
        for pair in ws.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(ws.iter().all(|w| w.start < w.end));
    }

    #[test]
    fn fill_target_closed_gap() {
        let got = fill_target(
            t("2024-05-01T10:00:00Z"),
            Some(t("2024-05-01T11:00:00Z")),
            5 * MIN,
            2 * MIN,
            t("2024-05-01T12:00:00Z"),
        );
        assert_eq!(got, Some(w("2024-05-01T09:55:00Z", "2024-05-01T11:05:00Z")));
        // Closed, but the trailing overlap has not settled yet.
        let got = fill_target(
            t("2024-05-01T10:00:00Z"),
            Some(t("2024-05-01T11:00:00Z")),
            5 * MIN,
            2 * MIN,
            t("2024-05-01T11:04:00Z"),
        );
        assert_eq!(got, Some(w("2024-05-01T09:55:00Z", "2024-05-01T11:02:00Z")));
    }

    #[test]
    fn fill_target_open_gap_and_too_recent() {
        let got = fill_target(
            t("2024-05-01T10:00:00Z"),
            None,
            5 * MIN,
            2 * MIN,
            t("2024-05-01T10:30:00Z"),
        );
        assert_eq!(got, Some(w("2024-05-01T09:55:00Z", "2024-05-01T10:28:00Z")));
        // now − settle is before the start: nothing to do yet.
        assert_eq!(
            fill_target(
                t("2024-05-01T10:00:00Z"),
                None,
                MIN,
                10 * MIN,
                t("2024-05-01T10:05:00Z")
            ),
            None
        );
        assert_eq!(
            fill_target(
                t("2024-05-01T10:00:00Z"),
                None,
                MIN,
                2 * MIN,
                t("2024-05-01T10:01:00Z")
            ),
            None
        );
        // Huge durations saturate instead of panicking.
        let got = fill_target(
            t("2024-05-01T10:00:00Z"),
            Some(t("2024-05-01T11:00:00Z")),
            Duration::MAX,
            Duration::ZERO,
            t("2024-05-01T12:00:00Z"),
        );
        assert_eq!(
            got,
            Some(Window {
                start: DateTime::<Utc>::MIN_UTC,
                end: t("2024-05-01T12:00:00Z")
            })
        );
    }

    #[test]
    fn split_examples() {
        let ws = split(t("2024-05-01T10:00:00Z"), t("2024-05-01T12:30:00Z"), HOUR);
        assert_eq!(
            ws,
            vec![
                w("2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z"),
                w("2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"),
                w("2024-05-01T12:00:00Z", "2024-05-01T12:30:00Z"),
            ]
        );
        assert_eq!(
            split(t("2024-05-01T10:00:00Z"), t("2024-05-01T10:00:00Z"), HOUR),
            vec![]
        );
        assert_eq!(
            split(t("2024-05-01T11:00:00Z"), t("2024-05-01T10:00:00Z"), HOUR),
            vec![]
        );
        assert_eq!(
            split(
                t("2024-05-01T10:00:00Z"),
                t("2024-05-01T12:00:00Z"),
                Duration::ZERO
            ),
            vec![w("2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z")]
        );
        assert_eq!(
            split(
                t("2024-05-01T10:00:00Z"),
                t("2024-05-01T12:00:00Z"),
                Duration::MAX
            ),
            vec![w("2024-05-01T10:00:00Z", "2024-05-01T12:00:00Z")]
        );
    }

    /// An open gap growing over time, then closing: the plan follows within
    /// `follow_step`, stays contiguous, and ends exactly at the final target.
    #[test]
    fn follow_open_gap_then_close() {
        let gap_start = t("2024-05-01T10:00:00Z");
        let (overlap, settle, chunk, step) = (5 * MIN, 2 * MIN, HOUR, 5 * MIN);
        let mut plan: Vec<Window> = Vec::new();
        let mut tick = |now: &str, gap_end: Option<&str>| -> Vec<Window> {
            let Some(target) = fill_target(gap_start, gap_end.map(t), overlap, settle, t(now))
            else {
                return Vec::new();
            };
            let covered_to = plan.last().map_or(target.start, |w| w.end);
            let new = extend(covered_to, target, chunk, step, gap_end.is_some());
            plan.extend(&new);
            new
        };
        // Detected at 10:03: target [09:55, 10:01) is only 6 min; ≥ step, so plan it.
        assert_eq!(
            tick("2024-05-01T10:03:00Z", None),
            vec![w("2024-05-01T09:55:00Z", "2024-05-01T10:01:00Z")]
        );
        // One minute later only 1 min is new: wait.
        assert_eq!(tick("2024-05-01T10:04:00Z", None), vec![]);
        // Five minutes after the last window end: extend by the 5 min.
        assert_eq!(
            tick("2024-05-01T10:08:00Z", None),
            vec![w("2024-05-01T10:01:00Z", "2024-05-01T10:06:00Z")]
        );
        // Daemon was down for 3 hours: catch up in whole chunks plus the tail.
        assert_eq!(
            tick("2024-05-01T13:30:00Z", None),
            vec![
                w("2024-05-01T10:06:00Z", "2024-05-01T11:06:00Z"),
                w("2024-05-01T11:06:00Z", "2024-05-01T12:06:00Z"),
                w("2024-05-01T12:06:00Z", "2024-05-01T13:06:00Z"),
                w("2024-05-01T13:06:00Z", "2024-05-01T13:28:00Z"),
            ]
        );
        // The gap closes at 13:29; the trailing overlap (to 13:34) settles by 13:36.
        assert_eq!(
            tick("2024-05-01T13:31:00Z", Some("2024-05-01T13:29:00Z")),
            vec![w("2024-05-01T13:28:00Z", "2024-05-01T13:29:00Z")]
        );
        assert_eq!(
            tick("2024-05-01T13:40:00Z", Some("2024-05-01T13:29:00Z")),
            vec![w("2024-05-01T13:29:00Z", "2024-05-01T13:34:00Z")]
        );
        assert_eq!(
            tick("2024-05-01T14:00:00Z", Some("2024-05-01T13:29:00Z")),
            vec![]
        );
        assert_tiles(&plan, t("2024-05-01T09:55:00Z"), t("2024-05-01T13:34:00Z"));
    }

    #[test]
    fn extend_resumes_from_the_middle() {
        // After a restart the store says chunks cover up to 11:00.
        let target = w("2024-05-01T09:55:00Z", "2024-05-01T13:05:00Z");
        let new = extend(t("2024-05-01T11:00:00Z"), target, HOUR, 5 * MIN, true);
        assert_eq!(
            new,
            vec![
                w("2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"),
                w("2024-05-01T12:00:00Z", "2024-05-01T13:00:00Z"),
                w("2024-05-01T13:00:00Z", "2024-05-01T13:05:00Z"),
            ]
        );
        // Final: even a sliver is planned; open: it waits.
        let target = w("2024-05-01T09:55:00Z", "2024-05-01T11:00:30Z");
        assert_eq!(
            extend(t("2024-05-01T11:00:00Z"), target, HOUR, 5 * MIN, true).len(),
            1
        );
        assert_eq!(
            extend(t("2024-05-01T11:00:00Z"), target, HOUR, 5 * MIN, false),
            vec![]
        );
        // Already past the target (the gap closed earlier than planned): nothing.
        assert_eq!(
            extend(t("2024-05-01T12:00:00Z"), target, HOUR, 5 * MIN, true),
            vec![]
        );
        // The threshold is min(chunk, step): a chunk smaller than the step wins.
        let target = w("2024-05-01T09:55:00Z", "2024-05-01T11:02:00Z");
        assert_eq!(
            extend(t("2024-05-01T11:00:00Z"), target, 2 * MIN, 5 * MIN, false).len(),
            1
        );
    }

    /// The case that lost records: a follow step ending inside a second, then
    /// the next chunk starting there, against an API that knows seconds only.
    #[test]
    fn second_resolution_edges_sit_on_whole_seconds() {
        let gap_start = t("2024-05-01T10:00:23.162Z");
        let target = super::fill_target(
            gap_start,
            None,
            2 * Duration::from_secs(1),
            Duration::from_secs(1),
            t("2024-05-01T10:00:29.561Z"),
            SEC,
        )
        .unwrap();
        assert_eq!(target, w("2024-05-01T10:00:21Z", "2024-05-01T10:00:28Z"));
        let first: Vec<_> = super::extend(
            target.start,
            target,
            20 * MIN,
            Duration::from_secs(2),
            false,
            SEC,
        )
        .collect();
        assert_eq!(first, vec![target]);
        // The gap closes at 10:00:40.250; the trailing overlap ends at 42.250,
        // which is asked for as the whole second 42.
        let closed = super::fill_target(
            gap_start,
            Some(t("2024-05-01T10:00:40.250Z")),
            2 * Duration::from_secs(1),
            Duration::from_secs(1),
            t("2024-05-01T10:01:00Z"),
            SEC,
        )
        .unwrap();
        assert_eq!(closed, w("2024-05-01T10:00:21Z", "2024-05-01T10:00:43Z"));
        let rest: Vec<_> = super::extend(
            first[0].end,
            closed,
            Duration::from_millis(6_500),
            Duration::from_secs(2),
            true,
            SEC,
        )
        .collect();
        assert_eq!(
            rest,
            vec![
                w("2024-05-01T10:00:28Z", "2024-05-01T10:00:34Z"),
                w("2024-05-01T10:00:34Z", "2024-05-01T10:00:40Z"),
                w("2024-05-01T10:00:40Z", "2024-05-01T10:00:43Z"),
            ]
        );
        // A chunk shorter than the resolution still advances by one step.
        let tiny: Vec<_> = super::split(
            t("2024-05-01T10:00:00Z"),
            t("2024-05-01T10:00:02Z"),
            Duration::from_millis(300),
            SEC,
        )
        .collect();
        assert_eq!(
            tiny,
            vec![
                w("2024-05-01T10:00:00Z", "2024-05-01T10:00:01Z"),
                w("2024-05-01T10:00:01Z", "2024-05-01T10:00:02Z"),
            ]
        );
        // A window planned before alignment is asked for around its edges.
        assert_eq!(
            query_window(
                w("2024-05-01T10:00:21.162Z", "2024-05-01T10:00:28.561Z"),
                SEC
            ),
            w("2024-05-01T10:00:21Z", "2024-05-01T10:00:29Z")
        );
    }

    #[test]
    fn estimate_dry_run() {
        let ws = split(t("2024-05-01T00:00:00Z"), t("2024-05-02T00:00:00Z"), HOUR);
        let e = estimate(ws.len(), 5, 10.0);
        assert_eq!(
            e,
            PlanEstimate {
                chunks: 24,
                requests: 120,
                min_duration: Duration::from_millis(11_900)
            }
        );
        assert_eq!(estimate(ws.len(), 5, 0.0).min_duration, Duration::ZERO);
        assert_eq!(estimate(ws.len(), 5, f64::NAN).min_duration, Duration::ZERO);
        assert_eq!(
            estimate(0, 5, 10.0),
            PlanEstimate {
                chunks: 0,
                requests: 0,
                min_duration: Duration::ZERO
            }
        );
        assert_eq!(estimate(ws.len(), u64::MAX, 1e-300).requests, u64::MAX);
        assert_eq!(
            estimate(ws.len(), u64::MAX, 1e-300).min_duration,
            Duration::MAX
        );
    }

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        // 2000-01-01 .. 2100-01-01, nanosecond resolution.
        (946_684_800_i64..4_102_444_800, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap())
    }

    proptest! {
        #[test]
        fn split_tiles_exactly(from in instant(), len_ms in 0i64..10_000_000_000, chunk_ms in 1u64..100_000_000) {
            // The store keeps milliseconds: planned edges are whole milliseconds.
            let from = Resolution::MILLISECOND.floor(from);
            let to = from + TimeDelta::milliseconds(len_ms);
            let chunk = Duration::from_millis(chunk_ms);
            let ws = split(from, to, chunk);
            if len_ms == 0 {
                prop_assert!(ws.is_empty());
            } else {
                prop_assert_eq!(ws.first().unwrap().start, from);
                prop_assert_eq!(ws.last().unwrap().end, to);
                for pair in ws.windows(2) {
                    prop_assert_eq!(pair[0].end, pair[1].start);
                }
                for w in &ws {
                    prop_assert!(w.start < w.end);
                    prop_assert!((w.end - w.start).to_std().unwrap() <= chunk);
                }
                // Only the last may be short.
                for w in &ws[..ws.len() - 1] {
                    prop_assert_eq!((w.end - w.start).to_std().unwrap(), chunk);
                }
            }
        }

        /// In any resolution, from any unaligned gap edges and ticks: the
        /// plan tiles the final target, every edge sits on the resolution (so
        /// each query covers exactly its window), and the target covers the
        /// gap plus overlap.
        #[test]
        fn plans_sit_on_the_source_resolution(
            gap_start in instant(),
            res_ms in prop_oneof![Just(1u64), Just(1000), 1u64..5000],
            ticks in proptest::collection::vec(0u64..30_000, 1..20),
            overlap_ms in 0u64..5000, settle_ms in 0u64..5000,
            chunk_ms in 500u64..60_000, step_ms in 0u64..10_000,
        ) {
            let res = Resolution::from_millis(res_ms).unwrap();
            let (overlap, settle) = (Duration::from_millis(overlap_ms), Duration::from_millis(settle_ms));
            let (chunk, step) = (Duration::from_millis(chunk_ms), Duration::from_millis(step_ms));
            let mut now = gap_start;
            let mut plan: Vec<Window> = Vec::new();
            for dt in &ticks {
                now += TimeDelta::milliseconds(*dt as i64);
                if let Some(target) = super::fill_target(gap_start, None, overlap, settle, now, res) {
                    prop_assert!(target.end <= now - TimeDelta::from_std(settle).unwrap());
                    let covered = plan.last().map_or(target.start, |w| w.end);
                    plan.extend(super::extend(covered, target, chunk, step, false, res));
                }
            }
            let gap_end = now;
            let later = now + TimeDelta::hours(1);
            let target = super::fill_target(gap_start, Some(gap_end), overlap, settle, later, res).unwrap();
            let o = TimeDelta::from_std(overlap).unwrap();
            prop_assert!(target.start <= gap_start - o);
            prop_assert!(target.end >= gap_end + o);
            let covered = plan.last().map_or(target.start, |w| w.end);
            plan.extend(super::extend(covered, target, chunk, step, true, res));
            assert_tiles(&plan, target.start, target.end);
            for w in &plan {
                prop_assert!(res.is_aligned(w.start) && res.is_aligned(w.end), "{w:?} off {res}");
                prop_assert_eq!(query_window(*w, res), *w);
            }
        }

        /// Whatever the sequence of ticks, the plan stays a contiguous tiling
        /// of [target.start, last end), never passes the target, and a final
        /// tick completes it.
        #[test]
        fn follow_mode_stays_contiguous(
            gap_start in instant(),
            ticks in proptest::collection::vec(0u64..7200, 1..30),
            overlap_s in 0u64..600, settle_s in 0u64..600,
            chunk_s in 1u64..7200, step_s in 0u64..900,
        ) {
            let (overlap, settle) = (Duration::from_secs(overlap_s), Duration::from_secs(settle_s));
            let (chunk, step) = (Duration::from_secs(chunk_s), Duration::from_secs(step_s));
            let mut now = gap_start;
            let mut plan: Vec<Window> = Vec::new();
            for dt in &ticks {
                now += TimeDelta::seconds(*dt as i64);
                if let Some(target) = fill_target(gap_start, None, overlap, settle, now) {
                    let covered = plan.last().map_or(target.start, |w| w.end);
                    let new = extend(covered, target, chunk, step, false);
                    if let Some(first) = new.first() {
                        prop_assert_eq!(first.start, covered);
                    }
                    for w in &new {
                        prop_assert!(w.end <= target.end);
                    }
                    plan.extend(new);
                    // After an extension the remainder is less than a step (or nothing was pending).
                    let covered = plan.last().map_or(target.start, |w| w.end);
                    prop_assert!(target.end - covered < TimeDelta::from_std(chunk.min(step)).unwrap() || covered == target.end);
                }
            }
            let gap_end = now;
            let later = now + TimeDelta::hours(1);
            let target = fill_target(gap_start, Some(gap_end), overlap, settle, later).unwrap();
            let covered = plan.last().map_or(target.start, |w| w.end);
            plan.extend(extend(covered, target, chunk, step, true));
            assert_tiles(&plan, target.start, target.end);
        }
    }
}
