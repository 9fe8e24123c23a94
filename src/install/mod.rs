//! The SQL skor installs: the shared objects from `sql/`, one trigger per
//! captured table and operation, and the checks that run before them.

use std::fmt::Write as _;

use skor_sink_api::Op;
use tokio_postgres::{Client, GenericClient};

use crate::capture::trigger::trigger_flags;
use crate::capture::{self, CAPTURES};
use crate::config::{Config, TableName};
use crate::postgres::catalog;
use crate::postgres::{locks, quote_ident, quote_literal, text_array, try_compile};

pub use crate::capture::{InstallError, InstallOptions};

/// The printed script's lock (`skor sql`, run by a migration tool): the
/// advisory lock serialises it with concurrent installs; `skor install`
/// itself takes the lock only skor's role can hold (see
/// `postgres::locks::take_install_lock`).
const LOCK_SQL: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('skor install'));\n\n";
const INSTALL_SQL: &str = include_str!("../../sql/install.sql");
/// `skor backfill`'s progress and wal-mode tables.
const BACKFILL_SQL: &str = include_str!("../../sql/backfill.sql");
/// Durable mode's partition leases, installed after the shared objects.
const LEASES_SQL: &str = include_str!("../../sql/leases.sql");
const DROP_TRIGGERS_SQL: &str = include_str!("../../sql/drop_triggers.sql");
const UNINSTALL_SQL: &str = include_str!("../../sql/uninstall.sql");
const PRIVILEGES_SQL: &str = include_str!("../../sql/privileges.sql");

/// The trigger that captures `op` on a table.
fn trigger_name(op: Op) -> String {
    format!("skor_{}", op.as_str().to_lowercase())
}

/// When a lock wait of install or uninstall (whose transaction has been
/// rolled back) ran out on a table, names the sessions holding locks on
/// skor's objects and captured tables.
async fn name_lock_holders<T>(
    client: &Client,
    result: Result<T, InstallError>,
    timeout: std::time::Duration,
) -> Result<T, InstallError> {
    match result {
        Err(InstallError::LockWait(text)) => {
            let holders = locks::holders(client).await.unwrap_or_default();
            Err(InstallError::Locked(format!(
                "{}: {text}",
                locks::message(
                    "a lock on a table install or uninstall changes",
                    &holders,
                    timeout
                )
            )))
        }
        other => other,
    }
}

/// The whole install script for `config`, as `skor sql` prints it.
pub fn install_sql(config: &Config) -> String {
    [
        &locks::session_sql(locks::LOCK_TIMEOUT),
        LOCK_SQL,
        &install_body(config),
    ]
    .concat()
}

/// The install script after its lock: skor's objects, the triggers and
/// the privileges.
fn install_body(config: &Config) -> String {
    let mut sql = [
        INSTALL_SQL,
        "\n",
        LEASES_SQL,
        "\n",
        BACKFILL_SQL,
        "\n",
        DROP_TRIGGERS_SQL,
    ]
    .concat();
    sql.push_str(
        "\n-- One trigger per captured table and operation (two for UPDATE of a keyed table).\n",
    );
    for table in &config.tables {
        let name = TableName::parse(&table.name).expect("validated");
        let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
        // A mode without triggers (wal) sets its tables up in its own
        // install step.
        let Some(function) = capture::of(config.table_mode(table)).trigger_function() else {
            continue;
        };
        let key = table
            .key
            .as_deref()
            .map_or_else(|| "NULL".to_string(), text_array);
        for &op in &table.ops {
            let columns = table.columns.for_op(op).unwrap_or_default();
            let flags = trigger_flags(table, op);
            let condition = table.when.for_op(op);
            // Without options, the call (and the trigger) of earlier versions.
            let options = if flags.is_empty() && condition.is_none() {
                String::new()
            } else {
                format!(
                    ", {}, {}",
                    quote_literal(&flags),
                    condition.map_or_else(|| "NULL".to_string(), quote_literal)
                )
            };
            let _ = writeln!(
                sql,
                "SELECT skor.create_trigger({table}, {trigger}, '{op}', '{function}', {channel}, {key}, {columns}, {unique}{options});",
                table = quote_literal(&qualified),
                trigger = quote_literal(&trigger_name(op)),
                channel = quote_literal(config.table_channel(table)),
                columns = text_array(columns),
                unique = table.unique_payloads,
            );
        }
    }
    for note in capture::used(config).filter_map(|c| c.install_script_note()) {
        sql.push('\n');
        sql.push_str(note);
    }
    sql.push('\n');
    sql.push_str(PRIVILEGES_SQL);
    sql
}

