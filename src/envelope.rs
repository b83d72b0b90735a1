//! The envelopes a live record arrives in (`feeds.watch.envelope`): taken off a
//! live message before its record id and event time are read, and put around a
//! recovered record before a sink sends it, so the app reads both alike.
//!
//! - `eventbridge`: `{"version","id","detail-type","source","account","time",
//!   "region","resources","detail": <record>}`;
//! - `sns` (a subscription without raw delivery): `{"Type":"Notification",
//!   "MessageId","TopicArn","Message": "<record as JSON text>","Timestamp",…}`.
//!
//! A recovered envelope gets a fresh id and the record's time; every other field
//! comes from `feeds.watch.envelope_fields` (the values the vendor's live
//! envelopes carry: `detail-type`, `source`, `TopicArn` …).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Envelope {
    /// The message body is the record.
    #[default]
    None,
    Sns,
    #[serde(rename = "eventbridge")]
    EventBridge,
}

impl Envelope {
    /// The record inside a live message body; None when the body is not such
    /// an envelope (no `detail`, or a `Message` that is not JSON text).
    pub(crate) fn open<'a>(self, body: &'a Value) -> Option<Cow<'a, Value>> {
        match self {
            Envelope::None => Some(Cow::Borrowed(body)),
            Envelope::EventBridge => body.get("detail").map(Cow::Borrowed),
            Envelope::Sns => match body.get("Message")? {
                Value::String(text) => serde_json::from_str(text).ok().map(Cow::Owned),
                _ => None,
            },
        }
    }

    /// Pointers a shape check ignores by default: what is fresh in every envelope.
    pub(crate) fn volatile(self) -> &'static [&'static str] {
        match self {
            Envelope::None => &[],
            Envelope::EventBridge => &["/id", "/time"],
            Envelope::Sns => &[
                "/MessageId",
                "/Timestamp",
                "/Signature",
                "/SigningCertURL",
                "/UnsubscribeURL",
            ],
        }
    }

    /// `record` wrapped as a live message: `fields` first (what the vendor's
    /// envelopes carry), then a fresh id and `time`, then the record itself.
    #[cfg(test)]
    pub(crate) fn wrap(
        self,
        record: Value,
        time: DateTime<Utc>,
        fields: &Map<String, Value>,
    ) -> Value {
        match self.template(fields) {
            Some(t) => Message {
                body: &record,
                envelope: Some(&t.wrap(time)),
            }
            .to_value(),
            None => record,
        }
    }

    /// The envelope's constant part, built once per feed: its keys in the
    /// order the service writes them, `fields` merged in. `None` for no envelope.
    pub(crate) fn template(self, fields: &Map<String, Value>) -> Option<Arc<EnvelopeTemplate>> {
        let mut m = match self {
            Envelope::None => return None,
            Envelope::EventBridge => {
                let mut m = Map::with_capacity(9);
                m.insert("version".into(), Value::from("0"));
                m.insert("id".into(), Value::Null);
                m.insert("detail-type".into(), Value::from(""));
                m.insert("source".into(), Value::from(""));
                m.insert("account".into(), Value::from(""));
                m.insert("time".into(), Value::Null);
                m.insert("region".into(), Value::from(""));
                m.insert("resources".into(), Value::Array(Vec::new()));
                m
            }
            Envelope::Sns => {
                let mut m = Map::with_capacity(10);
                m.insert("Type".into(), Value::from("Notification"));
                m.insert("MessageId".into(), Value::Null);
                m.insert("TopicArn".into(), Value::from(""));
                m.insert("Message".into(), Value::Null);
                m.insert("Timestamp".into(), Value::Null);
                m.insert("SignatureVersion".into(), Value::from("1"));
                m
            }
        };
        for (k, v) in fields {
            m.insert(k.clone(), v.clone());
        }
        if self == Envelope::EventBridge {
            // The record comes last, after any field of the vendor's own.
            m.insert("detail".into(), Value::Null);
        }
        Some(Arc::new(EnvelopeTemplate {
            kind: self,
            base: m,
        }))
    }
}

/// An envelope ready to be put around records (see [`Envelope::template`]):
/// the constant part, built once per feed and shared by every record's
/// [`Wrapped`], which adds only its own id and time.
#[derive(Debug, PartialEq)]
pub(crate) struct EnvelopeTemplate {
    kind: Envelope,
    base: Map<String, Value>,
}

impl EnvelopeTemplate {
    /// The envelope of one record with event time `time`: a fresh id and the time.
    pub(crate) fn wrap(self: &Arc<Self>, time: DateTime<Utc>) -> Wrapped {
        let format = match self.kind {
            Envelope::Sns => SecondsFormat::Millis,
            _ => SecondsFormat::Secs,
        };
        Wrapped {
            template: Arc::clone(self),
            id: fresh_id(),
            time: time.to_rfc3339_opts(format, true),
        }
    }
}

