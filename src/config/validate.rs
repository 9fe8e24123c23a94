//! Checks across keys that serde cannot make: names that must exist, values
//! that must agree, identifiers PostgreSQL would reject.

use std::collections::HashSet;
use std::fmt;

use super::filter::Filter;
use super::{Config, Mode, RouteConfig, TableConfig};
use skor_sink_api::Op;
use skor_sink_kit::MAX_DELAY_MS;
use wildmatch::WildMatch;

/// A validation failure: the key path it is about, and what is wrong.
#[derive(Debug)]
pub struct Invalid {
    /// Key path, one segment per key or `[index]`.
    pub path: Vec<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

fn invalid(path: &[&str], message: impl Into<String>) -> Invalid {
    Invalid {
        path: path.iter().map(|s| s.to_string()).collect(),
        message: message.into(),
    }
}

/// PostgreSQL truncates identifiers and channel names beyond this length.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// A table's schema and name, unquoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema; `public` when the config gave a bare name.
    pub schema: String,
    /// The table itself.
    pub name: String,
}

/// A route's `schema.table` pattern; `*` matches any run of characters.
#[derive(Debug)]
pub struct TablePattern {
    schema: WildMatch,
    table: WildMatch,
}

impl TablePattern {
    /// The pattern `text` (validation has already refused one that does not
    /// parse: such a pattern matches nothing).
    pub fn new(text: &str) -> Self {
        if text == "*" {
            return Self {
                schema: WildMatch::new("*"),
                table: WildMatch::new("*"),
            };
        }
        let name = TableName::parse(text).unwrap_or(TableName {
            schema: String::new(),
            name: String::new(),
        });
        Self {
            schema: WildMatch::new(&name.schema),
            table: WildMatch::new(&name.name),
        }
    }

    /// Whether `schema.table` is one of the tables the pattern names.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }
}

