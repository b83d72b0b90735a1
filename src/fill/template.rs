//! Placeholders in a source request: `{start}` and `{end}` (the query window,
//! written in the source's `time_format`), `{cursor}` (where the page
//! starts: the cursor style's token, the page number or the offset) and
//! `{partition}` (the partition a chunk asks for, `feeds.partitions`), filled
//! into the URL path (as percent-encoded path segments), query values, header
//! values and the strings of a JSON body.
//!
//! In a body, a string that is exactly one placeholder (`"{start}"`) becomes
//! that value with its own JSON type: a number for `unix_s`/`unix_ms` times,
//! page numbers and offsets; a string otherwise. Anywhere else a placeholder
//! is text inside text.
//!
//! A placeholder without a value (`{cursor}` on a cursor style's first page)
//! leaves out what it is the whole of: the body member, the query pair, the
//! header; inside longer text it is empty.
//!
//! A new placeholder is one name in [`PLACEHOLDERS`], one field of [`Vars`]
//! and one arm of [`Vars::get`].

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::Value;
use url::Url;

/// Every placeholder a source request may carry.
pub(crate) const PLACEHOLDERS: &[&str] = &["start", "end", "cursor", "partition"];

/// The characters a value must not carry raw inside one path segment: the
/// WHATWG path set plus `/` and `%`, so a value never splits a segment or
/// reads as an escape.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// One placeholder's value in one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Var<'a> {
    pub(crate) text: &'a str,
    /// Written as a JSON number where it is a whole body value.
    pub(crate) number: bool,
}

/// The values of one request's placeholders.
#[derive(Clone, Debug)]
pub(crate) struct Vars<'a> {
    pub(crate) start: Var<'a>,
    pub(crate) end: Var<'a>,
    /// None on a cursor style's first page.
    pub(crate) cursor: Option<Var<'a>>,
    /// The chunk's partition (None: an unpartitioned feed, whose source has
    /// no `{partition}`).
    pub(crate) partition: Option<Var<'a>>,
}

/// What a `{name}` stands for in one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup<'a> {
    Value(Var<'a>),
    /// A known placeholder without a value in this request.
    Absent,
    /// Not a placeholder (a JSON value's braces, a name check-config refused
    /// elsewhere): left as written.
    Unknown,
}

impl<'a> Vars<'a> {
    fn get(&self, name: &str) -> Lookup<'a> {
        let value = match name {
            "start" => Some(self.start),
            "end" => Some(self.end),
            "cursor" => self.cursor,
            "partition" => self.partition,
            _ => return Lookup::Unknown,
        };
        value.map_or(Lookup::Absent, Lookup::Value)
    }

    /// `s` with every placeholder replaced by its value (an absent one by
    /// nothing), unescaped (query values are encoded by the URL's query
    /// serializer, header values are checked by the caller).
    pub(crate) fn fill(&self, s: &str) -> String {
        replace(s, |name| match self.get(name) {
            Lookup::Value(v) => Some(v.text.to_owned()),
            Lookup::Absent => Some(String::new()),
            Lookup::Unknown => None,
        })
    }

    /// A query or header value: `None` when it is exactly one placeholder
    /// without a value (the pair or header is left out).
    pub(crate) fn fill_value(&self, s: &str) -> Option<String> {
        match whole(s).map(|name| self.get(name)) {
            Some(Lookup::Absent) => None,
            _ => Some(self.fill(s)),
        }
    }

    /// `url` with placeholders in its path filled, each value encoded as (part
    /// of) one path segment. The URL parser has already escaped the braces.
    pub(crate) fn fill_path(&self, url: &mut Url) {
        let path = url.path();
        if !path.contains("%7B") {
            return;
        }
        let mut filled = path.to_owned();
        for name in PLACEHOLDERS {
            let token = format!("%7B{name}%7D");
            if filled.contains(&token) {
                let value = match self.get(name) {
                    Lookup::Value(v) => utf8_percent_encode(v.text, SEGMENT).to_string(),
                    Lookup::Absent | Lookup::Unknown => String::new(),
                };
                filled = filled.replace(&token, &value);
            }
        }
        url.set_path(&filled);
    }

    /// A JSON body template filled: every string's placeholders, a string
    /// that is exactly one placeholder as that value's JSON type, and an
    /// object member whose whole value has no value left out (`null` in an
    /// array). Keys are not templates.
    pub(crate) fn fill_json(&self, template: &Value) -> Value {
        self.fill_json_value(template).unwrap_or(Value::Null)
    }

    fn fill_json_value(&self, template: &Value) -> Option<Value> {
        Some(match template {
            Value::String(s) => match whole(s).map(|name| self.get(name)) {
                Some(Lookup::Absent) => return None,
                Some(Lookup::Value(v)) => json_of(v),
                _ => Value::String(self.fill(s)),
            },
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|v| self.fill_json_value(v).unwrap_or(Value::Null))
                    .collect(),
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.fill_json_value(v)?)))
                    .collect(),
            ),
            other => other.clone(),
        })
    }
}

/// A value as a whole JSON value: a number when it is one and reads as one.
fn json_of(v: Var<'_>) -> Value {
    if v.number {
        if let Ok(i) = v.text.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(u) = v.text.parse::<u64>() {
            return Value::from(u);
        }
    }
    Value::String(v.text.to_owned())
}

/// The name of the placeholder `s` consists of, if it is exactly one.
fn whole(s: &str) -> Option<&str> {
    let name = s.strip_prefix('{')?.strip_suffix('}')?;
    is_name(name).then_some(name)
}

