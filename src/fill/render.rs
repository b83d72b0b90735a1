//! From a source record to the message a live consumer would have read:
//! `backfill.filter` (is it one the live feed carries?), `backfill.render` (the
//! body), `backfill.attributes` (message attributes), then `watch.envelope`.
//!
//! The ledger id of a recovered record is read from the rendered record with
//! the live side's `watch.record_id` pointer (inside the envelope, as the live
//! side reads it), so dedupe against relayed ids and the audit compare like
//! with like. Without a live pointer (live ids are SQS MessageIds), or for a
//! record sent as listed that lacks it, the source's `record_id` stays the id.

use std::sync::Arc;

use serde_json::Value;

use super::source::Record;
use crate::config::FeedConfig;
use crate::envelope::EnvelopeTemplate;
use crate::jq::{Program, RunError};
use crate::observe::id_string;

/// Why one record could not be rendered: it is not sent, the rest of its page is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RenderError {
    #[error("{key}: {source}")]
    Program { key: String, source: RunError },
    #[error("rendered message has no record id at {pointer}")]
    NoRecordId { pointer: String },
}

/// What became of one source record.
#[derive(Debug)]
pub(crate) enum Rendered {
    /// The message to send: `raw` is its body, `id` its ledger id.
    Message(Record),
    /// `backfill.filter` said the live feed does not carry it.
    Filtered,
    /// The source id of the record, and why.
    Failed(String, RenderError),
}

/// A feed's render step, built once from its config.
#[derive(Debug, Clone, Default)]
pub(crate) struct Renderer {
    filter: Option<Program>,
    render: Option<Program>,
    attributes: Vec<(String, Program)>,
    /// `watch.envelope`'s constant part, built once (`None`: no envelope).
    template: Option<Arc<EnvelopeTemplate>>,
    live_record_id: Option<String>,
}

impl Renderer {
    pub(crate) fn new(feed: &FeedConfig) -> Self {
        let b = feed.backfill.as_ref();
        Self {
            filter: b.and_then(|b| b.filter.clone()),
            render: b.and_then(|b| b.render.clone()),
            attributes: b
                .map(|b| b.attributes.clone().into_iter().collect())
                .unwrap_or_default(),
            template: feed.watch.envelope.template(&feed.watch.envelope_fields),
            live_record_id: feed.watch.record_id.clone(),
        }
    }

    /// Whether records go out as the source lists them (nothing to run).
    pub(crate) fn is_identity(&self) -> bool {
        self.filter.is_none()
            && self.render.is_none()
            && self.attributes.is_empty()
            && self.template.is_none()
            && self.live_record_id.is_none()
    }

    pub(crate) fn apply(&self, mut record: Record) -> Rendered {
        match self.try_apply(&mut record) {
            Ok(true) => Rendered::Message(record),
            Ok(false) => Rendered::Filtered,
            Err(e) => Rendered::Failed(record.id, e),
        }
    }

