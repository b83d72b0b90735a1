//! The pure comparison of a live message with the one a fill would send for
//! the same record: JSON structure and values, then message attributes.
//!
//! - Objects are compared key by key (their order does not matter), arrays
//!   element by element, everything else by value: `1` and `1.0` differ, as
//!   they may for a typed consumer.
//! - A pointer in `ignore` is not compared, nor is anything under it.
//! - A pointer in `json_text` holds JSON *text* (SNS's `Message`): when both
//!   sides are strings that parse, their parsed values are compared, and paths
//!   below it address the parsed value (`/Message/amount`).
//! - The first difference is the first in the live message's key order, then
//!   keys only the recovered message has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What is compared and how.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules<'a> {
    /// Body pointers not compared, each with what is under it.
    pub(crate) ignore: &'a [String],
    /// Body pointers whose string value is JSON text.
    pub(crate) json_text: &'a [&'a str],
    /// Attributes not compared (besides `gapwatch-*`).
    pub(crate) ignore_attributes: &'a [String],
}

/// One place where the two messages differ. `None`: absent on that side.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Difference {
    /// A JSON pointer into the body (`""`: the whole body), or an attribute name.
    pub(crate) path: String,
    pub(crate) live: Option<Value>,
    pub(crate) recovered: Option<Value>,
}

/// A message attribute: its SQS data type (`String`, `Number`, `Binary`,
/// with an optional custom suffix) and its value as text (base64 for binary).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Attribute {
    pub(crate) data_type: String,
    pub(crate) value: String,
}

impl Attribute {
    pub(crate) fn string(value: impl Into<String>) -> Self {
        Self {
            data_type: "String".into(),
            value: value.into(),
        }
    }

    /// As shown in a difference: the text, with its type unless `String`.
    fn shown(&self) -> Value {
        if self.data_type == "String" {
            Value::String(self.value.clone())
        } else {
            Value::String(format!("{} ({})", self.value, self.data_type))
        }
    }
}

/// Attributes gapwatch adds to recovered messages: never compared.
pub(crate) fn is_own_attribute(name: &str) -> bool {
    name.starts_with("gapwatch-")
}

/// Up to `limit` differences between two bodies, in order.
pub(crate) fn body_differences(
    live: &Value,
    recovered: &Value,
    rules: &Rules<'_>,
    limit: usize,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut path = String::new();
    walk(
        &mut path,
        Some(live),
        Some(recovered),
        rules,
        &mut out,
        limit,
    );
    out
}

/// Up to `limit` differences between two attribute sets, by name.
pub(crate) fn attribute_differences(
    live: &BTreeMap<String, Attribute>,
    recovered: &BTreeMap<String, Attribute>,
    rules: &Rules<'_>,
    limit: usize,
) -> Vec<Difference> {
    let compared = |name: &&String| {
        !is_own_attribute(name) && !rules.ignore_attributes.iter().any(|i| i == *name)
    };
    let mut names: Vec<&String> = live
        .keys()
        .chain(recovered.keys())
        .filter(compared)
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let (l, r) = (live.get(name), recovered.get(name));
            (l != r).then(|| Difference {
                path: name.clone(),
                live: l.map(Attribute::shown),
                recovered: r.map(Attribute::shown),
            })
        })
        .take(limit)
        .collect()
}

fn walk(
    path: &mut String,
    live: Option<&Value>,
    recovered: Option<&Value>,
    rules: &Rules<'_>,
    out: &mut Vec<Difference>,
    limit: usize,
) {
    if out.len() >= limit || rules.ignore.iter().any(|p| p == path) {
        return;
    }
    if rules.json_text.contains(&path.as_str()) {
        if let (Some(Value::String(l)), Some(Value::String(r))) = (live, recovered) {
            if let (Ok(l), Ok(r)) = (
                serde_json::from_str::<Value>(l),
                serde_json::from_str::<Value>(r),
            ) {
                // Parsed once: a pointer below it is not JSON text again.
                let inner = Rules {
                    json_text: &[],
                    ..*rules
                };
                walk(path, Some(&l), Some(&r), &inner, out, limit);
                return;
            }
        }
    }
    match (live, recovered) {
        (None, None) => {}
        (Some(Value::Object(l)), Some(Value::Object(r))) => {
            let len = path.len();
            for (k, lv) in l {
                push_segment(path, k);
                walk(path, Some(lv), r.get(k), rules, out, limit);
                path.truncate(len);
            }
            for (k, rv) in r.iter().filter(|(k, _)| !l.contains_key(*k)) {
                push_segment(path, k);
                walk(path, None, Some(rv), rules, out, limit);
                path.truncate(len);
            }
        }
        (Some(Value::Array(l)), Some(Value::Array(r))) => {
            let len = path.len();
            for i in 0..l.len().max(r.len()) {
                path.push('/');
                path.push_str(&i.to_string());
                walk(path, l.get(i), r.get(i), rules, out, limit);
                path.truncate(len);
            }
        }
        (l, r) if l == r => {}
        (l, r) => out.push(Difference {
            path: path.clone(),
            live: l.cloned(),
            recovered: r.cloned(),
        }),
    }
}

