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

use crate::capture::InstallError;
use crate::config::{Config, Mode, ReplicaIdentity, TableConfig, TableName};
use crate::postgres::catalog::index_columns;
use crate::postgres::{describe, quote_ident};

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
    const SQL: &str = concat!(
        "SELECT c.relreplident::text, ",
        index_columns!("c.oid", "indisprimary"),
        ", ",
        index_columns!("c.oid", "indisreplident"),
        ", array(SELECT format('%I.%I', n.nspname, p.relname) \
                  FROM pg_catalog.pg_partition_tree(c.oid) t \
                  JOIN pg_class p ON p.oid = t.relid \
                  JOIN pg_namespace n ON n.oid = p.relnamespace \
                 WHERE t.relid <> c.oid) \
         FROM pg_class c WHERE c.oid = to_regclass($1)"
    );
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
    let compiled = crate::postgres::try_compile(
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
/// inside install's transaction, and records what it made. A publication
/// of that name that skor did not create is refused: its owner could drop
/// tables from it or stop publishing an operation, and skor would deliver
/// nothing for those changes. `upgrading` (skor's schema predates its
/// record of what it created) adopts the one an earlier version made, if
/// this role owns it.
pub async fn publish(
    client: &impl GenericClient,
    config: &Config,
    upgrading: bool,
) -> Result<(), InstallError> {
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
    let exists = match publication_state(client, publication).await? {
        None => false,
        Some(found) => {
            let ours = recorded(client, "publication", publication)
                .await?
                .is_some();
            if found.owner != found.skor_owner {
                return Err(InstallError::Schema(format!(
                    "publication \"{publication}\" belongs to role {}, not to {}, who owns skor's \
                     objects: skor adopts no publication it did not create, since its owner \
                     could change what skor captures; drop it, or choose another \
                     `source.publication`",
                    found.owner, found.skor_owner
                )));
            }
            if !ours && !upgrading {
                return Err(InstallError::Schema(format!(
                    "publication \"{publication}\" exists, but skor install did not create it: \
                     drop it, or choose another `source.publication`"
                )));
            }
            true
        }
    };
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
    client.batch_execute(&sql).await?;
    let state = publication_state(client, publication)
        .await?
        .map(|s| s.lines.join("\n"))
        .unwrap_or_default();
    client
        .execute(
            "INSERT INTO skor.created_object (kind, name, state, config) \
             VALUES ('publication', $1, $2, $3) \
             ON CONFLICT (kind, name) DO UPDATE SET state = EXCLUDED.state, config = EXCLUDED.config",
            &[publication, &state, &config_summary(config)],
        )
        .await?;
    Ok(())
}

/// A publication as the catalog describes it.
#[derive(Debug)]
pub struct PublicationState {
    /// The role that owns it.
    pub owner: String,
    /// The role that owns skor's schema (None before install).
    pub skor_owner: String,
    /// What it publishes, one line per fact, in a fixed order: the
    /// operations, then each table (or schema) with its columns, row
    /// filter and replica identity.
    pub lines: Vec<String>,
}

/// Reads `name`'s publication; `None` if there is none.
pub async fn publication_state(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<PublicationState>, tokio_postgres::Error> {
    const PUBLICATION_SQL: &str = "SELECT p.oid, pg_catalog.pg_get_userbyid(p.pubowner)::text, \
              coalesce((SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text FROM pg_catalog.pg_namespace n \
                         WHERE n.nspname OPERATOR(pg_catalog.=) 'skor'), ''), \
              pg_catalog.format('publish insert=%s update=%s delete=%s truncate=%s via_root=%s all_tables=%s', \
                                p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, p.pubviaroot, p.puballtables) \
         FROM pg_catalog.pg_publication p WHERE p.pubname OPERATOR(pg_catalog.=) $1";
    const TABLES_SQL: &str = "SELECT pg_catalog.format('table %I.%I columns (%s) where %s replica identity %s', \
                  n.nspname, c.relname, \
                  coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) \
                              FROM pg_catalog.pg_attribute a \
                             WHERE a.attrelid OPERATOR(pg_catalog.=) r.prrelid \
                               AND a.attnum OPERATOR(pg_catalog.=) ANY (r.prattrs::pg_catalog.int2[])), '*'), \
                  coalesce(pg_catalog.pg_get_expr(r.prqual, r.prrelid), '-'), c.relreplident) \
           FROM pg_catalog.pg_publication_rel r \
           JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.prrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE r.prpubid OPERATOR(pg_catalog.=) $1 \
         UNION ALL \
         SELECT pg_catalog.format('tables in schema %I', n.nspname) \
           FROM pg_catalog.pg_publication_namespace s \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) s.pnnspid \
          WHERE s.pnpubid OPERATOR(pg_catalog.=) $1 \
         ORDER BY 1";
    let Some(row) = client.query_opt(PUBLICATION_SQL, &[&name]).await? else {
        return Ok(None);
    };
    let oid: tokio_postgres::types::Oid = row.get(0);
    let mut lines = vec![row.get::<_, String>(3)];
    for table in client.query(TABLES_SQL, &[&oid]).await? {
        lines.push(table.get(0));
    }
    Ok(Some(PublicationState {
        owner: row.get(1),
        skor_owner: row.get(2),
        lines,
    }))
}

/// What install recorded of the object `kind` named `name`: the state it
/// left and the config it made it from; `None` if skor did not create it.
async fn recorded(
    client: &impl GenericClient,
    kind: &str,
    name: &str,
) -> Result<Option<(String, String)>, tokio_postgres::Error> {
    if !has_record(client).await? {
        return Ok(None);
    }
    Ok(client
        .query_opt(
            "SELECT state, config FROM skor.created_object \
              WHERE kind OPERATOR(pg_catalog.=) $1 AND name OPERATOR(pg_catalog.=) $2",
            &[&kind, &name],
        )
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// The wal-mode part of `config` the publication is made from, in a fixed
/// form: install records it, and the daemon compares it with its own.
pub fn config_summary(config: &Config) -> String {
    let mut summary = String::new();
    for table in wal_tables(config) {
        let _ = writeln!(
            summary,
            "{} ops {:?} columns {:?} key {:?} when {:?} identity {:?} old {}",
            table.name,
            table.ops,
            table
                .ops
                .iter()
                .map(|&op| table.columns.for_op(op))
                .collect::<Vec<_>>(),
            table.key,
            row_filter(table),
            table.replica_identity,
            table.old
        );
    }
    summary
}

/// How wal mode's publication differs from what `skor install` made from
/// this config: another role changed it, or the config changed since.
/// Empty when they agree.
/// `summary` is [`config_summary`] of the config in use.
pub async fn drift(
    client: &impl GenericClient,
    name: &str,
    summary: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let Some(found) = publication_state(client, name).await? else {
        return Ok(vec![format!(
            "publication \"{name}\" does not exist: run `skor install`"
        )]);
    };
    let mut problems = Vec::new();
    if found.owner != found.skor_owner {
        problems.push(format!(
            "publication \"{name}\" belongs to role {}, not to {}, who owns skor's objects",
            found.owner, found.skor_owner
        ));
    }
    let Some((state, installed_config)) = recorded(client, "publication", name).await? else {
        problems.push(format!(
            "publication \"{name}\" was not created by `skor install` (or by an earlier \
             version): run `skor install`"
        ));
        return Ok(problems);
    };
    if installed_config != summary {
        problems.push(format!(
            "the config's wal-mode tables differ from those `skor install` published in \
             \"{name}\": run `skor install`"
        ));
    }
    let expected: Vec<&str> = state.lines().collect();
    for line in &expected {
        if !found.lines.iter().any(|l| l == line) {
            problems.push(format!("publication \"{name}\" lost: {line}"));
        }
    }
    for line in &found.lines {
        if !expected.contains(&line.as_str()) {
            problems.push(format!(
                "publication \"{name}\" has, unlike install left it: {line}"
            ));
        }
    }
    Ok(problems)
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
    if published && created_by_skor(client, "publication", &config.source.publication).await? {
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

/// The replication slot as `pg_replication_slots` shows it, read through
/// `to_jsonb` so columns a server version lacks read as `None`.
#[derive(Debug)]
pub struct SlotStatus {
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Why PostgreSQL invalidated it (17 and later).
    pub invalidation_reason: Option<String>,
    /// Whether it is a failover slot (17 and later).
    pub failover: Option<bool>,
}

impl SlotStatus {
    /// Why the slot can no longer be read, if PostgreSQL invalidated it.
    pub fn invalidated(&self) -> Option<String> {
        if let Some(reason) = &self.invalidation_reason {
            return Some(format!("invalidated: {reason}"));
        }
        (self.wal_status.as_deref() == Some("lost")).then(|| {
            "wal_status lost: the WAL it needed was removed once it held more than \
             max_slot_wal_keep_size"
                .to_string()
        })
    }
}

/// `slot`'s status in this database; `None` if there is no such slot.
pub async fn slot_status(
    client: &impl GenericClient,
    slot: &str,
) -> Result<Option<SlotStatus>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT s.wal_status::text, \
                    pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'invalidation_reason', \
                    (pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'failover')::pg_catalog.bool \
               FROM pg_catalog.pg_replication_slots s \
              WHERE s.slot_name OPERATOR(pg_catalog.=) $1 \
                AND s.database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
            &[&slot],
        )
        .await?;
    Ok(row.map(|row| SlotStatus {
        wal_status: row.get(0),
        invalidation_reason: row.get(1),
        failover: row.get(2),
    }))
}

/// What to do once PostgreSQL invalidated the slot, for errors and logs.
pub fn invalidated_howto(slot: &str) -> String {
    format!(
        "the changes in the WAL PostgreSQL removed are lost and cannot be streamed again; \
         run `skor install` (it replaces the invalidated slot \"{slot}\" with a new one, which \
         streams from now on), then `skor backfill` to send the tables' current rows; to keep \
         this from happening again, raise max_slot_wal_keep_size or keep skor's sinks up"
    )
}

/// Refuses `source.slot_failover` on a server before PostgreSQL 17, which
/// has no failover slots.
pub async fn check_failover_support(
    client: &impl GenericClient,
    config: &Config,
) -> Result<(), InstallError> {
    if !config.source.slot_failover {
        return Ok(());
    }
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4, \
                    pg_catalog.split_part(pg_catalog.current_setting('server_version'), ' ', 1)",
            &[],
        )
        .await?;
    let (number, version): (i32, String) = (row.get(0), row.get(1));
    if number < 170_000 {
        return Err(InstallError::Schema(format!(
            "source.slot_failover needs PostgreSQL 17 or later; this server is {version}: \
             remove slot_failover from [source], or upgrade PostgreSQL"
        )));
    }
    Ok(())
}

/// How the slot's failover flag differs from `source.slot_failover`, if
/// it does (PostgreSQL 17 and later; before, every slot is not one).
pub fn failover_drift(config: &Config, status: &SlotStatus) -> Option<String> {
    let found = status.failover?;
    let wanted = config.source.slot_failover;
    if found == wanted {
        return None;
    }
    let slot = &config.source.slot;
    Some(format!(
        "replication slot \"{slot}\" has failover = {found}, but source.slot_failover = {wanted}: \
         while no skor reads it, run `ALTER_REPLICATION_SLOT {slot} (FAILOVER {wanted})` on a \
         replication connection (psql \"dbname=... replication=database\"), or set \
         source.slot_failover = {found}"
    ))
}

/// Creates the logical replication slot unless it exists, after the
/// publication committed, so the slot never starts before it, and records
/// it. A slot of that name skor did not create is refused unless `adopt`:
/// PostgreSQL gives slots no owner, and any role with REPLICATION could
/// have made it at a position of its choosing.
///
/// PostgreSQL makes the slot once every transaction running when it
/// starts has ended: any role that can connect could keep one open, so the
/// wait ends after `lock_timeout`, naming the open transactions.
pub async fn create_slot(
    client: &Client,
    config: &Config,
    adopt: bool,
    lock_timeout: std::time::Duration,
) -> Result<(), InstallError> {
    let slot = &config.source.slot;
    let existing = client
        .query_opt(
            "SELECT plugin::text, database::text, current_database()::text \
               FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    let mut existing = existing;
    if existing.is_some() && recorded(client, "slot", slot).await?.is_some() {
        if let Some(reason) = slot_status(client, slot)
            .await?
            .and_then(|status| status.invalidated())
        {
            // PostgreSQL never streams from it again: a new slot is the
            // only way on, and the rows lost meanwhile need a backfill.
            client
                .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[slot])
                .await?;
            warn!(%slot, %reason,
                  "dropped the invalidated replication slot to make a new one: the changes in the \
                   WAL PostgreSQL removed are lost; run `skor backfill` to send the tables' current rows");
            existing = None;
        }
    }
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
        if recorded(client, "slot", slot).await?.is_none() {
            if !adopt {
                return Err(InstallError::Schema(format!(
                    "replication slot \"{slot}\" exists, but skor install did not create it (any role \
                     with REPLICATION can make one, at a position of its choosing): drop it with \
                     SELECT pg_drop_replication_slot('{slot}'), choose another `source.slot`, or, \
                     if it is skor's own, pass --adopt-slot"
                )));
            }
            warn!(%slot, "adopting the existing replication slot as skor's own (--adopt-slot)");
            record_slot(client, slot).await?;
        }
        if let Some(status) = slot_status(client, slot).await? {
            if let Some(drift) = failover_drift(config, &status) {
                warn!(%slot, "{drift}");
            }
        }
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'",
            lock_timeout.as_millis().max(1)
        ))
        .await?;
    // The five-argument form exists from PostgreSQL 17 on, which
    // `check_failover_support` made sure of.
    let create = if config.source.slot_failover {
        "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let created = client.execute(create, &[slot]).await;
    client.batch_execute("RESET lock_timeout").await?;
    match created {
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
        {
            let open = crate::postgres::locks::open_transactions(client)
                .await
                .unwrap_or_default();
            Err(InstallError::Locked(format!(
                "the replication slot \"{slot}\" is made once every transaction running when \
                 install asked for it has ended; waited {:.1} s, still open: {}; end them (or \
                 retry): the publication is installed, `skor install` creates the slot",
                lock_timeout.as_secs_f64(),
                if open.is_empty() {
                    "(none left)".to_string()
                } else {
                    open.join(", ")
                }
            )))
        }
        Ok(_) => {
            record_slot(client, slot).await?;
            warn!(%slot, "created the replication slot: PostgreSQL keeps every WAL segment it has not \
                  confirmed, also while no skor runs, until `skor uninstall` drops it");
            Ok(())
        }
        // Made meanwhile: by another install (which records it), or by
        // another role.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            if recorded(client, "slot", slot).await?.is_some() {
                return Ok(());
            }
            Err(InstallError::Schema(format!(
                "replication slot \"{slot}\" was created by another session while skor installed; \
                 run `skor install` again once it is finished"
            )))
        }
        Err(error) => Err(InstallError::Database(describe(&error))),
    }
}

