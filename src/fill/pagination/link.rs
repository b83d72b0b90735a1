//! Next-URL styles: the full URL of the next page in the body (JSON:API
//! `links.next`) or in an RFC 8288 `Link` header (GitHub), resolved against
//! the source URL and kept on its origin.

use serde_json::Value;

use super::{json_kind, PageCursor, PageView, PaginationError};

/// The cursor after a page whose body carries the next URL at `pointer`.
pub(super) fn next_in_body(
    at: &PageCursor,
    page: &PageView<'_>,
    pointer: &str,
) -> Result<Option<PageCursor>, PaginationError> {
    let url = match page.body.pointer(pointer) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_owned()),
        Some(other) => {
            return Err(PaginationError::BadValue {
                what: "next",
                pointer: pointer.to_owned(),
                got: json_kind(other),
                expected: "a url string",
            })
        }
    };
    next_url(at, url)
}

/// The cursor after a page whose `Link` header names the next one.
pub(super) fn next_in_header(
    at: &PageCursor,
    page: &PageView<'_>,
) -> Result<Option<PageCursor>, PaginationError> {
    let next = match page.link_header {
        Some(h) => link_next(h).map_err(|reason| PaginationError::BadLinkHeader { reason })?,
        None => None,
    };
    next_url(at, next)
}

fn next_url(at: &PageCursor, url: Option<String>) -> Result<Option<PageCursor>, PaginationError> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if let PageCursor::Url { url: current } = at {
        if same_url(current, &url) {
            return Err(PaginationError::UrlLoop { url });
        }
    }
    Ok(Some(PageCursor::Url { url }))
}

/// Equal as written, or equal once parsed (so `HTTP://Host/x` equals `http://host/x`).
fn same_url(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (url::Url::parse(a), url::Url::parse(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// Resolves a next-page URL (possibly relative) against `base`, the
/// configured source URL, and refuses one on another origin (scheme, host,
/// port) because the request would carry the source's credentials there.
pub(crate) fn resolve_url(base: &url::Url, target: &str) -> Result<url::Url, PaginationError> {
    let url = base.join(target).map_err(|e| PaginationError::BadUrl {
        url: target.to_owned(),
        reason: e.to_string(),
    })?;
    if url.origin() != base.origin() {
        return Err(PaginationError::CrossOrigin {
            url: target.to_owned(),
            origin: base.origin().ascii_serialization(),
        });
    }
    Ok(url)
}

/// The target of the first link with relation type `next` in an RFC 8288
/// `Link` header value. Handles several comma-separated links, quoted and
/// unquoted `rel`, several relation types in one `rel` (`rel="next last"`),
/// case-insensitive names, extra parameters and whitespace.
///
/// `Ok(None)` only when the header is well formed and has no `next`; a
/// header with a malformed part (an element not starting with `<`, an
/// unterminated `<…>`, `rel="next"` with an empty target) and no usable
/// `next` elsewhere is an error saying what was wrong (never quoting the
/// header, whose URLs may carry credentials).
pub(crate) fn link_next(header: &str) -> Result<Option<String>, &'static str> {
    let mut rest = header;
    let mut malformed = None;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return malformed.map_or(Ok(None), Err);
        }
        let Some(after_lt) = rest.strip_prefix('<') else {
            malformed.get_or_insert("a link does not start with '<'");
            rest = skip_link(rest);
            continue;
        };
        // An unterminated target: nothing after it can be trusted.
        let Some(end) = after_lt.find('>') else {
            return Err("unterminated '<' target");
        };
        let target = after_lt[..end].trim();
        rest = &after_lt[end + 1..];
        let mut is_next = false;
        let mut seen_rel = false;
        // Parameters: `; name[=value]` until the next `,` or the end.
        loop {
            rest = rest.trim_start();
            let Some(after_semi) = rest.strip_prefix(';') else {
                break;
            };
            let (name, value, remaining) = parse_param(after_semi);
            rest = remaining;
            // RFC 8288 §3.3: only the first rel parameter counts.
            if name.eq_ignore_ascii_case("rel") && !seen_rel {
                seen_rel = true;
                is_next = value
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"));
            }
        }
        if is_next {
            if target.is_empty() {
                malformed.get_or_insert("rel=\"next\" with an empty target");
            } else {
                return Ok(Some(target.to_owned()));
            }
        }
        rest = skip_link(rest);
    }
}

