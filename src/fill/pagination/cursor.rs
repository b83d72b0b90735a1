//! Cursor styles: an opaque token found in the body (Slack's
//! `next_cursor`), taken from the last record (Stripe's `starting_after`
//! with `has_more`) or read from a response header (`X-Next-Cursor`).

use serde_json::Value;

use super::{json_kind, PageCursor, PageView, PaginationError};

/// Where the cursor style finds the next token: exactly one is set.
pub(super) struct From<'a> {
    /// A JSON pointer into the body.
    pub(crate) body: Option<&'a str>,
    /// A JSON pointer into the last record.
    pub(crate) last_record: Option<&'a str>,
    /// A response header name.
    pub(crate) header: Option<&'a str>,
}

/// The cursor after a page of the cursor style (see [`Pagination::next`](super::Pagination::next)).
pub(super) fn next(
    at: &PageCursor,
    page: &PageView<'_>,
    from: From<'_>,
    has_more: Option<&str>,
) -> Result<Option<PageCursor>, PaginationError> {
    let more = match has_more {
        Some(p) => read_has_more(page.body, p)?,
        None => None,
    };
    if more == Some(false) {
        return Ok(None);
    }
    let token = match from {
        From { body: Some(p), .. } => read_token("cursor", page.body.pointer(p), p)?,
        From {
            last_record: Some(p),
            ..
        } => match page.records.last() {
            Some(last) => read_token("cursor_from_last_record", last.pointer(p), p)?,
            None => None,
        },
        // An absent or empty header ends paging, like an absent cursor.
        From {
            header: Some(_), ..
        } => page
            .cursor_header
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        // Rejected by validate(); ending is the only answer that
        // cannot loop.
        _ => None,
    };
    let Some(token) = token else {
        if more == Some(true) {
            let missing = if from.last_record.is_some() {
                "last record to continue from"
            } else {
                "next cursor"
            };
            return Err(PaginationError::MoreWithoutCursor { missing });
        }
        return Ok(None);
    };
    if matches!(at, PageCursor::Cursor { token: t } if *t == token) {
        return Err(PaginationError::CursorLoop);
    }
    Ok(Some(PageCursor::Cursor { token }))
}

fn read_has_more(body: &Value, pointer: &str) -> Result<Option<bool>, PaginationError> {
    match body.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        // Some APIs stringify everything; accept the unambiguous spellings.
        Some(Value::String(s)) if s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "false" => Ok(Some(false)),
        Some(other) => Err(PaginationError::BadValue {
            what: "has_more",
            pointer: pointer.to_owned(),
            got: json_kind(other),
            expected: "a boolean",
        }),
    }
}

