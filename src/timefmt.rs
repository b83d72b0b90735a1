//! How timestamps are written into source API requests and read back from records.
//!
//! Vendors disagree on time encoding (RFC 3339 strings, unix seconds, unix
//! milliseconds, sometimes numbers sent as strings, dates such as `2026-12-05`
//! or `20261205T120000`), so the format is a config value and both directions
//! live here, next to each other, so they cannot drift.

use std::fmt;
use std::str::FromStr;

use chrono::format::{Fixed, Item, Numeric, Parsed, StrftimeItems};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A wire encoding of an instant. Config spelling: `rfc3339 | unix_s | unix_ms`,
/// or a strftime pattern (anything with a `%`, e.g. `"%Y-%m-%d"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum TimeFormat {
    /// `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.250Z`.
    #[default]
    Rfc3339,
    /// Seconds since the unix epoch.
    UnixS,
    /// Milliseconds since the unix epoch.
    UnixMs,
    /// A chrono strftime pattern, written in UTC.
    Pattern(Strftime),
}

/// A strftime pattern that chrono can both write and read back, with the
/// finest step it writes (its finest field: `%S` a second, `%M` a minute,
/// `%d` a day, `%.3f` a millisecond). Checked when the config is loaded, so
/// writing and reading it never meet an invalid pattern.
///
/// The pattern text is interned: `TimeFormat` stays `Copy` (it is passed by
/// value through the observation path), and a process holds a handful of
/// distinct patterns for its lifetime, each stored once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Strftime {
    pattern: &'static str,
    resolution: Resolution,
}

/// Why a strftime pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PatternError {
    #[error("{pattern:?} is not a strftime pattern chrono knows (bad or unknown % specifier)")]
    Invalid { pattern: String },
    #[error("strftime pattern {pattern:?} cannot be read back: {written:?} parses as {reason} (a pattern needs a date: year, month and day, or %s; an hour needs %H, or %I with %p)")]
    NotReadable {
        pattern: String,
        written: String,
        reason: String,
    },
    #[error("unknown time format {0:?}: expected rfc3339, unix_s, unix_ms or a strftime pattern such as \"%Y-%m-%dT%H:%M:%S\"")]
    Unknown(String),
}

/// Why a JSON value could not be read as a timestamp. Messages name the format
/// and show (a bounded prefix of) the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimeParseError {
    /// The JSON type cannot carry this format (e.g. a bool, or a number for rfc3339).
    #[error("expected {expected} for {format} timestamp, got {got}")]
    WrongType {
        format: TimeFormat,
        expected: &'static str,
        got: String,
    },
    /// The value has the right type but does not parse.
    #[error("invalid {format} timestamp {value}: {reason}")]
    Invalid {
        format: TimeFormat,
        value: String,
        reason: String,
    },
    /// The value parses but is outside the representable range (or not finite).
    #[error("{format} timestamp {value} is out of range")]
    OutOfRange { format: TimeFormat, value: String },
}

// === impl TimeFormat ===

impl TimeFormat {
    /// Writes `t` in this format.
    ///
    /// - `rfc3339`: UTC with a `Z` suffix and always with seconds; milliseconds
    ///   only when non-zero (`…:05Z`, `…:05.250Z`). Sub-millisecond digits are
    ///   truncated: vendors commonly reject more than 3 fraction digits, and
    ///   because adjacent chunks share the same boundary instant they still
    ///   line up after truncation.
    /// - `unix_s`: whole seconds, rounded down (towards the past, so a window
    ///   start never moves later).
    /// - `unix_ms`: whole milliseconds, rounded down.
    pub(crate) fn format(self, t: DateTime<Utc>) -> String {
        match self {
            TimeFormat::Rfc3339 => {
                let secs = if t.timestamp_subsec_millis() == 0 {
                    SecondsFormat::Secs
                } else {
                    SecondsFormat::Millis
                };
                t.to_rfc3339_opts(secs, true)
            }
            TimeFormat::UnixS => t.timestamp().to_string(),
            TimeFormat::UnixMs => t.timestamp_millis().to_string(),
            TimeFormat::Pattern(p) => p.format(t),
        }
    }

    /// Whether [`format`](Self::format) writes a number (a JSON number in a
    /// request body, where a placeholder is a whole value).
    pub(crate) fn is_numeric(self) -> bool {
        matches!(self, TimeFormat::UnixS | TimeFormat::UnixMs)
    }