/// Checks that every configured table exists and has its columns, so the
/// triggers never fail a user's statement, and that every published column
/// list holds the row key, so a row's key is the same whatever happens to it.
pub async fn check_tables(
    client: &impl GenericClient,
    config: &Config,
) -> Result<(), InstallError> {
    for table in &config.tables {
        let name = TableName::parse(&table.name).expect("validated");
        let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
        let row = client
            .query_opt(catalog::TABLE_SHAPE, &[&qualified])
            .await?;
        let Some(row) = row else {
            return Err(InstallError::Schema(format!("table {name} does not exist")));
        };
        let kind: String = row.get(0);
        if kind != "r" && kind != "p" {
            return Err(InstallError::Schema(format!(
                "{name} is not a table (relkind {kind}); only tables can be captured"
            )));
        }
        let existing: Vec<String> = row.get(1);
        for column in table.key.iter().flatten() {
            if !existing.contains(column) {
                return Err(InstallError::Schema(format!(
                    "table {name} has no column \"{column}\" (configured as its key); its columns are {existing:?}"
                )));
            }
        }
        for &op in &table.ops {
            for column in table.columns.for_op(op).unwrap_or_default() {
                if !existing.contains(column) {
                    return Err(InstallError::Schema(format!(
                        "table {name} has no column \"{column}\" (configured for {op}); its columns are {existing:?}"
                    )));
                }
            }
        }
        let primary_key: Vec<String> = row.get(2);
        let (key, what) = match &table.key {
            Some(key) => (key.as_slice(), "`key`"),
            None => (primary_key.as_slice(), "primary key"),
        };
        for &op in &table.ops {
            let Some(published) = table.columns.for_op(op) else {
                continue;
            };
            let missing: Vec<&String> = key.iter().filter(|k| !published.contains(k)).collect();
            if !missing.is_empty() {
                return Err(InstallError::Schema(format!(
                    "table {name}: the columns published on {op} lack its {what} column(s) {missing:?}; \
                     add them to `columns`, so every event of a row carries its key"
                )));
            }
        }
    }
    Ok(())
}

/// Compiles each trigger-mode table's `when` conditions as install will
/// (a `WHEN` clause under the pinned search_path), in a savepoint rolled
/// back at once, so a condition PostgreSQL rejects is reported with its
/// table and key rather than as a failed install script.
pub async fn check_conditions(
    client: &impl GenericClient,
    config: &Config,
) -> Result<(), InstallError> {
    for table in &config.tables {
        let triggered = capture::of(config.table_mode(table))
            .trigger_function()
            .is_some();
        if !triggered || !table.when.is_set() {
            continue;
        }
        let name = TableName::parse(&table.name).expect("validated");
        let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
        for &op in &table.ops {
            let Some(condition) = table.when.for_op(op) else {
                continue;
            };
            let compiled = try_compile(
                client,
                &format!(
                    "CREATE TRIGGER skor_when_check AFTER {op} ON {qualified} FOR EACH ROW \
                     WHEN ({condition}\n) EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger()"
                ),
                None,
            )
            .await?;
            if let Err(message) = compiled {
                let mut text = format!("table {name}: {}: {message}", table.when.key(op));
                if table.when.shared {
                    let _ = write!(
                        text,
                        " (as the {op} trigger's condition; where a condition fits some operations only, \
                         give one per operation: when = {{ insert = \"...\", update = \"...\", delete = \"...\" }})"
                    );
                }
                return Err(InstallError::Schema(text));
            }
        }
    }
    Ok(())
}

/// Creates skor's objects, the configured triggers and, in wal mode, the
/// publication, in one transaction; then the replication slot.
pub async fn install(client: &mut Client, config: &Config) -> Result<(), InstallError> {
    install_with(client, config, &InstallOptions::default()).await
}

/// [`install`], with `options`.
pub async fn install_with(
    client: &mut Client,
    config: &Config,
    options: &InstallOptions,
) -> Result<(), InstallError> {
    for capture in CAPTURES {
        capture.before_install(client, config).await?;
    }
    let result = install_transaction(client, config, options.lock_timeout).await;
    let upgrading = name_lock_holders(client, result, options.lock_timeout).await?;
    for capture in CAPTURES {
        capture
            .after_install(client, config, options, upgrading)
            .await?;
    }
    Ok(())
}

/// Whether skor's schema predates its record of the objects it created:
/// an earlier version's install, whose publication and slot are adopted.
async fn install_transaction(
    client: &mut Client,
    config: &Config,
    lock_timeout: std::time::Duration,
) -> Result<bool, InstallError> {
    let transaction = client.transaction().await?;
    locks::take_install_lock(&transaction, lock_timeout).await?;
    let upgrading: bool = transaction
        .query_one(
            // From the catalog: to_regclass needs USAGE on a schema that
            // another role may own (the ownership check refuses that next).
            "SELECT pg_catalog.to_regnamespace('skor') IS NOT NULL \
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c \
                                  JOIN pg_catalog.pg_namespace n \
                                    ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                                 WHERE n.nspname OPERATOR(pg_catalog.=) 'skor' \
                                   AND c.relname OPERATOR(pg_catalog.=) 'created_object')",
            &[],
        )
        .await?
        .get(0);
    check_tables(&transaction, config).await?;
    check_conditions(&transaction, config).await?;
    transaction.batch_execute(&install_body(config)).await?;
    for capture in CAPTURES {
        capture.install(&transaction, config, upgrading).await?;
    }
    transaction.commit().await?;
    Ok(upgrading)
}

