//! Turning a live record into an observation: its id and event time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::WatchConfig;
use crate::envelope::Envelope;
use crate::metrics::Rejection;
use crate::timefmt::TimeFormat;

/// One record seen live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Observation {
    pub(crate) id: String,
    pub(crate) event_time: DateTime<Utc>,
    /// The record's partition value (partitioned feeds; None: not readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) partition: Option<String>,
}

/// Reads ids and event times out of message bodies as `[feeds.watch]` says.
#[derive(Clone, Debug)]
pub(crate) struct Extractor {
    event_time: Option<String>,
    format: TimeFormat,
    record_id: Option<String>,
    envelope: Envelope,
    /// Partitioned feeds: JSON pointer to the partition value.
    partition: Option<String>,
}

/// The observation of a message, and what could not be read from its body (the
/// message is forwarded and observed all the same).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Extracted {
    pub(crate) observation: Observation,
    pub(crate) problems: Vec<Rejection>,
}

impl Extractor {
    pub(crate) fn new(watch: &WatchConfig) -> Self {
        Self {
            event_time: watch.event_time.clone(),
            format: watch.event_time_format,
            record_id: watch.record_id.clone(),
            envelope: watch.envelope,
            partition: None,
        }
    }

    /// Also reads each record's partition value at `key` (a JSON pointer
    /// into the record, inside the envelope).
    pub(crate) fn with_partition_key(mut self, key: Option<String>) -> Self {
        self.partition = key;
        self
    }

    /// `message_id` and `sent` (SQS `SentTimestamp`) are the fallbacks when the
    /// body does not say.
    pub(crate) fn extract(&self, body: &str, message_id: &str, sent: DateTime<Utc>) -> Extracted {
        let mut problems = Vec::new();
        if self.event_time.is_none() && self.record_id.is_none() && self.partition.is_none() {
            return Extracted {
                observation: Observation {
                    id: message_id.to_string(),
                    event_time: sent,
                    partition: None,
                },
                problems,
            };
        }
        let body: Option<serde_json::Value> = serde_json::from_str(body).ok();
        // The pointers address the record inside the envelope.
        let json = body.as_ref().and_then(|b| self.envelope.open(b));
        match (&body, &json) {
            (None, _) => problems.push(Rejection::BodyNotJson),
            (Some(_), None) => problems.push(Rejection::NoEnvelope),
            _ => {}
        }
        let event_time = match (&self.event_time, &json) {
            (None, _) => sent,
            (Some(ptr), Some(v)) => match v.pointer(ptr).map(|t| self.format.parse_json(t)) {
                Some(Ok(t)) => t,
                _ => {
                    problems.push(Rejection::NoEventTime);
                    sent
                }
            },
            (Some(_), None) => sent,
        };
        let id = match (&self.record_id, &json) {
            (None, _) => message_id.to_string(),
            (Some(ptr), Some(v)) => match v.pointer(ptr).and_then(id_string) {
                Some(id) => id,
                None => {
                    problems.push(Rejection::NoRecordId);
                    message_id.to_string()
                }
            },
            (Some(_), None) => message_id.to_string(),
        };
        let partition = match (&self.partition, &json) {
            (None, _) => None,
            (Some(ptr), Some(v)) => {
                let value = v.pointer(ptr).and_then(partition_value);
                if value.is_none() {
                    problems.push(Rejection::NoPartitionKey);
                }
                value
            }
            // Counted already as not JSON or not in its envelope.
            (Some(_), None) => None,
        };
        Extracted {
            observation: Observation {
                id,
                event_time,
                partition,
            },
            problems,
        }
    }
}

