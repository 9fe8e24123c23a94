//! A short description of a config's source, sinks and routes for the
//! start-up log line and `skor check`: passwords and secrets never appear.

use super::Config;

/// What a config connects to and where it sends events, redacted.
#[derive(Debug, PartialEq, Eq)]
pub struct Outline {
    /// `user@host:port/db`, the channels, and the tables per mode.
    pub source: String,
    /// Each sink: `name: type target`.
    pub sinks: String,
    /// Each route: `channel table-patterns ops -> sinks`.
    pub routes: String,
}

impl Config {
    /// The config in three lines' worth of text, fit for a log.
    pub fn outline(&self, database: &str) -> Outline {
        let count = |mode| {
            self.tables
                .iter()
                .filter(|t| self.table_mode(t) == mode)
                .count()
        };
        let durable = count(super::Mode::Durable);
        let mut source = format!(
            "{database} channels [{}], tables: {} in notify mode, {durable} in durable mode",
            self.notify_channels().join(", "),
            count(super::Mode::Notify),
        );
        if self.uses_wal() {
            source.push_str(&format!(
                ", {} in wal mode (slot {}, publication {})",
                count(super::Mode::Wal),
                self.source.slot,
                self.source.publication
            ));
        }
        let sinks = if self.sinks.is_empty() {
            "stdout (none configured)".to_string()
        } else {
            self.sinks
                .iter()
                .map(|(name, sink)| {
                    let format = sink.delivery.format;
                    // The default stays unsaid, so the usual outline is short.
                    if format == skor_sink_api::Format::Skor {
                        format!("{name}: {}", sink.options.outline())
                    } else {
                        format!("{name}: {} (format {format})", sink.options.outline())
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let routes = if self.routes.is_empty() {
            "every event to every sink".to_string()
        } else {
            self.routes
                .iter()
                .map(|route| {
                    let ops: Vec<&str> = route.ops.iter().map(|op| op.as_str()).collect();
                    let filter = route
                        .filter
                        .as_ref()
                        .map(|f| format!(" if {}", f.source()))
                        .unwrap_or_default();
                    format!(
                        "{} [{}] {}{filter} -> {}",
                        route.channel.as_deref().unwrap_or("any channel"),
                        route.tables.join(", "),
                        ops.join(","),
                        route.sinks.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Outline {
            source,
            sinks,
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn names_every_sink_and_route_without_secrets() {
        let config = Config::from_toml(
            r#"
[source]
dsn = "postgres://app:pg-s3cret@db/app"

[[table]]
name = "orders"

[sink.hook]
type = "webhook"
url = "https://user:url-s3cret@example.com/hook"
headers = { Authorization = "Bearer header-s3cret" }
secret = "whsec-raw-s3cret-of-24-bytes-or-more"

[sink.out]
type = "stdout"

[[route]]
tables = ["public.*"]
ops = ["INSERT"]
sinks = ["hook", "out"]

[[route]]
filter = 'data.status == "paid"'
sinks = ["out"]
"#,
            "test.toml",
        )
        .unwrap();
        let outline = config.outline("app@db:5432/app");
        assert_eq!(
            outline.source,
            "app@db:5432/app channels [skor], tables: 1 in notify mode, 0 in durable mode"
        );
        assert_eq!(
            outline.sinks,
            "hook: webhook https://user:<redacted>@example.com/hook (headers Authorization) signed; \
             out: stdout"
        );
        assert_eq!(
            outline.routes,
            "any channel [public.*] INSERT -> hook, out; \
             any channel [*] INSERT,UPDATE,DELETE,READ if data.status == \"paid\" -> out"
        );
        assert!(!format!("{outline:?}").contains("s3cret"));
    }
}
