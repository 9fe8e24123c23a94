//! Wal mode's objects in the database: the publication naming the captured
//! tables (with column lists where that is safe) and the logical
//! replication slot; their checks at install, their removal at uninstall,
//! and the slot's state for `skor check --connect`.
//!
//! A publication that publishes UPDATE or DELETE makes PostgreSQL refuse
//! those statements on a table without a replica identity, or whose
//! column list leaves out a replica identity column: install refuses such a
//! config rather than let it break the application's writes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use skor_sink_api::Op;
use tokio_postgres::{Client, GenericClient};
use tracing::{info, warn};

use crate::config::{Config, Mode, ReplicaIdentity, TableConfig, TableName};
use crate::postgres::{describe, quote_ident};
use crate::sql::InstallError;

/// How to turn on logical decoding, for errors.
pub const WAL_LEVEL_HOWTO: &str = "as a superuser run `ALTER SYSTEM SET wal_level = logical;` \
     and restart PostgreSQL (max_replication_slots and max_wal_senders must stay above 0)";

/// A wal-mode table as the catalog describes it.
#[derive(Debug)]
struct Published<'a> {
    table: &'a TableConfig,
    qualified: String,
    /// The replica identity it will have: `d`, `n`, `f` or `i`.
    identity: char,
    /// Whether install must change it to `identity`.
    alter_identity: bool,
    /// The replica identity's columns (empty for `n` and `f`).
    identity_columns: Vec<String>,
    /// Its partitions, whose identity follows the table's.
    partitions: Vec<String>,
}

fn wal_tables(config: &Config) -> impl Iterator<Item = &TableConfig> {
    config
        .tables
        .iter()
        .filter(|t| config.table_mode(t) == Mode::Wal)
}

/// The table through which `skor backfill` sends wal-mode rows.
pub const BACKFILL_TABLE: &str = "skor.wal_backfill";

/// The operations the publication publishes: those of every wal table.
fn published_ops(config: &Config) -> BTreeSet<&'static str> {
    let mut ops = BTreeSet::new();
    for table in wal_tables(config) {
        for op in &table.ops {
            ops.insert(match op {
                Op::Insert | Op::Read => "insert",
                Op::Update => "update",
                Op::Delete => "delete",
            });
        }
    }
    ops
}

/// Checks that the server decodes logically and that this role may
/// create and read replication slots.
pub async fn check_server(client: &impl GenericClient) -> Result<(), InstallError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await?;
    let (level, may): (String, Option<bool>) = (row.get(0), row.get(1));
    if level != "logical" {
        return Err(InstallError::Schema(format!(
            "wal mode needs wal_level = logical, and it is {level}: {WAL_LEVEL_HOWTO}"
        )));
    }
    if may != Some(true) {
        return Err(InstallError::Schema(
            "wal mode needs a role with the REPLICATION attribute (ALTER ROLE ... REPLICATION) \
             to create and read the replication slot"
                .into(),
        ));
    }
    Ok(())
}