/// Removes every object skor created, in one transaction, after the
/// replication slot. Refuses while the event log holds undelivered events,
/// unless `drop_events`, and while a reader holds the slot.
pub async fn uninstall(
    client: &mut Client,
    config: &Config,
    drop_events: bool,
) -> Result<(), InstallError> {
    for capture in CAPTURES {
        capture.before_uninstall(client, config).await?;
    }
    let timeout = locks::LOCK_TIMEOUT;
    let result = uninstall_transaction(client, config, drop_events, timeout).await;
    name_lock_holders(client, result, timeout).await
}

async fn uninstall_transaction(
    client: &mut Client,
    config: &Config,
    drop_events: bool,
    lock_timeout: std::time::Duration,
) -> Result<(), InstallError> {
    const UNDELIVERED_SQL: &str = "SELECT count(*) FILTER (WHERE state = 'pending'), \
                                          count(*) FILTER (WHERE state = 'dead') \
                                     FROM skor.event_log";
    let transaction = client.transaction().await?;
    locks::take_install_lock(&transaction, lock_timeout).await?;
    let has_log = transaction
        .query_one("SELECT to_regclass('skor.event_log') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if has_log && !drop_events {
        let row = transaction.query_one(UNDELIVERED_SQL, &[]).await?;
        let (pending, dead): (i64, i64) = (row.get(0), row.get(1));
        if pending + dead > 0 {
            return Err(InstallError::Pending(format!(
                "skor.event_log holds {pending} pending and {dead} dead-lettered events; \
                 let skor deliver them (and replay the dead letters), or pass --drop-events to delete them"
            )));
        }
    }
    let mut removals = Vec::new();
    for capture in CAPTURES {
        removals.push(capture.uninstall(&transaction, config).await?);
    }
    let mut sql = [DROP_TRIGGERS_SQL, "\n"].concat();
    for removal in &removals {
        sql.push_str(&removal.sql);
    }
    sql.push_str(UNINSTALL_SQL);
    transaction.batch_execute(&sql).await?;
    for (capture, removal) in CAPTURES.iter().zip(&removals) {
        if removal.after {
            capture.after_uninstall(&transaction, config).await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trigger_per_table_and_op_with_its_columns() {
        let config = Config::from_toml(
            "[source]\ndsn = \"host=localhost\"\n\
             [[table]]\nname = \"orders\"\nops = [\"INSERT\", \"DELETE\"]\ncolumns = { delete = [\"id\"] }\n",
            "t.toml",
        )
        .unwrap();
        let sql = install_sql(&config);
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"public\".\"orders\"', 'skor_insert', 'INSERT', 'notify', 'skor', NULL, ARRAY[]::text[], false);"
        ), "{sql}");
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"public\".\"orders\"', 'skor_delete', 'DELETE', 'notify', 'skor', NULL, ARRAY['id']::text[], false);"
        ), "{sql}");
        assert!(!sql.contains("'skor_update'"));
        assert!(
            sql.trim_end()
                .ends_with("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA skor FROM PUBLIC;"),
            "privileges are taken back last: {sql}"
        );
    }

    #[test]
    fn options_reach_the_trigger_as_flags_and_a_condition() {
        let config = Config::from_toml(
            "[source]\ndsn = \"host=localhost\"\nmode = \"durable\"\n\
             [[table]]\nname = \"orders\"\nops = [\"INSERT\", \"UPDATE\"]\nold = true\n\
             metadata = [\"tx_time\", \"event_id\", \"txid\"]\n\
             when = { update = \"NEW.status IS DISTINCT FROM OLD.status AND NEW.note <> 'it''s'\" }\n",
            "t.toml",
        )
        .unwrap();
        let sql = install_sql(&config);
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"public\".\"orders\"', 'skor_insert', 'INSERT', 'capture', 'skor', NULL, ARRAY[]::text[], false, 'ext', NULL);"
        ), "{sql}");
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"public\".\"orders\"', 'skor_update', 'UPDATE', 'capture', 'skor', NULL, ARRAY[]::text[], false, 'oext', 'NEW.status IS DISTINCT FROM OLD.status AND NEW.note <> ''it''''s''');"
        ), "{sql}");
    }

    #[test]
    fn durable_tables_get_capture_triggers_with_their_key() {
        let config = Config::from_toml(
            "[source]\ndsn = \"host=localhost\"\nmode = \"durable\"\n\
             [[table]]\nname = \"shop.orders\"\nops = [\"INSERT\"]\nunique_payloads = true\n\
             [[table]]\nname = \"notes\"\nops = [\"DELETE\"]\nkey = [\"author\", \"at\"]\ncolumns = [\"author\", \"at\", \"body\"]\n",
            "t.toml",
        )
        .unwrap();
        let sql = install_sql(&config);
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"shop\".\"orders\"', 'skor_insert', 'INSERT', 'capture', 'skor', NULL, ARRAY[]::text[], true);"
        ), "{sql}");
        assert!(sql.contains(
            "SELECT skor.create_trigger('\"public\".\"notes\"', 'skor_delete', 'DELETE', 'capture', 'skor', ARRAY['author', 'at']::text[], ARRAY['author', 'at', 'body']::text[], false);"
        ), "{sql}");
        assert!(!sql.contains("'notify', 'skor'"));
    }
}