    /// The finest instant this format can write: what a source using it for
    /// `{start}`/`{end}` can be asked for, unless configured coarser.
    pub(crate) fn resolution(self) -> Resolution {
        match self {
            TimeFormat::UnixS => Resolution::SECOND,
            // `format` writes RFC 3339 with at most millisecond digits.
            TimeFormat::Rfc3339 | TimeFormat::UnixMs => Resolution::MILLISECOND,
            TimeFormat::Pattern(p) => p.resolution,
        }
    }

    /// Reads a timestamp out of a JSON value.
    ///
    /// - `rfc3339` accepts only strings (any offset; converted to UTC).
    /// - `unix_s` / `unix_ms` accept JSON numbers (integer or float, fractions
    ///   kept down to the nanosecond) and numeric strings (`"1714564800"`,
    ///   `"1714564800.5"`), because many APIs quote large integers.
    /// - a pattern accepts strings, and numbers as their digits (`20261205`
    ///   for `%Y%m%d`); the time is UTC unless the pattern has an offset, a
    ///   missing time of day is midnight, a missing minute `:00`.
    ///
    /// Never panics: wrong types, garbage, NaN/infinite and out-of-range
    /// values are errors that say what was wrong.
    pub(crate) fn parse_json(self, v: &Value) -> Result<DateTime<Utc>, TimeParseError> {
        match (self, v) {
            (TimeFormat::Rfc3339, Value::String(s)) => DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| TimeParseError::Invalid {
                    format: self,
                    value: preview(v),
                    reason: e.to_string(),
                }),
            (TimeFormat::Rfc3339, other) => Err(self.wrong_type("a string", other)),
            (TimeFormat::UnixS | TimeFormat::UnixMs, Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    self.int_to_time(i, v)
                } else if n.is_u64() {
                    // Only u64 values above i64::MAX land here: far outside chrono's range.
                    Err(self.out_of_range(v))
                } else {
                    match n.as_f64() {
                        Some(f) => self.float_to_time(f, v),
                        None => Err(self.out_of_range(v)),
                    }
                }
            }
            (TimeFormat::UnixS | TimeFormat::UnixMs, Value::String(s)) => {
                let s = s.trim();
                if let Ok(i) = s.parse::<i64>() {
                    self.int_to_time(i, v)
                } else if looks_numeric(s) {
                    match s.parse::<f64>() {
                        Ok(f) => self.float_to_time(f, v),
                        Err(e) => Err(self.invalid(v, e.to_string())),
                    }
                } else {
                    Err(self.invalid(v, "not a number".to_owned()))
                }
            }
            (TimeFormat::UnixS | TimeFormat::UnixMs, other) => {
                Err(self.wrong_type("a number or numeric string", other))
            }
            (TimeFormat::Pattern(p), Value::String(s)) => p
                .parse(s.trim())
                .map_err(|reason| self.invalid(v, reason.to_string())),
            (TimeFormat::Pattern(p), Value::Number(n)) => p
                .parse(&n.to_string())
                .map_err(|reason| self.invalid(v, reason.to_string())),
            (TimeFormat::Pattern(_), other) => Err(self.wrong_type("a string", other)),
        }
    }

    fn int_to_time(self, i: i64, v: &Value) -> Result<DateTime<Utc>, TimeParseError> {
        let t = match self {
            TimeFormat::UnixMs => DateTime::from_timestamp_millis(i),
            _ => DateTime::from_timestamp(i, 0),
        };
        t.ok_or_else(|| self.out_of_range(v))
    }

    fn float_to_time(self, f: f64, v: &Value) -> Result<DateTime<Utc>, TimeParseError> {
        if !f.is_finite() {
            return Err(self.out_of_range(v));
        }
        // Split into whole seconds and nanoseconds before scaling so that the
        // integer part keeps full precision.
        let (whole, frac_nanos) = match self {
            TimeFormat::UnixMs => {
                let ms = f.floor();
                let secs = (ms / 1000.0).floor();
                let rem_ms = ms - secs * 1000.0;
                (secs, rem_ms * 1e6 + ((f - ms) * 1e6).round())
            }
            _ => {
                let secs = f.floor();
                (secs, ((f - secs) * 1e9).round())
            }
        };
        // i64 range check first: `as` would saturate silently.
        if !(-9.2e18..9.2e18).contains(&whole) {
            return Err(self.out_of_range(v));
        }
        let mut secs = whole as i64;
        let mut nanos = frac_nanos as i64;
        if nanos >= 1_000_000_000 {
            // Rounding the fraction carried into the next second.
            secs = secs.checked_add(1).ok_or_else(|| self.out_of_range(v))?;
            nanos -= 1_000_000_000;
        }
        let nanos = u32::try_from(nanos.max(0)).map_err(|_| self.out_of_range(v))?;
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| self.out_of_range(v))
    }

    fn wrong_type(self, expected: &'static str, got: &Value) -> TimeParseError {
        let kind = match got {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        TimeParseError::WrongType {
            format: self,
            expected,
            got: format!("{kind} {}", preview(got)),
        }
    }

    fn invalid(self, v: &Value, reason: String) -> TimeParseError {
        TimeParseError::Invalid {
            format: self,
            value: preview(v),
            reason,
        }
    }

    fn out_of_range(self, v: &Value) -> TimeParseError {
        TimeParseError::OutOfRange {
            format: self,
            value: preview(v),
        }
    }
}

