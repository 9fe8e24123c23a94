//! One table's backfill as SQL: the statement that sends a batch of rows,
//! in key order after the last key sent, through the table's own capture
//! path (NOTIFY, the event log, or the publication), as the triggers'
//! payloads with `"op" : "READ"`.

use std::fmt::Write as _;

use skor_sink_api::Op;
use tokio_postgres::GenericClient;

use crate::capture::{self, BackfillBatch};
use crate::config::{Config, Mode, TableConfig, TableName};
use crate::postgres::catalog;
use crate::postgres::{quote_ident, quote_literal, text_array};

/// How a batch waits for rows a writer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locking {
    /// Fail at once (SQLSTATE 55P03) rather than wait while holding the
    /// batch's other rows: a backfill never waits holding locks, so it
    /// is never half of a deadlock that PostgreSQL could resolve by
    /// failing the application's transaction.
    NoWait,
    /// Wait: only for a batch of one row, which holds nothing else.
    Wait,
}

/// A table to backfill, as the config and the catalog describe it.
#[derive(Debug)]
pub struct Plan {
    /// `schema.table`, as the progress table and the log name it.
    pub name: String,
    mode: Mode,
    qualified: String,
    schema: String,
    table: String,
    channel: String,
    /// The key columns, quoted, with their types.
    key: Vec<(String, String)>,
    /// The key's column names, as the payload functions take them.
    key_names: Vec<String>,
    /// `skor.payload`'s arguments, as a 0-based `text[]` literal.
    args: String,
    condition: Option<String>,
}

/// Why a table cannot be backfilled.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The table's shape does not allow it.
    #[error("{0}")]
    Table(String),
    /// PostgreSQL refused a query.
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
}

/// A 0-based `text[]` literal, as `TG_ARGV` is: `skor.payload` reads its
/// arguments by the trigger's subscripts.
fn argv_literal(values: &[String]) -> String {
    let elements: Vec<String> = values
        .iter()
        .map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!(
        "{}::pg_catalog.text[]",
        quote_literal(&format!(
            "[0:{}]={{{}}}",
            values.len().saturating_sub(1),
            elements.join(",")
        ))
    )
}

