//! jq programs from the config (render, attributes, filter, error_when), run with
//! jaq. A [`Program`] is compiled once, when the config is loaded: a program that
//! does not compile is an error that names its config key and the line and column
//! where it goes wrong. Running it on a record returns its outputs or a typed
//! [`RunError`], never a panic; the caller decides what a failing record costs.
//!
//! The standard library is jq's, minus what would let a config program read the
//! process environment (`env`, where the vendor token lives); `halt` ends the run
//! on that record with an error, never the process.

use std::fmt;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde_json::Value;

/// Native filters a config program may not call.
const DENIED: &[&str] = &["env"];

/// A program runs on one record; more outputs than this is a mistake in the program
/// (`repeat`, `range(1e9)`), not a shape.
pub(crate) const MAX_OUTPUTS: usize = 1024;

/// Longest error text kept from jaq (its messages quote the value that failed).
const MAX_MESSAGE: usize = 200;

/// A program that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: jq program does not compile at line {line}, column {column}: {message}")]
pub(crate) struct CompileError {
    /// The config key the program came from, e.g. `feeds[0].backfill.render`.
    pub(crate) key: String,
    /// 1-based line in the program text.
    pub(crate) line: usize,
    /// 1-based column (characters) in that line.
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// A program that failed on one input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RunError {
    /// The program raised an error (`error("…")`, `.a.b` on a string, …).
    #[error("jq program failed: {0}")]
    Failed(String),
    /// An output that is not JSON (a byte string, a non-string object key).
    #[error("jq program produced a value that is not JSON: {0}")]
    NotJson(String),
    /// Exactly one output was wanted.
    #[error("jq program produced {0} outputs where one was expected")]
    NotOne(usize),
    /// More than [`MAX_OUTPUTS`] outputs.
    #[error("jq program produced more than {MAX_OUTPUTS} outputs")]
    TooMany,
}

type Data = data::JustLut<Val>;

/// A compiled jq program and the config key it came from. Cloning shares the
/// compiled filter; it serializes as its program text (the resolved config).
#[derive(Clone)]
pub(crate) struct Program {
    key: String,
    source: String,
    filter: std::sync::Arc<jaq_core::Filter<Data>>,
}