/// The finest step of time a source API can be asked for. Query windows
/// start and end on multiples of it (counted from the unix epoch): an API that
/// only knows whole seconds reads `[21.162, 28.561)` as `[21, 28)`, so the
/// records of `[28, 28.561)` would belong to no query at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Resolution {
    /// Always at least 1: the store keeps milliseconds.
    ms: i64,
}

// === impl Resolution ===

impl Resolution {
    pub(crate) const MILLISECOND: Resolution = Resolution { ms: 1 };
    pub(crate) const SECOND: Resolution = Resolution { ms: 1000 };

    /// `None` below one millisecond or above a day (no API asks for coarser).
    pub(crate) fn from_millis(ms: u64) -> Option<Resolution> {
        (1..=86_400_000)
            .contains(&ms)
            .then_some(Resolution { ms: ms as i64 })
    }

    pub(crate) fn as_millis(self) -> i64 {
        self.ms
    }

    pub(crate) fn step(self) -> chrono::TimeDelta {
        chrono::TimeDelta::milliseconds(self.ms)
    }

    /// The latest multiple of the resolution at or before `t`.
    pub(crate) fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let ms = t.timestamp_millis();
        DateTime::from_timestamp_millis(ms - ms.rem_euclid(self.ms)).unwrap_or(t)
    }

    /// The earliest multiple of the resolution at or after `t`.
    pub(crate) fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(t);
        if floor == t {
            return t;
        }
        floor.checked_add_signed(self.step()).unwrap_or(t)
    }

    #[cfg(test)]
    pub(crate) fn is_aligned(self, t: DateTime<Utc>) -> bool {
        self.floor(t) == t
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ms % 86_400_000 == 0 {
            write!(f, "{}d", self.ms / 86_400_000)
        } else if self.ms % 1000 == 0 {
            write!(f, "{}s", self.ms / 1000)
        } else {
            write!(f, "{}ms", self.ms)
        }
    }
}

impl serde::Serialize for Resolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::UnixS => "unix_s",
            TimeFormat::UnixMs => "unix_ms",
            TimeFormat::Pattern(p) => p.pattern,
        })
    }
}

impl FromStr for TimeFormat {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, PatternError> {
        match s {
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            "unix_s" => Ok(TimeFormat::UnixS),
            "unix_ms" => Ok(TimeFormat::UnixMs),
            p if p.contains('%') => Strftime::new(p).map(TimeFormat::Pattern),
            other => Err(PatternError::Unknown(other.to_owned())),
        }
    }
}

impl serde::Serialize for TimeFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TimeFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// === impl Strftime ===

/// Instants a pattern must write and read back exactly (to its resolution):
/// every field non-zero, hours on both sides of noon, so a pattern that drops
/// a field, or has `%I` without `%p`, is caught.
const PROBES: [(i64, u32); 2] = [
    // 2001-02-03T04:05:06.789Z
    (981_173_106, 789_000_000),
    // 2038-11-27T21:59:58.123Z
    (2_174_507_998, 123_000_000),
];

