//! The vendor's own account of its rate limit, read from response headers, so
//! a source slows down before the vendor answers 429.
//!
//! Headers read (the first present wins, each a number):
//! - `X-RateLimit-Remaining` / `X-RateLimit-Reset` (GitHub, Twitter, Shopify…),
//! - `RateLimit-Remaining` / `RateLimit-Reset` (IETF draft, up to -06),
//! - `RateLimit` (IETF draft: `limit=100, remaining=0, reset=30`, or from
//!   -07 on `"default";r=0;t=30`, one list member per policy; the most
//!   restrictive policy counts).
//!
//! A reset is seconds until the window resets, or (as `X-RateLimit-Reset`
//! often is) the unix time it resets at: a value from 10^9 (2001) on is unix
//! seconds, from 10^12 on unix milliseconds; an HTTP date is also read. A
//! wait is capped at [`MAX_WAIT`]: past it, a request goes out anyway and a
//! 429 is handled by the retry policy.
//!
//! [`Quota`] is the pure part: the requests a source may still send before
//! the reset, less those sent since the vendor last said so, and less those
//! in flight when it said so (their answers are not in its count yet). When
//! that budget is spent, every request of the source waits for the reset.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The longest wait for a quota reset (the cap on `Retry-After` too).
pub(crate) const MAX_WAIT: Duration = crate::retry::MAX_RETRY_AFTER;

/// What one answer said about the vendor's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuotaHint {
    /// Requests left in the current window.
    pub(crate) remaining: u64,
    /// Time until the window resets, if the answer said.
    pub(crate) reset: Option<Duration>,
}

/// Reads the quota headers of an answer; `get` returns a header's value by
/// (lower-case) name. `None` when no remaining count is given. Values that
/// cannot be read are ignored, never an error.
pub(crate) fn read_headers<'a>(
    get: impl Fn(&str) -> Option<&'a [u8]>,
    now: SystemTime,
) -> Option<QuotaHint> {
    let text = |name: &str| get(name).and_then(|v| std::str::from_utf8(v).ok());
    let separate = |prefix: &str| {
        let remaining = text(&format!("{prefix}remaining")).and_then(count)?;
        let reset = text(&format!("{prefix}reset")).and_then(|v| reset(v, now));
        Some(QuotaHint { remaining, reset })
    };
    separate("x-ratelimit-")
        .or_else(|| separate("ratelimit-"))
        .or_else(|| text("ratelimit").and_then(|v| combined(v, now)))
}

/// A count of requests: a non-negative number (a fraction is rounded down,
/// a negative count is none left).
fn count(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<i64>() {
        return Some(n.max(0).unsigned_abs());
    }
    let f = v.parse::<f64>().ok().filter(|f| f.is_finite())?;
    // Saturating: a count past u64 is as good as unlimited.
    Some(f.max(0.0).floor() as u64)
}