/// Appends `/key` with JSON pointer escaping (`~` → `~0`, `/` → `~1`).
fn push_segment(path: &mut String, key: &str) {
    path.push('/');
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules<'a>(ignore: &'a [String], json_text: &'a [&'a str]) -> Rules<'a> {
        Rules {
            ignore,
            json_text,
            ignore_attributes: &[],
        }
    }

    fn ptrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// (live, recovered, ignore, first differing path or None, its two sides)
    type Case = (
        Value,
        Value,
        &'static [&'static str],
        Option<(&'static str, Option<Value>, Option<Value>)>,
    );

    #[test]
    fn first_difference_table() {
        let cases: Vec<Case> = vec![
            (json!({"a": 1}), json!({"a": 1}), &[], None),
            // Key order is not a difference.
            (json!({"a": 1, "b": 2}), json!({"b": 2, "a": 1}), &[], None),
            (
                json!({"a": 1, "b": {"c": "x"}}),
                json!({"a": 1, "b": {"c": "y"}}),
                &[],
                Some(("/b/c", Some(json!("x")), Some(json!("y")))),
            ),
            // Missing on one side, then only on the other.
            (
                json!({"a": 1, "b": 2}),
                json!({"a": 1}),
                &[],
                Some(("/b", Some(json!(2)), None)),
            ),
            (
                json!({"a": 1}),
                json!({"a": 1, "extra": true}),
                &[],
                Some(("/extra", None, Some(json!(true)))),
            ),
            // Types: a number is not its string, 1 is not 1.0, null is a value.
            (
                json!({"n": 12}),
                json!({"n": "12"}),
                &[],
                Some(("/n", Some(json!(12)), Some(json!("12")))),
            ),
            (
                json!({"n": 1}),
                json!({"n": 1.0}),
                &[],
                Some(("/n", Some(json!(1)), Some(json!(1.0)))),
            ),
            (
                json!({"n": null}),
                json!({}),
                &[],
                Some(("/n", Some(Value::Null), None)),
            ),
            // Arrays element by element, then the longer one's rest.
            (
                json!({"l": [1, 2, 3]}),
                json!({"l": [1, 5]}),
                &[],
                Some(("/l/1", Some(json!(2)), Some(json!(5)))),
            ),
            (
                json!({"l": [1]}),
                json!({"l": [1, 2]}),
                &[],
                Some(("/l/1", None, Some(json!(2)))),
            ),
            // Ignored pointers, with what is under them.
            (
                json!({"id": "a", "time": "t1", "detail": {"x": 1}}),
                json!({"id": "b", "time": "t2", "detail": {"x": 1}}),
                &["/id", "/time"],
                None,
            ),
            (
                json!({"meta": {"at": 1, "by": "x"}, "v": 1}),
                json!({"meta": {"at": 2}, "v": 2}),
                &["/meta"],
                Some(("/v", Some(json!(1)), Some(json!(2)))),
            ),
            // Escaped keys.
            (
                json!({"a/b": {"c~d": 1}}),
                json!({"a/b": {"c~d": 2}}),
                &[],
                Some(("/a~1b/c~0d", Some(json!(1)), Some(json!(2)))),
            ),
            (
                json!({"a/b": 1, "x": 1}),
                json!({"a/b": 2, "x": 2}),
                &["/a~1b"],
                Some(("/x", Some(json!(1)), Some(json!(2)))),
            ),
            // Different types at the top: the whole body.
            (
                json!([1]),
                json!({"a": 1}),
                &[],
                Some(("", Some(json!([1])), Some(json!({"a": 1})))),
            ),
        ];
        for (i, (live, recovered, ignore, want)) in cases.into_iter().enumerate() {
            let ignore = ptrs(ignore);
            let got = body_differences(&live, &recovered, &rules(&ignore, &[]), 1);
            let want: Vec<Difference> = want
                .into_iter()
                .map(|(path, live, recovered)| Difference {
                    path: path.into(),
                    live,
                    recovered,
                })
                .collect();
            assert_eq!(got, want, "case {i}: {live} vs {recovered}");
        }
    }

    #[test]
    fn sns_message_is_compared_parsed() {
        let sns = |message: &str, id: &str| json!({"Type": "Notification", "MessageId": id, "Message": message, "Timestamp": "t"});
        let ignore = ptrs(&["/MessageId", "/Timestamp"]);
        let text = &["/Message"];
        // The same record written with other spacing and key order: no difference.
        let live = sns(r#"{"id": "r-1", "amount": 5}"#, "m-1");
        let same = sns(r#"{"amount":5,"id":"r-1"}"#, "m-2");
        assert!(body_differences(&live, &same, &rules(&ignore, text), 5).is_empty());
        // Compared as strings, they would differ at /Message itself.
        assert_eq!(
            body_differences(&live, &same, &rules(&ignore, &[]), 5)[0].path,
            "/Message"
        );
        // A difference inside is named by its path in the parsed record.
        let other = sns(r#"{"id": "r-1", "amount": "5"}"#, "m-3");
        let d = body_differences(&live, &other, &rules(&ignore, text), 5);
        assert_eq!(
            d,
            vec![Difference {
                path: "/Message/amount".into(),
                live: Some(json!(5)),
                recovered: Some(json!("5")),
            }]
        );
        // Ignore pointers reach inside too.
        let below = ptrs(&["/MessageId", "/Timestamp", "/Message/amount"]);
        assert!(body_differences(&live, &other, &rules(&below, text), 5).is_empty());
        // Text that is not JSON on one side: compared as the strings they are.
        let broken = sns("not json", "m-4");
        let d = body_differences(&live, &broken, &rules(&ignore, text), 5);
        assert_eq!(d[0].path, "/Message");
        assert_eq!(d[0].recovered, Some(json!("not json")));
        // Not a string on one side: compared as values.
        let object = json!({"Type": "Notification", "Message": {"id": "r-1"}});
        let d = body_differences(&live, &object, &rules(&ignore, text), 1);
        assert_eq!(d[0].path, "/Message");
    }

    #[test]
    fn all_differences_in_order_up_to_the_limit() {
        let live = json!({"a": 1, "b": 2, "c": 3, "d": 4});
        let recovered = json!({"a": 0, "b": 0, "c": 0, "d": 4, "e": 5});
        let paths = |limit| -> Vec<String> {
            body_differences(&live, &recovered, &rules(&[], &[]), limit)
                .into_iter()
                .map(|d| d.path)
                .collect()
        };
        assert_eq!(paths(10), ["/a", "/b", "/c", "/e"]);
        assert_eq!(paths(2), ["/a", "/b"]);
        assert!(paths(0).is_empty());
    }

    #[test]
    fn attributes_by_name_without_gapwatch_ones() {
        let set = |pairs: &[(&str, Attribute)]| -> BTreeMap<String, Attribute> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        let number = Attribute {
            data_type: "Number".into(),
            value: "5".into(),
        };
        let live = set(&[
            ("event-type", Attribute::string("order.created")),
            ("count", number.clone()),
            ("trace", Attribute::string("t-1")),
        ]);
        let recovered = set(&[
            ("event-type", Attribute::string("order.updated")),
            ("count", Attribute::string("5")),
            ("gapwatch-record-id", Attribute::string("r-1")),
            ("extra", Attribute::string("x")),
        ]);
        let ignore_attributes = ptrs(&["trace"]);
        let r = Rules {
            ignore: &[],
            json_text: &[],
            ignore_attributes: &ignore_attributes,
        };
        let d = attribute_differences(&live, &recovered, &r, 10);
        assert_eq!(
            d,
            vec![
                Difference {
                    path: "count".into(),
                    live: Some(json!("5 (Number)")),
                    recovered: Some(json!("5")),
                },
                Difference {
                    path: "event-type".into(),
                    live: Some(json!("order.created")),
                    recovered: Some(json!("order.updated")),
                },
                Difference {
                    path: "extra".into(),
                    live: None,
                    recovered: Some(json!("x")),
                },
            ]
        );
        let same = set(&[
            ("event-type", Attribute::string("order.created")),
            ("count", number),
        ]);
        assert!(attribute_differences(&live, &same, &r, 10).is_empty());
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-z/~]{0,6}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map("[a-z/~]{1,4}", inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn no_difference_exactly_when_equal(a in json(), b in json()) {
                let r = rules(&[], &[]);
                prop_assert!(body_differences(&a, &a, &r, 10).is_empty());
                prop_assert_eq!(body_differences(&a, &b, &r, 10).is_empty(), a == b);
            }

            #[test]
            fn every_path_reported_is_a_pointer_into_a_side(a in json(), b in json()) {
                for d in body_differences(&a, &b, &rules(&[], &[]), 10) {
                    prop_assert_eq!(a.pointer(&d.path), d.live.as_ref());
                    prop_assert_eq!(b.pointer(&d.path), d.recovered.as_ref());
                }
            }

            #[test]
            fn ignoring_each_reported_path_leaves_none(a in json(), b in json()) {
                let paths: Vec<String> = body_differences(&a, &b, &rules(&[], &[]), usize::MAX)
                    .into_iter()
                    .map(|d| d.path)
                    .collect();
                prop_assert!(body_differences(&a, &b, &rules(&paths, &[]), 10).is_empty());
            }
        }
    }
}