async fn describe_tables<'a>(
    client: &impl GenericClient,
    config: &'a Config,
) -> Result<Vec<Published<'a>>, InstallError> {
    const SQL: &str = "SELECT c.relreplident::text, \
              array(SELECT a.attname::text FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord), \
              array(SELECT a.attname::text FROM pg_index i \
                     CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = c.oid AND i.indisreplident ORDER BY k.ord), \
              array(SELECT format('%I.%I', n.nspname, p.relname) \
                      FROM pg_partition_tree(c.oid) t \
                      JOIN pg_class p ON p.oid = t.relid \
                      JOIN pg_namespace n ON n.oid = p.relnamespace \
                     WHERE t.relid <> c.oid) \
         FROM pg_class c WHERE c.oid = to_regclass($1)";
    let ops = published_ops(config);
    let rewrites = ops.contains("update") || ops.contains("delete");
    let mut tables = Vec::new();
    for table in wal_tables(config) {
        let name = TableName::parse(&table.name).expect("validated");
        let qualified = format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name));
        let Some(row) = client.query_opt(SQL, &[&qualified]).await? else {
            return Err(InstallError::Schema(format!("table {name} does not exist")));
        };
        let current: String = row.get(0);
        let primary: Vec<String> = row.get(1);
        let index: Vec<String> = row.get(2);
        let partitions: Vec<String> = row.get(3);
        let current = current.chars().next().unwrap_or('d');
        let identity = match table.replica_identity {
            Some(ReplicaIdentity::Full) => 'f',
            Some(ReplicaIdentity::Default) => 'd',
            None => current,
        };
        let identity_columns = match identity {
            'd' => primary,
            'i' => index,
            _ => Vec::new(),
        };
        if rewrites && (identity == 'n' || (identity == 'd' && identity_columns.is_empty())) {
            return Err(InstallError::Schema(format!(
                "table {name} has no replica identity (no primary key): with UPDATE or DELETE \
                 published, PostgreSQL would refuse every UPDATE and DELETE on it; \
                 add a primary key, or set replica_identity = \"full\" in its [[table]]"
            )));
        }
        if table.old && identity != 'f' {
            return Err(InstallError::Schema(format!(
                "table {name}: old = true needs REPLICA IDENTITY FULL, so the stream carries \
                 the old row; set replica_identity = \"full\" in its [[table]] and install sets it"
            )));
        }
        if let Some(condition) = row_filter(table) {
            let read = check_row_filter(client, &name, &qualified, condition).await?;
            let outside: Vec<&String> = read
                .iter()
                .filter(|c| !identity_columns.contains(c))
                .collect();
            if rewrites && identity != 'f' && !outside.is_empty() {
                return Err(InstallError::Schema(format!(
                    "table {name}: when: the row filter reads column(s) {outside:?}, which are not in \
                     the table's replica identity {identity_columns:?}: with UPDATE or DELETE published, \
                     PostgreSQL would refuse every UPDATE and DELETE of the table; set \
                     replica_identity = \"full\" in its [[table]] (install sets it), or filter on \
                     replica identity columns only"
                )));
            }
        }
        tables.push(Published {
            table,
            qualified,
            identity,
            alter_identity: identity != current,
            identity_columns,
            partitions,
        });
    }
    Ok(tables)
}

/// The condition of a wal-mode table's `when`: one for every operation
/// (config validation refuses others).
fn row_filter(table: &TableConfig) -> Option<&str> {
    table.ops.first().and_then(|&op| table.when.for_op(op))
}

/// Compiles `condition` as a row filter of `qualified`, as install will
/// (under the pinned search_path), in a publication made in a savepoint
/// and rolled back; returns the columns it reads, from the dependencies
/// PostgreSQL records for it. A condition PostgreSQL refuses (a column
/// that does not exist, a function that is not immutable and built in)
/// is an error naming the table.
async fn check_row_filter(
    client: &impl GenericClient,
    name: &TableName,
    qualified: &str,
    condition: &str,
) -> Result<Vec<String>, InstallError> {
    const COLUMNS_SQL: &str = "SELECT a.attname::text \
           FROM pg_depend d \
           JOIN pg_publication_rel r ON d.classid = 'pg_publication_rel'::regclass AND d.objid = r.oid \
           JOIN pg_publication p ON p.oid = r.prpubid AND p.pubname = 'skor_when_check' \
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
          WHERE d.refobjid = to_regclass($1) AND d.refobjsubid > 0 \
          ORDER BY a.attnum";
    let compiled = crate::sql::try_compile(
        client,
        &format!(
            "CREATE PUBLICATION skor_when_check FOR TABLE {qualified} WHERE ({condition}\n) \
             WITH (publish = 'insert')"
        ),
        Some((COLUMNS_SQL, qualified)),
    )
    .await?;
    match compiled {
        Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
        Err(message) => Err(InstallError::Schema(format!(
            "table {name}: when: {message}"
        ))),
    }
}

