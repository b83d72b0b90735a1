//! Numbered styles: page numbers (`page` + `per_page`) and record offsets
//! (`offset` + `limit`).

use super::{PageCursor, PageView, PaginationError};

/// The page after page `at`: ends on an empty page (or a short one when the
/// source says short pages are the last).
pub(super) fn next_page(
    at: &PageCursor,
    page: &PageView<'_>,
    size: u64,
    short_page_is_last: bool,
) -> Result<Option<PageCursor>, PaginationError> {
    let PageCursor::Page { page: n } = *at else {
        return Ok(None);
    };
    if is_last(page.records.len(), size, short_page_is_last) {
        return Ok(None);
    }
    n.checked_add(1)
        .map(|page| Some(PageCursor::Page { page }))
        .ok_or(PaginationError::Overflow {
            what: "page number",
            at: n,
        })
}

/// The offset after the page at `at`, as [`next_page`] ends.
pub(super) fn next_offset(
    at: &PageCursor,
    page: &PageView<'_>,
    limit: u64,
    short_page_is_last: bool,
) -> Result<Option<PageCursor>, PaginationError> {
    let PageCursor::Offset { offset } = *at else {
        return Ok(None);
    };
    let got = page.records.len();
    if is_last(got, limit, short_page_is_last) {
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

/// Empty: the last page. Shorter than asked: the last page only if the
/// source said so, since many servers cap the page size below what was
/// asked and ending there would stop silently after page 1.
fn is_last(got: usize, size: u64, short_page_is_last: bool) -> bool {
    got == 0 || (short_page_is_last && u64::try_from(got).is_ok_and(|n| n < size))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use serde_json::json;

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
                cursor_header: None,
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
            cursor_header: None,
            records: &[json!(1), json!(2), json!(3)],
        };
        assert_eq!(
            p.next(&PageCursor::Offset { offset: 10 }, &view),
            Ok(Some(PageCursor::Offset { offset: 13 }))
        );
    }
}
