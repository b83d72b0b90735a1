//! The request side of `[feeds.backfill.source]`: the HTTP method and the
//! JSON body template, validated. Placeholders in them are filled per request
//! by `fill::template`.

use std::fmt;

use serde_json::Value;

use super::raw::RawSource;
use super::SourceConfig;
use crate::fill::pagination::Pagination;
use crate::fill::template::{self, PLACEHOLDERS};
use crate::timefmt::TimeFormat;

/// What a masked body string prints as, like a [`super::Secret`].
const MASK: &str = "<redacted>";

/// `source.method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub(crate) enum Method {
    #[default]
    #[serde(rename = "GET", alias = "get")]
    Get,
    /// A search API: the window (and cursor) usually travel in `body`.
    #[serde(rename = "POST", alias = "post")]
    Post,
}

/// `source.body`, validated: a JSON value whose strings may carry
/// placeholders and `${ENV}` values. Strings that took a value from the
/// environment print as `<redacted>` (check-config, `Debug`); only
/// [`template`](Self::template) gives the real one, at the point of use.
#[derive(Clone, PartialEq)]
pub(crate) struct BodyTemplate {
    value: Value,
    /// The same with every string that came from the environment masked.
    shown: Value,
}

impl BodyTemplate {
    pub(super) fn new(value: Value, shown: Value) -> Self {
        Self { value, shown }
    }

    /// The template with its secrets, for building requests.
    pub(crate) fn template(&self) -> &Value {
        &self.value
    }

    /// Every string of the template (values, not keys) with where it is, as
    /// `.a.b[2]` relative to `body`.
    pub(crate) fn strings(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        strings(&self.value, String::new(), &mut out);
        out
    }
}

fn strings<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::String(s) => out.push((at, s)),
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                strings(v, format!("{at}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, v) in o {
                strings(v, format!("{at}.{k}"), out);
            }
        }
        _ => {}
    }
}

impl fmt::Debug for BodyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.shown)
    }
}

/// Written as JSON text (a body may hold `null`, which TOML cannot), so a
/// resolved config loads again.
impl serde::Serialize for BodyTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.shown.to_string())
    }
}

impl super::validate::Checker<'_> {
    /// `source.body`: a TOML table (or array), or a string of JSON text.
    /// `${ENV}` is interpolated in its strings (those are then secrets); a
    /// body needs `method = "POST"`.
    pub(super) fn body(&mut self, key: &str, s: &RawSource) -> Option<Option<BodyTemplate>> {
        let Some(raw) = &s.body else {
            return Some(None);
        };
        let key = format!("{key}.body");
        if s.method == Method::Get {
            self.fail(&key, "a GET request carries no body: set method = \"POST\"");
            return None;
        }
        let parsed = match raw {
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) => v,
                Err(e) => {
                    // serde_json's message gives the line and column, never the text.
                    self.fail(&key, format!("not JSON: {e}"));
                    return None;
                }
            },
            other => other.clone(),
        };
        let mut value = parsed.clone();
        let mut shown = parsed;
        self.interp_json(&key, &mut value, &mut shown)
            .then(|| Some(BodyTemplate::new(value, shown)))
    }

    /// Interpolates `${ENV}` in every string of `value`, masking in `shown`
    /// the strings that took a value from the environment. False if any
    /// string failed (the error names its key).
    fn interp_json(&mut self, key: &str, value: &mut Value, shown: &mut Value) -> bool {
        match (value, shown) {
            (Value::String(s), Value::String(masked)) => match self.interp(key, s) {
                Some((v, from_env)) => {
                    if from_env {
                        *masked = MASK.to_owned();
                    }
                    *s = v;
                    true
                }
                None => false,
            },
            (Value::Array(a), Value::Array(m)) => {
                let mut ok = true;
                for (i, (v, s)) in a.iter_mut().zip(m.iter_mut()).enumerate() {
                    ok &= self.interp_json(&format!("{key}[{i}]"), v, s);
                }
                ok
            }
            (Value::Object(o), Value::Object(m)) => {
                let mut ok = true;
                for ((k, v), (_, s)) in o.iter_mut().zip(m.iter_mut()) {
                    ok &= self.interp_json(&format!("{key}.{k}"), v, s);
                }
                ok
            }
            _ => true,
        }
    }
}