impl serde::Serialize for Program {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Program")
            .field("key", &self.key)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

// === impl Program ===

impl Program {
    /// Compiles `code`; errors name `key` and the position in `code`.
    pub(crate) fn compile(key: &str, code: &str) -> Result<Self, CompileError> {
        let fail = |at: Option<&str>, message: String| {
            let (line, column) = at.map_or((1, 1), |s| position(code, s));
            CompileError {
                key: key.to_owned(),
                line,
                column,
                message,
            }
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs::<Data>()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !DENIED.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errs| {
                let (_, err) = errs
                    .into_iter()
                    .next()
                    .expect("a load error names one file");
                match err {
                    jaq_core::load::Error::Io(e) => {
                        let (at, msg) = e.into_iter().next().unwrap_or(("", String::new()));
                        fail(Some(at), format!("cannot load module: {msg}"))
                    }
                    jaq_core::load::Error::Lex(e) => match e.into_iter().next() {
                        Some((expect, at)) => {
                            fail(Some(at), format!("expected {}", expect.as_str()))
                        }
                        None => fail(None, "cannot read the program".into()),
                    },
                    jaq_core::load::Error::Parse(e) => match e.into_iter().next() {
                        Some((expect, at)) => {
                            let found = if at.is_empty() {
                                "end of program".to_owned()
                            } else {
                                format!("`{}`", first_token(at))
                            };
                            fail(
                                Some(at),
                                format!("expected {}, found {found}", expect.as_str()),
                            )
                        }
                        None => fail(None, "cannot parse the program".into()),
                    },
                }
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| {
                let first = errs
                    .into_iter()
                    .next()
                    .and_then(|(_, e)| e.into_iter().next());
                match first {
                    Some((at, undefined)) => {
                        fail(Some(at), format!("undefined {} `{at}`", undefined.as_str()))
                    }
                    None => fail(None, "cannot compile the program".into()),
                }
            })?;
        Ok(Self {
            key: key.to_owned(),
            source: code.to_owned(),
            filter: std::sync::Arc::new(filter),
        })
    }

    /// The config key the program came from.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The program text as configured.
    #[cfg(test)]
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Every output of the program on `input`, in order.
    pub(crate) fn run(&self, input: &Value) -> Result<Vec<Value>, RunError> {
        let ctx = Ctx::<Data>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = Vec::new();
        for out in self.filter.id.run((ctx, to_val(input))) {
            if outputs.len() == MAX_OUTPUTS {
                return Err(RunError::TooMany);
            }
            // Not `jaq_core::unwrap_valr`: it exits the process on `halt`.
            let v = out.map_err(|exn| match exn.get_err() {
                Ok(e) => RunError::Failed(clip(e.to_string())),
                Err(_) => RunError::Failed("the program halted".into()),
            })?;
            outputs.push(from_val(&v)?);
        }
        Ok(outputs)
    }

    /// The one output of the program on `input` (a render or an attribute).
    pub(crate) fn run_one(&self, input: &Value) -> Result<Value, RunError> {
        let mut outputs = self.run(input)?;
        match outputs.len() {
            1 => Ok(outputs.pop().expect("one output")),
            n => Err(RunError::NotOne(n)),
        }
    }

    /// Whether the program's output on `input` is truthy (jq's rule: anything but
    /// `false` and `null`); no output counts as false, several as any of them true.
    pub(crate) fn test(&self, input: &Value) -> Result<bool, RunError> {
        Ok(self
            .run(input)?
            .iter()
            .any(|v| !matches!(v, Value::Null | Value::Bool(false))))
    }
}

/// 1-based line and column of `at`, a slice of `code`.
fn position(code: &str, at: &str) -> (usize, usize) {
    let start = code.as_ptr() as usize;
    let offset = (at.as_ptr() as usize)
        .checked_sub(start)
        .filter(|o| *o <= code.len())
        .unwrap_or(0);
    let before = &code[..floor_char_boundary(code, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The token at the start of the rest of a program, for an error message.
fn first_token(rest: &str) -> &str {
    let end = rest
        .char_indices()
        .skip(1)
        .find(|(_, c)| c.is_whitespace() || "()[]{}|,;:.".contains(*c))
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end.min(40)]
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let at = floor_char_boundary(&s, MAX_MESSAGE);
        s.truncate(at);
        s.push('…');
    }
    s
}

// === serde_json::Value <-> jaq Val ===

fn to_val(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Val::Num(Num::from_integral(i))
            } else if let Some(u) = n.as_u64() {
                Val::Num(Num::from_integral(u))
            } else {
                Val::Num(Num::Float(n.as_f64().unwrap_or(0.0)))
            }
        }
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(to_val).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), to_val(v)))
                .collect(),
        ),
    }
}

fn from_val(v: &Val) -> Result<Value, RunError> {
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number(n),
        Val::TStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::BStr(_) => return Err(RunError::NotJson("a byte string".into())),
        Val::Arr(a) => Value::Array(a.iter().map(from_val).collect::<Result<_, _>>()?),
        Val::Obj(o) => {
            let mut map = serde_json::Map::with_capacity(o.len());
            for (k, v) in o.iter() {
                let Val::TStr(k) = k else {
                    return Err(RunError::NotJson(clip(format!("object key {k}"))));
                };
                map.insert(String::from_utf8_lossy(k).into_owned(), from_val(v)?);
            }
            Value::Object(map)
        }
    })
}

