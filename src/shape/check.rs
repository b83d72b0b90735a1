//! One shape check: the sampled live messages old enough for the source to
//! list are looked up at the source (a small window around each one's event
//! time, through the feed's own source: same pagination, rate limit and
//! retries as fills and audits), rendered as a fill would send them
//! (`filter`, `render`, `attributes`, `watch.envelope`), and compared with
//! the live messages by record id.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::diff::{attribute_differences, body_differences, Attribute, Difference, Rules};
use super::sample::LiveMessage;
use crate::config::{Envelope, FeedConfig};
use crate::fill::plan::Window;
use crate::fill::render::{Rendered, Renderer};
use crate::fill::source::{Record, Source};
use crate::metrics::ShapeOutcome;
use crate::timefmt::Resolution;

/// A sampled record is looked up in `[event time − SLACK, event time +
/// SLACK)`: the source's record time may be written a little differently
/// from the live event time (truncated, another clock).
pub(crate) const SLACK: Duration = Duration::from_secs(1);
/// Pages read at most for one lookup window: a record not among them counts
/// as not found (a source that ignores the window must not be paged through).
const PAGES_PER_LOOKUP: u64 = 25;
/// Differences reported per record; records with differences reported.
const MAX_FINDINGS: usize = 10;
const MAX_RECORDS: usize = 20;
/// Characters of a value shown in a report (then `…`).
const MAX_VALUE_CHARS: usize = 200;

/// Where a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Part {
    /// The message body; `path` is a JSON pointer (`""`: the whole body).
    Body,
    /// A message attribute; `path` is its name.
    Attribute,
    /// `backfill.filter` drops a record the live feed carries.
    Filter,
    /// `backfill.render` or `attributes` fails on it (the fill would reject it).
    Render,
}

impl Part {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Part::Body => "body",
            Part::Attribute => "attribute",
            Part::Filter => "filter",
            Part::Render => "render",
        }
    }

    fn parse(s: &str) -> Option<Part> {
        [Part::Body, Part::Attribute, Part::Filter, Part::Render]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

/// One difference, with both values as shown: compact JSON, redacted like
/// a `last_error`, at most 200 characters. `None`: absent on that side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Finding {
    pub(crate) part: Part,
    pub(crate) path: String,
    pub(crate) live: Option<String>,
    pub(crate) recovered: Option<String>,
}

/// The findings of one sampled record that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordFindings {
    pub(crate) record_id: String,
    pub(crate) findings: Vec<Finding>,
}

/// The result of a check (what `gapwatch check-shape --json` prints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShapeReport {
    pub(crate) feed: String,
    pub(crate) checked_at: DateTime<Utc>,
    pub(crate) outcome: ShapeOutcome,
    /// Why nothing could be compared, or what cut the check short.
    pub(crate) reason: Option<String>,
    /// Live messages in the sample, and those old enough to be listed.
    pub(crate) sampled: usize,
    pub(crate) eligible: usize,
    /// Found at the source and compared; of those, without a difference.
    pub(crate) compared: usize,
    pub(crate) matched: usize,
    /// Eligible but not found at the source.
    pub(crate) not_found: usize,
    /// Requests made to the source.
    pub(crate) requests: u64,
    /// The records that differ (at most 20), each with its first differences.
    pub(crate) mismatches: Vec<RecordFindings>,
}

impl ShapeReport {
    fn new(feed: &str, checked_at: DateTime<Utc>, sampled: usize) -> Self {
        Self {
            feed: feed.to_string(),
            checked_at,
            outcome: ShapeOutcome::Unavailable,
            reason: None,
            sampled,
            eligible: 0,
            compared: 0,
            matched: 0,
            not_found: 0,
            requests: 0,
            mismatches: Vec::new(),
        }
    }

    /// The first difference: its record and finding.
    pub(crate) fn first(&self) -> Option<(&str, &Finding)> {
        self.mismatches
            .iter()
            .find_map(|r| r.findings.first().map(|f| (r.record_id.as_str(), f)))
    }

    /// What `/api/v1/feeds` shows and the store keeps.
    pub(crate) fn status(&self) -> ShapeStatus {
        let first = self.first();
        ShapeStatus {
            checked_at: self.checked_at,
            outcome: self.outcome,
            reason: self.reason.clone(),
            record_id: first.map(|(id, _)| id.to_string()),
            part: first.map(|(_, f)| f.part),
            path: first.map(|(_, f)| f.path.clone()),
            live: first.and_then(|(_, f)| f.live.clone()),
            recovered: first.and_then(|(_, f)| f.recovered.clone()),
        }
    }
}

