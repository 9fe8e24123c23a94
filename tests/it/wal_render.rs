//! The WAL source's value rendering against the real PostgreSQL: every row
//! of a table of every common type, rendered from each column's text output,
//! must equal `row_to_json` byte for byte, under several time zones.

use crate::common::wal_types::{ROWS_SQL, SCHEMA_SQL, TABLE};
use crate::common::TestDb;
use skor::render::{escape_json, render_value, resolve_kinds, Kind};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

/// Zones with whole-hour, half-hour and negative offsets; America/St_Johns
/// and Europe/Amsterdam were on local mean time in 1899, an offset with
/// seconds.
const ZONES: &[&str] = &[
    "UTC",
    "Asia/Kolkata",
    "America/St_Johns",
    "Europe/Amsterdam",
];

/// The columns of `table` in order, with their type oids.
async fn columns(db: &TestDb, table: &str) -> Vec<(String, u32)> {
    db.client
        .query(
            "SELECT attname::text, atttypid FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .expect("columns")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test]
async fn rendering_text_output_matches_row_to_json() {
    let db = TestDb::new().await;
    db.exec(SCHEMA_SQL).await;
    db.exec(ROWS_SQL).await;
    let columns = columns(&db, TABLE).await;
    let oids: Vec<u32> = columns.iter().map(|(_, oid)| *oid).collect();
    let kinds = resolve_kinds(&db.client, &oids).await.expect("kinds");

    // The simple query protocol returns each value's text output, what
    // pgoutput sends; a `::text` cast is not always that (`true` for `t`,
    // char(n) trimmed).
    let query = format!("SELECT row_to_json(t)::text, t.* FROM {TABLE} t ORDER BY id");
    for zone in ZONES {
        db.exec(&format!("SET DateStyle = ISO; SET TimeZone = '{zone}'"))
            .await;
        let rows: Vec<SimpleQueryRow> = db
            .client
            .simple_query(&query)
            .await
            .expect("rows")
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect();
        assert_eq!(rows.len(), 5);
        for row in &rows {
            let expected = row.get(0).expect("row_to_json");
            let mut out = Vec::new();
            // Where each column's JSON starts, to name the one that differs.
            let mut starts = Vec::new();
            out.push(b'{');
            for (i, (name, oid)) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                starts.push((out.len(), name));
                escape_json(name.as_bytes(), &mut out);
                out.push(b':');
                match row.get(i + 1) {
                    None => out.extend_from_slice(b"null"),
                    Some(text) => render_value(&kinds[oid], text.as_bytes(), &mut out),
                }
            }
            out.push(b'}');
            let rendered = String::from_utf8(out).expect("utf-8");
            if rendered != expected {
                let at = rendered
                    .bytes()
                    .zip(expected.bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(rendered.len().min(expected.len()));
                let column = starts
                    .iter()
                    .rev()
                    .find(|(start, _)| *start <= at)
                    .map_or("?", |(_, name)| name.as_str());
                panic!(
                    "TimeZone {zone}, column {column} differs at byte {at}:\n\
                     rendered    {rendered}\nrow_to_json {expected}"
                );
            }
        }
    }
}

#[tokio::test]
async fn kinds_of_user_types_come_from_the_catalog() {
    let db = TestDb::new().await;
    db.exec(SCHEMA_SQL).await;
    let columns = columns(&db, TABLE).await;
    let oids: Vec<u32> = columns.iter().map(|(_, oid)| *oid).collect();
    let kinds = resolve_kinds(&db.client, &oids).await.expect("kinds");
    let kind = |column: &str| {
        let oid = columns.iter().find(|(name, _)| name == column).unwrap().1;
        kinds[&oid].clone()
    };
    let array = |element: Kind| Kind::Array {
        element: Box::new(element),
        delimiter: b',',
    };
    assert_eq!(kind("c_mood"), Kind::Text);
    assert_eq!(kind("c_posint"), Kind::Number);
    assert_eq!(kind("c_doc"), Kind::Json);
    assert_eq!(kind("c_posint_array"), array(Kind::Number));
    assert_eq!(kind("c_mood_array"), array(Kind::Text));
    assert_eq!(kind("c_int_matrix"), array(Kind::Number));
    assert_eq!(
        kind("c_box_array"),
        Kind::Array {
            element: Box::new(Kind::Text),
            delimiter: b';'
        }
    );

    // Straight from the catalog, the built-in types agree with the list.
    let builtin: Vec<u32> = db
        .client
        .query(
            "SELECT oid FROM pg_type WHERE oid < 10000 AND typtype IN ('b', 'r', 'm', 'd')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let from_catalog = {
        // Fresh oids the list does not know make resolve_kinds ask; wrap
        // each built-in type in a domain to force the catalog path.
        let mut sql = String::new();
        for oid in &builtin {
            sql.push_str(&format!(
                "CREATE DOMAIN d_{oid} AS {}; ",
                db.client
                    .query_one("SELECT format_type($1, NULL)", &[oid])
                    .await
                    .unwrap()
                    .get::<_, String>(0)
            ));
        }
        db.exec(&sql).await;
        let domains: Vec<u32> = db
            .client
            .query(
                "SELECT oid FROM pg_type WHERE typname = ANY($1) ORDER BY typname",
                &[&builtin
                    .iter()
                    .map(|oid| format!("d_{oid}"))
                    .collect::<Vec<_>>()],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(domains.len(), builtin.len());
        resolve_kinds(&db.client, &domains).await.unwrap()
    };
    let mut by_base = std::collections::HashMap::new();
    for row in db
        .client
        .query(
            "SELECT oid, typbasetype FROM pg_type WHERE typname LIKE 'd\\_%' AND typtype = 'd'",
            &[],
        )
        .await
        .unwrap()
    {
        by_base.insert(row.get::<_, u32>(1), row.get::<_, u32>(0));
    }
    for oid in builtin {
        if let Some(kind) = skor::render::builtin_kind(oid) {
            assert_eq!(from_catalog[&by_base[&oid]], kind, "type {oid}");
        }
    }
}
