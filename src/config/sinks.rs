//! `[sink.NAME]` tables: `type` picks the sink, the shared delivery keys go
//! to the worker, the rest to the sink type's own config.

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::validate::Invalid;
use super::{Config, ConfiguredSink, DeliveryConfig};
use crate::sinks::{ParseError, SinkType, SINK_TYPES};

/// The keys of [`DeliveryConfig`], which every sink type accepts.
const DELIVERY_KEYS: [&str; 9] = [
    "retries",
    "backoff_ms",
    "backoff",
    "max_backoff_ms",
    "queue_capacity",
    "when_full",
    "max_in_flight",
    "max_outage_ms",
    "format",
];

/// The sink types this build knows, for error messages.
fn types() -> String {
    SINK_TYPES
        .iter()
        .filter(|t| t.parse.is_some())
        .map(|t| format!("\"{}\"", t.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    /// Builds `sinks` from the raw `[sink.NAME]` tables.
    pub(super) fn parse_sinks(&mut self) -> Result<(), Invalid> {
        for (name, table) in std::mem::take(&mut self.raw_sinks) {
            let sink = parse_sink(&name, table)?;
            self.sinks.insert(name, sink);
        }
        Ok(())
    }
}

fn parse_sink(name: &str, mut table: Table) -> Result<ConfiguredSink, Invalid> {
    let at = |key: &str, message: String| Invalid {
        path: ["sink", name, key]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect(),
        message,
    };
    let kind = match table.remove("type") {
        Some(Value::String(kind)) => kind,
        Some(other) => {
            return Err(at(
                "type",
                format!("expected one of {}, got {other}", types()),
            ))
        }
        None => return Err(at("", format!("missing key `type`: one of {}", types()))),
    };
    let (delivery, own): (Table, Table) = table
        .into_iter()
        .partition(|(key, _)| DELIVERY_KEYS.contains(&key.as_str()));
    let delivery: DeliveryConfig = typed(name, delivery)?;
    let Some(sink_type) = SinkType::named(&kind) else {
        return Err(at(
            "type",
            format!("unknown sink type \"{kind}\"; expected one of {}", types()),
        ));
    };
    let Some(parse) = sink_type.parse else {
        let feature = sink_type.feature.unwrap_or(sink_type.name);
        return Err(at(
            "type",
            format!(
                "this skor was built without the `{feature}` sink; \
                 build it with `cargo build --release --features {feature}`"
            ),
        ));
    };
    let options = parse(own).map_err(|error| located(name, error))?;
    Ok(ConfiguredSink { delivery, options })
}

/// Deserializes part of a sink's table, naming the key that is wrong.
fn typed<T: DeserializeOwned>(name: &str, table: Table) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|error| located(name, error))
}

/// A sink table's deserialization error as an error at its full key.
fn located(name: &str, error: ParseError) -> Invalid {
    let mut path = vec!["sink".to_string(), name.to_string()];
    let inner = error.path().to_string();
    let full = error.into_inner().to_string();
    // toml appends "in `key`"; the path already says it.
    let mut message = full.lines().next().unwrap_or_default().to_string();
    let unknown = unknown_field(&message);
    if inner != "." {
        path.extend(inner.split('.').map(str::to_string));
    } else if let Some(field) = &unknown {
        path.push(field.clone());
    }
    if unknown.is_some() {
        message.push_str(&format!(
            ", or one of the keys every sink accepts: `{}`",
            DELIVERY_KEYS.join("`, `")
        ));
    }
    Invalid { path, message }
}

/// The key named by serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}
