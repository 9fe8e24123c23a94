//! `[sink.NAME]` tables: `type` picks the sink, the shared delivery keys go
//! to the worker, the rest to the sink type's own config.

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::validate::Invalid;
use super::{Config, DeliveryConfig, SinkConfig, SinkKind};

/// The keys of [`DeliveryConfig`], which every sink type accepts.
const DELIVERY_KEYS: [&str; 8] = [
    "retries",
    "backoff_ms",
    "backoff",
    "max_backoff_ms",
    "queue_capacity",
    "when_full",
    "max_in_flight",
    "max_outage_ms",
];

/// The sink types this build knows, for error messages.
fn types() -> String {
    let mut types = vec!["\"webhook\"", "\"stdout\""];
    if cfg!(feature = "amqp") {
        types.push("\"amqp\"");
    }
    if cfg!(feature = "kafka") {
        types.push("\"kafka\"");
    }
    types.join(", ")
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

fn parse_sink(name: &str, mut table: Table) -> Result<SinkConfig, Invalid> {
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
    let kind = match kind.as_str() {
        "webhook" => SinkKind::Webhook(typed(name, own)?),
        "stdout" => SinkKind::Stdout(typed(name, own)?),
        #[cfg(feature = "amqp")]
        "amqp" => SinkKind::Amqp(typed(name, own)?),
        #[cfg(feature = "kafka")]
        "kafka" => SinkKind::Kafka(typed(name, own)?),
        // Reached only for the sinks this build left out.
        #[allow(unreachable_patterns)]
        feature @ ("amqp" | "kafka") => {
            return Err(at(
                "type",
                format!(
                    "this skor was built without the `{feature}` sink; \
                     build it with `cargo build --release --features {feature}`"
                ),
            ))
        }
        other => {
            return Err(at(
                "type",
                format!("unknown sink type \"{other}\"; expected one of {}", types()),
            ))
        }
    };
    Ok(SinkConfig { delivery, kind })
}

/// Deserializes part of a sink's table, naming the key that is wrong.
fn typed<T: DeserializeOwned>(name: &str, table: Table) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|error| {
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
    })
}

/// The key named by serde's "unknown field `x`" message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}
