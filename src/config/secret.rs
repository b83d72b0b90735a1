use std::fmt;

/// A value that must never be shown: it prints, logs and serializes as
/// `<redacted>`. Only [`Secret::expose`] gives the value, at the point of use.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret {
    value: String,
    /// Plain values (a query parameter that was not interpolated from the
    /// environment) are shown; everything else is hidden.
    shown: bool,
}

impl Secret {
    pub(crate) fn hidden(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            shown: false,
        }
    }

    pub(crate) fn shown(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            shown: true,
        }
    }

    pub(crate) fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shown {
            f.write_str(&self.value)
        } else {
            f.write_str("<redacted>")
        }
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