fn number(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i as i64),
        Num::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // A big integer or a decimal literal kept as written: JSON text either way.
        other => serde_json::from_str::<Value>(&other.to_string()).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn compile(code: &str) -> Program {
        Program::compile("feeds[0].backfill.render", code).expect("compiles")
    }

    #[test]
    fn wraps_a_record_like_eventbridge() {
        let p = compile(r#"{"detail-type": "order", source: "vendor", detail: .}"#);
        let out = p.run_one(&json!({"id": "a1", "n": 3})).unwrap();
        assert_eq!(
            out,
            json!({"detail-type": "order", "source": "vendor", "detail": {"id": "a1", "n": 3}})
        );
    }

    #[test]
    fn keeps_key_order_and_value_types() {
        let p = compile(".");
        let input =
            json!({"z": 1, "a": [true, null, 1.5, -7, "s"], "m": {"k": 18446744073709551615u64}});
        let out = p.run_one(&input).unwrap();
        assert_eq!(out, input);
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            serde_json::to_string(&input).unwrap()
        );
    }

    #[test]
    fn standard_library_is_there() {
        let p = compile(
            r#"{type: (.kind | ascii_upcase), n: (.items | map(.q) | add), t: (.ts | todate)}"#,
        );
        let out = p
            .run_one(&json!({"kind": "order", "items": [{"q": 2}, {"q": 3}], "ts": 0}))
            .unwrap();
        assert_eq!(
            out,
            json!({"type": "ORDER", "n": 5, "t": "1970-01-01T00:00:00Z"})
        );
        let json_text = compile("tojson").run_one(&json!({"a": 1})).unwrap();
        assert_eq!(json_text, json!("{\"a\":1}"));
    }

    #[test]
    fn syntax_error_names_key_line_and_column() {
        let err =
            Program::compile("feeds[1].backfill.filter", ".type ==\n  (\"order\"").unwrap_err();
        assert_eq!(err.key, "feeds[1].backfill.filter");
        // An unclosed parenthesis is noticed where the program ends.
        assert_eq!((err.line, err.column), (2, 11), "{err}");
        let text = err.to_string();
        assert_eq!(
            text,
            "feeds[1].backfill.filter: jq program does not compile at line 2, column 11: \
             expected closing parenthesis"
        );
    }

    #[test]
    fn parse_error_points_at_the_token() {
        let err = Program::compile("k", "{a: 1} | | .").unwrap_err();
        assert_eq!((err.line, err.column), (1, 10), "{err}");
        assert!(err.message.contains('|'), "{err}");
    }

    #[test]
    fn undefined_filter_is_a_compile_error_at_its_place() {
        let err = Program::compile("k", ". | frobnicate").unwrap_err();
        assert_eq!((err.line, err.column), (1, 5), "{err}");
        assert!(err.message.contains("frobnicate"), "{err}");
    }

    #[test]
    fn environment_is_out_of_reach() {
        for code in ["env", "$ENV.HOME", "env.PATH"] {
            let err = Program::compile("k", code).expect_err(code);
            assert_eq!(err.key, "k");
        }
        for code in ["halt", "\"x\" | halt_error"] {
            let err = compile(code).run(&json!(1)).expect_err(code);
            assert_eq!(err, RunError::Failed("the program halted".into()));
        }
    }

    #[test]
    fn failure_on_one_input_is_an_error_not_a_panic() {
        let p = compile(".a.b");
        assert_eq!(p.run_one(&json!({"a": {"b": 2}})).unwrap(), json!(2));
        assert!(matches!(
            p.run_one(&json!({"a": "text"})),
            Err(RunError::Failed(_))
        ));
        let p = compile(r#"error("bad record")"#);
        let err = p.run(&json!({})).unwrap_err();
        assert!(err.to_string().contains("bad record"), "{err}");
    }

    #[test]
    fn output_counts_are_checked() {
        assert_eq!(
            compile("empty").run_one(&json!(1)),
            Err(RunError::NotOne(0))
        );
        assert_eq!(compile("1, 2").run_one(&json!(1)), Err(RunError::NotOne(2)));
        assert_eq!(
            compile("1, 2").run(&json!(1)).unwrap(),
            vec![json!(1), json!(2)]
        );
        assert_eq!(compile("repeat(1)").run(&json!(1)), Err(RunError::TooMany));
    }

    #[test]
    fn test_is_jq_truthiness() {
        let p = compile(r#".type == "order""#);
        assert!(p.test(&json!({"type": "order"})).unwrap());
        assert!(!p.test(&json!({"type": "refund"})).unwrap());
        assert!(!compile("empty").test(&json!(1)).unwrap());
        assert!(!compile("null").test(&json!(1)).unwrap());
        assert!(compile("0").test(&json!(1)).unwrap());
    }

    #[test]
    fn non_json_outputs_are_refused() {
        let err = compile("{(1): 2}").run(&json!(null));
        assert!(matches!(err, Err(RunError::NotJson(_))), "{err:?}");
    }

    #[test]
    fn nan_is_null_like_jq() {
        assert_eq!(compile("nan").run_one(&json!(null)).unwrap(), json!(null));
    }

    #[test]
    fn program_is_shareable_across_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Program>();
    }
}