async fn record_slot(client: &Client, slot: &str) -> Result<(), InstallError> {
    client
        .execute(
            "INSERT INTO skor.created_object (kind, name) VALUES ('slot', $1) \
             ON CONFLICT (kind, name) DO NOTHING",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// Whether skor created the slot (or the publication): what uninstall may
/// drop. Installs of earlier versions kept no record; theirs counts as
/// skor's.
pub async fn created_by_skor(
    client: &impl GenericClient,
    kind: &str,
    name: &str,
) -> Result<bool, InstallError> {
    Ok(!has_record(client).await? || recorded(client, kind, name).await?.is_some())
}

/// Whether skor's schema has its record of the objects it created (an
/// install of this version or later made it).
async fn has_record(client: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass('skor.created_object') IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
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
        .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[slot])
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
    check_failover_support(client, config).await?;
    let slot = &config.source.slot;
    if let Some(status) = slot_status(client, slot).await? {
        if let Some(reason) = status.invalidated() {
            return Err(InstallError::Schema(format!(
                "replication slot \"{slot}\" was invalidated by PostgreSQL ({reason}): {}",
                invalidated_howto(slot)
            )));
        }
        if let Some(drift) = failover_drift(config, &status) {
            return Err(InstallError::Schema(drift));
        }
    }
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
    let problems = drift(client, &config.source.publication, &config_summary(config)).await?;
    if !problems.is_empty() {
        return Err(InstallError::Schema(format!(
            "the publication is not what skor install made from this config:\n  - {}",
            problems.join("\n  - ")
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
