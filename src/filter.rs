//! Route filters: a CEL expression over an event's routing fields and its
//! payload (`op == "UPDATE" && data.status == "paid"`), parsed once at
//! start-up and evaluated per event.
//!
//! Variables: `op`, `table`, `schema` and `channel` (strings, from the
//! routing fields, no payload parse needed), and every top-level field of the
//! payload object: `data` (the row), `old` (the old row, where the table sends
//! it), and whatever else the table adds (`xid`, ...). `data` and `old` are
//! always declared: `null` when the payload has none.
//!
//! Missing fields: `data.status` on a row without a `status` column, or
//! `old.status` on an INSERT, is an evaluation error, and an evaluation error
//! (as is a result that is not a boolean) counts as "no match": the filter
//! never panics and never stops the daemon. Such errors are counted
//! ([`Filter::errors`]), each one logged at debug level and at most one a
//! minute per filter at warn level. Write `has(data.status)` (or
//! `old != null`) to test for a field instead of relying on that.
//!
//! Cost: the payload is parsed only when a filter refers to something other
//! than the routing fields, and at most once per event however many filters
//! read it ([`Scope`] holds the parse).

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use skor_sink_api::Op;
use tracing::{debug, warn};

/// The variables that come from the routing fields, not from the payload.
const ROUTING_VARIABLES: [&str; 4] = ["op", "table", "schema", "channel"];

/// How often one filter may log an evaluation error at warn level.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// A parsed filter expression; cloning shares the parse and the counters.
#[derive(Clone)]
pub struct Filter {
    inner: Arc<Inner>,
}

struct Inner {
    source: String,
    program: Program,
    /// Whether the expression names anything but the routing fields.
    needs_payload: bool,
    /// Evaluations that failed (and so did not match).
    errors: AtomicU64,
    /// Milliseconds after [`epoch`] of the last warn line, plus one; 0: none.
    last_warned: AtomicU64,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.inner.source).finish()
    }
}

/// An expression that does not parse: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// 1-based line in the expression.
    pub line: usize,
    /// 1-based column (in characters) in that line.
    pub column: usize,
    /// What the parser expected or found.
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid filter expression at line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for FilterError {}

/// Why an evaluation did not give true or false.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// CEL's own error: a missing key or variable, a type mismatch, ...
    Execution(String),
    /// The expression gave a value that is not a boolean.
    NotBoolean(String),
    /// The expression reads the payload and it is not a JSON object.
    Payload(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Execution(message) => f.write_str(message),
            EvalError::NotBoolean(value) => write!(f, "expected true or false, got {value}"),
            EvalError::Payload(message) => write!(f, "the payload is not a JSON object: {message}"),
        }
    }
}

impl std::error::Error for EvalError {}

/// The CEL standard library, built once and shared by every evaluation.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// The process's clock origin for the warn rate limit.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Filter {
    /// Parses `expression`; the error gives the line and column it stopped at.
    pub fn parse(expression: &str) -> Result<Filter, FilterError> {
        if expression.trim().is_empty() {
            return Err(FilterError {
                line: 1,
                column: 1,
                message: "the expression is empty; remove `filter` to take every event".into(),
            });
        }
        let program = Program::compile(expression).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| e.pos);
            FilterError {
                line: usize::try_from(line).unwrap_or(1).max(1),
                column: usize::try_from(column).unwrap_or(1).max(1),
                message: first.map_or_else(|| errors.to_string(), |e| e.msg.clone()),
            }
        })?;
        let references = program.references();
        let needs_payload = references
            .variables()
            .iter()
            .any(|name| !ROUTING_VARIABLES.contains(name));
        Ok(Filter {
            inner: Arc::new(Inner {
                source: expression.to_string(),
                program,
                needs_payload,
                errors: AtomicU64::new(0),
                last_warned: AtomicU64::new(0),
            }),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether evaluating needs the payload parsed (the expression names
    /// more than `op`, `table`, `schema` and `channel`).
    pub fn needs_payload(&self) -> bool {
        self.inner.needs_payload
    }

    /// How many evaluations failed, and so did not match.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Whether an event matches; an evaluation error is no match (counted,
    /// logged). `payload` is only parsed if the expression reads it.
    pub fn matches(
        &self,
        channel: &str,
        schema: &str,
        table: &str,
        op: Op,
        payload: &[u8],
    ) -> bool {
        self.matches_in(&Scope::new(channel, schema, table, op, payload))
    }

    /// [`Filter::matches`] against a [`Scope`] that several filters share,
    /// so the payload is parsed once for all of them.
    pub fn matches_in(&self, scope: &Scope<'_>) -> bool {
        match self.evaluate(scope) {
            Ok(matched) => matched,
            Err(error) => {
                self.note(scope, &error);
                false
            }
        }
    }

    /// The expression's result for an event, or why there is none.
    pub fn evaluate(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        let context = if self.inner.needs_payload {
            scope.full()?
        } else {
            scope.base()
        };
        match self.inner.program.execute(context) {
            Ok(Value::Bool(matched)) => Ok(matched),
            Ok(other) => Err(EvalError::NotBoolean(format!("{other:?}"))),
            Err(error) => Err(EvalError::Execution(error.to_string())),
        }
    }

    /// Counts a failed evaluation and logs it: always at debug level, at warn
    /// level at most once per [`WARN_INTERVAL`].
    fn note(&self, scope: &Scope<'_>, error: &EvalError) {
        let errors = self.inner.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let filter = self.source();
        let (schema, table, op) = (scope.schema, scope.table, scope.op);
        debug!(filter, schema, table, %op, %error, "filter could not be evaluated: no match");
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.inner.last_warned.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .inner
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(filter, schema, table, %op, %error, errors,
                  "filter could not be evaluated, so the event does not match this route \
                   (use has() for fields that may be missing; logged at most once a minute)");
        }
    }
}

impl<'de> serde::Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Filter::parse(&text).map_err(de::Error::custom)
    }
}

