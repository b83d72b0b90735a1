//! Log output: JSON lines on stderr (or text for humans).
//!
//! Every long-running task runs inside a span that names what it works on
//! (`feed`, and `gap_id`, `chunk` inside a fill), so its log calls do not
//! repeat those fields. `tracing-subscriber`'s JSON lines nest span fields
//! under `span` / `spans`; operators and tests read `feed` and `gap_id` at
//! the top level of each line. [`SpanFieldsJson`] therefore writes the line
//! exactly as the stock formatter does and adds, before `target`, each span
//! field the event does not carry itself (the innermost span wins).

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

/// Installs the global subscriber (`RUST_LOG` filters, `info` by default).
pub(crate) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .event_format(SpanFieldsJson::default())
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The stock JSON line (flattened event fields, `span`, `spans`) plus the
/// fields of the event's spans at the top level.
pub(crate) struct SpanFieldsJson {
    inner: Format<Json>,
}

impl Default for SpanFieldsJson {
    fn default() -> Self {
        SpanFieldsJson {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true),
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for SpanFieldsJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let mut from_spans = Map::new();
        if let Some(scope) = ctx.event_scope() {
            // Innermost first: a chunk's field wins over its feed's.
            for span in scope {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&fields.fields) {
                    for (k, v) in map {
                        from_spans.entry(k).or_insert(v);
                    }
                }
            }
        }
        if from_spans.is_empty() {
            return writer.write_str(&line);
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(own)) => writeln!(writer, "{}", merged(own, from_spans)),
            _ => writer.write_str(&line),
        }
    }
}

/// `own` with each of `from_spans` it lacks, placed after the event's
/// fields (before `target`, `span` and `spans`).
fn merged(own: Map<String, Value>, mut from_spans: Map<String, Value>) -> Value {
    from_spans.retain(|k, _| !own.contains_key(k));
    let mut out = Map::with_capacity(own.len() + from_spans.len());
    let mut pending = Some(from_spans);
    for (k, v) in own {
        if matches!(k.as_str(), "target" | "span" | "spans") {
            if let Some(extra) = pending.take() {
                out.extend(extra);
            }
        }
        out.insert(k, v);
    }
    if let Some(extra) = pending {
        out.extend(extra);
    }
    Value::Object(out)
}

/// The lines `f` logs (every level), each parsed, as `gapwatch run` writes
/// them.
#[cfg(test)]
pub(crate) fn capture(f: impl FnOnce()) -> Vec<Map<String, Value>> {
    let capture = Capture::start();
    f();
    capture.lines()
}

/// What this thread logs while it lives (a current-thread runtime's tasks
/// included), as [`capture`] reads it.
#[cfg(test)]
pub(crate) struct Capture {
    buf: tests::Buffer,
    _guard: tracing::subscriber::DefaultGuard,
}

#[cfg(test)]
impl Capture {
    pub(crate) fn start() -> Capture {
        let buf = tests::Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(buf.clone())
            .json()
            .event_format(SpanFieldsJson::default())
            .finish();
        Capture {
            _guard: tracing::subscriber::set_default(subscriber),
            buf,
        }
    }

    pub(crate) fn lines(&self) -> Vec<Map<String, Value>> {
        self.buf.lines()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::Instrument;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    pub(super) struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        pub(super) fn lines(&self) -> Vec<Map<String, Value>> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| match serde_json::from_str(l) {
                    Ok(Value::Object(m)) => m,
                    other => panic!("not a JSON object: {l} ({other:?})"),
                })
                .collect()
        }
    }

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn span_fields_are_top_level_and_the_event_wins() {
        let lines = capture(|| {
            let feed = tracing::info_span!("feed", feed = "orders");
            let _f = feed.enter();
            let chunk = tracing::info_span!("chunk", chunk = 3, from = "a");
            let _c = chunk.enter();
            tracing::info!(from = "b", delivered = 2, "chunk done");
        });
        let line = &lines[0];
        assert_eq!(line["message"], "chunk done");
        assert_eq!(line["feed"], "orders");
        assert_eq!(line["chunk"], 3);
        assert_eq!(line["from"], "b", "the event's own field wins");
        assert_eq!(line["delivered"], 2);
        // The stock parts stay as they were.
        assert_eq!(line["span"]["name"], "chunk");
        assert_eq!(line["spans"][0]["feed"], "orders");
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "from",
                "delivered",
                "chunk",
                "feed",
                "target",
                "span",
                "spans"
            ]
        );
    }

    #[test]
    fn a_line_outside_any_span_is_the_stock_line() {
        let lines = capture(|| tracing::warn!(feed = "orders", gap_id = 7, "gap opened"));
        let keys: Vec<&str> = lines[0].keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["timestamp", "level", "message", "feed", "gap_id", "target"]
        );
    }

    #[tokio::test]
    async fn an_instrumented_task_logs_its_span_fields() {
        let capture = Capture::start();
        tokio::spawn(
            async { tracing::info!("fill finished") }
                .instrument(tracing::info_span!("gap", gap_id = 42)),
        )
        .await
        .unwrap();
        assert_eq!(capture.lines()[0]["gap_id"], 42);
    }
}
