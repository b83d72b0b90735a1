//! Pagination styles of source APIs, as config and as a resumable state machine.
//!
//! The fetcher asks [`Pagination::request`] what to add to the next request,
//! shows the response to [`Pagination::next`], and stores the returned
//! [`PageCursor`] as the chunk's checkpoint, so a restarted daemon resumes at
//! the page it was on rather than at the start of the chunk.
//!
//! A file per family of styles: `cursor` (a token in the body or the last
//! record), `link` (a next URL in the body or in a `Link` header) and
//! `numbered` (page numbers and offsets). A new vendor shape is a change in
//! one of them, or a new one.

mod cursor;
mod link;
mod numbered;

pub(crate) use link::resolve_url;

use serde_json::Value;

/// A pagination style: `pagination = { type = "…", … }` under
/// `[feeds.backfill.source]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Pagination {
    /// One request returns everything.
    None,
    /// An opaque token sent back in `param` (or wherever the request has a
    /// `{cursor}` placeholder): found in the body at the JSON pointer
    /// `cursor` (Slack `/response_metadata/next_cursor`), taken from the last
    /// record at `cursor_from_last_record` (Stripe `starting_after` with
    /// `/id`), or read from the response header `cursor_header`
    /// (`X-Next-Cursor`). `has_more` optionally points at a boolean that ends
    /// paging when false.
    Cursor {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor_from_last_record: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor_header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        has_more: Option<String>,
    },
    /// The body carries the full URL of the next page at the pointer `next`
    /// (JSON:API `/links/next`).
    NextUrl { next: String },
    /// RFC 8288 `Link: <…>; rel="next"` response header (GitHub).
    LinkHeader,
    /// Numbered pages: `param` = page number starting at `start` (or the
    /// request's `{cursor}`), `size_param` = `size` if set. Paging ends on an
    /// empty page: a server may cap the page size below `size`, so a short
    /// page proves nothing, unless `short_page_is_last` says this server never
    /// does (one request less per chunk).
    Page {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        #[serde(default = "default_page_start")]
        start: u64,
        #[serde(default)]
        size_param: Option<String>,
        size: u64,
        #[serde(default)]
        short_page_is_last: bool,
    },
    /// Record offsets: `param` = records skipped so far (or the request's
    /// `{cursor}`), `limit_param` = `limit` if set. Ends on an empty page, or
    /// on a short one with `short_page_is_last`, as for `page`.
    Offset {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit_param: Option<String>,
        limit: u64,
        #[serde(default)]
        short_page_is_last: bool,
    },
}

const fn default_page_start() -> u64 {
    1
}

/// Where a chunk's paging stands. Serialized with `serde_json` into the store
/// as the per-page checkpoint, so the representation is part of the on-disk
/// format: add variants, do not rename them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PageCursor {
    /// The first request of a chunk (no paging parameters).
    First,
    /// Send `token` in the cursor style's `param`.
    Cursor { token: String },
    /// Request exactly this URL (next_url and link_header styles).
    Url { url: String },
    /// Request this page number.
    Page { page: u64 },
    /// Request records from this offset.
    Offset { offset: u64 },
}

/// What the fetcher saw on one page.
pub(crate) struct PageView<'a> {
    /// The decoded response body.
    pub(crate) body: &'a Value,
    /// The raw `Link` header, if the response had one.
    pub(crate) link_header: Option<&'a str>,
    /// The value of the cursor style's `cursor_header`, if the response had one.
    pub(crate) cursor_header: Option<&'a str>,
    /// The records extracted from the body (already located by the `records` pointer).
    pub(crate) records: &'a [Value],
}

/// The value of the `{cursor}` placeholder for one page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CursorText {
    pub(crate) text: String,
    /// A page number or an offset: a JSON number where it is a whole value.
    pub(crate) number: bool,
}

/// What to change in the request for one page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PageRequest {
    /// Add these query parameters to the configured URL and query (they win
    /// over a configured parameter of the same name).
    Params(Vec<(String, String)>),
    /// Request this URL as is, query included; do not add the configured
    /// query again (the server already encoded the whole request in it). It
    /// may be relative (RFC 8288 and JSON:API allow it): resolve it with
    /// [`resolve_url`] against the configured source URL.
    Url(String),
}