/// The column list a table is published with: every column its ops
/// publish plus the replica identity's; none (the whole row) when some op
/// publishes every column or the identity is the whole row.
fn column_list(table: &Published<'_>) -> Option<Vec<String>> {
    if table.identity == 'f' {
        return None;
    }
    let mut list: Vec<String> = Vec::new();
    for &op in &table.table.ops {
        for column in table.table.columns.for_op(op)? {
            if !list.contains(column) {
                list.push(column.clone());
            }
        }
    }
    for column in table
        .identity_columns
        .iter()
        .chain(table.table.key.iter().flatten())
    {
        if !list.contains(column) {
            list.push(column.clone());
        }
    }
    Some(list)
}

/// Creates or updates the publication and the tables' replica identity,
/// inside install's transaction.
pub async fn publish(client: &impl GenericClient, config: &Config) -> Result<(), InstallError> {
    let publication = &config.source.publication;
    let tables = describe_tables(client, config).await?;
    if tables.is_empty() {
        return Err(InstallError::Schema(
            "wal mode: list the tables to capture as [[table]]s; install publishes them".into(),
        ));
    }
    let mut sql = String::new();
    for table in tables.iter().filter(|t| t.alter_identity) {
        let identity = if table.identity == 'f' {
            "FULL"
        } else {
            "DEFAULT"
        };
        for relation in std::iter::once(&table.qualified).chain(&table.partitions) {
            let _ = writeln!(sql, "ALTER TABLE {relation} REPLICA IDENTITY {identity};");
        }
    }
    let list: Vec<String> = tables
        .iter()
        .map(|t| {
            let mut entry = match column_list(t) {
                Some(columns) => format!(
                    "{} ({})",
                    t.qualified,
                    columns
                        .iter()
                        .map(|c| quote_ident(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => t.qualified.clone(),
            };
            if let Some(condition) = row_filter(t.table) {
                // On a line of its own: a trailing `-- comment` ends with it.
                let _ = write!(entry, " WHERE ({condition}\n)");
            }
            entry
        })
        .collect();
    // `skor backfill` sends wal-mode rows through this table's inserts.
    let list: Vec<String> = list
        .into_iter()
        .chain([BACKFILL_TABLE.to_string()])
        .collect();
    let mut ops = published_ops(config);
    ops.insert("insert");
    let mut publish: Vec<&str> = ops.into_iter().collect();
    publish.push("truncate");
    let options = format!(
        "publish = '{}', publish_via_partition_root = true",
        publish.join(", ")
    );
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[publication],
        )
        .await?
        .get(0);
    let name = quote_ident(publication);
    // Row filters are compiled here: with pg_catalog's functions and
    // operators only, never another role's in `public`.
    sql.push_str("SET LOCAL search_path = pg_catalog, pg_temp;\n");
    // Dropping and creating it again would break a slot that streams: the
    // changes before the new one would name a publication that did not
    // exist yet.
    if exists {
        let _ = writeln!(
            sql,
            "ALTER PUBLICATION {name} SET TABLE {};",
            list.join(", ")
        );
        let _ = writeln!(sql, "ALTER PUBLICATION {name} SET ({options});");
    } else {
        let _ = writeln!(
            sql,
            "CREATE PUBLICATION {name} FOR TABLE {} WITH ({options});",
            list.join(", ")
        );
    }
    sql.push_str("SET LOCAL search_path TO DEFAULT;\n");
    client.batch_execute(&sql).await?;
    Ok(())
}

/// With no table in wal mode any more: drops the publication, and warns
/// when the slot is still there, keeping WAL.
pub async fn unpublish(client: &Client, config: &Config) -> Result<(), InstallError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), \
                    EXISTS (SELECT 1 FROM pg_replication_slots \
                             WHERE slot_name = $2 AND database = current_database())",
            &[&config.source.publication, &config.source.slot],
        )
        .await?;
    let (published, slot): (bool, bool) = (row.get(0), row.get(1));
    if published {
        client.batch_execute(&drop_publication_sql(config)).await?;
        info!(publication = %config.source.publication, "no table is in wal mode: dropped the publication");
    }
    if slot {
        warn!(slot = %config.source.slot,
              "no table is in wal mode, but the replication slot remains and keeps WAL: once skor \
               delivered what it held, drop it with SELECT pg_drop_replication_slot('...')");
    }
    Ok(())
}