/// One event as filters see it. The routing fields are bound on first use;
/// the payload is parsed on first use by a filter that reads it, once for
/// every filter evaluated against this scope.
pub struct Scope<'a> {
    channel: &'a str,
    schema: &'a str,
    table: &'a str,
    op: Op,
    payload: &'a [u8],
    base: OnceCell<Context<'static, 'static>>,
    full: OnceCell<Result<Context<'static, 'static>, EvalError>>,
}

impl<'a> Scope<'a> {
    /// An event's fields and payload; nothing is parsed yet.
    pub fn new(
        channel: &'a str,
        schema: &'a str,
        table: &'a str,
        op: Op,
        payload: &'a [u8],
    ) -> Self {
        Self {
            channel,
            schema,
            table,
            op,
            payload,
            base: OnceCell::new(),
            full: OnceCell::new(),
        }
    }

    /// Whether the payload has been parsed (for tests and benchmarks).
    pub fn payload_parsed(&self) -> bool {
        self.full.get().is_some()
    }

    fn base(&self) -> &Context<'static, 'static> {
        self.base.get_or_init(|| {
            let mut context = Context::with_env(Arc::clone(env()));
            self.bind_routing(&mut context);
            context
        })
    }

    fn full(&self) -> Result<&Context<'static, 'static>, EvalError> {
        self.full
            .get_or_init(|| {
                let mut context = Context::with_env(Arc::clone(env()));
                let parsed: Json = serde_json::from_slice(self.payload)
                    .map_err(|e| EvalError::Payload(e.to_string()))?;
                let Value::Map(map) = parsed.0 else {
                    return Err(EvalError::Payload("not an object".into()));
                };
                context.add_variable_from_value("data", Value::Null);
                context.add_variable_from_value("old", Value::Null);
                for (key, value) in map.map.iter() {
                    if let Key::String(name) = key {
                        context.add_variable_from_value(name.as_str(), value.clone());
                    }
                }
                self.bind_routing(&mut context);
                Ok(context)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn bind_routing(&self, context: &mut Context<'static, 'static>) {
        context.add_variable_from_value("op", self.op.as_str());
        context.add_variable_from_value("table", self.table);
        context.add_variable_from_value("schema", self.schema);
        context.add_variable_from_value("channel", self.channel);
    }
}

/// A JSON value read straight into a CEL value: numbers that fit are `int`
/// (`uint` above `i64::MAX`), others `double`.
struct Json(Value);

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(Arc::new(v)))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Json(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(Arc::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = HashMap::with_capacity(access.size_hint().unwrap_or(0));
        while let Some((key, Json(value))) = access.next_entry::<String, Json>()? {
            map.insert(Key::String(Arc::new(key)), value);
        }
        Ok(Value::Map(Map { map: Arc::new(map) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAID: &[u8] =
        br#"{"table":"orders","schema":"public","op":"UPDATE","data":{"id":1,"status":"paid","total":12.5,"tags":["a","b"]},"old":{"id":1,"status":"new"}}"#;
    const INSERT: &[u8] =
        br#"{"table":"orders","schema":"public","op":"INSERT","data":{"id":2,"status":"new","total":3}}"#;
    const NO_STATUS: &[u8] =
        br#"{"table":"items","schema":"public","op":"INSERT","data":{"id":3}}"#;

    fn eval(expression: &str, op: Op, payload: &[u8]) -> Result<bool, EvalError> {
        let filter = Filter::parse(expression).unwrap();
        filter.evaluate(&Scope::new("skor", "public", "orders", op, payload))
    }

    fn matches(expression: &str, op: Op, payload: &[u8]) -> bool {
        Filter::parse(expression)
            .unwrap()
            .matches("skor", "public", "orders", op, payload)
    }

    #[test]
    fn routing_fields_and_data() {
        assert!(matches(
            r#"op == "UPDATE" && data.status == "paid""#,
            Op::Update,
            PAID
        ));
        assert!(!matches(
            r#"op == "UPDATE" && data.status == "paid""#,
            Op::Insert,
            INSERT
        ));
        assert!(matches(
            r#"table == "orders" && schema == "public""#,
            Op::Insert,
            INSERT
        ));
        assert!(matches(r#"channel == "skor""#, Op::Insert, INSERT));
        assert!(matches(r#"op in ["INSERT", "READ"]"#, Op::Read, INSERT));
        assert!(matches(
            "data.id == 2 && data.total > 2",
            Op::Insert,
            INSERT
        ));
        assert!(matches("data.total > 12.0", Op::Update, PAID));
        assert!(matches(
            r#""b" in data.tags && size(data.tags) == 2"#,
            Op::Update,
            PAID
        ));
        assert!(matches(r#"data.status.startsWith("pa")"#, Op::Update, PAID));
        assert!(matches(
            r#"data.status.matches("^p.*d$")"#,
            Op::Update,
            PAID
        ));
    }

    #[test]
    fn old_row() {
        assert!(matches(r#"old.status != data.status"#, Op::Update, PAID));
        assert!(matches(
            r#"old != null && old.status == "new""#,
            Op::Update,
            PAID
        ));
        // No old row on an INSERT: `old` is null, so guard it or get no match.
        assert!(matches("old == null", Op::Insert, INSERT));
        assert!(!matches(
            r#"old != null && old.status == "new""#,
            Op::Insert,
            INSERT
        ));
        assert!(eval(r#"old.status == "new""#, Op::Insert, INSERT).is_err());
        assert!(!matches(r#"old.status == "new""#, Op::Insert, INSERT));
    }

    #[test]
    fn missing_fields_are_errors_that_do_not_match() {
        let filter = Filter::parse(r#"data.status == "paid""#).unwrap();
        assert!(matches!(
            filter.evaluate(&Scope::new(
                "skor",
                "public",
                "items",
                Op::Insert,
                NO_STATUS
            )),
            Err(EvalError::Execution(_))
        ));
        assert!(!filter.matches("skor", "public", "items", Op::Insert, NO_STATUS));
        assert!(!filter.matches("skor", "public", "items", Op::Insert, NO_STATUS));
        assert_eq!(filter.errors(), 2);
        // has() tests for the field instead.
        assert!(!matches(
            r#"has(data.status) && data.status == "paid""#,
            Op::Insert,
            NO_STATUS
        ));
        assert!(matches(
            r#"!has(data.status) || data.status == "paid""#,
            Op::Insert,
            NO_STATUS
        ));
        assert_eq!(eval("has(data.status)", Op::Insert, NO_STATUS), Ok(false));
        assert_eq!(eval("has(data.status)", Op::Insert, INSERT), Ok(true));
        // An unknown variable, a non-boolean result: no match either.
        assert!(!matches("nothing == 1", Op::Insert, INSERT));
        assert!(matches!(
            eval("data.status", Op::Insert, INSERT),
            Err(EvalError::NotBoolean(_))
        ));
        assert!(!matches("data.status", Op::Insert, INSERT));
    }

    #[test]
    fn payloads_that_are_not_objects_do_not_match() {
        assert!(matches!(
            eval("data.id == 1", Op::Insert, b"not json"),
            Err(EvalError::Payload(_))
        ));
        assert!(matches!(
            eval("data.id == 1", Op::Insert, b"[1]"),
            Err(EvalError::Payload(_))
        ));
        // A filter on the routing fields alone never reads the payload.
        assert_eq!(eval(r#"op == "INSERT""#, Op::Insert, b"not json"), Ok(true));
    }

    #[test]
    fn other_top_level_fields_are_variables() {
        let payload =
            br#"{"table":"t","schema":"s","op":"INSERT","data":{},"xid":42,"op_extra":"x"}"#;
        assert!(matches("xid == 42", Op::Insert, payload));
        // The routing fields come from the event, not from the payload.
        assert!(matches(r#"table == "orders""#, Op::Insert, payload));
    }

    #[test]
    fn the_payload_is_parsed_once_and_only_when_read() {
        let by_op = Filter::parse(r#"op == "UPDATE""#).unwrap();
        let by_status = Filter::parse(r#"data.status == "paid""#).unwrap();
        let by_old = Filter::parse(r#"old.status == "new""#).unwrap();
        assert!(!by_op.needs_payload());
        assert!(by_status.needs_payload());
        let scope = Scope::new("skor", "public", "orders", Op::Update, PAID);
        assert!(by_op.matches_in(&scope));
        assert!(!scope.payload_parsed());
        assert!(by_status.matches_in(&scope));
        assert!(scope.payload_parsed());
        assert!(by_old.matches_in(&scope));
    }

    #[test]
    fn parse_errors_give_the_position() {
        let error = Filter::parse(r#"op == "UPDATE" &&& data.x"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid filter expression at line 1, column 18: Syntax error: token recognition error at: '& '"
        );
        let error = Filter::parse("data.status ==").unwrap_err();
        assert_eq!((error.line, error.column), (1, 15), "{error}");
        let error = Filter::parse("op == \"UPDATE\" &&\n  (data.x").unwrap_err();
        assert_eq!((error.line, error.column), (2, 10), "{error}");
        let error = Filter::parse("  ").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid filter expression at line 1, column 1: the expression is empty; remove `filter` to take every event"
        );
    }

    #[test]
    fn filters_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Filter>();
    }
}
