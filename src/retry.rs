//! The one retry policy: exponential backoff with full jitter and a cap, and a
//! server's `Retry-After` taking precedence.
//!
//! Pure: the caller passes the RNG and the current time and does the sleeping,
//! so tests are deterministic and need no clock.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured when the policy's own cap is smaller.
/// A server asking for hours is almost always misconfigured; waiting ten
/// minutes and asking again costs one request.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential
/// Backoff And Jitter"): delays are spread uniformly so that many workers that
/// failed together do not retry together.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Upper bound of the first retry's delay.
    pub(crate) base: Duration,
    /// Upper bound of any backoff delay.
    pub(crate) cap: Duration,
    /// Retries after the first attempt; `0` means never retry.
    pub(crate) max_retries: u32,
}

/// Errors at boundaries implement this so one retry loop can decide for all of them.
pub(crate) trait Retryable {
    /// Whether trying the same operation again may succeed (timeouts, 429,
    /// 5xx, connection resets), as opposed to failing the same way (4xx,
    /// malformed responses, configuration errors).
    fn is_retryable(&self) -> bool;

    /// The server's explicit hint of how long to wait, if it gave one.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based: the first retry is 1),
    /// or `None` when `attempt > max_retries` (give up).
    ///
    /// - Without a hint: uniform in `[0, min(cap, base·2^(attempt−1))]`.
    /// - With `retry_after > 0`: exactly that, but at most
    ///   `max(cap, MAX_RETRY_AFTER)` so a hostile or broken header cannot park
    ///   a worker for days.
    /// - `retry_after == 0` is treated as no hint: honouring it literally
    ///   would retry immediately, and a server that keeps answering
    ///   `Retry-After: 0` would get a tight loop.
    ///
    /// `attempt == 0` is treated as 1 rather than panicking.
    pub(crate) fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl rand::Rng,
    ) -> Option<Duration> {
        let attempt = attempt.max(1);
        if attempt > self.max_retries {
            return None;
        }
        if let Some(hint) = retry_after.filter(|d| !d.is_zero()) {
            return Some(hint.min(self.cap.max(MAX_RETRY_AFTER)));
        }
        // 2^31 · base already overflows any sane cap; clamping the exponent
        // keeps the shift in range, and a checked multiply saturates to cap.
        let factor = 1u32 << (attempt - 1).min(31);
        let ceiling = self
            .base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap));
        // u64 nanoseconds covers 584 years; anything longer is clamped.
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(rng.random_range(0..=ceiling_ns)))
    }

    /// [`delay`](Self::delay) for an error: `None` when the error is not
    /// retryable or retries are exhausted, else the delay, honouring the
    /// error's `retry_after`.
    pub(crate) fn delay_for(
        &self,
        attempt: u32,
        err: &(impl Retryable + ?Sized),
        rng: &mut impl rand::Rng,
    ) -> Option<Duration> {
        if !err.is_retryable() {
            return None;
        }
        self.delay(attempt, err.retry_after(), rng)
    }
}

