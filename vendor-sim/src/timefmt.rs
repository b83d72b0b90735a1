//! Time and duration parsing shared by the CLI, the REST API and the control API.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// How `since` / `until` (and `/control/records` `from` / `to`) are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 3339, or digits: seconds below 10^11, milliseconds from there on.
    Auto,
    Rfc3339,
    UnixS,
    UnixMs,
}

impl fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Rfc3339 => "rfc3339",
            Self::UnixS => "unix_s",
            Self::UnixMs => "unix_ms",
        })
    }
}

/// Digits at or above this are taken as milliseconds by `auto` (10^11 s is year 5138).
const AUTO_MS_THRESHOLD: f64 = 1e11;

/// Parses an instant into unix milliseconds.
pub fn parse_time(raw: &str, format: TimeFormat) -> Result<i64, String> {
    let raw = raw.trim();
    let numeric = || {
        f64::from_str(raw)
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("invalid unix time {raw:?}"))
    };
    match format {
        TimeFormat::Rfc3339 => parse_rfc3339(raw),
        TimeFormat::UnixS => numeric().map(|s| (s * 1000.0).round() as i64),
        TimeFormat::UnixMs => numeric().map(|ms| ms.round() as i64),
        TimeFormat::Auto => {
            if raw.starts_with(|c: char| c.is_ascii_digit() || c == '-')
                && raw
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            {
                let v = numeric()?;
                Ok(if v.abs() >= AUTO_MS_THRESHOLD {
                    v.round() as i64
                } else {
                    (v * 1000.0).round() as i64
                })
            } else {
                parse_rfc3339(raw)
            }
        }
    }
}

fn parse_rfc3339(raw: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("invalid rfc3339 time {raw:?}: {e}"))
}

/// RFC 3339 with milliseconds and `Z`, the form records carry.
pub fn format_millis(ms: i64) -> impl fmt::Display {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
}

/// `500ms`, `90s`, `15m`, `24h`, `7d`, or bare seconds (fractions allowed).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {raw:?}"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("invalid duration unit {other:?} in {raw:?}")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("invalid duration {raw:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_format() {
        let ms = 1_700_000_000_123;
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z", TimeFormat::Auto),
            Ok(ms)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.123+01:00", TimeFormat::Rfc3339),
            Ok(ms)
        );
        assert_eq!(parse_time("1700000000123", TimeFormat::Auto), Ok(ms));
        assert_eq!(parse_time("1700000000.123", TimeFormat::Auto), Ok(ms));
        assert_eq!(
            parse_time("1700000000", TimeFormat::UnixS),
            Ok(1_700_000_000_000)
        );
        assert_eq!(parse_time("1700000000123", TimeFormat::UnixMs), Ok(ms));
        assert!(parse_time("1700000000", TimeFormat::Rfc3339).is_err());
        assert!(parse_time("yesterday", TimeFormat::Auto).is_err());
    }

    #[test]
    fn formats_millis_z() {
        assert_eq!(
            format_millis(1_700_000_000_123).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_millis(1_700_000_000_000).to_string(),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("").is_err());
    }
}