impl Strftime {
    /// Checks `pattern`: chrono knows every specifier, and what it writes
    /// reads back as the instant written, floored to the finest field. The
    /// resolution is that finest field.
    pub(crate) fn new(pattern: &str) -> Result<Strftime, PatternError> {
        let mut finest: Option<i64> = None;
        for item in StrftimeItems::new(pattern) {
            let ms = match item {
                Item::Error => {
                    return Err(PatternError::Invalid {
                        pattern: pattern.to_owned(),
                    })
                }
                Item::Numeric(n, _) => match n {
                    Numeric::Nanosecond => Some(1),
                    Numeric::Second | Numeric::Timestamp => Some(1_000),
                    Numeric::Minute => Some(60_000),
                    Numeric::Hour | Numeric::Hour12 => Some(3_600_000),
                    _ => Some(86_400_000),
                },
                Item::Fixed(f) => match f {
                    Fixed::Nanosecond
                    | Fixed::Nanosecond3
                    | Fixed::Nanosecond6
                    | Fixed::Nanosecond9
                    | Fixed::RFC3339
                    // `%3f` and friends (fraction digits without the dot).
                    | Fixed::Internal(_) => Some(1),
                    Fixed::RFC2822 => Some(1_000),
                    _ => None,
                },
                _ => None,
            };
            if let Some(ms) = ms {
                finest = Some(finest.map_or(ms, |f| f.min(ms)));
            }
        }
        let resolution = Resolution {
            ms: finest.unwrap_or(86_400_000),
        };
        let p = Strftime {
            pattern: intern(pattern),
            resolution,
        };
        for (secs, nanos) in PROBES {
            let t = DateTime::from_timestamp(secs, nanos).expect("a probe instant is in range");
            let written = p.format(t);
            let back = p.parse(&written);
            if back != Ok(resolution.floor(t)) {
                return Err(PatternError::NotReadable {
                    pattern: pattern.to_owned(),
                    written,
                    reason: match back {
                        Ok(b) => b.to_rfc3339_opts(SecondsFormat::Millis, true),
                        Err(e) => e.to_string(),
                    },
                });
            }
        }
        Ok(p)
    }

    fn format(self, t: DateTime<Utc>) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        // The pattern was checked by `new`: chrono cannot fail on it.
        let _ = write!(out, "{}", t.format(self.pattern));
        out
    }

    fn parse(self, s: &str) -> chrono::ParseResult<DateTime<Utc>> {
        let mut p = Parsed::new();
        chrono::format::parse(&mut p, s, StrftimeItems::new(self.pattern))?;
        let fill = |p: &mut Parsed| -> chrono::format::ParseResult<()> {
            if p.timestamp().is_none() {
                if p.hour_div_12().is_none() && p.hour_mod_12().is_none() {
                    p.set_hour(0)?;
                }
                if p.minute().is_none() {
                    p.set_minute(0)?;
                }
            }
            if p.offset().is_none() {
                p.set_offset(0)?;
            }
            Ok(())
        };
        fill(&mut p)?;
        p.to_datetime().map(|t| t.with_timezone(&Utc))
    }
}

/// The one stored copy of `s`, for the life of the process.
fn intern(s: &str) -> &'static str {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static SEEN: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = seen.get(s) {
        return s;
    }
    let s: &'static str = Box::leak(s.to_owned().into_boxed_str());
    seen.insert(s);
    s
}

/// `f64::from_str` also accepts `inf`, `NaN` and `infinity`; a timestamp field
/// holding those is garbage, not a number, so only digits, sign, dot and
/// exponent are let through.
fn looks_numeric(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
}

