//! What the stream does not say about a relation, read from the catalog:
//! the JSON kind of columns of non-built-in types, and the primary key.
//! Shared by the wal source and `skor tail`.

use std::collections::HashMap;

use tokio_postgres::Client;
use tracing::warn;

use super::pgoutput::Relation;
use super::relations::{Rules, Table};
use super::render::{builtin_kind, resolve_kinds, Kind};
use crate::postgres::catalog as pg_catalog;
use crate::postgres::describe;

/// Prepares `relation` under `rules`. Without a catalog, or when it fails,
/// values of non-built-in types render as strings and the replica identity
/// keys the rows; the flag says whether the catalog answered.
pub async fn prepare(
    catalog: Option<&Client>,
    relation: &Relation,
    rules: &Rules,
) -> (Table, bool) {
    let mut healthy = true;
    let unknown: Vec<u32> = relation
        .columns
        .iter()
        .filter(|c| builtin_kind(c.type_oid).is_none())
        .map(|c| c.type_oid)
        .collect();
    let mut resolved = HashMap::new();
    if !unknown.is_empty() {
        match catalog {
            Some(catalog) => match resolve_kinds(catalog, &unknown).await {
                Ok(kinds) => resolved = kinds,
                Err(error) => {
                    healthy = false;
                    warn!(error = %describe(&error), table = %relation.name,
                          "cannot read column types; their values render as strings");
                }
            },
            None => warn!(table = %relation.name,
                          "no catalog connection; values of non-built-in types render as strings"),
        }
    }
    let kinds: Vec<Kind> = relation
        .columns
        .iter()
        .map(|c| {
            builtin_kind(c.type_oid)
                .or_else(|| resolved.get(&c.type_oid).cloned())
                .unwrap_or(Kind::Text)
        })
        .collect();
    let primary = match catalog.filter(|_| healthy) {
        Some(catalog) => match catalog
            .query_one(pg_catalog::PRIMARY_KEY_BY_OID, &[&relation.id])
            .await
        {
            Ok(row) => Some(row.get::<_, Vec<String>>(0)),
            Err(error) => {
                healthy = false;
                warn!(error = %describe(&error), table = %relation.name,
                      "cannot read the primary key; the replica identity keys its rows");
                None
            }
        },
        None => None,
    };
    (
        Table::new(relation, kinds, primary.as_deref(), rules),
        healthy,
    )
}
