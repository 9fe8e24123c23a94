//! Names built from an event's fields, such as an AMQP routing key
//! `{schema}.{table}.{op}` or a Kafka topic `pg.{schema}.{table}`.

use skor_sink_api::Event;

/// A field of the event that a template can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Schema,
    Table,
    Op,
    Channel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A string with `{schema}`, `{table}`, `{op}` and `{channel}` placeholders,
/// checked once when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template string is not valid.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{name}` that is not one of the known fields.
    #[error(
        "unknown placeholder `{{{0}}}`: expected {{schema}}, {{table}}, {{op}} or {{channel}}"
    )]
    Unknown(String),
    /// A `{` without its `}`.
    #[error("a `{{` is never closed")]
    Unclosed,
}

impl Template {
    /// Parses a template; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let brace = &rest[at..];
            if brace.starts_with("{{") || brace.starts_with("}}") {
                literal.push_str(&brace[..1]);
                rest = &brace[2..];
                continue;
            }
            if let Some(after) = brace.strip_prefix('}') {
                literal.push('}');
                rest = after;
                continue;
            }
            let end = brace.find('}').ok_or(TemplateError::Unclosed)?;
            let field = match &brace[1..end] {
                "schema" => Field::Schema,
                "table" => Field::Table,
                "op" => Field::Op,
                "channel" => Field::Channel,
                other => return Err(TemplateError::Unknown(other.to_string())),
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(field));
            rest = &brace[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The template filled in with this event's fields.
    pub fn render(&self, event: &Event) -> String {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::Field(Field::Schema) => &event.schema,
                Part::Field(Field::Table) => &event.table,
                Part::Field(Field::Op) => event.op.as_str(),
                Part::Field(Field::Channel) => &event.channel,
            });
        }
        out
    }
}

impl<'de> serde::Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Template::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skor_sink_api::{Bytes, Op};

    fn event() -> Event {
        Event {
            channel: "skor".into(),
            schema: "public".into(),
            table: "orders".into(),
            op: Op::Update,
            payload: Bytes::new(),
            format: skor_sink_api::Format::Skor,
            key: None,
            id: None,
            seq: 0,
        }
    }

    #[test]
    fn fills_in_every_field() {
        let template = Template::parse("pg.{schema}.{table}.{op}@{channel}").unwrap();
        assert_eq!(template.render(&event()), "pg.public.orders.UPDATE@skor");
        assert_eq!(Template::parse("{{x}}").unwrap().render(&event()), "{x}");
        assert_eq!(Template::parse("fixed").unwrap().render(&event()), "fixed");
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(
            Template::parse("{schema}.{tabel}").unwrap_err().to_string(),
            "unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
        );
        assert_eq!(
            Template::parse("a.{schema").unwrap_err().to_string(),
            "a `{` is never closed"
        );
    }
}
