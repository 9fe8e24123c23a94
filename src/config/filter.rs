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
//! `changed("column")` is true on an UPDATE whose old and new values of that
//! column differ, false on any other operation. It reads the old row, so it
//! needs the table's `old = true` (config validation refuses a route whose
//! tables do not send it); an UPDATE that carries no old row anyway (wal mode
//! without REPLICA IDENTITY FULL) is an evaluation error, not a guess.
//!
//! Missing fields: `data.status` on a row without a `status` column, or
//! `old.status` on an INSERT, is an evaluation error, and an evaluation error
//! (as is a result that is not a boolean) counts as "no match": the filter
//! never panics and never stops the daemon. Such errors are counted
//! ([`Filter::errors`], and per route in `skor_route_filter_errors_total`),
//! each one logged at debug level and at most one a
//! minute per filter at warn level. Write `has(data.status)` (or
//! `old != null`) to test for a field instead of relying on that.
//!
//! Cost: the payload is parsed only when a filter refers to something other
//! than the routing fields, and at most once per event however many filters
//! read it ([`Scope`] holds the parse).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cel::common::ast::{CallExpr, Expr, LiteralValue};
use cel::common::types::{
    self as cel_types, CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString,
    CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::parser::Macro;
use cel::{Context, Env, ExecutionError, Program, Value};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use skor_sink_api::Op;
use tracing::{debug, warn};

use crate::counter::Counter;

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
    /// Whether it calls `changed()`, which needs the old row.
    reads_changes: bool,
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

/// The function `changed("column")` calls, after its macro added the
/// variables it reads; a name no expression can spell.
const CHANGED: &str = "__skor_changed";

/// The CEL standard library and `changed()`, built once and shared by every
/// parse and evaluation.
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // A macro rather than a plain function: a function sees only its
        // arguments, and this one must read `op`, `data` and `old`; naming
        // them in the expansion also makes the filter parse the payload.
        env.add_macro(Macro::global("changed", 1, |helper, _target, args| {
            let column = args.pop().expect("the macro is declared with one argument");
            if !matches!(column.expr, Expr::Literal(LiteralValue::String(_))) {
                return Err(helper.new_error(
                    column.id,
                    "changed() takes a column name in quotes, as in changed(\"status\")",
                ));
            }
            let mut variable = |name: &str| helper.next_expr(Expr::Ident(name.to_string()));
            let args = vec![variable("op"), variable("data"), variable("old"), column];
            Ok(Some(helper.next_expr(Expr::Call(CallExpr {
                func_name: CHANGED.to_string(),
                target: None,
                args,
            }))))
        }))
        .expect("changed() is not a standard macro");
        // Any other number of arguments: said at parse time, not per event.
        env.add_macro(Macro::global_var_arg("changed", |helper, _target, args| {
            let id = args.first().map_or(0, |arg| arg.id);
            Err(helper.new_error(
                id,
                "changed() takes one column name, as in changed(\"status\")",
            ))
        }))
        .expect("changed() is not a standard macro");
        env.add_overload(
            CHANGED,
            "skor_changed",
            vec![
                cel_types::STRING_TYPE,
                cel_types::DYN_TYPE,
                cel_types::DYN_TYPE,
                cel_types::STRING_TYPE,
            ],
            changed,
        )
        .expect("changed() is declared once");
        Arc::new(env)
    })
}