/// Paging cannot continue safely. None of these are retryable: asking again
/// would get the same answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PaginationError {
    /// The server answered a cursor with the same cursor: following it would
    /// fetch the same page forever.
    #[error("cursor loop: the page returned the cursor it was requested with")]
    CursorLoop,
    /// The server's next link points at the page just fetched.
    #[error("next url loop: the page returned the url it was requested from ({url})")]
    UrlLoop { url: String },
    /// The value at a configured pointer has a type that cannot be used.
    #[error("{what} at {pointer:?} is {got}, expected {expected}")]
    BadValue {
        what: &'static str,
        pointer: String,
        got: &'static str,
        expected: &'static str,
    },
    /// `has_more` says there is more, but there is nothing to continue from.
    /// Stopping quietly here would leave a hole in the backfill.
    #[error("has_more is true but the page has no {missing}")]
    MoreWithoutCursor { missing: &'static str },
    /// A page number or offset does not fit in a u64.
    #[error("{what} overflow after {at}")]
    Overflow { what: &'static str, at: u64 },
    /// A next URL that cannot be resolved against the source URL.
    #[error("invalid next url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// A `Link` header that cannot be read, and carries no usable `next`:
    /// taking it for "no next page" could end the chunk early.
    #[error("malformed Link header: {reason}")]
    BadLinkHeader { reason: &'static str },
    /// A next URL on another origin: following it would send the source's
    /// credentials (headers) to a host nobody configured.
    #[error("next url {url:?} leaves the source origin {origin}")]
    CrossOrigin { url: String, origin: String },
    /// A cursor header whose value is not text: taking it for "no next page"
    /// could end the chunk early.
    #[error("cursor header {name} is not UTF-8 text")]
    BadHeader { name: String },
}

/// Why a `pagination` table is refused (see [`Pagination::validate`]): the
/// message names the key inside the table; config prefixes the path to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PaginationConfigError {
    #[error("cursor style needs one of cursor (pointer into the body), cursor_from_last_record (pointer into the last record) or cursor_header (a response header)")]
    NoCursor,
    #[error(
        "cursor, cursor_from_last_record and cursor_header are mutually exclusive: set exactly one"
    )]
    SeveralCursors,
    #[error("{key}: {value:?} is not a JSON pointer (use \"\" for the whole value or start with '/', e.g. \"/{value}\")")]
    NotAPointer { key: &'static str, value: String },
    #[error("{key}: must not be empty")]
    EmptyParam { key: &'static str },
    #[error("{key}: {value:?} is not an HTTP header name")]
    NotAHeader { key: &'static str, value: String },
    #[error("{key}: must be greater than 0")]
    Zero { key: &'static str },
}

impl crate::retry::Retryable for PaginationError {
    fn is_retryable(&self) -> bool {
        false
    }
}

// === impl Pagination ===

impl Pagination {
    /// Checks what serde cannot: the cursor style needs exactly one of
    /// `cursor` / `cursor_from_last_record` / `cursor_header`; `size` and
    /// `limit` are > 0; parameter names are non-empty; pointers are JSON
    /// pointers (`""` or starting with `/`); a header name is an HTTP token.
    /// The message names the offending key inside the `pagination` table; the
    /// caller prefixes the path to it. Whether the page is placed at all
    /// (`param`, or `{cursor}` in the request) is the caller's to check: it
    /// sees the request.
    pub(crate) fn validate(&self) -> Result<(), PaginationConfigError> {
        match self {
            Pagination::None | Pagination::LinkHeader => Ok(()),
            Pagination::Cursor {
                cursor,
                cursor_from_last_record,
                cursor_header,
                param,
                has_more,
            } => {
                let sources = [
                    cursor.is_some(),
                    cursor_from_last_record.is_some(),
                    cursor_header.is_some(),
                ];
                match sources.iter().filter(|s| **s).count() {
                    1 => {}
                    0 => return Err(PaginationConfigError::NoCursor),
                    _ => return Err(PaginationConfigError::SeveralCursors),
                }
                check_pointer("cursor", cursor.as_deref())?;
                check_pointer(
                    "cursor_from_last_record",
                    cursor_from_last_record.as_deref(),
                )?;
                check_header("cursor_header", cursor_header.as_deref())?;
                check_pointer("has_more", has_more.as_deref())?;
                check_param("param", param.as_deref())
            }
            Pagination::NextUrl { next } => check_pointer("next", Some(next)),
            Pagination::Page {
                param,
                size_param,
                size,
                ..
            } => {
                check_param("param", param.as_deref())?;
                check_param("size_param", size_param.as_deref())?;
                if *size == 0 {
                    return Err(PaginationConfigError::Zero { key: "size" });
                }
                Ok(())
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
                ..
            } => {
                check_param("param", param.as_deref())?;
                check_param("limit_param", limit_param.as_deref())?;
                if *limit == 0 {
                    return Err(PaginationConfigError::Zero { key: "limit" });
                }
                Ok(())
            }
        }
    }

    /// The cursor of a chunk's first request: `Page { start }`, `Offset { 0 }`,
    /// otherwise `First`.
    pub(crate) fn first(&self) -> PageCursor {
        match self {
            Pagination::Page { start, .. } => PageCursor::Page { page: *start },
            Pagination::Offset { .. } => PageCursor::Offset { offset: 0 },
            _ => PageCursor::First,
        }
    }

    /// Whether `at` is a cursor this style can produce. A checkpoint written
    /// under another style (the config changed between runs) is not; both
    /// [`request`](Self::request) and [`next`](Self::next) then restart the
    /// chunk from [`first`](Self::first): duplicates are recoverable (sinks
    /// dedupe), a silently skipped range is not. Callers may log it.
    pub(crate) fn accepts(&self, at: &PageCursor) -> bool {
        matches!(
            (self, at),
            (Pagination::None, PageCursor::First)
                | (
                    Pagination::Cursor { .. },
                    PageCursor::First | PageCursor::Cursor { .. }
                )
                | (
                    Pagination::NextUrl { .. } | Pagination::LinkHeader,
                    PageCursor::First | PageCursor::Url { .. }
                )
                | (Pagination::Page { .. }, PageCursor::Page { .. })
                | (Pagination::Offset { .. }, PageCursor::Offset { .. })
        )
    }

    /// The page parameters the style places in the request for the page at
    /// `at` (besides the configured query): the cursor `param=token`; the
    /// page `param` (and `size_param=size`); the offset `param` (and
    /// `limit_param=limit`); nothing for a first cursor/url page, nor for a
    /// parameter not configured (the request template places it with
    /// `{cursor}`). For a `Url` cursor the returned [`PageRequest::Url`]
    /// replaces the whole request URL.
    pub(crate) fn request(&self, at: &PageCursor) -> PageRequest {
        let at = self.normalize(at);
        let pair = |name: &Option<String>, value: String| name.clone().map(|n| (n, value));
        match (self, at) {
            (Pagination::Cursor { param, .. }, PageCursor::Cursor { token }) => {
                PageRequest::Params(pair(param, token).into_iter().collect())
            }
            (_, PageCursor::Url { url }) => PageRequest::Url(url),
            (
                Pagination::Page {
                    param,
                    size_param,
                    size,
                    ..
                },
                PageCursor::Page { page },
            ) => PageRequest::Params(
                pair(param, page.to_string())
                    .into_iter()
                    .chain(pair(size_param, size.to_string()))
                    .collect(),
            ),
            (
                Pagination::Offset {
                    param,
                    limit_param,
                    limit,
                    ..
                },
                PageCursor::Offset { offset },
            ) => PageRequest::Params(
                pair(param, offset.to_string())
                    .into_iter()
                    .chain(pair(limit_param, limit.to_string()))
                    .collect(),
            ),
            _ => PageRequest::Params(Vec::new()),
        }
    }

    /// Whether the style has a `{cursor}` value to give: the cursor token,
    /// the page number or the offset. A URL style replaces the whole request
    /// instead, and `none` has no pages.
    pub(crate) fn has_cursor(&self) -> bool {
        matches!(
            self,
            Pagination::Cursor { .. } | Pagination::Page { .. } | Pagination::Offset { .. }
        )
    }

    /// The `{cursor}` value of the page at `at`: the token (none on a cursor
    /// style's first page), the page number, the offset.
    pub(crate) fn cursor_text(&self, at: &PageCursor) -> Option<CursorText> {
        if !self.has_cursor() {
            return None;
        }
        match self.normalize(at) {
            PageCursor::Cursor { token } => Some(CursorText {
                text: token,
                number: false,
            }),
            PageCursor::Page { page: n } | PageCursor::Offset { offset: n } => Some(CursorText {
                text: n.to_string(),
                number: true,
            }),
            PageCursor::First | PageCursor::Url { .. } => None,
        }
    }

    /// The response header the cursor style reads its next cursor from.
    pub(crate) fn cursor_header(&self) -> Option<&str> {
        match self {
            Pagination::Cursor { cursor_header, .. } => cursor_header.as_deref(),
            _ => None,
        }
    }

    /// The configured query parameter that carries the page, if any: without
    /// one, the request template must place it with `{cursor}`.
    pub(crate) fn param(&self) -> Option<&str> {
        match self {
            Pagination::Cursor { param, .. }
            | Pagination::Page { param, .. }
            | Pagination::Offset { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The cursor after the page fetched at `at`, or `None` when paging is done.
    ///
    /// Paging ends when the cursor / next URL is absent, `null` or `""`;
    /// `has_more` is `false`; a page/offset response is empty or shorter than
    /// its size; the `Link` header has no `rel="next"` (a malformed header
    /// counts as none); the `none` style after its single page.
    ///
    /// Numeric cursors are stringified. A `has_more` that is absent is
    /// ignored (the other rules still end paging); one that is not a boolean
    /// is an error rather than a guess.
    ///
    /// Errors instead of looping or silently stopping: a cursor equal to the
    /// one requested, a next URL equal to the one requested, `has_more: true`
    /// with nothing to continue from, a cursor/next of an unusable JSON type.
    /// Only immediate repeats are caught here; a longer cycle (A→B→A) needs the
    /// caller's per-chunk page limit.
    ///
    /// URLs are returned as the server wrote them; see [`PageRequest::Url`].
    pub(crate) fn next(
        &self,
        at: &PageCursor,
        page: &PageView<'_>,
    ) -> Result<Option<PageCursor>, PaginationError> {
        let at = self.normalize(at);
        match self {
            Pagination::None => Ok(None),
            Pagination::Cursor {
                cursor,
                cursor_from_last_record,
                cursor_header,
                has_more,
                ..
            } => cursor::next(
                &at,
                page,
                cursor::From {
                    body: cursor.as_deref(),
                    last_record: cursor_from_last_record.as_deref(),
                    header: cursor_header.as_deref(),
                },
                has_more.as_deref(),
            ),
            Pagination::NextUrl { next } => link::next_in_body(&at, page, next),
            Pagination::LinkHeader => link::next_in_header(&at, page),
            Pagination::Page {
                size,
                short_page_is_last,
                ..
            } => numbered::next_page(&at, page, *size, *short_page_is_last),
            Pagination::Offset {
                limit,
                short_page_is_last,
                ..
            } => numbered::next_offset(&at, page, *limit, *short_page_is_last),
        }
    }

    fn normalize(&self, at: &PageCursor) -> PageCursor {
        if self.accepts(at) {
            at.clone()
        } else {
            self.first()
        }
    }
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_pointer(key: &'static str, p: Option<&str>) -> Result<(), PaginationConfigError> {
    match p {
        Some(p) if !p.is_empty() && !p.starts_with('/') => {
            Err(PaginationConfigError::NotAPointer {
                key,
                value: p.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

fn check_param(key: &'static str, p: Option<&str>) -> Result<(), PaginationConfigError> {
    match p {
        Some(p) if p.trim().is_empty() => Err(PaginationConfigError::EmptyParam { key }),
        _ => Ok(()),
    }
}

/// An HTTP field name: one or more token characters (RFC 9110 §5.6.2).
fn check_header(key: &'static str, h: Option<&str>) -> Result<(), PaginationConfigError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    match h {
        Some(h) if h.is_empty() || !h.bytes().all(token) => {
            Err(PaginationConfigError::NotAHeader {
                key,
                value: h.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// Drives `p` through `pages` (body, link header) like the fetcher would
    /// and returns the cursor each page was requested at plus the final result.
    pub(super) fn walk(
        p: &Pagination,
        records_at: &str,
        pages: &[(Value, Option<&str>)],
    ) -> (Vec<PageCursor>, Result<Option<PageCursor>, PaginationError>) {
        let mut at = p.first();
        let mut seen = Vec::new();
        for (body, link) in pages {
            seen.push(at.clone());
            let records = body
                .pointer(records_at)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let view = PageView {
                body,
                link_header: *link,
                cursor_header: None,
                records: &records,
            };
            match p.next(&at, &view) {
                Ok(Some(next)) => at = next,
                other => return (seen, other),
            }
        }
        (seen, Ok(Some(at)))
    }

    pub(super) fn cfg(s: Value) -> Pagination {
        let p: Pagination = serde_json::from_value(s).unwrap();
        p.validate().unwrap();
        p
    }

    pub(super) fn params(v: &[(&str, &str)]) -> PageRequest {
        PageRequest::Params(
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn none_has_exactly_one_page() {
        let p = cfg(json!({"type": "none"}));
        assert_eq!(p.first(), PageCursor::First);
        assert_eq!(p.request(&PageCursor::First), params(&[]));
        let (seen, end) = walk(
            &p,
            "/data",
            &[(
                json!({"data": [1, 2], "next": "x"}),
                Some("<http://a/2>; rel=next"),
            )],
        );
        assert_eq!(seen, vec![PageCursor::First]);
        assert_eq!(end, Ok(None));
    }

    #[test]
    fn foreign_checkpoint_restarts_the_chunk() {
        let p =
            cfg(json!({"type": "offset", "param": "offset", "limit_param": "limit", "limit": 2}));
        let stale = PageCursor::Cursor { token: "x".into() };
        assert!(!p.accepts(&stale));
        assert_eq!(
            p.request(&stale),
            params(&[("offset", "0"), ("limit", "2")])
        );
        let view = PageView {
            body: &json!(null),
            link_header: None,
            cursor_header: None,
            records: &[json!(1), json!(2)],
        };
        assert_eq!(
            p.next(&stale, &view),
            Ok(Some(PageCursor::Offset { offset: 2 }))
        );
        let c = cfg(json!({"type": "cursor", "cursor": "/n", "param": "c"}));
        assert!(c.accepts(&PageCursor::First));
        assert_eq!(
            c.request(&PageCursor::Url {
                url: "http://x".into()
            }),
            params(&[])
        );
    }

    #[test]
    fn page_cursor_serde_round_trip() {
        let all = [
            PageCursor::First,
            PageCursor::Cursor {
                token: "a\"b/ü".into(),
            },
            PageCursor::Url {
                url: "https://x/y?a=1&b=2".into(),
            },
            PageCursor::Page { page: u64::MAX },
            PageCursor::Offset { offset: 0 },
        ];
        for c in all {
            let s = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<PageCursor>(&s).unwrap(), c, "{s}");
        }
        // The stored shape is a format: pin it.
        assert_eq!(
            serde_json::to_value(PageCursor::Page { page: 3 }).unwrap(),
            json!({"kind": "page", "page": 3})
        );
        assert_eq!(
            serde_json::to_value(PageCursor::First).unwrap(),
            json!({"kind": "first"})
        );
    }

    #[test]
    fn config_deserialize_and_validate() {
        let p: Pagination =
            serde_json::from_value(json!({"type": "page", "param": "page", "size": 100})).unwrap();
        assert_eq!(
            p,
            Pagination::Page {
                param: Some("page".into()),
                start: 1,
                size_param: None,
                size: 100,
                short_page_is_last: false,
            }
        );
        assert!(serde_json::from_value::<Pagination>(
            json!({"type": "page", "param": "page", "size": 1, "sise": 2})
        )
        .is_err());
        assert!(serde_json::from_value::<Pagination>(json!({"type": "scroll"})).is_err());
        assert_eq!(
            serde_json::from_value::<Pagination>(json!({"type": "link_header"})).unwrap(),
            Pagination::LinkHeader
        );

        let bad = [
            (json!({"type": "cursor", "param": "c"}), "needs one of"),
            (
                json!({"type": "cursor", "param": "c", "cursor": "/a", "cursor_from_last_record": "/id"}),
                "mutually exclusive",
            ),
            (
                json!({"type": "cursor", "param": "c", "cursor": "next"}),
                "cursor: \"next\" is not a JSON pointer",
            ),
            (
                json!({"type": "cursor", "param": "c", "cursor": "/n", "has_more": "more"}),
                "has_more:",
            ),
            (
                json!({"type": "cursor", "param": " ", "cursor": "/n"}),
                "param: must not be empty",
            ),
            (json!({"type": "next_url", "next": "links.next"}), "next:"),
            (
                json!({"type": "page", "param": "page", "size": 0}),
                "size: must be greater than 0",
            ),
            (
                json!({"type": "page", "param": "page", "size_param": "", "size": 1}),
                "size_param:",
            ),
            (
                json!({"type": "offset", "param": "o", "limit_param": "l", "limit": 0}),
                "limit: must be greater than 0",
            ),
            (
                json!({"type": "offset", "param": "o", "limit_param": "", "limit": 1}),
                "limit_param:",
            ),
        ];
        for (v, want) in bad {
            let p: Pagination = serde_json::from_value(v.clone()).unwrap();
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{v}: {err}");
        }
        // "" is the whole value: a last record that is itself the id.
        cfg(json!({"type": "cursor", "param": "after", "cursor_from_last_record": ""}));
    }

    use proptest::prelude::*;

    /// A server holding records `0..n` that caps every page at `cap`,
    /// whatever was asked, and numbers pages by its own size (as real
    /// servers do). Returns the records of the page at `at`.
    fn capped_server(p: &Pagination, at: &PageCursor, n: u64, cap: u64) -> Vec<Value> {
        let (from, size) = match (p, at) {
            (Pagination::Page { start, size, .. }, PageCursor::Page { page }) => {
                let size = (*size).min(cap);
                ((page - start).saturating_mul(size), size)
            }
            (Pagination::Offset { limit, .. }, PageCursor::Offset { offset }) => {
                (*offset, (*limit).min(cap))
            }
            _ => unreachable!("numbered styles only"),
        };
        (from.min(n)..from.saturating_add(size).min(n))
            .map(|i| json!(i))
            .collect()
    }

    proptest! {
        /// Page and offset styles against a server capping the page size:
        /// every record is read exactly once and paging ends (on the empty
        /// page), never after a short page in the middle.
        #[test]
        fn numbered_pages_never_stop_silently(
            n in 0u64..400,
            asked in 1u64..100,
            cap in 1u64..100,
            offset_style in any::<bool>(),
        ) {
            let p = if offset_style {
                cfg(json!({"type": "offset", "param": "offset", "limit_param": "limit", "limit": asked}))
            } else {
                cfg(json!({"type": "page", "param": "page", "size": asked}))
            };
            let mut at = p.first();
            let mut seen = Vec::new();
            let max_pages = n / asked.min(cap) + 2;
            let mut pages = 0;
            loop {
                pages += 1;
                prop_assert!(pages <= max_pages, "more than {max_pages} pages");
                let records = capped_server(&p, &at, n, cap);
                seen.extend(records.iter().map(|v| v.as_u64().unwrap()));
                let view = PageView { body: &Value::Null, link_header: None, cursor_header: None, records: &records };
                match p.next(&at, &view) {
                    Ok(Some(next)) => at = next,
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }

        /// Cursor styles: a server that hands back the cursor it was asked
        /// with (at any page) is an error, never a loop; a server that says
        /// `has_more` without anything to continue from is an error, never
        /// a silent end; otherwise every record is read once.
        #[test]
        fn cursors_never_loop_or_stop_silently(
            n in 0usize..300,
            k in 1usize..50,
            from_last_record in any::<bool>(),
            fault in prop_oneof![Just(None), (0usize..10).prop_map(Some)],
        ) {
            let p = if from_last_record {
                cfg(json!({"type": "cursor", "cursor_from_last_record": "/id", "param": "starting_after", "has_more": "/has_more"}))
            } else {
                cfg(json!({"type": "cursor", "cursor": "/next", "param": "cursor"}))
            };
            let mut at = p.first();
            let mut seen = Vec::new();
            for page_no in 0.. {
                prop_assert!(page_no <= n / k + 2, "paging did not end");
                let from = match &at {
                    PageCursor::Cursor { token } => token.parse::<usize>().unwrap() + usize::from(from_last_record),
                    _ => 0,
                };
                let to = (from + k).min(n);
                // (A first request has no cursor to repeat.)
                let faulty = fault == Some(page_no)
                    && to < n
                    && matches!(at, PageCursor::Cursor { .. });
                // The faulty page repeats the request's cursor (body style),
                // or drops its records while saying there is more (last-record style).
                let records: Vec<Value> = if faulty && from_last_record {
                    Vec::new()
                } else {
                    (from..to).map(|i| json!({ "id": i })).collect()
                };
                let next = if faulty {
                    match &at { PageCursor::Cursor { token } => json!(token), _ => Value::Null }
                } else if to < n { json!(to.to_string()) } else { Value::Null };
                let body = json!({ "next": next, "has_more": to < n });
                let view = PageView { body: &body, link_header: None, cursor_header: None, records: &records };
                match p.next(&at, &view) {
                    Ok(Some(c)) => {
                        prop_assert_ne!(&c, &at, "the same page again");
                        seen.extend(records.iter().map(|r| r["id"].as_u64().unwrap() as usize));
                        at = c;
                    }
                    Ok(None) => {
                        prop_assert!(!faulty, "a fault ended paging silently");
                        seen.extend(records.iter().map(|r| r["id"].as_u64().unwrap() as usize));
                        break;
                    }
                    Err(e) => {
                        prop_assert!(faulty, "error without a fault: {e}");
                        return Ok(());
                    }
                }
            }
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
}