/// A reset: delta seconds, unix seconds or milliseconds, or an HTTP date.
fn reset(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if let Ok(n) = v.parse::<f64>() {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let at = if n >= 1e12 {
            Duration::try_from_secs_f64(n / 1000.0).ok()?
        } else if n >= 1e9 {
            Duration::try_from_secs_f64(n).ok()?
        } else {
            return Duration::try_from_secs_f64(n).ok();
        };
        return Some(at.saturating_sub(since_epoch));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The combined `RateLimit` field: the most restrictive policy (fewest
/// requests left; of those, the latest reset).
fn combined(v: &str, now: SystemTime) -> Option<QuotaHint> {
    let mut policies = Vec::new();
    let (mut any_r, mut any_t) = (None, None);
    for member in v.split(',') {
        let (mut r, mut t) = (None, None);
        for param in member.split(';') {
            let Some((k, val)) = param.split_once('=') else {
                continue;
            };
            let val = val.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "r" | "remaining" => r = count(val),
                "t" | "reset" => t = reset(val, now),
                _ => {}
            }
        }
        any_r = any_r.or(r);
        any_t = any_t.or(t);
        if let Some(remaining) = r {
            policies.push(QuotaHint {
                remaining,
                reset: t,
            });
        }
    }
    // The older draft writes one policy's parameters as list members.
    if policies.len() > 1 && policies.iter().all(|p| p.reset.is_none()) {
        policies = vec![QuotaHint {
            remaining: any_r?,
            reset: any_t,
        }];
    } else if let [p] = policies.as_mut_slice() {
        p.reset = p.reset.or(any_t);
    }
    policies
        .into_iter()
        .min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
}

/// How long around an expected reset another answer's reset is taken for
/// the same window (headers are in whole seconds).
const SAME_WINDOW: Duration = Duration::from_secs(1);

/// The quota state of one source (shared by its concurrent requests).
#[derive(Debug, Default)]
pub(crate) struct Quota {
    /// Requests the vendor will still take before `reset_at`; `None`: not
    /// known (no hint yet, or the window it was about has passed).
    budget: Option<i64>,
    reset_at: Option<Instant>,
    /// Requests sent and not answered.
    in_flight: u64,
    /// The reset the last wait was announced for (logged once per pause).
    announced: Option<Instant>,
}

/// A request must wait for the quota to reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wait {
    pub(crate) until: Instant,
    /// The first request to wait for this reset (worth one log line).
    pub(crate) first: bool,
}

impl Quota {
    /// Before a request: `Err` when it must wait for the reset; else the
    /// request is counted (budget and in flight) and must be followed by
    /// [`answered`](Self::answered).
    pub(crate) fn acquire(&mut self, now: Instant) -> Result<(), Wait> {
        if self.reset_at.is_some_and(|r| r <= now) {
            self.budget = None;
            self.reset_at = None;
        }
        if let (Some(b), Some(until)) = (self.budget, self.reset_at) {
            if b <= 0 {
                let first = self.announced != Some(until);
                self.announced = Some(until);
                return Err(Wait { until, first });
            }
        }
        if let Some(b) = &mut self.budget {
            *b -= 1;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// After a request was answered (`hint` from its headers) or failed
    /// without an answer (`None`).
    pub(crate) fn answered(&mut self, hint: Option<QuotaHint>, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        // Without a reset there is nothing to wait for: a 429 and its
        // Retry-After will say.
        let (remaining, reset) = match hint {
            Some(QuotaHint {
                remaining,
                reset: Some(reset),
            }) => (remaining, reset),
            _ => return,
        };
        let reset_at = now + reset.min(MAX_WAIT);
        // Requests still in flight were sent before this count was taken
        // (or not: assume not, the safe side).
        let budget = i64::try_from(remaining)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.in_flight).unwrap_or(i64::MAX));
        match (self.budget, self.reset_at) {
            // A later window than the one known: the count starts over.
            (_, Some(known)) if known > now && reset_at > known + SAME_WINDOW => {
                self.budget = Some(budget);
                self.reset_at = Some(reset_at);
            }
            // The same window (or an answer overtaken by a later one): the
            // lower count is the one that is still true.
            (Some(b), Some(known)) if known > now => {
                self.budget = Some(b.min(budget));
                self.reset_at = Some(known.max(reset_at));
            }
            _ => {
                self.budget = Some(budget);
                self.reset_at = Some(reset_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_UNIX: u64 = 1_800_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX)
    }

    fn read(headers: &[(&str, &str)]) -> Option<QuotaHint> {
        read_headers(
            |name| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
            },
            now(),
        )
    }

    fn hint(remaining: u64, reset_s: u64) -> Option<QuotaHint> {
        Some(QuotaHint {
            remaining,
            reset: Some(Duration::from_secs(reset_s)),
        })
    }

    #[test]
    fn header_styles() {
        let epoch = (NOW_UNIX + 30).to_string();
        let epoch_ms = ((NOW_UNIX + 30) * 1000).to_string();
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers, Option<QuotaHint>)] = &[
            (&[], None),
            (
                &[("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "30")],
                hint(0, 30),
            ),
            (
                &[
                    ("x-ratelimit-remaining", "4"),
                    ("x-ratelimit-reset", &epoch),
                ],
                hint(4, 30),
            ),
            (
                &[
                    ("X-RateLimit-Remaining", "4"),
                    ("X-RateLimit-Reset", &epoch_ms),
                ],
                hint(4, 30),
            ),
            // A reset in the past: no wait.
            (
                &[
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", "1700000000"),
                ],
                hint(0, 0),
            ),
            (
                &[
                    ("X-RateLimit-Remaining", "0"),
                    ("X-RateLimit-Reset", "Fri, 15 Jan 2027 08:00:30 GMT"),
                ],
                hint(0, 30),
            ),
            (
                &[("X-RateLimit-Remaining", "7")],
                Some(QuotaHint {
                    remaining: 7,
                    reset: None,
                }),
            ),
            (
                &[("RateLimit-Remaining", " 2 "), ("RateLimit-Reset", "5")],
                hint(2, 5),
            ),
            (
                &[("RateLimit", "limit=100, remaining=0, reset=12")],
                hint(0, 12),
            ),
            (&[("RateLimit", "\"default\";r=3;t=40")], hint(3, 40)),
            (
                &[("RateLimit", "\"burst\";r=20;t=1, \"daily\";r=0;t=600")],
                hint(0, 600),
            ),
            // X- first when both are present.
            (
                &[
                    ("RateLimit-Remaining", "9"),
                    ("RateLimit-Reset", "1"),
                    ("X-RateLimit-Remaining", "1"),
                    ("X-RateLimit-Reset", "2"),
                ],
                hint(1, 2),
            ),
            // Negative counts are none left; fractions round down.
            (
                &[
                    ("X-RateLimit-Remaining", "-3"),
                    ("X-RateLimit-Reset", "1.5"),
                ],
                Some(QuotaHint {
                    remaining: 0,
                    reset: Some(Duration::from_millis(1500)),
                }),
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(read(headers), *want, "{headers:?}");
        }
    }

    #[test]
    fn malformed_values_are_ignored() {
        for headers in [
            &[
                ("X-RateLimit-Remaining", "lots"),
                ("X-RateLimit-Reset", "1"),
            ][..],
            &[("X-RateLimit-Remaining", ""), ("X-RateLimit-Reset", "")][..],
            &[("X-RateLimit-Remaining", "NaN")][..],
            &[("RateLimit", "garbage;;==,,")][..],
            &[("RateLimit", "")][..],
        ] {
            assert_eq!(read(headers), None, "{headers:?}");
        }
        assert_eq!(
            read(&[
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", "soon")
            ]),
            Some(QuotaHint {
                remaining: 0,
                reset: None
            })
        );
        assert_eq!(
            read(&[
                ("X-RateLimit-Remaining", "0"),
                ("X-RateLimit-Reset", "1e400")
            ]),
            Some(QuotaHint {
                remaining: 0,
                reset: None
            })
        );
        // Not UTF-8.
        let hint = read_headers(
            |name| (name == "x-ratelimit-remaining").then_some(&b"\xff"[..]),
            now(),
        );
        assert_eq!(hint, None);
    }

    #[test]
    fn the_budget_runs_out_and_resets() {
        let t0 = Instant::now();
        let mut q = Quota::default();
        // Unknown: requests go.
        assert_eq!(q.acquire(t0), Ok(()));
        q.answered(hint(2, 10), t0);
        assert_eq!(q.acquire(t0), Ok(()));
        assert_eq!(q.acquire(t0), Ok(()));
        // Two sent on a budget of two: the third waits for the reset.
        let reset = t0 + Duration::from_secs(10);
        let wait = |first| {
            Err(Wait {
                until: reset,
                first,
            })
        };
        assert_eq!(q.acquire(t0), wait(true));
        q.answered(hint(1, 10), t0);
        q.answered(hint(0, 10), t0);
        assert_eq!(q.acquire(t0 + Duration::from_secs(9)), wait(false));
        // After the reset the count is unknown again.
        assert_eq!(q.acquire(reset), Ok(()));
        assert_eq!(q.acquire(reset), Ok(()));
    }

    #[test]
    fn requests_in_flight_are_not_in_the_vendors_count_yet() {
        let t0 = Instant::now();
        let mut q = Quota::default();
        for _ in 0..3 {
            q.acquire(t0).unwrap();
        }
        // The vendor has 2 left after the first; the other two in flight
        // may take them both.
        q.answered(hint(2, 5), t0);
        assert!(q.acquire(t0).is_err());
    }

    #[test]
    fn an_overtaken_answer_does_not_raise_the_count() {
        let t0 = Instant::now();
        let mut q = Quota::default();
        q.acquire(t0).unwrap();
        q.acquire(t0).unwrap();
        // The later request's answer arrives first.
        q.answered(hint(0, 5), t0);
        q.answered(hint(1, 5), t0);
        assert!(q.acquire(t0).is_err());
        // A later window starts the count over.
        let t1 = t0 + Duration::from_secs(1);
        q.answered(hint(5, 20), t1);
        assert_eq!(q.acquire(t1), Ok(()));
    }

    #[test]
    fn waits_are_capped_and_answers_without_a_reset_change_nothing() {
        let t0 = Instant::now();
        let mut q = Quota::default();
        q.acquire(t0).unwrap();
        q.answered(hint(0, 86_400), t0);
        assert_eq!(
            q.acquire(t0),
            Err(Wait {
                until: t0 + MAX_WAIT,
                first: true
            })
        );
        let mut q = Quota::default();
        q.acquire(t0).unwrap();
        let no_reset = Some(QuotaHint {
            remaining: 0,
            reset: None,
        });
        q.answered(no_reset, t0);
        assert_eq!(q.acquire(t0), Ok(()));
        assert_eq!(q.in_flight, 1);
        // A transport error only ends the request.
        q.answered(None, t0);
        assert_eq!(q.in_flight, 0);
    }
}