/// Parses a `Retry-After` header value (RFC 9110 §10.2.3): either
/// delta-seconds (`"120"`) or an HTTP date, relative to `now`.
///
/// A date in the past (or `now`) gives `Some(0)`, which
/// [`RetryPolicy::delay`] reads as "no hint". Anything else (negative or
/// fractional numbers, unparseable dates, empty) is `None`. Huge
/// delta-seconds saturate rather than fail: the policy caps them anyway.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits, so the only possible parse failure is overflow.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_retries: 5,
        }
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let before = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 - 90);
        assert_eq!(
            parse_retry_after(date, before),
            Some(Duration::from_secs(90))
        );
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777 + 90);
        assert_eq!(parse_retry_after(date, after), Some(Duration::ZERO));
        // Obsolete formats RFC 9110 says recipients must accept.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", before),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn retry_after_garbage() {
        let now = SystemTime::UNIX_EPOCH;
        for v in [
            "",
            "  ",
            "-5",
            "1.5",
            "soon",
            "120s",
            "Sun, 06 Nov 1994",
            "0x10",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }

    #[test]
    fn delay_honours_retry_after_but_caps_it() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = policy();
        let hint = Duration::from_secs(42);
        assert_eq!(p.delay(1, Some(hint), &mut rng), Some(hint));
        let huge = Duration::from_secs(86_400);
        assert_eq!(p.delay(1, Some(huge), &mut rng), Some(MAX_RETRY_AFTER));
        // A cap larger than MAX_RETRY_AFTER lets the hint through up to the cap.
        let long = RetryPolicy {
            cap: Duration::from_secs(3600),
            ..p
        };
        assert_eq!(
            long.delay(1, Some(Duration::from_secs(1800)), &mut rng),
            Some(Duration::from_secs(1800))
        );
        // Retry-After still does not extend the number of retries.
        assert_eq!(p.delay(6, Some(hint), &mut rng), None);
    }

    #[test]
    fn retry_after_zero_means_backoff_not_zero() {
        // Full jitter can draw 0 too, but not every time: over many draws a
        // "Retry-After: 0 wins" implementation would only ever return 0.
        let mut rng = StdRng::seed_from_u64(7);
        let p = policy();
        let nonzero = (0..100)
            .filter_map(|_| p.delay(3, Some(Duration::ZERO), &mut rng))
            .filter(|d| *d > Duration::from_millis(1))
            .count();
        assert!(nonzero > 90, "{nonzero}");
    }

    #[test]
    fn delay_grows_exponentially_until_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let p = RetryPolicy {
            max_retries: 100,
            ..policy()
        };
        // The maximum over many draws approaches the ceiling of each attempt.
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (4, 800),
            (7, 6400),
            (8, 10_000),
            (60, 10_000),
        ] {
            let ceiling = Duration::from_millis(ceiling);
            let max = (0..2000)
                .filter_map(|_| p.delay(attempt, None, &mut rng))
                .max()
                .unwrap();
            assert!(max <= ceiling, "attempt {attempt}: {max:?} > {ceiling:?}");
            assert!(
                max >= ceiling.mul_f64(0.95),
                "attempt {attempt}: {max:?} far below {ceiling:?}"
            );
        }
    }

    #[test]
    fn delay_for_respects_retryable() {
        struct E(bool, Option<Duration>);
        impl Retryable for E {
            fn is_retryable(&self) -> bool {
                self.0
            }
            fn retry_after(&self) -> Option<Duration> {
                self.1
            }
        }
        let mut rng = StdRng::seed_from_u64(0);
        let p = policy();
        assert_eq!(
            p.delay_for(1, &E(false, Some(Duration::from_secs(1))), &mut rng),
            None
        );
        let hint = Duration::from_secs(3);
        assert_eq!(p.delay_for(1, &E(true, Some(hint)), &mut rng), Some(hint));
        assert!(p.delay_for(1, &E(true, None), &mut rng).is_some());
        assert_eq!(p.delay_for(6, &E(true, None), &mut rng), None);
    }

    proptest! {
        #[test]
        fn delay_bounds(
            base_ms in 0u64..100_000,
            cap_ms in 0u64..10_000_000,
            max_retries in 0u32..50,
            attempt in 0u32..200,
            hint_ms in proptest::option::of(0u64..100_000_000),
            seed in any::<u64>(),
        ) {
            let p = RetryPolicy {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(cap_ms),
                max_retries,
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let hint = hint_ms.map(Duration::from_millis);
            let d = p.delay(attempt, hint, &mut rng);
            if attempt.max(1) > max_retries {
                prop_assert_eq!(d, None);
            } else {
                let d = d.unwrap();
                match hint.filter(|h| !h.is_zero()) {
                    Some(h) => prop_assert_eq!(d, h.min(p.cap.max(MAX_RETRY_AFTER))),
                    None => {
                        prop_assert!(d <= p.cap);
                        let exp = p.base.saturating_mul(1u32 << (attempt.max(1) - 1).min(31));
                        prop_assert!(d <= exp);
                    }
                }
            }
        }
    }
}