/// The last check of a feed, as `/api/v1/feeds` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShapeStatus {
    pub(crate) checked_at: DateTime<Utc>,
    pub(crate) outcome: ShapeOutcome,
    pub(crate) reason: Option<String>,
    /// The first difference: its record, where, and both values (redacted).
    pub(crate) record_id: Option<String>,
    pub(crate) part: Option<Part>,
    pub(crate) path: Option<String>,
    pub(crate) live: Option<String>,
    pub(crate) recovered: Option<String>,
}

impl ShapeStatus {
    /// `part` as stored.
    pub(crate) fn part_from_row(s: Option<&str>) -> Option<Part> {
        s.and_then(Part::parse)
    }
}

/// A window to list, of one partition, and the sampled messages to find in it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lookup {
    pub(crate) window: Window,
    /// `""`: an unpartitioned feed.
    pub(crate) partition: String,
    /// Indexes into the sample.
    pub(crate) messages: Vec<usize>,
}

/// The partition of a sampled message of a partitioned feed, read from its
/// body as the live side reads it (None: it has none; `""`: unpartitioned).
fn partition_of(feed: &FeedConfig, m: &LiveMessage) -> Option<String> {
    let Some(p) = &feed.partitions else {
        return Some(String::new());
    };
    let body: Value = serde_json::from_str(&m.body).ok()?;
    let record = feed.watch.envelope.open(&body)?;
    record
        .pointer(&p.key)
        .and_then(crate::observe::partition_value)
}

/// The sampled messages the source can list by now (event time at least
/// `settle` + [`SLACK`] ago), grouped into merged windows on `res` per
/// partition (`partition`: each message's; None leaves it out), oldest first.
pub(crate) fn plan(
    sample: &[LiveMessage],
    settle: Duration,
    res: Resolution,
    now: DateTime<Utc>,
    partition: impl Fn(&LiveMessage) -> Option<String>,
) -> Vec<Lookup> {
    let slack = chrono::TimeDelta::from_std(SLACK).unwrap_or_default();
    let settle = chrono::TimeDelta::from_std(settle).unwrap_or(chrono::TimeDelta::MAX);
    let Some(newest) = now.checked_sub_signed(settle) else {
        return Vec::new();
    };
    let mut eligible: Vec<(String, Window, usize)> = sample
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let start = m.event_time.checked_sub_signed(slack)?;
            let end = m.event_time.checked_add_signed(slack)?;
            if end > newest {
                return None;
            }
            let start = res.floor(start);
            let end = res.ceil(end).max(start.checked_add_signed(res.step())?);
            Some((partition(m)?, Window { start, end }, i))
        })
        .collect();
    eligible
        .sort_by(|(pa, wa, _), (pb, wb, _)| (pa, wa.start, wa.end).cmp(&(pb, wb.start, wb.end)));
    let mut out: Vec<Lookup> = Vec::new();
    for (p, w, i) in eligible {
        match out.last_mut() {
            Some(last) if last.partition == p && w.start <= last.window.end => {
                last.window.end = last.window.end.max(w.end);
                last.messages.push(i);
            }
            _ => out.push(Lookup {
                window: w,
                partition: p,
                messages: vec![i],
            }),
        }
    }
    // Oldest first, whatever the partition.
    out.sort_by_key(|l| (l.window.start, l.window.end));
    out
}

/// Compares one live message with the message a fill sends for its record.
pub(crate) fn compare(live: &LiveMessage, recovered: &Record, rules: &Rules<'_>) -> Vec<Finding> {
    let body: Value = match serde_json::from_str(&live.body) {
        Ok(v) => v,
        // Sampled bodies are JSON; a stored one that is not still compares.
        Err(_) => Value::String(live.body.clone()),
    };
    let mut findings: Vec<Finding> =
        body_differences(&body, &recovered.message().to_value(), rules, MAX_FINDINGS)
            .into_iter()
            .map(|d| finding(Part::Body, d))
            .collect();
    let attributes: BTreeMap<String, Attribute> = recovered
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), Attribute::string(v.clone())))
        .collect();
    let left = MAX_FINDINGS.saturating_sub(findings.len());
    findings.extend(
        attribute_differences(&live.attributes, &attributes, rules, left)
            .into_iter()
            .map(|d| finding(Part::Attribute, d)),
    );
    findings
}

fn finding(part: Part, d: Difference) -> Finding {
    Finding {
        part,
        path: d.path,
        live: d.live.as_ref().map(show),
        recovered: d.recovered.as_ref().map(show),
    }
}

/// A value as a report shows it: compact JSON, redacted, cut at 200 characters.
pub(crate) fn show(v: &Value) -> String {
    shown_text(&v.to_string())
}