/// A record id as a string: JSON strings as they are, numbers in their JSON
/// spelling; anything else (or an empty string) is no id.
pub(crate) fn id_string(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A partition value as a string: like an id (a non-empty string, or a
/// number in its JSON spelling), at most 256 bytes; anything else is none.
pub(crate) fn partition_value(v: &serde_json::Value) -> Option<String> {
    id_string(v).filter(|p| p.len() <= crate::config::MAX_PARTITION_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WatchMode;
    use chrono::TimeZone;

    fn extractor(event_time: Option<&str>, record_id: Option<&str>, f: TimeFormat) -> Extractor {
        Extractor::new(&WatchConfig {
            mode: WatchMode::Relay,
            forward_to: None,
            event_time: event_time.map(str::to_string),
            event_time_format: f,
            record_id: record_id.map(str::to_string),
            envelope: Envelope::None,
            envelope_fields: Default::default(),
            pollers: std::num::NonZeroUsize::MIN,
        })
    }

    #[test]
    fn reads_id_and_time_from_the_body() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 9).unwrap();
        let e = extractor(Some("/created_at"), Some("/id"), TimeFormat::Rfc3339);
        let got = e.extract(
            r#"{"id":"o-1","created_at":"2026-01-01T00:00:05Z"}"#,
            "mid",
            sent,
        );
        assert_eq!(got.observation.id, "o-1");
        assert_eq!(
            got.observation.event_time,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap()
        );
        assert!(got.problems.is_empty());
    }

    #[test]
    fn falls_back_to_message_id_and_sent_timestamp() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 9).unwrap();
        let e = extractor(Some("/ts"), Some("/id"), TimeFormat::UnixMs);
        let not_json = e.extract("not json", "mid-1", sent);
        assert_eq!(not_json.observation.id, "mid-1");
        assert_eq!(not_json.observation.event_time, sent);
        assert_eq!(not_json.problems, vec![Rejection::BodyNotJson]);

        let missing = e.extract(r#"{"other":1}"#, "mid-2", sent);
        assert_eq!(missing.observation.id, "mid-2");
        assert_eq!(
            missing.problems,
            vec![Rejection::NoEventTime, Rejection::NoRecordId]
        );

        let numeric = e.extract(r#"{"id":42,"ts":1767225600000}"#, "mid-3", sent);
        assert_eq!(numeric.observation.id, "42");
        assert_eq!(
            numeric.observation.event_time,
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn pointers_address_the_record_inside_the_envelope() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 9).unwrap();
        let mut e = extractor(Some("/ts"), Some("/id"), TimeFormat::UnixS);
        e.envelope = Envelope::EventBridge;
        let got = e.extract(
            r#"{"id":"env-1","time":"2026-01-01T00:00:09Z","detail":{"id":"r-1","ts":1767225601}}"#,
            "mid",
            sent,
        );
        assert_eq!(got.observation.id, "r-1");
        assert_eq!(got.observation.event_time.timestamp(), 1767225601);
        assert!(got.problems.is_empty());

        e.envelope = Envelope::Sns;
        let got = e.extract(
            r#"{"Type":"Notification","MessageId":"m-9","Message":"{\"id\":\"r-2\",\"ts\":1767225602}"}"#,
            "mid",
            sent,
        );
        assert_eq!(got.observation.id, "r-2");
        assert_eq!(got.observation.event_time.timestamp(), 1767225602);

        let bare = e.extract(r#"{"id":"r-3","ts":1}"#, "mid-3", sent);
        assert_eq!(
            bare.observation.id, "mid-3",
            "a bare record is not an SNS envelope"
        );
        assert_eq!(bare.problems, vec![Rejection::NoEnvelope]);
    }

    #[test]
    fn the_partition_is_read_inside_the_envelope() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 9).unwrap();
        let mut e = extractor(Some("/ts"), Some("/id"), TimeFormat::UnixS)
            .with_partition_key(Some("/store_id".into()));
        e.envelope = Envelope::EventBridge;
        let got = e.extract(
            r#"{"id":"env-1","detail":{"id":"r-1","ts":1767225601,"store_id":"s7"}}"#,
            "mid",
            sent,
        );
        assert_eq!(got.observation.partition.as_deref(), Some("s7"));
        assert!(got.problems.is_empty());
        let numeric = e.extract(r#"{"detail":{"id":"r-2","ts":1,"store_id":42}}"#, "m", sent);
        assert_eq!(numeric.observation.partition.as_deref(), Some("42"));
        for body in [
            r#"{"detail":{"id":"r-3","ts":1}}"#,
            r#"{"detail":{"id":"r-4","ts":1,"store_id":""}}"#,
            r#"{"detail":{"id":"r-5","ts":1,"store_id":{"a":1}}}"#,
        ] {
            let got = e.extract(body, "m", sent);
            assert_eq!(got.observation.partition, None, "{body}");
            assert_eq!(got.problems, vec![Rejection::NoPartitionKey], "{body}");
        }
        let long = format!(
            r#"{{"detail":{{"id":"r-6","ts":1,"store_id":"{}"}}}}"#,
            "x".repeat(300)
        );
        assert_eq!(e.extract(&long, "m", sent).observation.partition, None);
        // Without pointers for id and time the body is still read for it.
        let mut e =
            extractor(None, None, TimeFormat::Rfc3339).with_partition_key(Some("/store_id".into()));
        e.envelope = Envelope::None;
        let got = e.extract(r#"{"store_id":"s1"}"#, "mid", sent);
        assert_eq!(got.observation.id, "mid");
        assert_eq!(got.observation.partition.as_deref(), Some("s1"));
    }

    #[test]
    fn without_pointers_the_body_is_not_parsed() {
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 9).unwrap();
        let e = extractor(None, None, TimeFormat::Rfc3339);
        let got = e.extract("anything", "mid", sent);
        assert_eq!(got.observation.id, "mid");
        assert_eq!(got.observation.event_time, sent);
        assert!(got.problems.is_empty());
    }
}