/// `changed(column)`, given the event's `op`, `data` and `old`.
fn changed<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let fail = |message: String| ExecutionError::function_error("changed", message);
    let [op, data, old, column]: [CowVal<'b, 'v>; 4] = args
        .try_into()
        .map_err(|_| fail("expects one column name".to_string()))?;
    let column_name = column
        .downcast_ref::<CelString>()
        .map(|c| c.inner().to_string())
        .ok_or_else(|| fail("expects a column name in quotes".to_string()))?;
    if op.downcast_ref::<CelString>().map(|op| op.inner()) != Some("UPDATE") {
        return Ok(CowVal::owned(CelBool::from(false)));
    }
    let value = |row: &CowVal<'b, 'v>, which: &str| -> Result<Box<dyn Val + 'v>, ExecutionError> {
        if row.downcast_ref::<CelNull>().is_some() {
            return Err(fail(format!(
                "this UPDATE carries no {which} row; set `old = true` on the table \
                 (wal mode also needs REPLICA IDENTITY FULL)"
            )));
        }
        let indexer = row
            .as_indexer()
            .ok_or_else(|| fail(format!("the {which} row is not an object")))?;
        indexer
            .get(&*column)
            .map(CowVal::into_owned)
            .map_err(|_| fail(format!("the {which} row has no column \"{column_name}\"")))
    };
    let new = value(&data, "new")?;
    let before = value(&old, "old")?;
    Ok(CowVal::owned(CelBool::from(!new.equals(&*before))))
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
        let program = env().compile(expression).map_err(|errors| {
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
        let reads_changes = references.has_function(CHANGED);
        Ok(Filter {
            inner: Arc::new(Inner {
                source: expression.to_string(),
                program,
                needs_payload,
                reads_changes,
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

    /// Whether the expression calls `changed()`, and so needs the old row.
    pub fn reads_changes(&self) -> bool {
        self.inner.reads_changes
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
        self.matches_in(&Scope::new(channel, schema, table, op, payload), None)
    }

    /// [`Filter::matches`] against a [`Scope`] that several filters share,
    /// so the payload is parsed once for all of them; a failed evaluation
    /// is also counted in `errors` (a route's exported counter).
    pub fn matches_in(&self, scope: &Scope<'_>, errors: Option<&Counter>) -> bool {
        match self.evaluate(scope) {
            Ok(matched) => matched,
            Err(error) => {
                if let Some(errors) = errors {
                    errors.incr();
                }
                self.note(scope, &error);
                false
            }
        }
    }

    /// The expression's result for an event, or why there is none.
    pub fn evaluate(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        if self.inner.needs_payload {
            scope.parse()?;
        }
        let mut context = Context::with_env(Arc::clone(env()));
        context.set_variable_resolver(scope);
        match self.inner.program.execute(&context) {
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

/// One event as filters see it: its routing fields, and its payload, parsed
/// on first use by a filter that reads it, once for every filter evaluated
/// against this scope. Strings are borrowed from the payload where JSON
/// allows (no escapes).
pub struct Scope<'a> {
    channel: &'a str,
    schema: &'a str,
    table: &'a str,
    op: Op,
    payload: &'a [u8],
    fields: OnceLock<Result<Fields<'a>, EvalError>>,
}

/// The payload's top-level fields but the routing ones.
struct Fields<'a> {
    data: Option<Box<dyn Val + 'a>>,
    old: Option<Box<dyn Val + 'a>>,
    others: Vec<(Cow<'a, str>, Box<dyn Val + 'a>)>,
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
            fields: OnceLock::new(),
        }
    }

    /// Whether the payload has been parsed (for tests and benchmarks).
    pub fn payload_parsed(&self) -> bool {
        self.fields.get().is_some()
    }

    /// Parses the payload unless done already.
    fn parse(&self) -> Result<&Fields<'a>, EvalError> {
        self.fields
            .get_or_init(|| {
                let mut deserializer = serde_json::Deserializer::from_slice(self.payload);
                let fields = deserializer
                    .deserialize_map(FieldsVisitor)
                    .and_then(|fields| deserializer.end().map(|()| fields))
                    .map_err(|e| EvalError::Payload(e.to_string()))?;
                Ok(fields)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl VariableResolver for Scope<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let routing = match variable {
            "op" => self.op.as_str(),
            "table" => self.table,
            "schema" => self.schema,
            "channel" => self.channel,
            _ => {
                // Only reached once `parse` succeeded: `evaluate` parses
                // before it runs an expression that names a payload field.
                let fields = self.fields.get()?.as_ref().ok()?;
                let value = match variable {
                    "data" => fields.data.as_deref(),
                    "old" => fields.old.as_deref(),
                    _ => fields
                        .others
                        .iter()
                        .find(|(name, _)| name == variable)
                        .map(|(_, value)| &**value),
                };
                return Some(match value {
                    Some(value) => CowVal::Borrowed(value),
                    None if matches!(variable, "data" | "old") => CowVal::owned(CelNull),
                    None => return None,
                });
            }
        };
        Some(CowVal::owned(CelString::from(routing)))
    }
}

/// Reads the payload's top level, keeping `data`, `old` and the fields that
/// are not routing fields.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            data: None,
            old: None,
            others: Vec::new(),
        };
        while let Some(Name(name)) = access.next_key()? {
            match &*name {
                "data" => fields.data = Some(access.next_value::<Json>()?.0),
                "old" => fields.old = Some(access.next_value::<Json>()?.0),
                // Bound from the event itself.
                "op" | "table" | "schema" | "channel" => {
                    access.next_value::<de::IgnoredAny>()?;
                }
                _ => {
                    let value = access.next_value::<Json>()?.0;
                    fields.others.push((name, value));
                }
            }
        }
        Ok(fields)
    }
}

/// A string borrowed from the input where it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor).map(Name)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A JSON value read straight into a CEL value: numbers that fit are `int`
/// (`uint` above `i64::MAX`), others `double`.
struct Json<'de>(Box<dyn Val + 'de>);

impl<'de> serde::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor).map(Json)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Box<dyn Val + 'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Box::new(CelInt::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(v) => Box::new(CelInt::from(v)),
            Err(_) => Box::new(CelUInt::from(v)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Json(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Box::new(CelList::from(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = HashMap::with_capacity(access.size_hint().unwrap_or(0));
        while let Some(Name(key)) = access.next_key()? {
            let Json(value) = access.next_value()?;
            let key = match key {
                Cow::Borrowed(key) => CelMapKey::from(key),
                Cow::Owned(key) => CelMapKey::from(key),
            };
            map.insert(key, value);
        }
        Ok(Box::new(CelMap::from(map)))
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
    fn changed_compares_a_column_of_the_old_and_new_row() {
        // PAID: status went from "new" to "paid", id stayed 1.
        assert!(matches(r#"changed("status")"#, Op::Update, PAID));
        assert!(!matches(r#"changed("id")"#, Op::Update, PAID));
        assert!(matches(
            r#"changed("status") && data.status == "paid""#,
            Op::Update,
            PAID
        ));
        // Equal values of other types compare equal too.
        const SAME: &[u8] = br#"{"op":"UPDATE","data":{"id":1,"n":2.5,"tags":["a"],"m":{"k":null}},"old":{"id":1,"n":2.5,"tags":["a"],"m":{"k":null}}}"#;
        for column in ["n", "tags", "m"] {
            assert_eq!(
                eval(&format!(r#"changed("{column}")"#), Op::Update, SAME),
                Ok(false)
            );
        }
        const OTHER: &[u8] = br#"{"op":"UPDATE","data":{"id":1,"n":2.5,"tags":["a","b"],"m":{"k":1}},"old":{"id":1,"n":3,"tags":["a"],"m":{"k":null}}}"#;
        for column in ["n", "tags", "m"] {
            assert_eq!(
                eval(&format!(r#"changed("{column}")"#), Op::Update, OTHER),
                Ok(true)
            );
        }
    }

    #[test]
    fn changed_is_false_off_updates_and_an_error_without_the_old_row() {
        assert_eq!(eval(r#"changed("status")"#, Op::Insert, INSERT), Ok(false));
        assert_eq!(eval(r#"changed("status")"#, Op::Delete, INSERT), Ok(false));
        const NO_OLD: &[u8] = br#"{"op":"UPDATE","data":{"id":1,"status":"paid"}}"#;
        let error = eval(r#"changed("status")"#, Op::Update, NO_OLD).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("carries no old row; set `old = true`"),
            "{error}"
        );
        let error = eval(r#"changed("nope")"#, Op::Update, PAID).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(r#"the new row has no column "nope""#),
            "{error}"
        );
        // An error is no match, never a panic.
        assert!(!matches(r#"changed("status")"#, Op::Update, NO_OLD));
    }

    #[test]
    fn changed_takes_a_quoted_column_name() {
        let error = Filter::parse("changed(status)").unwrap_err();
        assert!(
            error
                .message
                .contains("changed() takes a column name in quotes"),
            "{error}"
        );
        for wrong in [r#"changed("a", "b")"#, "changed()"] {
            let error = Filter::parse(wrong).unwrap_err();
            assert!(
                error.message.contains("changed() takes one column name"),
                "{wrong}: {error}"
            );
        }
        assert!(Filter::parse(r#"changed("status")"#)
            .unwrap()
            .reads_changes());
        assert!(Filter::parse(r#"changed("status")"#)
            .unwrap()
            .needs_payload());
        assert!(!Filter::parse("old != null").unwrap().reads_changes());
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
    fn what_the_readme_says() {
        let row = br#"{"data":{"id":7,"total":120.5,"count":3,"status":null,"email":"a@example.com","tags":["x","vip"]}}"#;
        let yes = |e: &str| assert_eq!(eval(e, Op::Insert, row), Ok(true), "{e}");
        let no = |e: &str| assert_eq!(eval(e, Op::Insert, row), Ok(false), "{e}");
        yes("data.total >= 100.0");
        yes("data.count == 3");
        yes(r#"has(data.email) && data.email.endsWith("@example.com")"#);
        yes(r#"data.tags.exists(t, t == "vip")"#);
        yes(r#"table.startsWith("ord")"#);
        // A NULL column is there, and null.
        no(r#"data.status == "paid""#);
        yes("has(data.status)");
        yes("data.status == null");
        yes(r#"!has(data.missing) || data.missing == "paid""#);
        // Numbers compare across int and double.
        yes("data.count == 3.0");
        yes("data.total >= 100");
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
        assert!(by_op.matches_in(&scope, None));
        assert!(!scope.payload_parsed());
        assert!(by_status.matches_in(&scope, None));
        assert!(scope.payload_parsed());
        assert!(by_old.matches_in(&scope, None));
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
    fn errors_are_counted_and_warned_at_most_once_a_minute() {
        let filter = Filter::parse("data.missing == 1").unwrap();
        let shared = filter.clone();
        assert_eq!(filter.inner.last_warned.load(Ordering::Relaxed), 0);
        assert!(!filter.matches("skor", "public", "t", Op::Insert, NO_STATUS));
        let warned = filter.inner.last_warned.load(Ordering::Relaxed);
        assert_ne!(warned, 0);
        for _ in 0..10 {
            assert!(!shared.matches("skor", "public", "t", Op::Insert, NO_STATUS));
        }
        // Clones share the counter and the rate limit.
        assert_eq!(filter.errors(), 11);
        assert_eq!(filter.inner.last_warned.load(Ordering::Relaxed), warned);
    }

    #[test]
    fn filters_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Filter>();
    }
}