/// The value as JSON, bounded so a huge record cannot blow up a log line.
fn preview(v: &Value) -> String {
    const MAX: usize = 64;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn format_rfc3339_seconds_and_millis() {
        let t = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 5).unwrap();
        assert_eq!(TimeFormat::Rfc3339.format(t), "2024-05-01T12:00:05Z");
        let t = at("2024-05-01T12:00:05.250Z");
        assert_eq!(TimeFormat::Rfc3339.format(t), "2024-05-01T12:00:05.250Z");
        // Sub-millisecond digits are truncated, never rounded up.
        let t = at("2024-05-01T12:00:05.999999Z");
        assert_eq!(TimeFormat::Rfc3339.format(t), "2024-05-01T12:00:05.999Z");
        let t = at("2024-05-01T12:00:05.000400Z");
        assert_eq!(TimeFormat::Rfc3339.format(t), "2024-05-01T12:00:05Z");
    }

    #[test]
    fn resolution_floor_and_ceil() {
        let s = Resolution::SECOND;
        assert_eq!(
            s.floor(at("2024-05-01T12:00:21.162Z")),
            at("2024-05-01T12:00:21Z")
        );
        assert_eq!(
            s.ceil(at("2024-05-01T12:00:28.561Z")),
            at("2024-05-01T12:00:29Z")
        );
        assert_eq!(
            s.ceil(at("2024-05-01T12:00:28Z")),
            at("2024-05-01T12:00:28Z")
        );
        // Before the epoch, floor still goes towards the past.
        assert_eq!(
            s.floor(at("1969-12-31T23:59:59.500Z")),
            at("1969-12-31T23:59:59Z")
        );
        let ms = Resolution::MILLISECOND;
        let t = at("2024-05-01T12:00:00.250Z") + chrono::TimeDelta::nanoseconds(300);
        assert_eq!(ms.floor(t), at("2024-05-01T12:00:00.250Z"));
        assert_eq!(ms.ceil(t), at("2024-05-01T12:00:00.251Z"));
        assert_eq!(TimeFormat::UnixS.resolution(), Resolution::SECOND);
        assert_eq!(TimeFormat::UnixMs.resolution(), Resolution::MILLISECOND);
        assert_eq!(TimeFormat::Rfc3339.resolution(), Resolution::MILLISECOND);
        assert_eq!(Resolution::from_millis(0), None);
        assert_eq!(Resolution::from_millis(60_000).unwrap().to_string(), "60s");
        assert_eq!(Resolution::MILLISECOND.to_string(), "1ms");
    }

    #[test]
    fn format_unix() {
        let t = at("2024-05-01T12:00:05.250Z");
        assert_eq!(TimeFormat::UnixS.format(t), "1714564805");
        assert_eq!(TimeFormat::UnixMs.format(t), "1714564805250");
        // Before the epoch, seconds round towards the past.
        let t = at("1969-12-31T23:59:59.500Z");
        assert_eq!(TimeFormat::UnixS.format(t), "-1");
        assert_eq!(TimeFormat::UnixMs.format(t), "-500");
    }

    #[test]
    fn display_matches_config_spelling() {
        for (f, s) in [
            (TimeFormat::Rfc3339, "rfc3339"),
            (TimeFormat::UnixS, "unix_s"),
            (TimeFormat::UnixMs, "unix_ms"),
        ] {
            assert_eq!(f.to_string(), s);
            assert_eq!(serde_json::to_value(f).unwrap(), json!(s));
            assert_eq!(serde_json::from_value::<TimeFormat>(json!(s)).unwrap(), f);
        }
        assert_eq!(TimeFormat::default(), TimeFormat::Rfc3339);
        assert!(serde_json::from_value::<TimeFormat>(json!("unix")).is_err());
    }

    #[test]
    fn parse_rfc3339() {
        let want = at("2024-05-01T12:00:05.250Z");
        let f = TimeFormat::Rfc3339;
        assert_eq!(
            f.parse_json(&json!("2024-05-01T12:00:05.250Z")).unwrap(),
            want
        );
        assert_eq!(
            f.parse_json(&json!("2024-05-01T14:00:05.25+02:00"))
                .unwrap(),
            want
        );
        let err = f.parse_json(&json!(1714564805)).unwrap_err();
        assert!(matches!(err, TimeParseError::WrongType { .. }), "{err}");
        assert!(err.to_string().contains("expected a string"), "{err}");
        let err = f.parse_json(&json!("yesterday")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid rfc3339 timestamp \"yesterday\""),
            "{err}"
        );
    }

    #[test]
    fn parse_unix_numbers_and_strings() {
        let want = at("2024-05-01T12:00:05.250Z");
        let s = TimeFormat::UnixS;
        let ms = TimeFormat::UnixMs;
        assert_eq!(s.parse_json(&json!(1714564805.25)).unwrap(), want);
        assert_eq!(s.parse_json(&json!("1714564805.25")).unwrap(), want);
        assert_eq!(
            s.parse_json(&json!(1714564805)).unwrap(),
            at("2024-05-01T12:00:05Z")
        );
        assert_eq!(
            s.parse_json(&json!(" 1714564805 ")).unwrap(),
            at("2024-05-01T12:00:05Z")
        );
        assert_eq!(ms.parse_json(&json!(1714564805250_i64)).unwrap(), want);
        assert_eq!(ms.parse_json(&json!("1714564805250")).unwrap(), want);
        assert_eq!(
            ms.parse_json(&json!(1714564805250.5)).unwrap(),
            at("2024-05-01T12:00:05.2505Z")
        );
        assert_eq!(
            ms.parse_json(&json!(-500)).unwrap(),
            at("1969-12-31T23:59:59.500Z")
        );
        assert_eq!(
            s.parse_json(&json!(-0.5)).unwrap(),
            at("1969-12-31T23:59:59.500Z")
        );
    }

    #[test]
    fn parse_unix_rejects_garbage() {
        let s = TimeFormat::UnixS;
        for (v, kind) in [
            (json!(true), "wrong"),
            (json!(null), "wrong"),
            (json!({"t": 1}), "wrong"),
            (json!("2024-05-01T12:00:05Z"), "invalid"),
            (json!("NaN"), "invalid"),
            (json!("inf"), "invalid"),
            (json!(""), "invalid"),
            (json!(u64::MAX), "range"),
            (json!(1e300), "range"),
            (json!(i64::MAX), "range"),
        ] {
            let err = s.parse_json(&v).unwrap_err();
            let ok = match kind {
                "wrong" => matches!(err, TimeParseError::WrongType { .. }),
                "invalid" => matches!(err, TimeParseError::Invalid { .. }),
                _ => matches!(err, TimeParseError::OutOfRange { .. }),
            };
            assert!(ok, "{v}: {err:?}");
            assert!(err.to_string().contains("unix_s"), "{err}");
        }
    }

    #[test]
    fn strftime_resolution_is_the_finest_field() {
        let day = Resolution::from_millis(86_400_000).unwrap();
        for (pattern, ms) in [
            ("%Y-%m-%dT%H:%M:%S", 1_000),
            ("%Y-%m-%d", 86_400_000),
            ("%Y%m%dT%H%M%S", 1_000),
            ("%Y%m%d", 86_400_000),
            ("%Y-%m-%d %H:%M", 60_000),
            ("%Y-%m-%dT%H", 3_600_000),
            ("%Y-%m-%dT%H:%M:%S%.3fZ", 1),
            ("%Y-%m-%dT%H:%M:%S%.f%:z", 1),
            ("%F %T", 1_000),
            ("%d/%m/%Y", 86_400_000),
            ("%Y-%j", 86_400_000),
            ("%s", 1_000),
            ("%+", 1),
            ("%Y-%m-%d %I:%M:%S %p", 1_000),
            ("%a, %d %b %Y %H:%M:%S GMT", 1_000),
        ] {
            let f: TimeFormat = pattern.parse().unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert_eq!(f.resolution().as_millis(), ms, "{pattern}");
            assert_eq!(f.to_string(), pattern);
            assert!(!f.is_numeric());
        }
        let f: TimeFormat = "%Y-%m-%d".parse().unwrap();
        assert_eq!(f.resolution(), day);
        assert_eq!(day.to_string(), "1d");
    }

    #[test]
    fn strftime_writes_utc_and_reads_back() {
        let t = at("2026-12-05T12:34:56.789Z");
        let f = |p: &str| p.parse::<TimeFormat>().unwrap();
        assert_eq!(f("%Y-%m-%d").format(t), "2026-12-05");
        assert_eq!(f("%Y%m%dT%H%M%S").format(t), "20261205T123456");
        assert_eq!(f("%Y-%m-%dT%H:%M:%S").format(t), "2026-12-05T12:34:56");
        assert_eq!(
            f("%Y-%m-%dT%H:%M:%S%z").format(t),
            "2026-12-05T12:34:56+0000"
        );
        assert_eq!(
            f("%Y-%m-%d").parse_json(&json!("2026-12-05")).unwrap(),
            at("2026-12-05T00:00:00Z")
        );
        assert_eq!(
            f("%Y%m%d").parse_json(&json!(20261205)).unwrap(),
            at("2026-12-05T00:00:00Z")
        );
        assert_eq!(
            f("%Y-%m-%d %H:%M:%S%z")
                .parse_json(&json!(" 2026-12-05 14:34:56+0200 "))
                .unwrap(),
            at("2026-12-05T12:34:56Z")
        );
        assert_eq!(
            f("%Y-%m-%dT%H")
                .parse_json(&json!("2026-12-05T13"))
                .unwrap(),
            at("2026-12-05T13:00:00Z")
        );
        let err = f("%Y-%m-%d").parse_json(&json!("05.12.2026")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid %Y-%m-%d timestamp \"05.12.2026\""),
            "{err}"
        );
        let err = f("%Y-%m-%d").parse_json(&json!(true)).unwrap_err();
        assert!(matches!(err, TimeParseError::WrongType { .. }), "{err}");
        // Serialized as written, so a resolved config loads again.
        assert_eq!(
            serde_json::to_value(f("%Y-%m-%d")).unwrap(),
            json!("%Y-%m-%d")
        );
        assert_eq!(
            serde_json::from_value::<TimeFormat>(json!("%Y-%m-%d")).unwrap(),
            f("%Y-%m-%d")
        );
    }

    #[test]
    fn strftime_patterns_chrono_cannot_read_back_are_refused() {
        for (pattern, why) in [
            ("%Y-%m-%Q", "not a strftime pattern"),
            ("%Y-%m-%d %", "not a strftime pattern"),
            ("%Y-%m", "cannot be read back"),
            ("%H:%M:%S", "cannot be read back"),
            ("%Y-%m-%d %I:%M", "cannot be read back"),
            ("%m-%d %H:%M", "cannot be read back"),
        ] {
            let err = pattern.parse::<TimeFormat>().unwrap_err().to_string();
            assert!(err.contains(why), "{pattern}: {err}");
            assert!(err.contains(pattern), "{pattern}: {err}");
        }
        let err = "unix".parse::<TimeFormat>().unwrap_err().to_string();
        assert!(err.starts_with("unknown time format \"unix\""), "{err}");
        assert!(serde_json::from_value::<TimeFormat>(json!("%Y-%m-%Q")).is_err());
    }

    #[test]
    fn error_preview_is_bounded() {
        let long = "x".repeat(10_000);
        let err = TimeFormat::Rfc3339.parse_json(&json!(long)).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }

    proptest::proptest! {
        #[test]
        fn round_trip(secs in -62_000_000_000_i64..250_000_000_000, millis in 0u32..1000) {
            let t = DateTime::from_timestamp(secs, millis * 1_000_000).unwrap();
            for f in [TimeFormat::Rfc3339, TimeFormat::UnixMs] {
                let s = f.format(t);
                let v = if f == TimeFormat::Rfc3339 { json!(s) } else { json!(s.parse::<i64>().unwrap()) };
                proptest::prop_assert_eq!(f.parse_json(&v).unwrap(), t);
            }
            let whole = DateTime::from_timestamp(secs, 0).unwrap();
            let s = TimeFormat::UnixS.format(t);
            proptest::prop_assert_eq!(TimeFormat::UnixS.parse_json(&json!(s)).unwrap(), whole);
        }

        /// Any JSON scalar in any format: a time or a bounded error, never a panic.
        #[test]
        fn any_scalar_parses_or_fails_cleanly(
            i in proptest::num::i64::ANY,
            u in proptest::num::u64::ANY,
            f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
            s in ".{0,64}",
            n in "[-+ ]?[0-9]{0,25}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,4})?",
        ) {
            for fmt in [TimeFormat::Rfc3339, TimeFormat::UnixS, TimeFormat::UnixMs] {
                for v in [json!(i), json!(u), json!(f), json!(s.clone()), json!(n.clone()), json!(null), json!([1])] {
                    if let Err(e) = fmt.parse_json(&v) {
                        proptest::prop_assert!(e.to_string().len() < 400, "{}", e);
                    }
                }
            }
        }

        /// Later instants format to later-or-equal instants once parsed back:
        /// no format reorders events.
        #[test]
        fn parsing_keeps_order(a in -62_000_000_000_000_i64..250_000_000_000_000, d in 0i64..10_000_000) {
            let t0 = DateTime::from_timestamp_millis(a).unwrap();
            let t1 = DateTime::from_timestamp_millis(a + d).unwrap();
            for f in [TimeFormat::Rfc3339, TimeFormat::UnixS, TimeFormat::UnixMs] {
                let back = |t| f.parse_json(&json!(f.format(t))).unwrap();
                proptest::prop_assert!(back(t0) <= back(t1));
            }
        }
    }
}
