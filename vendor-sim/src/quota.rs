//! A fixed-window request quota over the whole REST API, announced in
//! rate-limit headers the way real vendors do (`X-RateLimit-*`, the IETF
//! draft's `RateLimit-*` or its combined `RateLimit` field). A request past
//! the quota is answered 429 and counted: a client that reads the headers
//! never gets one.

use serde::{Deserialize, Serialize};

/// Which headers announce the quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    Ietf,
    /// `RateLimit: limit=N, remaining=N, reset=N`.
    Combined,
}

/// How the reset is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetStyle {
    /// Whole seconds until the window ends (rounded up).
    Seconds,
    /// The unix time (seconds, rounded up) the window ends at (GitHub).
    Epoch,
}

/// `POST /control/quota`; `null` (or `limit: 0`) turns the quota off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub limit: u64,
    pub window_ms: u64,
    pub headers: HeaderStyle,
    pub reset: ResetStyle,
}

#[derive(Debug, Default)]
pub struct Quota {
    pub config: Option<QuotaConfig>,
    /// Start of the current window (unix ms, a multiple of `window_ms`).
    window_start: i64,
    used: u64,
}

/// Headers to add to an answer.
pub type Headers = Vec<(&'static str, String)>;

impl Quota {
    pub fn set(&mut self, config: Option<QuotaConfig>) {
        self.config = config.filter(|c| c.limit > 0 && c.window_ms > 0);
        self.window_start = 0;
        self.used = 0;
    }

    /// Counts a request at `now_ms`: `None` without a quota; `Ok` with the
    /// headers of an admitted request; `Err` with those of a refused one
    /// and the seconds to its `Retry-After`.
    pub fn take(&mut self, now_ms: i64) -> Option<Result<Headers, (Headers, i64)>> {
        let c = self.config?;
        let window = i64::try_from(c.window_ms).unwrap_or(i64::MAX);
        let start = now_ms - now_ms.rem_euclid(window);
        if start != self.window_start {
            self.window_start = start;
            self.used = 0;
        }
        let end = start.saturating_add(window);
        let wait_s = (end - now_ms + 999) / 1000;
        let reset = match c.reset {
            ResetStyle::Seconds => wait_s,
            ResetStyle::Epoch => (end + 999) / 1000,
        };
        let admitted = self.used < c.limit;
        if admitted {
            self.used += 1;
        }
        let remaining = c.limit - self.used.min(c.limit);
        let headers = match c.headers {
            HeaderStyle::XRateLimit => vec![
                ("x-ratelimit-limit", c.limit.to_string()),
                ("x-ratelimit-remaining", remaining.to_string()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            HeaderStyle::Ietf => vec![
                ("ratelimit-limit", c.limit.to_string()),
                ("ratelimit-remaining", remaining.to_string()),
                ("ratelimit-reset", reset.to_string()),
            ],
            HeaderStyle::Combined => vec![(
                "ratelimit",
                format!("limit={}, remaining={remaining}, reset={reset}", c.limit),
            )],
        };
        Some(if admitted {
            Ok(headers)
        } else {
            Err((headers, wait_s.max(1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_ends() {
        let mut q = Quota::default();
        assert!(q.take(0).is_none());
        q.set(Some(QuotaConfig {
            limit: 2,
            window_ms: 2000,
            headers: HeaderStyle::XRateLimit,
            reset: ResetStyle::Epoch,
        }));
        let t = 1_800_000_000_500;
        let first = q.take(t).unwrap().unwrap();
        assert_eq!(first[1], ("x-ratelimit-remaining", "1".into()));
        assert_eq!(first[2], ("x-ratelimit-reset", "1800000002".into()));
        assert_eq!(q.take(t + 10).unwrap().unwrap()[1].1, "0");
        let (refused, retry) = q.take(t + 20).unwrap().unwrap_err();
        assert_eq!(refused[1].1, "0");
        assert_eq!(retry, 2);
        // The next window admits again.
        assert!(q.take(1_800_000_002_000).unwrap().is_ok());
        q.set(Some(QuotaConfig {
            limit: 3,
            window_ms: 1000,
            headers: HeaderStyle::Combined,
            reset: ResetStyle::Seconds,
        }));
        let h = q.take(1_800_000_000_100).unwrap().unwrap();
        assert_eq!(
            h,
            vec![("ratelimit", "limit=3, remaining=2, reset=1".into())]
        );
    }
}