impl Plan {
    /// Reads the key of `table` (its `key`, else its primary key) from the
    /// catalog; `condition` is `--where`.
    pub async fn new(
        client: &impl GenericClient,
        config: &Config,
        table: &TableConfig,
        condition: Option<&str>,
    ) -> Result<Self, PlanError> {
        const KEY_SQL: &str =
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
               FROM pg_catalog.pg_attribute a \
              WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) \
                AND a.attnum > 0 AND NOT a.attisdropped";
        let name = TableName::parse(&table.name).expect("validated");
        let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await?
            .get(0);
        if !exists {
            return Err(PlanError::Table(format!("table {name} does not exist")));
        }
        let key_names: Vec<String> = match &table.key {
            Some(key) => key.clone(),
            None => client
                .query_one(catalog::PRIMARY_KEY_BY_NAME, &[&qualified])
                .await?
                .get(0),
        };
        if key_names.is_empty() {
            return Err(PlanError::Table(format!(
                "table {name} has no primary key: backfill walks a table by its key; \
                 set `key` in its [[table]] to columns that identify a row"
            )));
        }
        let types = client.query(KEY_SQL, &[&qualified, &key_names]).await?;
        let mut key = Vec::new();
        for column in &key_names {
            let Some(row) = types.iter().find(|r| r.get::<_, String>(0) == *column) else {
                return Err(PlanError::Table(format!(
                    "table {name} has no column \"{column}\" (its key)"
                )));
            };
            key.push((quote_ident(column), row.get::<_, String>(1)));
        }
        let channel = config.table_channel(table).to_string();
        let columns = table.columns.for_op(Op::Read).unwrap_or_default();
        // As the triggers' arguments (sql/install.sql): channel, flags,
        // the names events carry (empty: the table's own), the key, the
        // columns.
        let mode = config.table_mode(table);
        // Wal mode's metadata comes from the stream, as its changes' do.
        let flags = capture::of(mode).backfill_flags(table);
        let mut args = vec![
            channel.clone(),
            flags,
            String::new(),
            String::new(),
            key_names.len().to_string(),
        ];
        args.extend(key_names.iter().cloned());
        args.extend(columns.iter().cloned());
        Ok(Self {
            name: name.to_string(),
            mode,
            qualified,
            schema: name.schema,
            table: name.name,
            channel,
            key,
            key_names,
            args: argv_literal(&args),
            condition: condition.map(str::to_string),
        })
    }

    fn filter(&self) -> String {
        match &self.condition {
            // On a line of its own: a trailing `-- comment` ends with it.
            Some(condition) => format!("({condition}\n)"),
            None => "true".to_string(),
        }
    }

    /// Counts the rows to send.
    pub fn count_sql(&self) -> String {
        format!(
            "SELECT pg_catalog.count(*) FROM {} AS t WHERE {}",
            self.qualified,
            self.filter()
        )
    }

    /// The statement that sends up to `limit` rows after the key in `$1`
    /// (when `resumed`, else from the first) and returns how many it sent
    /// and the last one's key, as `text[]`.
    pub fn batch_sql(&self, resumed: bool, limit: i64, locking: Locking) -> String {
        let by_key = self
            .key
            .iter()
            .map(|(column, _)| format!("t.{column}"))
            .collect::<Vec<_>>()
            .join(", ");
        let order = (0..self.key.len())
            .map(|i| format!("b.skor_key_{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let selected: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, (column, _))| format!("t.{column} AS skor_key_{i}"))
            .collect();
        let mut sql = String::new();
        let _ = write!(
            sql,
            "WITH batch AS MATERIALIZED (\n    SELECT {}, pg_catalog.row_to_json(t) AS skor_row, t AS skor_record\n      FROM {} AS t\n     WHERE {}",
            selected.join(", "),
            self.qualified,
            self.filter()
        );
        if resumed {
            let after: Vec<String> = self
                .key
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| format!("($1::pg_catalog.text[])[{}]::{kind}", i + 1))
                .collect();
            let _ = write!(
                sql,
                "\n       AND ROW({by_key}) > ROW({})",
                after.join(", ")
            );
        }
        let _ = write!(
            sql,
            "\n     ORDER BY {by_key}\n     LIMIT {limit}\n       FOR SHARE OF t{}\n), sent AS (\n    {}\n)\n",
            if locking == Locking::NoWait {
                " NOWAIT"
            } else {
                ""
            },
            self.send_sql(&order)
        );
        let last: Vec<String> = (0..self.key.len())
            .map(|i| format!("b.skor_key_{i}::pg_catalog.text"))
            .collect();
        let descending: Vec<String> = (0..self.key.len())
            .map(|i| format!("b.skor_key_{i} DESC"))
            .collect();
        let _ = write!(
            sql,
            "SELECT (SELECT pg_catalog.count(*) FROM sent),\n       (SELECT ARRAY[{}] FROM batch b ORDER BY {} LIMIT 1)",
            last.join(", "),
            descending.join(", ")
        );
        sql
    }

    /// The part of the batch statement that sends the rows, in key order,
    /// the way the table's mode captures changes.
    fn send_sql(&self, order: &str) -> String {
        // `row` is the batch's alias: its row_to_json and the row itself.
        let payload = |row: &str, id: &str| {
            format!(
                "skor.payload('READ', {}, {}, {}, {row}.skor_row, NULL, {id}, {row}.skor_record, {row}.skor_record)",
                quote_literal(&self.schema),
                quote_literal(&self.table),
                self.args
            )
        };
        let row_key = format!(
            "skor.pick(b.skor_record, b.skor_row, {})::pg_catalog.text",
            text_array(&self.key_names)
        );
        let (channel, schema, table) = (
            quote_literal(&self.channel),
            quote_literal(&self.schema),
            quote_literal(&self.table),
        );
        capture::of(self.mode).backfill_send_sql(&BackfillBatch {
            channel: &channel,
            schema: &schema,
            table: &table,
            order,
            row_key: &row_key,
            payload: &payload,
        })
    }

    /// What runs after the batch in its transaction: durable mode wakes
    /// the daemons as the triggers do; wal mode empties its table again
    /// (the publication already has the inserts).
    pub fn after_batch_sql(&self) -> Option<&'static str> {
        capture::of(self.mode).backfill_after_batch_sql()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_a_zero_based_array_with_quotes_escaped() {
        assert_eq!(
            argv_literal(&["skor".into(), String::new(), "a\"b\\c".into()]),
            r#"'[0:2]={"skor","","a\"b\\c"}'::pg_catalog.text[]"#
        );
    }
}