/// Creates the logical replication slot unless it exists; after the
/// publication committed, so the slot never starts before it.
pub async fn create_slot(client: &Client, config: &Config) -> Result<(), InstallError> {
    let slot = &config.source.slot;
    let existing = client
        .query_opt(
            "SELECT plugin::text, database::text, current_database()::text \
               FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    if let Some(row) = existing {
        let (plugin, database, here): (Option<String>, Option<String>, String) =
            (row.get(0), row.get(1), row.get(2));
        if database.as_deref() != Some(here.as_str()) || plugin.as_deref() != Some("pgoutput") {
            return Err(InstallError::Schema(format!(
                "replication slot \"{slot}\" exists for database {} with plugin {}: \
                 choose another `source.slot`",
                database.as_deref().unwrap_or("(none)"),
                plugin.as_deref().unwrap_or("(none)")
            )));
        }
        return Ok(());
    }
    match client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[slot],
        )
        .await
    {
        Ok(_) => {
            warn!(%slot, "created the replication slot: PostgreSQL keeps every WAL segment it has not \
                  confirmed, also while no skor runs, until `skor uninstall` drops it");
            Ok(())
        }
        // Another install created it meanwhile.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            Ok(())
        }
        Err(error) => Err(InstallError::Database(describe(&error))),
    }
}

/// Refuses while a reader holds the slot, before uninstall changes anything.
pub async fn check_slot_idle(
    client: &impl GenericClient,
    config: &Config,
) -> Result<(), InstallError> {
    slot_state(client, config).await.map(|_| ())
}

/// Drops the slot unless a reader holds it. In uninstall's transaction,
/// last: a reader that attached since the check makes it fail, and the
/// transaction with it, so the publication is never dropped under a
/// running daemon (the drop itself is not undone by a later failure).
pub async fn drop_slot(client: &impl GenericClient, config: &Config) -> Result<(), InstallError> {
    if !slot_state(client, config).await? {
        return Ok(());
    }
    let slot = &config.source.slot;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[slot])
        .await?;
    info!(%slot, "dropped the replication slot: PostgreSQL no longer keeps WAL for skor");
    Ok(())
}

/// Whether the slot exists; an error if a reader holds it.
async fn slot_state(client: &impl GenericClient, config: &Config) -> Result<bool, InstallError> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots \
              WHERE slot_name = $1 AND database = current_database()",
            &[slot],
        )
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    if let Some(pid) = row.get::<_, Option<i32>>(0) {
        return Err(InstallError::Pending(format!(
            "replication slot \"{slot}\" is being read (walsender pid {pid}): stop every skor \
             reading it, then uninstall"
        )));
    }
    Ok(true)
}

/// `DROP PUBLICATION` for uninstall's transaction.
pub fn drop_publication_sql(config: &Config) -> String {
    format!(
        "DROP PUBLICATION IF EXISTS {};\n",
        quote_ident(&config.source.publication)
    )
}

/// The slot's state for `skor check --connect`.
pub async fn slot_report(client: &Client, config: &Config) -> Result<String, InstallError> {
    check_server(client).await?;
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT active, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, \
                    coalesce(wal_status, 'unknown') \
               FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[slot],
        )
        .await?;
    let Some(row) = row else {
        return Err(InstallError::Schema(format!(
            "replication slot \"{slot}\" does not exist: run `skor install`"
        )));
    };
    let published: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&config.source.publication],
        )
        .await?
        .get(0);
    if !published {
        return Err(InstallError::Schema(format!(
            "publication \"{}\" does not exist: run `skor install`",
            config.source.publication
        )));
    }
    let (active, lag, retained, status): (bool, Option<i64>, Option<i64>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "slot {slot} {}, lag {} bytes, retained WAL {} bytes, wal_status {status}",
        if active {
            "being read"
        } else {
            "idle (no reader)"
        },
        lag.unwrap_or(0),
        retained.unwrap_or(0),
    ))
}