/// A placeholder name: a letter or `_`, then letters, digits or `_`.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The `{name}` placeholders in `s`, known or not. Braces around anything
/// that is not a name (a JSON value's) are not placeholders.
pub(crate) fn names(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    scan(s, |name| {
        out.push(name);
    });
    out
}

/// Calls `found` with each `{name}` in `s`, in order.
fn scan<'s>(s: &'s str, mut found: impl FnMut(&'s str)) {
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        let name = &rest[..close];
        if is_name(name) {
            found(name);
            rest = &rest[close + 1..];
        }
    }
}

/// `s` with each `{name}` for which `value` answers replaced by the answer.
fn replace(s: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        match is_name(name).then(|| value(name)).flatten() {
            Some(v) => {
                out.push_str(&rest[..open]);
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars<'a>(cursor: Option<Var<'a>>) -> Vars<'a> {
        Vars {
            start: Var {
                text: "1796472000",
                number: true,
            },
            end: Var {
                text: "1796475600",
                number: true,
            },
            cursor,
            partition: None,
        }
    }

    #[test]
    fn path_values_stay_inside_one_segment() {
        let v = Vars {
            start: Var {
                text: "a/b c%",
                number: false,
            },
            end: Var {
                text: "2026-12-05",
                number: false,
            },
            cursor: None,
            partition: Some(Var {
                text: "store/7?",
                number: false,
            }),
        };
        let mut u = Url::parse("http://x/v1/{start}/{end}/e{cursor}").unwrap();
        v.fill_path(&mut u);
        assert_eq!(u.as_str(), "http://x/v1/a%2Fb%20c%25/2026-12-05/e");
        assert_eq!(u.path_segments().unwrap().count(), 4);
        let mut u = Url::parse("http://x/v1/stores/{partition}/events").unwrap();
        v.fill_path(&mut u);
        assert_eq!(u.as_str(), "http://x/v1/stores/store%2F7%3F/events");
        assert_eq!(v.fill("{partition}:{end}"), "store/7?:2026-12-05");
    }

    #[test]
    fn text_fills_known_names_and_leaves_other_braces() {
        let page = Var {
            text: "3",
            number: true,
        };
        let v = vars(Some(page));
        assert_eq!(
            v.fill(r#"{"from":{start}} {end}/{cursor} {other} {{start}} {"#),
            r#"{"from":1796472000} 1796475600/3 {other} {1796472000} {"#
        );
        assert_eq!(v.fill_value("{cursor}"), Some("3".into()));
        let first = vars(None);
        assert_eq!(first.fill_value("{cursor}"), None);
        assert_eq!(first.fill_value("x{cursor}"), Some("x".into()));
        assert_eq!(first.fill_value("{unknown}"), Some("{unknown}".into()));
        assert_eq!(
            names("a {start} {b c} {{cursor}} {_x1} {9}"),
            ["start", "cursor", "_x1"]
        );
    }

    #[test]
    fn a_body_table_is_filled_with_typed_values() {
        let template = json!({
            "query": {
                "range": { "from": "{start}", "to": "{end}" },
                "text": "between {start} and {end}",
                "kinds": ["a", "{cursor}", 7],
            },
            "cursor": "{cursor}",
            "size": 50,
            "exact": true,
            "none": null,
            "other": "{other}",
        });
        let token = Var {
            text: "c2",
            number: false,
        };
        assert_eq!(
            vars(Some(token)).fill_json(&template),
            json!({
                "query": {
                    "range": { "from": 1796472000, "to": 1796475600 },
                    "text": "between 1796472000 and 1796475600",
                    "kinds": ["a", "c2", 7],
                },
                "cursor": "c2",
                "size": 50,
                "exact": true,
                "none": null,
                "other": "{other}",
            })
        );
        // First page: no cursor member, a null in the array.
        let first = vars(None).fill_json(&template);
        assert!(first.get("cursor").is_none(), "{first}");
        assert_eq!(first["query"]["kinds"], json!(["a", null, 7]));
        // Times in RFC 3339 stay strings; a page number is a number.
        let v = Vars {
            start: Var {
                text: "2026-12-05T12:00:00Z",
                number: false,
            },
            end: Var {
                text: "2026-12-05T13:00:00Z",
                number: false,
            },
            cursor: Some(Var {
                text: "2",
                number: true,
            }),
            partition: None,
        };
        assert_eq!(
            v.fill_json(&json!({"from": "{start}", "page": "{cursor}"})),
            json!({"from": "2026-12-05T12:00:00Z", "page": 2})
        );
        // A value marked numeric that is not a number stays a string.
        let odd = Var {
            text: "-x",
            number: true,
        };
        assert_eq!(vars(Some(odd)).fill_json(&json!("{cursor}")), json!("-x"));
        assert_eq!(vars(None).fill_json(&json!("{cursor}")), Value::Null);
    }

    proptest::proptest! {
        /// Any text: filling never panics, and text without a known
        /// placeholder is left as it was.
        #[test]
        fn filling_any_text_is_total(s in "[a-z{}_ 0-9]{0,40}") {
            let v = vars(Some(Var { text: "C", number: false }));
            let filled = v.fill(&s);
            if !PLACEHOLDERS.iter().any(|p| s.contains(&format!("{{{p}}}"))) {
                proptest::prop_assert_eq!(&filled, &s);
            }
            let body = v.fill_json(&json!({ "a": [s.clone(), { "b": s.clone() }] }));
            proptest::prop_assert!(body.is_object());
            let _ = v.fill_value(&s);
            let _ = names(&s);
        }
    }
}