fn shown_text(s: &str) -> String {
    let redacted = crate::redact::text(s);
    match redacted.char_indices().nth(MAX_VALUE_CHARS) {
        Some((at, _)) => format!("{}…", &redacted[..at]),
        None => redacted,
    }
}

/// Body pointers holding JSON text in this envelope.
fn json_text(envelope: Envelope) -> &'static [&'static str] {
    match envelope {
        Envelope::Sns => &["/Message"],
        Envelope::None | Envelope::EventBridge => &[],
    }
}

/// Runs one check of `feed` over `sample` at `now`. Never fails: what
/// stopped it is the report's `reason`.
pub(crate) async fn check(
    feed: &FeedConfig,
    source: &Source,
    sample: &[LiveMessage],
    now: DateTime<Utc>,
) -> ShapeReport {
    let mut report = ShapeReport::new(&feed.name, now, sample.len());
    let (Some(b), Some(shape)) = (&feed.backfill, &feed.shape) else {
        report.reason = Some("the feed has no shape check".into());
        return report;
    };
    let lookups = plan(sample, b.settle, b.source.time_resolution, now, |m| {
        partition_of(feed, m)
    });
    report.eligible = lookups.iter().map(|l| l.messages.len()).sum();
    if report.eligible == 0 {
        report.reason = Some(if sample.is_empty() {
            "no live message sampled yet".into()
        } else {
            format!(
                "the {} sampled message(s) are younger than backfill.settle + {}s: the source may not list them yet",
                sample.len(),
                SLACK.as_secs()
            )
        });
        return report;
    }
    let rules = Rules {
        ignore: &shape.ignore,
        json_text: json_text(feed.watch.envelope),
        ignore_attributes: &shape.ignore_attributes,
    };
    let renderer = Renderer::new(feed);
    let config = source.config();
    'windows: for lookup in &lookups {
        let mut wanted: HashMap<&str, &LiveMessage> = lookup
            .messages
            .iter()
            .map(|&i| (sample[i].id.as_str(), &sample[i]))
            .collect();
        let mut at = config.pagination.first();
        for _ in 0..config.max_pages_per_chunk.min(PAGES_PER_LOOKUP) {
            let page = match source
                .page(
                    lookup.window.start,
                    lookup.window.end,
                    &lookup.partition,
                    &at,
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    report.requests += 1;
                    report.reason =
                        Some(format!("source: {}", crate::redact::text(&e.to_string())));
                    break 'windows;
                }
            };
            report.requests += 1;
            for record in page.records {
                let source_id = record.id.clone();
                let (live, findings) = match renderer.apply(record) {
                    Rendered::Message(m) => match wanted.remove(m.id.as_str()) {
                        Some(live) => (live, compare(live, &m, &rules)),
                        None => continue,
                    },
                    Rendered::Filtered => match wanted.remove(source_id.as_str()) {
                        Some(live) => (
                            live,
                            vec![Finding {
                                part: Part::Filter,
                                path: String::new(),
                                live: Some("carried by the live feed".into()),
                                recovered: Some("dropped by backfill.filter".into()),
                            }],
                        ),
                        None => continue,
                    },
                    Rendered::Failed(id, e) => match wanted.remove(id.as_str()) {
                        Some(live) => (
                            live,
                            vec![Finding {
                                part: Part::Render,
                                path: String::new(),
                                live: None,
                                recovered: Some(shown_text(&e.to_string())),
                            }],
                        ),
                        None => continue,
                    },
                };
                report.compared += 1;
                if findings.is_empty() {
                    report.matched += 1;
                } else if report.mismatches.len() < MAX_RECORDS {
                    report.mismatches.push(RecordFindings {
                        record_id: live.id.clone(),
                        findings,
                    });
                }
            }
            if wanted.is_empty() {
                break;
            }
            match page.next {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    report.not_found = report.eligible - report.compared;
    report.outcome = if report.compared == 0 {
        if report.reason.is_none() {
            report.reason = Some(format!(
                "none of the {} sampled record(s) was listed by the source around its event time (watch.event_time and source.record_time, watch.record_id and the rendered id must agree)",
                report.eligible
            ));
        }
        ShapeOutcome::Unavailable
    } else if report.compared > report.matched {
        ShapeOutcome::Mismatch
    } else {
        ShapeOutcome::Match
    };
    report
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at_ms(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_772_366_400_000 + ms).unwrap()
    }

    fn msg(id: &str, ms: i64) -> LiveMessage {
        LiveMessage {
            id: id.into(),
            event_time: at_ms(ms),
            received_at: at_ms(ms),
            body: json!({"id": id}).to_string(),
            attributes: BTreeMap::new(),
        }
    }

    /// A planned window as (start, end) in ms after `at_ms(0)` and its messages.
    type Planned = (i64, i64, Vec<usize>);

    fn windows(l: &[Lookup]) -> Vec<Planned> {
        let base = at_ms(0).timestamp_millis();
        l.iter()
            .map(|l| {
                (
                    l.window.start.timestamp_millis() - base,
                    l.window.end.timestamp_millis() - base,
                    l.messages.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn plan_table() {
        let sample = vec![
            msg("a", 10_500),
            msg("b", 11_000),
            msg("c", 30_250),
            msg("d", 58_000),
        ];
        let settle = Duration::from_secs(5);
        // (now, resolution, want)
        let cases: Vec<(i64, Resolution, Vec<Planned>)> = vec![
            // Nothing is old enough yet.
            (10_000, Resolution::SECOND, vec![]),
            // a and b overlap into one window (on whole seconds); c alone;
            // d is younger than settle + slack.
            (
                60_000,
                Resolution::SECOND,
                vec![(9_000, 12_000, vec![0, 1]), (29_000, 32_000, vec![2])],
            ),
            (
                60_000,
                Resolution::MILLISECOND,
                vec![(9_500, 12_000, vec![0, 1]), (29_250, 31_250, vec![2])],
            ),
            // d is listable once its window ends settle ago.
            (
                64_000,
                Resolution::SECOND,
                vec![
                    (9_000, 12_000, vec![0, 1]),
                    (29_000, 32_000, vec![2]),
                    (57_000, 59_000, vec![3]),
                ],
            ),
        ];
        for (now, res, want) in cases {
            assert_eq!(
                windows(&plan(&sample, settle, res, at_ms(now), whole)),
                want,
                "now {now}, {res}"
            );
        }
        assert!(plan(&[], settle, Resolution::SECOND, at_ms(0), whole).is_empty());
        // A partitioned feed: one lookup per partition, never merged across.
        let partitions = |m: &LiveMessage| {
            (m.id != "d").then(|| if m.id == "b" { "s2" } else { "s1" }.to_string())
        };
        let lookups = plan(
            &sample,
            settle,
            Resolution::SECOND,
            at_ms(64_000),
            partitions,
        );
        let got: Vec<_> = lookups
            .iter()
            .map(|l| (l.partition.as_str(), l.messages.clone()))
            .collect();
        assert_eq!(got, vec![("s1", vec![0]), ("s2", vec![1]), ("s1", vec![2])]);
    }

    fn whole(_: &LiveMessage) -> Option<String> {
        Some(String::new())
    }

    #[test]
    fn compare_body_and_attributes_with_redacted_values() {
        let live = LiveMessage {
            attributes: BTreeMap::from([("event-type".to_string(), Attribute::string("order"))]),
            body: json!({"event": "order", "link": "https://api.example/v1?token=s3cr3t", "data": {"id": "r-1"}}).to_string(),
            ..msg("r-1", 0)
        };
        let recovered = Record {
            id: "r-1".into(),
            time: at_ms(0),
            raw: json!({"event": "order", "link": "https://api.example/v1?token=0ther", "data": {"id": "r-1", "x": "y".repeat(300)}}),
            attributes: vec![("event-type".into(), "order".into())],
            envelope: None,
        };
        let rules = Rules {
            ignore: &[],
            json_text: &[],
            ignore_attributes: &[],
        };
        let f = compare(&live, &recovered, &rules);
        assert_eq!(f.len(), 2, "{f:?}");
        // The link differs in its query value only: both shown redacted.
        assert_eq!(f[0].path, "/link");
        assert_eq!(
            f[0].live.as_deref(),
            Some("\"https://api.example/v1?token=***\"")
        );
        assert!(!format!("{f:?}").contains("s3cr3t"));
        assert_eq!(f[1].path, "/data/x");
        assert_eq!(f[1].live, None);
        let shown = f[1].recovered.as_deref().unwrap();
        assert_eq!(shown.chars().count(), MAX_VALUE_CHARS + 1, "{shown}");
        assert!(shown.ends_with('…'));
        let no_attribute = Record {
            attributes: Vec::new(),
            raw: json!({"event": "order", "link": "https://api.example/v1?token=s3cr3t", "data": {"id": "r-1"}}),
            ..recovered
        };
        let f = compare(&live, &no_attribute, &rules);
        assert_eq!(
            f,
            vec![Finding {
                part: Part::Attribute,
                path: "event-type".into(),
                live: Some("\"order\"".into()),
                recovered: None,
            }]
        );
    }
}
