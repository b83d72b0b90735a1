//! Pagination styles of source APIs, as config and as a resumable state machine.
//!
//! The fetcher asks [`Pagination::request`] what to add to the next request,
//! shows the response to [`Pagination::next`], and stores the returned
//! [`PageCursor`] as the chunk's checkpoint, so a restarted daemon resumes at
//! the page it was on rather than at the start of the chunk.

use serde_json::Value;

/// A pagination style: `pagination = { type = "…", … }` under
/// `[feeds.backfill.source]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request returns everything.
    None,
    /// An opaque token sent back in `param`: either found in the body at the
    /// JSON pointer `cursor` (Slack `/response_metadata/next_cursor`), or taken
    /// from the last record at `cursor_from_last_record` (Stripe `starting_after`
    /// with `/id`). `has_more` optionally points at a boolean that ends paging
    /// when false.
    Cursor {
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        cursor_from_last_record: Option<String>,
        param: String,
        #[serde(default)]
        has_more: Option<String>,
    },
    /// The body carries the full URL of the next page at the pointer `next`
    /// (JSON:API `/links/next`).
    NextUrl { next: String },
    /// RFC 8288 `Link: <…>; rel="next"` response header (GitHub).
    LinkHeader,
    /// Numbered pages: `param` = page number starting at `start`, `size_param`
    /// = `size` if set. Paging ends on an empty page: a server may cap the
    /// page size below `size`, so a short page proves nothing, unless
    /// `short_page_is_last` says this server never does (one request less
    /// per chunk).
    Page {
        param: String,
        #[serde(default = "default_page_start")]
        start: u64,
        #[serde(default)]
        size_param: Option<String>,
        size: u64,
        #[serde(default)]
        short_page_is_last: bool,
    },
    /// Record offsets: `param` = records skipped so far, `limit_param` =
    /// `limit`. Ends on an empty page, or on a short one with
    /// `short_page_is_last`, as for `page`.
    Offset {
        param: String,
        limit_param: String,
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
pub enum PageCursor {
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
pub struct PageView<'a> {
    /// The decoded response body.
    pub body: &'a Value,
    /// The raw `Link` header, if the response had one.
    pub link_header: Option<&'a str>,
    /// The records extracted from the body (already located by the `records` pointer).
    pub records: &'a [Value],
}

/// What to change in the request for one page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageRequest {
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
pub enum PaginationError {
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
}

impl crate::retry::Retryable for PaginationError {
    fn is_retryable(&self) -> bool {
        false
    }
}

// === impl Pagination ===

impl Pagination {
    /// Checks what serde cannot: the cursor style needs exactly one of
    /// `cursor` / `cursor_from_last_record`; `size` and `limit` are > 0;
    /// parameter names are non-empty; pointers are JSON pointers (`""` or
    /// starting with `/`). The message names the offending key inside the
    /// `pagination` table; the caller prefixes the path to it.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Pagination::None | Pagination::LinkHeader => Ok(()),
            Pagination::Cursor {
                cursor,
                cursor_from_last_record,
                param,
                has_more,
            } => {
                match (cursor, cursor_from_last_record) {
                    (Some(_), Some(_)) => {
                        return Err("cursor and cursor_from_last_record are mutually exclusive: set exactly one".to_owned())
                    }
                    (None, None) => {
                        return Err("cursor style needs one of cursor (pointer into the body) or cursor_from_last_record (pointer into the last record)".to_owned())
                    }
                    _ => {}
                }
                check_pointer("cursor", cursor.as_deref())?;
                check_pointer(
                    "cursor_from_last_record",
                    cursor_from_last_record.as_deref(),
                )?;
                check_pointer("has_more", has_more.as_deref())?;
                check_param("param", param)
            }
            Pagination::NextUrl { next } => check_pointer("next", Some(next)),
            Pagination::Page {
                param,
                size_param,
                size,
                ..
            } => {
                check_param("param", param)?;
                if let Some(p) = size_param {
                    check_param("size_param", p)?;
                }
                if *size == 0 {
                    return Err("size: must be greater than 0".to_owned());
                }
                Ok(())
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
                ..
            } => {
                check_param("param", param)?;
                check_param("limit_param", limit_param)?;
                if *limit == 0 {
                    return Err("limit: must be greater than 0".to_owned());
                }
                Ok(())
            }
        }
    }

    /// The cursor of a chunk's first request: `Page { start }`, `Offset { 0 }`,
    /// otherwise `First`.
    pub fn first(&self) -> PageCursor {
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
    pub fn accepts(&self, at: &PageCursor) -> bool {
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

    /// What to add to the request for the page at `at` (besides the
    /// configured query): the cursor `param=token`; the page `param` (and
    /// `size_param=size`); the offset `param` and `limit_param=limit`; nothing
    /// for a first cursor/url page. For a `Url` cursor the returned
    /// [`PageRequest::Url`] replaces the whole request URL.
    pub fn request(&self, at: &PageCursor) -> PageRequest {
        let at = self.normalize(at);
        match (self, at) {
            (Pagination::Cursor { param, .. }, PageCursor::Cursor { token }) => {
                PageRequest::Params(vec![(param.clone(), token)])
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
            ) => {
                let mut params = vec![(param.clone(), page.to_string())];
                if let Some(size_param) = size_param {
                    params.push((size_param.clone(), size.to_string()));
                }
                PageRequest::Params(params)
            }
            (
                Pagination::Offset {
                    param,
                    limit_param,
                    limit,
                    ..
                },
                PageCursor::Offset { offset },
            ) => PageRequest::Params(vec![
                (param.clone(), offset.to_string()),
                (limit_param.clone(), limit.to_string()),
            ]),
            _ => PageRequest::Params(Vec::new()),
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
    pub fn next(
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
                has_more,
                ..
            } => {
                let more = match has_more {
                    Some(p) => read_has_more(page.body, p)?,
                    None => None,
                };
                if more == Some(false) {
                    return Ok(None);
                }
                let token = match (cursor, cursor_from_last_record) {
                    (Some(p), _) => read_token("cursor", page.body.pointer(p), p)?,
                    (None, Some(p)) => match page.records.last() {
                        Some(last) => read_token("cursor_from_last_record", last.pointer(p), p)?,
                        None => None,
                    },
                    // Rejected by validate(); ending is the only answer that
                    // cannot loop.
                    (None, None) => None,
                };
                let Some(token) = token else {
                    if more == Some(true) {
                        let missing = if cursor.is_some() {
                            "next cursor"
                        } else {
                            "last record to continue from"
                        };
                        return Err(PaginationError::MoreWithoutCursor { missing });
                    }
                    return Ok(None);
                };
                if matches!(&at, PageCursor::Cursor { token: t } if *t == token) {
                    return Err(PaginationError::CursorLoop);
                }
                Ok(Some(PageCursor::Cursor { token }))
            }
            Pagination::NextUrl { next } => {
                let url = match page.body.pointer(next) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.trim().to_owned()),
                    Some(other) => {
                        return Err(PaginationError::BadValue {
                            what: "next",
                            pointer: next.clone(),
                            got: json_kind(other),
                            expected: "a url string",
                        })
                    }
                };
                next_url(&at, url)
            }
            Pagination::LinkHeader => {
                let next = match page.link_header {
                    Some(h) => {
                        link_next(h).map_err(|reason| PaginationError::BadLinkHeader { reason })?
                    }
                    None => None,
                };
                next_url(&at, next)
            }
            Pagination::Page {
                size,
                short_page_is_last,
                ..
            } => {
                let PageCursor::Page { page: n } = at else {
                    return Ok(None);
                };
                if is_last(page.records.len(), *size, *short_page_is_last) {
                    return Ok(None);
                }
                n.checked_add(1)
                    .map(|page| Some(PageCursor::Page { page }))
                    .ok_or(PaginationError::Overflow {
                        what: "page number",
                        at: n,
                    })
            }
            Pagination::Offset {
                limit,
                short_page_is_last,
                ..
            } => {
                let PageCursor::Offset { offset } = at else {
                    return Ok(None);
                };
                let got = page.records.len();
                if is_last(got, *limit, *short_page_is_last) {
                    return Ok(None);
                }
                // Advance by what was returned, not by `limit`: a server that
                // returns more than asked must not make us skip records.
                u64::try_from(got)
                    .ok()
                    .and_then(|n| offset.checked_add(n))
                    .map(|offset| Some(PageCursor::Offset { offset }))
                    .ok_or(PaginationError::Overflow {
                        what: "offset",
                        at: offset,
                    })
            }
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

/// Empty: the last page. Shorter than asked: the last page only if the
/// source said so, since many servers cap the page size below what was
/// asked and ending there would stop silently after page 1.
fn is_last(got: usize, size: u64, short_page_is_last: bool) -> bool {
    got == 0 || (short_page_is_last && u64::try_from(got).is_ok_and(|n| n < size))
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

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn check_pointer(key: &str, p: Option<&str>) -> Result<(), String> {
    match p {
        Some(p) if !p.is_empty() && !p.starts_with('/') => Err(format!(
            "{key}: {p:?} is not a JSON pointer (use \"\" for the whole value or start with '/', e.g. \"/{p}\")"
        )),
        _ => Ok(()),
    }
}

fn check_param(key: &str, p: &str) -> Result<(), String> {
    if p.trim().is_empty() {
        Err(format!("{key}: must not be empty"))
    } else {
        Ok(())
    }
}

/// Resolves a next-page URL (possibly relative) against `base`, the
/// configured source URL, and refuses one on another origin (scheme, host,
/// port) because the request would carry the source's credentials there.
pub fn resolve_url(base: &url::Url, target: &str) -> Result<url::Url, PaginationError> {
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
pub fn link_next(header: &str) -> Result<Option<String>, &'static str> {
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
    use super::*;
    use serde_json::json;

    /// Drives `p` through `pages` (body, link header) like the fetcher would
    /// and returns the cursor each page was requested at plus the final result.
    fn walk(
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
                records: &records,
            };
            match p.next(&at, &view) {
                Ok(Some(next)) => at = next,
                other => return (seen, other),
            }
        }
        (seen, Ok(Some(at)))
    }

    fn cfg(s: Value) -> Pagination {
        let p: Pagination = serde_json::from_value(s).unwrap();
        p.validate().unwrap();
        p
    }

    fn params(v: &[(&str, &str)]) -> PageRequest {
        PageRequest::Params(
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

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
            records: &[],
        };
        assert!(matches!(
            p.next(&PageCursor::First, &view),
            Err(PaginationError::BadValue { what: "next", .. })
        ));
    }

    #[test]
    fn page_per_page_short_page() {
        let p = cfg(json!({"type": "page", "param": "page", "size_param": "per_page", "size": 3}));
        assert_eq!(p.first(), PageCursor::Page { page: 1 });
        assert_eq!(
            p.request(&p.first()),
            params(&[("page", "1"), ("per_page", "3")])
        );
        // A short page does not end paging: the server may cap the size.
        let pages = [
            (json!({"results": [1, 2, 3]}), None),
            (json!({"results": [4, 5, 6]}), None),
            (json!({"results": [7]}), None),
            (json!({"results": []}), None),
        ];
        let (seen, end) = walk(&p, "/results", &pages);
        assert_eq!(
            seen,
            vec![
                PageCursor::Page { page: 1 },
                PageCursor::Page { page: 2 },
                PageCursor::Page { page: 3 },
                PageCursor::Page { page: 4 }
            ]
        );
        assert_eq!(end, Ok(None));
        // A server that caps per_page at 2 (asked for 3): every page is
        // short, and all of them are read.
        let capped = [
            (json!({"results": [1, 2]}), None),
            (json!({"results": [3, 4]}), None),
            (json!({"results": [5]}), None),
            (json!({"results": []}), None),
        ];
        let (seen, end) = walk(&p, "/results", &capped);
        assert_eq!((seen.len(), end), (4, Ok(None)));
        // Unless the source says a short page is the last one.
        let p =
            cfg(json!({"type": "page", "param": "page", "size": 3, "short_page_is_last": true}));
        let (seen, end) = walk(&p, "/results", &pages[2..3]);
        assert_eq!((seen.len(), end), (1, Ok(None)));
        // Zero-based pages without a size parameter.
        let p = cfg(json!({"type": "page", "param": "p", "start": 0, "size": 2}));
        assert_eq!(p.request(&p.first()), params(&[("p", "0")]));
        let (seen, _) = walk(&p, "", &[(json!([]), None)]);
        assert_eq!(seen, vec![PageCursor::Page { page: 0 }]);
        let over = p.next(
            &PageCursor::Page { page: u64::MAX },
            &PageView {
                body: &json!([1, 2]),
                link_header: None,
                records: &[json!(1), json!(2)],
            },
        );
        assert!(matches!(over, Err(PaginationError::Overflow { .. })));
    }

    #[test]
    fn offset_limit() {
        let p =
            cfg(json!({"type": "offset", "param": "offset", "limit_param": "limit", "limit": 2}));
        assert_eq!(p.first(), PageCursor::Offset { offset: 0 });
        let pages = [
            (json!({"rows": [1, 2], "total": 5}), None),
            (json!({"rows": [3, 4], "total": 5}), None),
            (json!({"rows": [5], "total": 5}), None),
            (json!({"rows": [], "total": 5}), None),
        ];
        let (seen, end) = walk(&p, "/rows", &pages);
        assert_eq!(seen[2], PageCursor::Offset { offset: 4 });
        assert_eq!(seen[3], PageCursor::Offset { offset: 5 });
        assert_eq!(
            p.request(&seen[2]),
            params(&[("offset", "4"), ("limit", "2")])
        );
        assert_eq!(end, Ok(None));
        // A server returning more than asked advances by what it returned.
        let view = PageView {
            body: &json!(null),
            link_header: None,
            records: &[json!(1), json!(2), json!(3)],
        };
        assert_eq!(
            p.next(&PageCursor::Offset { offset: 10 }, &view),
            Ok(Some(PageCursor::Offset { offset: 13 }))
        );
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
                param: "page".into(),
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
            let err = p.validate().unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
        // "" is the whole value: a last record that is itself the id.
        cfg(json!({"type": "cursor", "param": "after", "cursor_from_last_record": ""}));
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