/// Where a source request names which placeholders, by config key.
pub(super) struct Uses {
    /// (key, placeholder names) per templated place.
    places: Vec<(String, Vec<String>)>,
}

impl Uses {
    /// The placeholders of the URL (path and its own query), `query`,
    /// `headers` and `body` of the source at `key`.
    pub(super) fn of(key: &str, s: &SourceConfig) -> Uses {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
        let path = percent_encoding::percent_decode_str(s.url.path()).decode_utf8_lossy();
        let mut in_url = owned(template::names(&path));
        for (_, v) in s.url.query_pairs() {
            in_url.extend(owned(template::names(&v)));
        }
        let mut places = vec![(format!("{key}.url"), in_url)];
        for (k, v) in &s.query {
            places.push((
                format!("{key}.query.{k}"),
                owned(template::names(v.expose())),
            ));
        }
        for (k, v) in &s.headers {
            places.push((
                format!("{key}.headers.{k}"),
                owned(template::names(v.expose())),
            ));
        }
        for (at, v) in s
            .body
            .as_ref()
            .map(BodyTemplate::strings)
            .unwrap_or_default()
        {
            places.push((format!("{key}.body{at}"), owned(template::names(v))));
        }
        Uses { places }
    }

    pub(super) fn names(&self, name: &str) -> bool {
        self.places.iter().any(|(_, n)| n.iter().any(|n| n == name))
    }

    /// The keys of the places that name `name`.
    pub(super) fn places_naming(&self, name: &str) -> Vec<&str> {
        self.places
            .iter()
            .filter(|(_, n)| n.iter().any(|n| n == name))
            .map(|(place, _)| place.as_str())
            .collect()
    }
}

impl super::validate::Checker<'_> {
    /// The placeholders of a source request: every one known; `{start}` or
    /// `{end}` somewhere (else the source cannot be asked for an interval);
    /// `{cursor}` only where the pagination style has one, and the page
    /// placed somewhere (`pagination.param` or `{cursor}`).
    pub(super) fn placeholders(&mut self, key: &str, uses: &Uses, pagination: &Pagination) {
        let known = PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (place, names) in &uses.places {
            for name in names {
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    self.fail(
                        place,
                        format!("unknown placeholder {{{name}}} (known: {known})"),
                    );
                } else if name == "cursor" && !pagination.has_cursor() {
                    self.fail(
                        place,
                        "{cursor} has no value: the pagination type has no cursor, page or offset (next_url and link_header replace the whole URL)",
                    );
                }
            }
        }
        if !uses.names("start") && !uses.names("end") {
            self.fail(
                &format!("{key}.query"),
                "no {start}/{end} placeholder: the source could not be asked for an interval",
            );
        }
        if pagination.has_cursor() && pagination.param().is_none() && !uses.names("cursor") {
            self.fail(
                &format!("{key}.pagination.param"),
                "is required unless the request places the page with a {cursor} placeholder (url, query, headers or body)",
            );
        }
    }

    /// A request that names `{start}` but not `{end}` in a strftime format
    /// coarser than a second (`/v1/days/{start}/events`) names a period (a
    /// day, an hour) rather than an instant: a window longer than the period
    /// would ask for its first period only. (A finer format is read as a
    /// lower bound, `since={start}`, which any window length can use.)
    pub(super) fn one_period_per_request(
        &mut self,
        key: &str,
        uses: &Uses,
        format: TimeFormat,
        chunk: std::time::Duration,
    ) {
        let res = format.resolution();
        let longer = u128::try_from(res.as_millis()).is_ok_and(|ms| chunk.as_millis() > ms);
        if matches!(format, TimeFormat::Pattern(_))
            && res.as_millis() > 1_000
            && uses.names("start")
            && !uses.names("end")
            && longer
        {
            self.fail(
                &format!("{key}.chunk"),
                format!(
                    "must be at most {res} (the resolution of time_format {format:?}): the source request names {{start}} without {{end}}, so each request asks for one such period",
                    format = format.to_string()
                ),
            );
        }
    }
}