/// One recovered record's envelope. It is written around the record when the
/// message is serialized ([`Message`]): no per-record copy of the constant part.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wrapped {
    template: Arc<EnvelopeTemplate>,
    id: String,
    time: String,
}

/// A message body as a sink sends it: the record, in its envelope if it has one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message<'a> {
    pub(crate) body: &'a Value,
    pub(crate) envelope: Option<&'a Wrapped>,
}

impl Message<'_> {
    /// The message as a JSON value (for comparisons; sinks serialize it directly).
    pub(crate) fn to_value(self) -> Value {
        match self.envelope {
            None => self.body.clone(),
            // Serializing a Value-backed message into a Value cannot fail.
            Some(_) => serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Some(w) = self.envelope else {
            return self.body.serialize(s);
        };
        let kind = w.template.kind;
        let mut m = s.serialize_map(Some(w.template.base.len()))?;
        // The template holds every key in its place; three are this record's.
        for (k, v) in &w.template.base {
            match (kind, k.as_str()) {
                (Envelope::EventBridge, "id") | (Envelope::Sns, "MessageId") => {
                    m.serialize_entry(k, &w.id)?
                }
                (Envelope::EventBridge, "time") | (Envelope::Sns, "Timestamp") => {
                    m.serialize_entry(k, &w.time)?
                }
                (Envelope::EventBridge, "detail") => m.serialize_entry(k, self.body)?,
                (Envelope::Sns, "Message") => m.serialize_entry(k, &self.body.to_string())?,
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

/// A random (version 4) UUID, as EventBridge and SNS ids are written.
pub(crate) fn fresh_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    // Written by hand: this runs once per recovered record.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(x >> 4)] as char);
        out.push(HEX[usize::from(x & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 5).unwrap()
    }

    #[test]
    fn eventbridge_round_trip() {
        let fields = json!({"detail-type": "order.created", "source": "partner.acme", "account": "123456789012", "region": "eu-west-1"});
        let rec = json!({"id": "o-1", "ts": 5});
        let msg = Envelope::EventBridge.wrap(rec.clone(), t(), fields.as_object().unwrap());
        let keys: Vec<&str> = msg
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "version",
                "id",
                "detail-type",
                "source",
                "account",
                "time",
                "region",
                "resources",
                "detail"
            ]
        );
        assert_eq!(msg["time"], "2026-03-01T12:00:05Z");
        assert_eq!(msg["detail-type"], "order.created");
        let id = msg["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert_eq!(Envelope::EventBridge.open(&msg).unwrap().as_ref(), &rec);
        let again = Envelope::EventBridge.wrap(rec, t(), &Map::new());
        assert_ne!(again["id"], msg["id"], "every envelope gets a fresh id");
    }

    #[test]
    fn sns_message_is_json_text() {
        let fields = json!({"TopicArn": "arn:aws:sns:us-east-1:1:orders"});
        let rec = json!({"id": 7, "kind": "x"});
        let msg = Envelope::Sns.wrap(rec.clone(), t(), fields.as_object().unwrap());
        assert_eq!(msg["Type"], "Notification");
        assert_eq!(msg["Message"], Value::from(r#"{"id":7,"kind":"x"}"#));
        assert_eq!(msg["Timestamp"], "2026-03-01T12:00:05.000Z");
        assert_eq!(msg["TopicArn"], "arn:aws:sns:us-east-1:1:orders");
        assert_eq!(Envelope::Sns.open(&msg).unwrap().as_ref(), &rec);
    }

    #[test]
    fn a_vendor_field_goes_before_the_record_and_text_matches_value() {
        let fields = json!({"source": "partner.acme", "tenant": "t-1"});
        let rec = json!({"id": "o-2"});
        let eb = Envelope::EventBridge
            .template(fields.as_object().unwrap())
            .unwrap();
        let w = eb.wrap(t());
        let msg = Message {
            body: &rec,
            envelope: Some(&w),
        };
        let v = msg.to_value();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys[keys.len() - 2..], ["tenant", "detail"]);
        assert_eq!(v["source"], "partner.acme");
        assert_eq!(serde_json::to_string(&msg).unwrap(), v.to_string());
        let sns = Envelope::Sns.template(&Map::new()).unwrap();
        let w = sns.wrap(t());
        let msg = Message {
            body: &rec,
            envelope: Some(&w),
        };
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            msg.to_value().to_string()
        );
        assert_eq!(msg.to_value()["Message"], r#"{"id":"o-2"}"#);
    }

    #[test]
    fn open_refuses_what_is_not_the_envelope() {
        assert!(Envelope::EventBridge.open(&json!({"id": 1})).is_none());
        assert!(Envelope::Sns
            .open(&json!({"Message": "not json"}))
            .is_none());
        assert!(Envelope::Sns.open(&json!({"Message": {"id": 1}})).is_none());
        assert_eq!(Envelope::None.open(&json!(1)).unwrap().as_ref(), &json!(1));
    }
}
