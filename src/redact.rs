//! Error text that is stored, served or logged may quote what a vendor or a
//! request carried: next-URLs with an API key in their query, response bodies
//! echoing a token. [`text`] keeps the shape of such a message and drops the
//! values: every URL keeps its scheme, host, path and query keys, with each
//! query value (and any userinfo) replaced by `***`; a quoted response body is
//! withheld.

/// What a redacted value reads as.
pub(crate) const MASK: &str = "***";

/// Prefixes after which the rest of a message is a vendor's response body.
const BODY_MARKERS: &[&str] = &["source answered "];

/// `s` with URL query values, URL userinfo and quoted response bodies removed.
pub(crate) fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = find_url(rest) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ']' | '`')
            })
            .unwrap_or(tail.len());
        out.push_str(&url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    for marker in BODY_MARKERS {
        if let Some(i) = out.find(marker) {
            // "source answered 401 Unauthorized: {body}": keep the status.
            if let Some(colon) = out[i..].find(": ").map(|c| i + c) {
                let withheld = out.len() - colon - 2;
                out.truncate(colon);
                out.push_str(&format!(" (body of {withheld} bytes withheld)"));
            }
        }
    }
    out
}

fn find_url(s: &str) -> Option<usize> {
    ["http://", "https://"]
        .iter()
        .filter_map(|p| s.find(p))
        .min()
}

fn url(u: &str) -> String {
    let (before_query, query) = match u.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (u, None),
    };
    let (before_fragment_free, _) = before_query.split_once('#').unwrap_or((before_query, ""));
    let mut out = userinfo(before_fragment_free);
    if let Some(q) = query {
        let q = q.split_once('#').map_or(q, |(q, _)| q);
        out.push('?');
        let masked: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}={MASK}"),
                None => pair.to_string(),
            })
            .collect();
        out.push_str(&masked.join("&"));
    }
    out
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`.
fn userinfo(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{MASK}@{}", &rest[at + 1..]),
        None => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn query_values_and_userinfo_go() {
        assert_eq!(
            text("invalid next url \"https://api.example/v1/e?cursor=abc&api_key=s3cr3t\": bad"),
            "invalid next url \"https://api.example/v1/e?cursor=***&api_key=***\": bad"
        );
        assert_eq!(
            text("error sending request for url (http://u:pw@h:80/p?k=v)"),
            "error sending request for url (http://***@h:80/p?k=***)"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(text("http://h/p"), "http://h/p");
    }

    #[test]
    fn response_bodies_are_withheld() {
        assert_eq!(
            text("source answered 401 Unauthorized: {\"error\":\"token s3cr3t expired\"}"),
            "source answered 401 Unauthorized (body of 32 bytes withheld)"
        );
    }

    proptest! {
        #[test]
        fn a_query_value_never_survives(
            key in "[a-z_]{1,10}",
            value in "[A-Za-z0-9]{12,24}",
            prefix in "[ a-z:]{0,20}",
        ) {
            let s = format!("{prefix}https://api.example/v1?{key}={value}&x=1 tail");
            let r = text(&s);
            prop_assert!(!r.contains(&value), "{}", r);
            prop_assert!(r.contains(&key));
        }

        #[test]
        fn never_panics(s in ".{0,200}") {
            let _ = text(&s);
        }
    }
}
