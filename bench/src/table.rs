//! The figures a run produces, printed as one Markdown table.

use std::fmt::Write;

pub struct Figure {
    /// Which figure, e.g. `1. detection latency, relay`.
    pub name: String,
    /// What was measured, with units.
    pub value: String,
    /// The target (or `—`).
    pub target: String,
    /// How it was measured.
    pub how: String,
}

impl Figure {
    pub fn new(name: &str, value: String, target: &str, how: String) -> Figure {
        Figure {
            name: name.to_string(),
            value,
            target: target.to_string(),
            how,
        }
    }
}

pub fn markdown(figures: &[Figure]) -> String {
    let mut out = String::new();
    out.push_str("| figure | measured | target | how |\n| --- | --- | --- | --- |\n");
    for f in figures {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&f.name),
            cell(&f.value),
            cell(&f.target),
            cell(&f.how)
        );
    }
    out
}

/// Median and maximum of samples (NaN when empty).
pub fn median_max(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[n - 1])
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_max(&[3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
        assert!(median_max(&[]).0.is_nan());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