impl TableName {
    /// Parses `schema.table` or a bare `table` (in `public`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        for part in [schema, name] {
            if part.is_empty() || part.len() > MAX_IDENTIFIER_BYTES {
                return Err(format!(
                    "expected `schema.table` or `table`, each part 1 to 63 bytes, got \"{text}\""
                ));
            }
        }
        Ok(Self {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl Config {
    /// The channel the triggers of `table` notify on.
    pub fn table_channel<'a>(&'a self, table: &'a TableConfig) -> &'a str {
        table
            .channel
            .as_deref()
            .unwrap_or_else(|| self.source.channels[0].as_str())
    }

    /// Checks a config built from the original command line.
    pub fn validate_legacy(&self) -> Result<(), String> {
        self.validate().map_err(|invalid| invalid.message)
    }

    pub(super) fn validate(&self) -> Result<(), Invalid> {
        self.validate_source()?;
        self.validate_tables()?;
        self.validate_sinks()?;
        self.validate_routes()?;
        self.validate_durable()?;
        self.validate_admin()
    }

    fn validate_admin(&self) -> Result<(), Invalid> {
        match &self.admin {
            Some(admin) if admin.stuck_after_ms == 0 => {
                Err(invalid(&["admin", "stuck_after_ms"], "expected at least 1"))
            }
            _ => Ok(()),
        }
    }

    fn validate_durable(&self) -> Result<(), Invalid> {
        let durable = &self.durable;
        if durable.claim_window == 0 {
            return Err(invalid(&["durable", "claim_window"], "expected at least 1"));
        }
        if durable.poll_interval_ms == 0 {
            return Err(invalid(
                &["durable", "poll_interval_ms"],
                "expected at least 1",
            ));
        }
        if !(1_000..=3_600_000).contains(&durable.lease_ttl_ms) {
            return Err(invalid(
                &["durable", "lease_ttl_ms"],
                "expected 1000 to 3600000 (one second to one hour)",
            ));
        }
        if durable.max_claim_bytes == 0 {
            return Err(invalid(
                &["durable", "max_claim_bytes"],
                "expected at least 1",
            ));
        }
        if let Some(field) = &durable.id_field {
            if field.is_empty() {
                return Err(invalid(
                    &["durable", "id_field"],
                    "expected a field name, or remove the key to leave payloads unchanged",
                ));
            }
        }
        Ok(())
    }

    fn validate_source(&self) -> Result<(), Invalid> {
        let source = &self.source;
        crate::postgres::Postgres::from_dsn(source.dsn.expose())
            .map_err(|e| invalid(&["source", "dsn"], e.to_string()))?;
        if source.channels.is_empty() {
            return Err(invalid(
                &["source", "channels"],
                "expected at least one channel",
            ));
        }
        // PostgreSQL's text values end at 1 GB; below 8000 bytes nothing is
        // oversized.
        if !(8_000..=1 << 30).contains(&source.max_payload_bytes) {
            return Err(invalid(
                &["source", "max_payload_bytes"],
                "expected 8000 to 1073741824 bytes",
            ));
        }
        let mut seen = HashSet::new();
        for (i, channel) in source.channels.iter().enumerate() {
            let index = format!("[{i}]");
            if channel.is_empty() || channel.len() > MAX_IDENTIFIER_BYTES {
                return Err(invalid(
                    &["source", "channels", &index],
                    "a channel name is 1 to 63 bytes long",
                ));
            }
            if !seen.insert(channel) {
                return Err(invalid(
                    &["source", "channels", &index],
                    format!("channel \"{channel}\" is listed twice"),
                ));
            }
        }
        for (key, value) in [
            ("heartbeat_interval_ms", source.heartbeat_interval_ms),
            ("query_timeout_ms", source.query_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(
                    &["source", key],
                    "expected a number of milliseconds above 0",
                ));
            }
        }
        if !(source.slot.len() <= MAX_IDENTIFIER_BYTES
            && !source.slot.is_empty()
            && source
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            return Err(invalid(
                &["source", "slot"],
                format!(
                    "a replication slot name is 1 to 63 lower-case letters, digits and underscores, got \"{}\"",
                    source.slot
                ),
            ));
        }
        if source.publication.is_empty() || source.publication.len() > MAX_IDENTIFIER_BYTES {
            return Err(invalid(
                &["source", "publication"],
                "a publication name is 1 to 63 bytes long",
            ));
        }
        if !(10..=60_000).contains(&source.wal_status_interval_ms) {
            return Err(invalid(
                &["source", "wal_status_interval_ms"],
                "expected 10 to 60000 milliseconds",
            ));
        }
        let heartbeat = source.wal_heartbeat_interval_ms;
        if heartbeat != 0 && !(100..=86_400_000).contains(&heartbeat) {
            return Err(invalid(
                &["source", "wal_heartbeat_interval_ms"],
                format!("expected 0 (off) or 100 to 86400000 milliseconds, got {heartbeat}"),
            ));
        }
        let usage = source.shed_notify_queue_usage;
        if !(usage > 0.0 && usage <= 1.0) {
            return Err(invalid(
                &["source", "shed_notify_queue_usage"],
                format!("expected a fraction above 0 and at most 1, got {usage}"),
            ));
        }
        Ok(())
    }

    fn validate_tables(&self) -> Result<(), Invalid> {
        let mut seen = HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let index = format!("[{i}]");
            let at = |key: &str, message: String| invalid(&["table", &index, key], message);
            if table.name.contains('*') {
                return Err(at(
                    "name",
                    "a captured table is named exactly; `*` is for routes".into(),
                ));
            }
            let name = TableName::parse(&table.name).map_err(|m| at("name", m))?;
            if !seen.insert(name.clone()) {
                return Err(at("name", format!("table {name} is configured twice")));
            }
            check_ops(&table.ops).map_err(|m| at("ops", m))?;
            if table.ops.contains(&Op::Read) {
                return Err(at(
                    "ops",
                    "READ is not captured by a trigger or the WAL: `skor backfill` sends a table's rows as READ events"
                        .into(),
                ));
            }
            if let Some(key) = &table.key {
                check_key(key, table).map_err(|m| at("key", m))?;
            }
            if self.table_mode(table) == Mode::Wal && table.unique_payloads {
                return Err(at(
                    "unique_payloads",
                    "wal mode delivers every change of a transaction and adds no \"skor_seq\"; remove the key".into(),
                ));
            }
            check_when(self.table_mode(table), table).map_err(|(k, m)| at(&k, m))?;
            check_metadata(self.table_mode(table), &table.metadata)
                .map_err(|m| at("metadata", m))?;
            if self.table_mode(table) != Mode::Wal && table.replica_identity.is_some() {
                return Err(at(
                    "replica_identity",
                    "only wal mode reads the replica identity; set mode = \"wal\" or remove the key"
                        .into(),
                ));
            }
            let channel = self.table_channel(table);
            if !self.source.channels.iter().any(|c| c == channel) {
                return Err(at(
                    "channel",
                    format!(
                        "channel \"{channel}\" is not in source.channels {:?}, so skor would not hear these events",
                        self.source.channels
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_sinks(&self) -> Result<(), Invalid> {
        for (name, sink) in &self.sinks {
            check_delivery(&sink.delivery)
                .map_err(|(key, message)| invalid(&["sink", name.as_str(), key], message))?;
            if let Some(error) = sink.options.check().into_iter().next() {
                let mut path = vec!["sink", name.as_str()];
                path.extend(error.key.iter().map(String::as_str));
                return Err(invalid(&path, error.message));
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), Invalid> {
        for (i, route) in self.routes.iter().enumerate() {
            let index = format!("[{i}]");
            let at = |key: &str, message: String| invalid(&["route", &index, key], message);
            if route.sinks.is_empty() {
                return Err(at("sinks", "expected at least one sink name".into()));
            }
            for (j, sink) in route.sinks.iter().enumerate() {
                if !self.sinks.contains_key(sink) {
                    let known = if self.sinks.is_empty() {
                        "no [sink.NAME] table is defined".to_string()
                    } else {
                        format!("the sinks are {:?}", self.sinks.keys().collect::<Vec<_>>())
                    };
                    return Err(invalid(
                        &["route", &index, "sinks", &format!("[{j}]")],
                        format!("no sink is named \"{sink}\": {known}"),
                    ));
                }
            }
            if let Some(channel) = &route.channel {
                if !self.source.channels.contains(channel) {
                    return Err(at(
                        "channel",
                        format!(
                            "channel \"{channel}\" is not in source.channels {:?}, so this route would never match",
                            self.source.channels
                        ),
                    ));
                }
            }
            if route.tables.is_empty() {
                return Err(at(
                    "tables",
                    "expected at least one pattern; \"*\" matches all".into(),
                ));
            }
            for pattern in &route.tables {
                if pattern != "*" {
                    TableName::parse(pattern).map_err(|m| at("tables", m))?;
                }
            }
            check_ops(&route.ops).map_err(|m| at("ops", m))?;
            if let Some(filter) = &route.filter {
                self.check_changed(route, filter)
                    .map_err(|m| at("filter", m))?;
            }
        }
        Ok(())
    }

    /// `changed()` compares the old row with the new one, so every captured
    /// table whose UPDATEs the route can see must send the old row; without
    /// it the filter could never match, which a user would only learn from
    /// events that never arrive.
    fn check_changed(&self, route: &RouteConfig, filter: &Filter) -> Result<(), String> {
        if !filter.reads_changes() || !(route.ops.is_empty() || route.ops.contains(&Op::Update)) {
            return Ok(());
        }
        let patterns: Vec<TablePattern> =
            route.tables.iter().map(|t| TablePattern::new(t)).collect();
        for table in &self.tables {
            let Ok(name) = TableName::parse(&table.name) else {
                continue;
            };
            let seen = patterns.iter().any(|p| p.matches(&name.schema, &name.name));
            if !seen || table.old || !table.ops.contains(&Op::Update) {
                continue;
            }
            let wal = if self.table_mode(table) == Mode::Wal {
                " (wal mode sends it with REPLICA IDENTITY FULL: also set `replica_identity = \"full\"`)"
            } else {
                ""
            };
            return Err(format!(
                "changed() compares the old row with the new one, and table {}.{} does not send \
                 its old row: set `old = true` on its [[table]]{wal}, or narrow this route's `tables`",
                name.schema, name.name
            ));
        }
        Ok(())
    }
}

/// The most deliveries a sink may have in flight: each lane is a task and
/// each pipelined confirmation holds its event in memory.
const MAX_IN_FLIGHT: usize = 100_000;

/// The most events a sink's queue may hold.
const MAX_QUEUE_CAPACITY: usize = 10_000_000;

/// A value in `min..=max`, or the message saying what was expected.
fn within<T: PartialOrd + fmt::Display>(
    value: T,
    min: T,
    max: T,
    unit: &str,
) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("expected {min} to {max}{unit}, got {value}"));
    }
    Ok(())
}

/// A milliseconds key that must be positive and at most a day.
fn delay_ms(key: &'static str, value: u64) -> Result<(), (&'static str, String)> {
    within(value, 1, MAX_DELAY_MS, " ms (a day)").map_err(|m| (key, m))
}

/// Bounds of the delivery keys every sink accepts, with the key at fault.
fn check_delivery(delivery: &super::DeliveryConfig) -> Result<(), (&'static str, String)> {
    // Also the first wait of an outage: 0 would retry in a busy loop.
    delay_ms("backoff_ms", delivery.backoff_ms)?;
    delay_ms("max_backoff_ms", delivery.max_backoff_ms)?;
    if delivery.max_backoff_ms < delivery.backoff_ms {
        return Err((
            "max_backoff_ms",
            format!(
                "expected at least backoff_ms ({}), got {}",
                delivery.backoff_ms, delivery.max_backoff_ms
            ),
        ));
    }
    within(delivery.queue_capacity, 1, MAX_QUEUE_CAPACITY, " events")
        .map_err(|m| ("queue_capacity", m))?;
    if let Some(in_flight) = delivery.max_in_flight {
        within(in_flight, 1, MAX_IN_FLIGHT, "").map_err(|m| ("max_in_flight", m))?;
    }
    if delivery.max_outage_ms == Some(0) {
        return Err((
            "max_outage_ms",
            "expected at least 1, or remove the key to wait out outages without limit".into(),
        ));
    }
    Ok(())
}

/// A key must name columns that every captured operation publishes: skor
/// reads the key out of the payload in notify mode, and consumers need it
/// in every event of a row in both modes.
fn check_key(key: &[String], table: &TableConfig) -> Result<(), String> {
    if key.is_empty() {
        return Err("list at least one column, or remove `key` to use the primary key".into());
    }
    for op in &table.ops {
        let Some(published) = table.columns.for_op(*op) else {
            continue;
        };
        if let Some(missing) = key.iter().find(|k| !published.contains(k)) {
            return Err(format!(
                "key column \"{missing}\" is not in the columns published on {op}, so its events would have no key"
            ));
        }
    }
    Ok(())
}

/// A condition per captured operation; in wal mode one for all (a
/// publication has one row filter per table), naming columns bare.
fn check_when(mode: Mode, table: &TableConfig) -> Result<(), (String, String)> {
    let when = &table.when;
    if !when.is_set() {
        return Ok(());
    }
    for op in Op::ALL {
        if when.for_op(op).is_some() && !when.shared && !table.ops.contains(&op) {
            return Err((
                when.key(op),
                format!("{op} is not in this table's `ops`, so no change of it is captured; remove the key"),
            ));
        }
    }
    if mode != Mode::Wal {
        return Ok(());
    }
    let first = when.for_op(table.ops[0]);
    if table.ops.iter().any(|&op| when.for_op(op) != first) {
        return Err((
            "when".into(),
            "wal mode filters with the publication's row filter, one per table for every \
             operation: give `when` as one string (or the same condition for every captured operation)"
                .into(),
        ));
    }
    if let Some(word) = first.and_then(super::row_reference) {
        return Err((
            "when".into(),
            format!(
                "wal mode filters with the publication's row filter, which sees one version of the row \
                 and names its columns bare (status = 'paid'), found `{word}.`: remove it; \
                 an UPDATE is matched on the old and the new row, see docs/modes.md"
            ),
        ));
    }
    Ok(())
}

/// Each field once, and only where the mode knows its value.
fn check_metadata(mode: Mode, fields: &[super::Metadata]) -> Result<(), String> {
    use super::Metadata;
    let unique: HashSet<_> = fields.iter().collect();
    if unique.len() != fields.len() {
        return Err("a field is listed twice".into());
    }
    for &field in fields {
        let why = match (mode, field) {
            (Mode::Notify, Metadata::EventId) => {
                "notify mode stores no event, so an event has no id; use durable or wal mode, \
                 or txid to tell transactions apart"
            }
            (Mode::Notify | Mode::Durable, Metadata::CommitTime) => {
                "a trigger runs before its transaction commits, so notify and durable mode cannot \
                 know the commit time; use \"tx_time\" (the transaction's start, now()), or wal mode"
            }
            (Mode::Notify | Mode::Durable, Metadata::Lsn) => {
                "a trigger runs before the commit has a WAL position; \"lsn\" is wal mode's"
            }
            (Mode::Wal, Metadata::TxTime) => {
                "the WAL carries a transaction's commit time, not its start; use \"commit_time\""
            }
            _ => continue,
        };
        return Err(format!("\"{}\": {why}", field.as_str()));
    }
    Ok(())
}

fn check_ops(ops: &[Op]) -> Result<(), String> {
    if ops.is_empty() {
        return Err("expected at least one of \"INSERT\", \"UPDATE\", \"DELETE\"".into());
    }
    let unique: HashSet<_> = ops.iter().collect();
    if unique.len() != ops.len() {
        return Err("an operation is listed twice".into());
    }
    Ok(())
}