/// Parses `name[=value]` after a `;`, value a token or a quoted string.
/// Returns the name, the (unescaped) value and what follows.
fn parse_param(s: &str) -> (&str, String, &str) {
    let s = s.trim_start();
    let name_end = s.find(['=', ';', ',']).unwrap_or(s.len());
    let name = s[..name_end].trim();
    let s = &s[name_end..];
    let Some(v) = s.strip_prefix('=') else {
        return (name, String::new(), s);
    };
    let v = v.trim_start();
    if let Some(q) = v.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return (name, value, &q[i + 1..]),
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                c => value.push(c),
            }
        }
        // Unterminated quote: take what there is, nothing follows.
        (name, value, "")
    } else {
        let end = v.find([';', ',']).unwrap_or(v.len());
        (name, v[..end].trim().to_owned(), &v[end..])
    }
}

/// Skips to just after the next comma that is outside `<…>` and quotes.
fn skip_link(s: &str) -> &str {
    let mut in_angle = false;
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_quote {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '<' => in_angle = true,
            '>' => in_angle = false,
            ',' if !in_angle => return &s[i + 1..],
            _ => {}
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::link_next;
    use serde_json::json;

    #[test]
    fn github_link_header() {
        let p = cfg(json!({"type": "link_header"}));
        let l1 = r#"<https://api.github.com/repositories/1300192/issues?page=2>; rel="next", <https://api.github.com/repositories/1300192/issues?page=515>; rel="last""#;
        let l2 = r#"<https://api.github.com/repositories/1300192/issues?page=1>; rel="prev", <https://api.github.com/repositories/1300192/issues?page=3>; rel="next", <https://api.github.com/repositories/1300192/issues?page=515>; rel="last", <https://api.github.com/repositories/1300192/issues?page=1>; rel="first""#;
        let l3 = r#"<https://api.github.com/repositories/1300192/issues?page=2>; rel="prev", <https://api.github.com/repositories/1300192/issues?page=1>; rel="first""#;
        let pages = [
            (json!([{"id": 1}]), Some(l1)),
            (json!([{"id": 2}]), Some(l2)),
            (json!([{"id": 3}]), Some(l3)),
        ];
        let (seen, end) = walk(&p, "", &pages);
        let page2 = "https://api.github.com/repositories/1300192/issues?page=2";
        assert_eq!(seen[1], PageCursor::Url { url: page2.into() });
        assert_eq!(p.request(&seen[1]), PageRequest::Url(page2.into()));
        assert_eq!(end, Ok(None));
        // No header at all ends too.
        assert_eq!(walk(&p, "", &[(json!([1]), None)]).1, Ok(None));
        // A next link to the page itself is a loop.
        let self_link = format!("<{page2}>; rel=\"next\"");
        let view = PageView {
            body: &json!([]),
            link_header: Some(&self_link),
            cursor_header: None,
            records: &[],
        };
        let err = p
            .next(&PageCursor::Url { url: page2.into() }, &view)
            .unwrap_err();
        assert_eq!(err, PaginationError::UrlLoop { url: page2.into() });
    }

    #[test]
    fn link_next_parsing() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            ("<https://a/2>; rel=\"next\"", Ok(Some("https://a/2"))),
            ("<https://a/2>; rel=next", Ok(Some("https://a/2"))),
            ("<https://a/2>;rel=NEXT", Ok(Some("https://a/2"))),
            ("  <https://a/2> ; REL = \"next\" ", Ok(Some("https://a/2"))),
            ("<https://a/9>; rel=\"last\", <https://a/2>; rel=\"next\"", Ok(Some("https://a/2"))),
            ("<https://a/2>; rel=\"next last\"", Ok(Some("https://a/2"))),
            ("<https://a/2>; rel=\"prev\"; title=\"next\"", Ok(None)),
            ("<https://a/2?x=a,b>; title=\"a, b; rel=next\"; rel=\"prev\", <https://a/3>; rel=\"next\"", Ok(Some("https://a/3"))),
            // Only the first rel counts.
            ("<https://a/2>; rel=\"prev\"; rel=\"next\"", Ok(None)),
            ("<https://a/2>; type=\"text/html\"; rel=\"next\"; hreflang=en", Ok(Some("https://a/2"))),
            // A usable next wins over a malformed neighbour …
            ("garbage, <https://a/2>; rel=next", Ok(Some("https://a/2"))),
            // … but without one, a malformed part is an error, not "the end".
            ("<https://a/2; rel=next", Err("unterminated '<' target")),
            ("<https://a/1>; rel=prev, <https://a/2; rel=next", Err("unterminated '<' target")),
            ("<>; rel=next", Err("rel=\"next\" with an empty target")),
            ("", Ok(None)),
            ("rel=next", Err("a link does not start with '<'")),
            ("https://a/2; rel=next", Err("a link does not start with '<'")),
            ("<https://a/2>; rel=\"next", Ok(Some("https://a/2"))),
            ("<https://a/2>; rel=\"nex\\\"t\", <https://a/3>; rel=\"next\"", Ok(Some("https://a/3"))),
            ("</issues?page=2>; rel=\"next\"", Ok(Some("/issues?page=2"))),
        ];
        for (header, want) in cases {
            assert_eq!(
                link_next(header).map(|o| o.map(|s| s.to_string())),
                want.map(|o| o.map(str::to_string)),
                "{header}"
            );
        }
        // Through the pagination style: a chunk failure, not the last page.
        let p = cfg(json!({"type": "link_header"}));
        let body = json!([{"id": 1}]);
        let view = PageView {
            body: &body,
            link_header: Some("<https://a/2; rel=\"next\""),
            cursor_header: None,
            records: body.as_array().unwrap(),
        };
        assert_eq!(
            p.next(&PageCursor::First, &view).unwrap_err(),
            PaginationError::BadLinkHeader {
                reason: "unterminated '<' target"
            }
        );
    }

    #[test]
    fn jsonapi_links_next() {
        let p = cfg(json!({"type": "next_url", "next": "/links/next"}));
        let next = "https://api.example.com/articles?page%5Bcursor%5D=abc&page%5Bsize%5D=2";
        let pages = [
            (
                json!({"data": [{"type": "articles", "id": "1"}], "links": {"self": "https://api.example.com/articles", "next": next}}),
                None,
            ),
            (
                json!({"data": [{"type": "articles", "id": "2"}], "links": {"self": next, "next": null}}),
                None,
            ),
        ];
        let (seen, end) = walk(&p, "/data", &pages);
        assert_eq!(seen[1], PageCursor::Url { url: next.into() });
        assert_eq!(p.request(&seen[1]), PageRequest::Url(next.into()));
        assert_eq!(end, Ok(None));
        // Absent links and "" end; a repeated link is a loop even if written differently.
        assert_eq!(
            walk(&p, "/data", &[(json!({"data": []}), None)]).1,
            Ok(None)
        );
        assert_eq!(
            walk(&p, "/data", &[(json!({"links": {"next": ""}}), None)]).1,
            Ok(None)
        );
        let view = PageView {
            body: &json!({"links": {"next": "HTTPS://API.example.com/x"}}),
            link_header: None,
            cursor_header: None,
            records: &[],
        };
        let err = p.next(
            &PageCursor::Url {
                url: "https://api.example.com/x".into(),
            },
            &view,
        );
        assert!(
            matches!(err, Err(PaginationError::UrlLoop { .. })),
            "{err:?}"
        );
        let view = PageView {
            body: &json!({"links": {"next": 5}}),
            link_header: None,
            cursor_header: None,
            records: &[],
        };
        assert!(matches!(
            p.next(&PageCursor::First, &view),
            Err(PaginationError::BadValue { what: "next", .. })
        ));
    }

    #[test]
    fn resolve_url_relative_and_cross_origin() {
        let base = url::Url::parse("https://api.vendor.example/v1/events?since=x").unwrap();
        assert_eq!(
            resolve_url(&base, "/v1/events?page=2").unwrap().as_str(),
            "https://api.vendor.example/v1/events?page=2"
        );
        assert_eq!(
            resolve_url(&base, "?cursor=abc").unwrap().as_str(),
            "https://api.vendor.example/v1/events?cursor=abc"
        );
        assert_eq!(
            resolve_url(&base, "https://api.vendor.example/v1/events?page=3")
                .unwrap()
                .as_str(),
            "https://api.vendor.example/v1/events?page=3"
        );
        assert!(matches!(
            resolve_url(&base, "https://evil.example/steal"),
            Err(PaginationError::CrossOrigin { .. })
        ));
        assert!(matches!(
            resolve_url(&base, "http://api.vendor.example/v1/events"),
            Err(PaginationError::CrossOrigin { .. })
        ));
        assert!(matches!(
            resolve_url(&base, "http://[::1"),
            Err(PaginationError::BadUrl { .. })
        ));
    }
}
