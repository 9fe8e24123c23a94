//! The catalog queries skor makes about users' tables, each written once:
//! a table's kind, columns and primary key, and the primary keys of every
//! table with triggers. Sessions pin `search_path = pg_catalog, pg_temp`,
//! so the catalog's names cannot be shadowed.

/// `rel`'s columns (`text[]`), in index order, of its index that `flag`
/// marks (`indisprimary`, `indisreplident`); empty when it has none.
/// `rel` is an SQL expression of type `oid`.
macro_rules! index_columns {
    ($rel:literal, $flag:literal) => {
        concat!(
            "array(SELECT a.attname::text FROM pg_catalog.pg_index i \
               CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
               JOIN pg_catalog.pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              WHERE i.indrelid = ",
            $rel,
            " AND i.",
            $flag,
            " ORDER BY k.ord)"
        )
    };
}
pub(crate) use index_columns;

/// The primary-key columns of the table named `$1` (text, quoted as
/// `to_regclass` takes it), in key order; empty when it has none.
pub const PRIMARY_KEY_BY_NAME: &str = concat!(
    "SELECT ",
    index_columns!("pg_catalog.to_regclass($1)", "indisprimary")
);

/// The primary-key columns of the relation whose oid is `$1`, in key order.
pub const PRIMARY_KEY_BY_OID: &str = concat!("SELECT ", index_columns!("$1", "indisprimary"));

/// The table named `$1`: its relkind, its columns in order and its
/// primary key; no row when it does not exist.
pub const TABLE_SHAPE: &str = concat!(
    "SELECT c.relkind::text, \
            array(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                   ORDER BY a.attnum), ",
    index_columns!("c.oid", "indisprimary"),
    " FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)"
);

/// Schema, name and primary-key columns of every table that has a primary
/// key and a trigger of its own.
pub const TRIGGERED_PRIMARY_KEYS: &str = concat!(
    "SELECT n.nspname::text, c.relname::text, ",
    index_columns!("c.oid", "indisprimary"),
    " FROM pg_catalog.pg_class c \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
       AND EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)"
);

/// Tables whose durable statement trigger (`skor.capture_rows()`) no
/// longer sees every row: since `skor install` chose it, the table became
/// a partition or joined an inheritance tree, whose rows also change
/// through statements on another table.
pub const STALE_STATEMENT_TRIGGERS: &str = "\
    SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, c.relname) \
      FROM pg_catalog.pg_trigger t \
      JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE t.tgfoid = pg_catalog.to_regprocedure('skor.capture_rows()') \
       AND (c.relispartition \
            OR EXISTS (SELECT FROM pg_catalog.pg_inherits i \
                        WHERE i.inhrelid = c.oid OR i.inhparent = c.oid)) \
     ORDER BY 1";

/// What to tell the user about `tables`, the result of
/// [`STALE_STATEMENT_TRIGGERS`].
pub fn stale_statement_triggers(tables: &[String]) -> String {
    format!(
        "durable mode: the statement triggers of {} miss the rows written through another \
         table: it became a partition or joined an inheritance tree after `skor install`; \
         run `skor install` again, which gives it row triggers",
        tables.join(", ")
    )
}