    /// Shapes `record` in place; false: filtered out.
    fn try_apply(&self, record: &mut Record) -> Result<bool, RenderError> {
        let run = |p: &Program, e: RunError| RenderError::Program {
            key: p.key().to_owned(),
            source: e,
        };
        if let Some(f) = &self.filter {
            if !f.test(&record.raw).map_err(|e| run(f, e))? {
                return Ok(false);
            }
        }
        let mut attributes = Vec::with_capacity(self.attributes.len());
        for (name, p) in &self.attributes {
            match p.run_one(&record.raw).map_err(|e| run(p, e))? {
                // null (or ""): this record carries no such attribute; SQS
                // refuses empty values.
                Value::Null => {}
                Value::String(s) if s.is_empty() => {}
                Value::String(s) => attributes.push((name.clone(), s)),
                other => attributes.push((name.clone(), other.to_string())),
            }
        }
        let body = match &self.render {
            Some(p) => p.run_one(&record.raw).map_err(|e| run(p, e))?,
            None => std::mem::take(&mut record.raw),
        };
        let live_id = match &self.live_record_id {
            Some(ptr) => match body.pointer(ptr).and_then(id_string) {
                Some(id) => Some(id),
                // A record sent as listed keeps the source's id when the live
                // pointer is not in it; a shaped one must carry the live id.
                None if self.render.is_none() && self.template.is_none() => None,
                None => {
                    record.raw = body;
                    return Err(RenderError::NoRecordId {
                        pointer: ptr.clone(),
                    });
                }
            },
            None => None,
        };
        if let Some(id) = live_id {
            record.id = id;
        }
        record.raw = body;
        record.envelope = self.template.as_ref().map(|t| t.wrap(record.time));
        record.attributes = attributes;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::config::Envelope;

    fn rec(raw: Value) -> Record {
        Record {
            id: raw["id"].to_string(),
            time: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            raw,
            attributes: Vec::new(),
            envelope: None,
        }
    }

    fn prog(key: &str, code: &str) -> Program {
        Program::compile(key, code).unwrap()
    }

    #[test]
    fn custom_envelope_attributes_and_id_from_the_rendered_body() {
        let r = Renderer {
            render: Some(prog(
                "render",
                r#"{event: .type, payload: {ref: .id, n: .n}}"#,
            )),
            attributes: vec![
                ("event-type".into(), prog("a", ".type")),
                ("count".into(), prog("b", ".n")),
                ("absent".into(), prog("c", ".nope")),
            ],
            live_record_id: Some("/payload/ref".into()),
            ..Renderer::default()
        };
        let Rendered::Message(m) = r.apply(rec(json!({"id": "v-1", "type": "order", "n": 2})))
        else {
            panic!("rendered")
        };
        assert_eq!(
            m.raw,
            json!({"event": "order", "payload": {"ref": "v-1", "n": 2}})
        );
        assert_eq!(m.id, "v-1");
        assert_eq!(
            m.attributes,
            vec![
                ("event-type".into(), "order".into()),
                ("count".into(), "2".into())
            ]
        );
    }

    #[test]
    fn filter_drops_and_failures_name_the_key() {
        let r = Renderer {
            filter: Some(prog("feeds[0].backfill.filter", r#".type == "order""#)),
            render: Some(prog(
                "feeds[0].backfill.render",
                "{id: .id, total: (.amount + 1)}",
            )),
            ..Renderer::default()
        };
        assert!(matches!(
            r.apply(rec(json!({"id": 1, "type": "refund"}))),
            Rendered::Filtered
        ));
        let Rendered::Failed(_, e) = r.apply(rec(json!({"id": 2, "type": "order", "amount": "x"})))
        else {
            panic!("failed")
        };
        assert!(
            e.to_string()
                .starts_with("feeds[0].backfill.render: jq program failed"),
            "{e}"
        );
        assert!(matches!(
            r.apply(rec(json!({"id": 3, "type": "order", "amount": 2}))),
            Rendered::Message(_)
        ));
    }

    #[test]
    fn eventbridge_wraps_after_render_and_reads_the_id_inside() {
        let r = Renderer {
            template: Envelope::EventBridge
                .template(json!({"detail-type": "order"}).as_object().unwrap()),
            live_record_id: Some("/id".into()),
            ..Renderer::default()
        };
        let Rendered::Message(m) = r.apply(rec(json!({"id": "o-9"}))) else {
            panic!()
        };
        assert_eq!(m.id, "o-9");
        let sent = m.message().to_value();
        assert_eq!(sent["detail"], json!({"id": "o-9"}));
        assert_eq!(sent["detail-type"], "order");
        assert_eq!(sent["time"], "2026-01-01T00:00:00Z");
        assert_eq!(
            serde_json::to_string(&m.message()).unwrap(),
            sent.to_string(),
            "what a sink writes is the message"
        );
        let Rendered::Failed(_, e) = r.apply(rec(json!({"other": 1}))) else {
            panic!()
        };
        assert_eq!(
            e,
            RenderError::NoRecordId {
                pointer: "/id".into()
            }
        );
    }
}
