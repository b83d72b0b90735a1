//! Placeholders in a source request: `{start}` and `{end}` (the query window,
//! written in the source's `time_format`) and `{partition}` (the partition a
//! chunk asks for, `feeds.partitions`), filled into the URL path (as
//! percent-encoded path segments) and query values.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use url::Url;

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

/// The values of one request's placeholders.
#[derive(Debug, Clone)]
pub struct Vars<'a> {
    pub start: &'a str,
    pub end: &'a str,
    /// `""` for an unpartitioned feed (whose source has no `{partition}`).
    pub partition: &'a str,
}

impl Vars<'_> {
    /// `s` with every placeholder replaced by its value, unescaped (query
    /// values are encoded by the URL's query serializer).
    pub fn fill(&self, s: &str) -> String {
        s.replace("{start}", self.start)
            .replace("{end}", self.end)
            .replace("{partition}", self.partition)
    }

    /// `url` with placeholders in its path filled, each value encoded as (part
    /// of) one path segment. The URL parser has already escaped the braces.
    pub fn fill_path(&self, url: &mut Url) {
        let path = url.path();
        if !path.contains("%7B") {
            return;
        }
        let start = utf8_percent_encode(self.start, SEGMENT).to_string();
        let end = utf8_percent_encode(self.end, SEGMENT).to_string();
        let partition = utf8_percent_encode(self.partition, SEGMENT).to_string();
        let filled = path
            .replace("%7Bstart%7D", &start)
            .replace("%7Bend%7D", &end)
            .replace("%7Bpartition%7D", &partition);
        url.set_path(&filled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_values_stay_inside_one_segment() {
        let v = Vars {
            start: "a/b c%",
            end: "2026-12-05",
            partition: "store/7?",
        };
        let mut u = Url::parse("http://x/v1/{start}/{end}/e").unwrap();
        v.fill_path(&mut u);
        assert_eq!(u.as_str(), "http://x/v1/a%2Fb%20c%25/2026-12-05/e");
        assert_eq!(u.path_segments().unwrap().count(), 4);
        let mut u = Url::parse("http://x/v1/stores/{partition}/events").unwrap();
        v.fill_path(&mut u);
        assert_eq!(u.as_str(), "http://x/v1/stores/store%2F7%3F/events");
        assert_eq!(v.fill("{partition}:{start}"), "store/7?:a/b c%");
    }
}