fn read_token(
    what: &'static str,
    v: Option<&Value>,
    pointer: &str,
) -> Result<Option<String>, PaginationError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(PaginationError::BadValue {
            what,
            pointer: pointer.to_owned(),
            got: json_kind(other),
            expected: "a string or number",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use serde_json::json;

    #[test]
    fn stripe_has_more_and_starting_after() {
        let p = cfg(
            json!({"type": "cursor", "cursor_from_last_record": "/id", "param": "starting_after", "has_more": "/has_more"}),
        );
        let pages = [
            (
                json!({"object": "list", "data": [{"id": "ev_1"}, {"id": "ev_2"}], "has_more": true}),
                None,
            ),
            (
                json!({"object": "list", "data": [{"id": "ev_3"}], "has_more": false}),
                None,
            ),
        ];
        let (seen, end) = walk(&p, "/data", &pages);
        assert_eq!(
            seen,
            vec![
                PageCursor::First,
                PageCursor::Cursor {
                    token: "ev_2".into()
                }
            ]
        );
        assert_eq!(end, Ok(None));
        assert_eq!(p.request(&seen[0]), params(&[]));
        assert_eq!(p.request(&seen[1]), params(&[("starting_after", "ev_2")]));
    }

    #[test]
    fn last_record_numeric_id_and_empty_page() {
        // Without has_more, an empty page ends paging.
        let p = cfg(json!({"type": "cursor", "cursor_from_last_record": "/seq", "param": "after"}));
        let pages = [
            (json!({"items": [{"seq": 10}, {"seq": 11}]}), None),
            (json!({"items": []}), None),
        ];
        let (seen, end) = walk(&p, "/items", &pages);
        assert_eq!(seen[1], PageCursor::Cursor { token: "11".into() });
        assert_eq!(end, Ok(None));
    }

    #[test]
    fn has_more_true_without_anything_to_continue_is_an_error() {
        let p = cfg(
            json!({"type": "cursor", "cursor_from_last_record": "/id", "param": "starting_after", "has_more": "/has_more"}),
        );
        let (_, end) = walk(
            &p,
            "/data",
            &[(json!({"data": [], "has_more": true}), None)],
        );
        assert_eq!(
            end,
            Err(PaginationError::MoreWithoutCursor {
                missing: "last record to continue from"
            })
        );
        let p =
            cfg(json!({"type": "cursor", "cursor": "/next", "param": "c", "has_more": "/more"}));
        let (_, end) = walk(
            &p,
            "/data",
            &[(json!({"data": [1], "more": true, "next": null}), None)],
        );
        assert_eq!(
            end,
            Err(PaginationError::MoreWithoutCursor {
                missing: "next cursor"
            })
        );
        let (_, end) = walk(
            &p,
            "/data",
            &[(json!({"data": [1], "more": 1, "next": "x"}), None)],
        );
        assert!(
            matches!(
                end,
                Err(PaginationError::BadValue {
                    what: "has_more",
                    ..
                })
            ),
            "{end:?}"
        );
    }

    #[test]
    fn slack_next_cursor_empty_at_end() {
        let p = cfg(
            json!({"type": "cursor", "cursor": "/response_metadata/next_cursor", "param": "cursor"}),
        );
        let pages = [
            (
                json!({"ok": true, "messages": [{"ts": "1"}], "response_metadata": {"next_cursor": "bmV4dF90czoxNTEyMDg1ODYxMDAwNTQz"}}),
                None,
            ),
            (
                json!({"ok": true, "messages": [{"ts": "2"}], "response_metadata": {"next_cursor": "dXNlcjpVMEc5V0ZYTlo="}}),
                None,
            ),
            (
                json!({"ok": true, "messages": [{"ts": "3"}], "response_metadata": {"next_cursor": ""}}),
                None,
            ),
        ];
        let (seen, end) = walk(&p, "/messages", &pages);
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[2],
            PageCursor::Cursor {
                token: "dXNlcjpVMEc5V0ZYTlo=".into()
            }
        );
        assert_eq!(end, Ok(None));
        assert_eq!(
            p.request(&seen[2]),
            params(&[("cursor", "dXNlcjpVMEc5V0ZYTlo=")])
        );
        // An absent or null cursor also ends.
        for body in [
            json!({"messages": [1]}),
            json!({"messages": [1], "response_metadata": {"next_cursor": null}}),
        ] {
            assert_eq!(walk(&p, "/messages", &[(body, None)]).1, Ok(None));
        }
    }

    #[test]
    fn cursor_in_a_response_header() {
        let p = cfg(json!({"type": "cursor", "cursor_header": "X-Next-Cursor", "param": "cursor"}));
        let (body, records) = (json!([1, 2]), [json!(1), json!(2)]);
        let view = |cursor_header| PageView {
            body: &body,
            link_header: None,
            cursor_header,
            records: &records,
        };
        let first = p.first();
        let next = p.next(&first, &view(Some(" abc ")));
        assert_eq!(
            next,
            Ok(Some(PageCursor::Cursor {
                token: "abc".into()
            }))
        );
        let at = next.unwrap().unwrap();
        assert_eq!(p.request(&at), params(&[("cursor", "abc")]));
        // Absent or empty: the last page.
        assert_eq!(p.next(&at, &view(None)), Ok(None));
        assert_eq!(p.next(&at, &view(Some(""))), Ok(None));
        assert_eq!(
            p.next(&at, &view(Some("abc"))),
            Err(PaginationError::CursorLoop)
        );
        // has_more still ends paging, or catches a missing header.
        let p = cfg(json!({"type": "cursor", "cursor_header": "X-Next", "has_more": "/more"}));
        let body = json!({"more": true});
        let v = PageView {
            body: &body,
            link_header: None,
            cursor_header: None,
            records: &[],
        };
        assert_eq!(
            p.next(&first, &v),
            Err(PaginationError::MoreWithoutCursor {
                missing: "next cursor"
            })
        );
        // Without `param` the request template places the token.
        assert_eq!(p.request(&at), params(&[]));
        assert_eq!(
            p.cursor_text(&at),
            Some(CursorText {
                text: "abc".into(),
                number: false
            })
        );
        assert_eq!(p.cursor_text(&first), None);
        assert_eq!(p.cursor_header(), Some("X-Next"));
    }

    #[test]
    fn a_cursor_style_has_one_cursor_source() {
        let bad = [
            (json!({"type": "cursor", "param": "c"}), "needs one of"),
            (
                json!({"type": "cursor", "cursor": "/n", "cursor_header": "X-N"}),
                "mutually exclusive",
            ),
            (
                json!({"type": "cursor", "cursor_header": "X Next"}),
                "cursor_header: \"X Next\" is not an HTTP header name",
            ),
            (
                json!({"type": "cursor", "cursor_header": ""}),
                "is not an HTTP header name",
            ),
            (
                json!({"type": "cursor", "cursor_header": "X-N", "param": " "}),
                "param: must not be empty",
            ),
        ];
        for (v, want) in bad {
            let p: Pagination = serde_json::from_value(v.clone()).unwrap();
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
    }

    #[test]
    fn cursor_loop_is_an_error() {
        let p = cfg(json!({"type": "cursor", "cursor": "/next", "param": "cursor"}));
        let pages = [
            (json!({"data": [1], "next": "abc"}), None),
            (json!({"data": [2], "next": "abc"}), None),
        ];
        let (_, end) = walk(&p, "/data", &pages);
        assert_eq!(end, Err(PaginationError::CursorLoop));
        let msg = PaginationError::CursorLoop.to_string();
        assert_eq!(
            msg,
            "cursor loop: the page returned the cursor it was requested with"
        );
        // Same for a numeric cursor, compared after stringifying.
        let pages = [
            (json!({"data": [1], "next": 7}), None),
            (json!({"data": [1], "next": 7}), None),
        ];
        assert_eq!(
            walk(&p, "/data", &pages).1,
            Err(PaginationError::CursorLoop)
        );
        // Objects are not cursors.
        let (_, end) = walk(
            &p,
            "/data",
            &[(json!({"data": [1], "next": {"a": 1}}), None)],
        );
        assert!(
            matches!(
                end,
                Err(PaginationError::BadValue {
                    what: "cursor",
                    got: "an object",
                    ..
                })
            ),
            "{end:?}"
        );
    }
}
