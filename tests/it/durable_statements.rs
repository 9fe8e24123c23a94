//! Durable mode logs a plain table's INSERTs and DELETEs with one
//! statement-level trigger per statement (`skor.capture_rows()`), and
//! everything else with row triggers (`skor.capture()`). The two must log
//! the same events, row for row, and a statement trigger must never stand
//! where it would miss rows: on a partition, an inheritance child or a
//! partitioned table, whose rows also change through statements on
//! another table.

use crate::common::{bin, config, install, TestDb};

/// Each table twice: `s_*` gets statement triggers, `r_*` row triggers
/// (a `when` that holds for every row asks for them).
const TABLES: &str = "\
    CREATE TABLE s_one (id int PRIMARY KEY, doc json, body text); \
    CREATE TABLE r_one (LIKE s_one INCLUDING ALL); \
    CREATE TABLE s_two (a int, b text, doc json, body text, PRIMARY KEY (a, b)); \
    CREATE TABLE r_two (LIKE s_two INCLUDING ALL); \
    CREATE TABLE s_none (doc json, body text); \
    CREATE TABLE r_none (LIKE s_none INCLUDING ALL);";

/// Values that take every path of the key and payload: json escapes that
/// json's own operators refuse to read back (`\u0000`, a lone surrogate),
/// a text whose JSON needs a `\u` escape, a quote, NULL, non-ASCII.
const ROWS: [&str; 6] = [
    r#"'{"a":"\u0000"}', 'nul'"#,
    r#"'"\ud800"', 'surrogate'"#,
    r#"'1', E'\u0001 control'"#,
    r#"NULL, 'say "hi"'"#,
    r#"'[1, 2]', 'é ü ☃'"#,
    r#"'{}', NULL"#,
];

fn table(name: &str, options: &str) -> String {
    let row = if name.starts_with("r_") {
        "\nwhen = { insert = \"true\", delete = \"true\" }"
    } else {
        ""
    };
    format!("[[table]]\nname = \"{name}\"\nmode = \"durable\"\nops = [\"INSERT\", \"DELETE\"]{row}\n{options}\n")
}

/// Whether each of `table`'s skor triggers fires per row (true) or per
/// statement, by trigger name.
async fn per_row(db: &TestDb, table: &str) -> Vec<(String, bool)> {
    db.client
        .query(
            "SELECT tgname::text, (tgtype & 1) = 1 FROM pg_trigger \
              WHERE tgrelid = $1::text::regclass AND tgname LIKE 'skor%' ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The log's events of `table` in id order: op, row key, partition and
/// payload, with the table's name and the event id written alike for both
/// twins.
async fn logged(
    db: &TestDb,
    table: &str,
    keyed: bool,
) -> Vec<(String, Option<String>, i16, String)> {
    let rows = db
        .client
        .query(
            "SELECT id, op, row_key, part, payload FROM skor.event_log \
              WHERE table_name = $1 ORDER BY id",
            &[&table],
        )
        .await
        .unwrap();
    let twin = table.replacen(&table[..2], "x_", 1);
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let payload: String = r.get(4);
            let payload = payload
                .replace(&format!("\"{table}\""), &format!("\"{twin}\""))
                .replace(&format!("\"event_id\" : {id}"), "\"event_id\" : ID");
            // A keyless row's partition is its table's: it differs.
            let part: i16 = if keyed { r.get(3) } else { -1 };
            (r.get(1), r.get(2), part, payload)
        })
        .collect()
}

#[tokio::test]
async fn statement_triggers_log_what_row_triggers_log_row_for_row() {
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let mut tables = String::new();
    for twin in ["s_", "r_"] {
        tables += &table(&format!("{twin}one"), "");
        // A column list and every trigger-side metadata field: the payload
        // takes skor.payload()'s path.
        tables += &table(
            &format!("{twin}two"),
            "columns = [\"body\", \"a\", \"b\", \"doc\"]\nmetadata = [\"event_id\", \"txid\", \"tx_time\"]",
        );
        tables += &table(&format!("{twin}none"), "");
    }
    let config = config(&db, &tables);
    install(&db, &config).await;
    for name in ["s_one", "s_two", "s_none"] {
        assert_eq!(
            per_row(&db, name).await,
            [("skor_delete".into(), false), ("skor_insert".into(), false)],
            "{name}"
        );
        let twin = name.replacen("s_", "r_", 1);
        assert_eq!(
            per_row(&db, &twin).await,
            [("skor_delete".into(), true), ("skor_insert".into(), true)],
            "{twin}"
        );
    }

    // One transaction: txid and tx_time are the same for both twins.
    let mut sql = String::from("BEGIN;");
    for twin in ["s_", "r_"] {
        let values = |shape: &dyn Fn(usize, &str) -> String| {
            ROWS.iter()
                .enumerate()
                .map(|(i, row)| shape(i, row))
                .collect::<Vec<_>>()
                .join(", ")
        };
        sql += &format!(
            "INSERT INTO {twin}one VALUES {};",
            values(&|i, row| format!("({i}, {row})"))
        );
        sql += &format!(
            "INSERT INTO {twin}two VALUES {};",
            values(&|i, row| format!("({}, 'k{i}', {row})", i % 2))
        );
        sql += &format!(
            "INSERT INTO {twin}none VALUES {};",
            values(&|_, row| format!("({row})"))
        );
        // A statement that changes nothing logs nothing.
        sql += &format!("DELETE FROM {twin}one WHERE id < 0;");
        sql += &format!("DELETE FROM {twin}one WHERE id % 2 = 0; DELETE FROM {twin}two; DELETE FROM {twin}none;");
    }
    sql += "COMMIT;";
    db.client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("a captured write failed: {e:?}"));

    for (name, keyed, events) in [("one", true, 9), ("two", true, 12), ("none", false, 12)] {
        let statement = logged(&db, &format!("s_{name}"), keyed).await;
        let row = logged(&db, &format!("r_{name}"), keyed).await;
        assert_eq!(statement.len(), events, "s_{name}: {statement:#?}");
        assert_eq!(statement, row, "s_{name} against r_{name}");
    }
    // The keys, as the sinks get them.
    let one = logged(&db, "s_one", true).await;
    let keys: Vec<Option<String>> = one.iter().map(|e| e.1.clone()).collect();
    let key = |id: i32| Some(format!("{{\"id\":{id}}}"));
    assert_eq!(
        keys,
        [
            key(0),
            key(1),
            key(2),
            key(3),
            key(4),
            key(5),
            key(0),
            key(2),
            key(4)
        ]
    );
    let two = logged(&db, "s_two", true).await;
    assert_eq!(two[1].1.as_deref(), Some(r#"{"a":1,"b":"k1"}"#));
    assert!(
        two[0].3.starts_with(
            r#"{"table" : "x_two", "schema" : "public", "op" : "INSERT", "data" : {"body":"nul","a":0,"b":"k0","doc":{"a":"\u0000"}}, "event_id" : ID, "txid" : "#
        ),
        "{}",
        two[0].3
    );
}

#[tokio::test]
async fn tables_whose_rows_change_through_other_tables_keep_row_triggers() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE root (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
         CREATE TABLE root_low PARTITION OF root FOR VALUES FROM (0) TO (100); \
         CREATE TABLE parted (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
         CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100); \
         CREATE TABLE parent (id int PRIMARY KEY, v text); \
         CREATE TABLE child () INHERITS (parent); \
         CREATE TABLE plain (id int PRIMARY KEY, v text);",
    )
    .await;
    let mut tables = String::new();
    for name in ["root", "parted_low", "parent", "child", "plain"] {
        tables += &format!(
            "[[table]]\nname = \"{name}\"\nmode = \"durable\"\nops = [\"INSERT\", \"DELETE\"]\n"
        );
    }
    install(&db, &config(&db, &tables)).await;
    for name in ["root", "root_low", "parted_low", "parent", "child"] {
        let triggers = per_row(&db, name).await;
        assert_eq!(triggers.len(), 2, "{name}: {triggers:?}");
        assert!(triggers.iter().all(|(_, row)| *row), "{name}: {triggers:?}");
    }
    assert!(per_row(&db, "plain").await.iter().all(|(_, row)| !row));

    // The partition's rows written through its partitioned table, the
    // child's deleted through its parent: each logged once, under the
    // table whose trigger saw it.
    db.exec(
        "INSERT INTO root VALUES (1, 'a'); INSERT INTO root_low VALUES (2, 'b'); \
         INSERT INTO parted VALUES (3, 'c'); INSERT INTO parted_low VALUES (4, 'd'); \
         INSERT INTO child VALUES (5, 'e'); INSERT INTO parent VALUES (6, 'f'); \
         DELETE FROM parent; DELETE FROM parted; INSERT INTO plain VALUES (7, 'g');",
    )
    .await;
    let events: Vec<(String, String, Option<String>)> = db
        .client
        .query(
            "SELECT table_name, op, row_key FROM skor.event_log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // child has no key: an inheritance child does not inherit its
    // parent's primary key.
    let event = |t: &str, op: &str, id: i32| {
        let key = (t != "child").then(|| format!("{{\"id\":{id}}}"));
        (t.to_string(), op.to_string(), key)
    };
    assert_eq!(
        events,
        [
            event("root", "INSERT", 1),
            event("root", "INSERT", 2),
            event("parted_low", "INSERT", 3),
            event("parted_low", "INSERT", 4),
            event("child", "INSERT", 5),
            event("parent", "INSERT", 6),
            event("parent", "DELETE", 6),
            event("child", "DELETE", 5),
            event("parted_low", "DELETE", 3),
            event("parted_low", "DELETE", 4),
            event("plain", "INSERT", 7),
        ]
    );
}

#[tokio::test]
async fn check_fails_when_a_statement_trigger_table_joins_an_inheritance_tree() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE plain (id int PRIMARY KEY, v text)")
        .await;
    let config = config(
        &db,
        "[[table]]\nname = \"plain\"\nmode = \"durable\"\nops = [\"INSERT\", \"DELETE\"]\n",
    );
    install(&db, &config).await;
    let file = bin::config_file(&config);
    let path = file.path().to_str().unwrap();
    let output = bin::run(&["--config", path, "check", "--connect"]).await;
    assert!(output.status.success(), "{}", bin::stderr(&output));

    // A DELETE on plain now also deletes kid's rows, which plain's
    // statement trigger does not see.
    db.exec("CREATE TABLE kid () INHERITS (plain)").await;
    let output = bin::run(&["--config", path, "check", "--connect"]).await;
    assert!(!output.status.success());
    assert!(
        bin::stderr(&output).contains(
            "durable mode: the statement triggers of public.plain miss the rows written through \
             another table: it became a partition or joined an inheritance tree after `skor \
             install`; run `skor install` again, which gives it row triggers"
        ),
        "{}",
        bin::stderr(&output)
    );
    install(&db, &config).await;
    assert!(per_row(&db, "plain").await.iter().all(|(_, row)| *row));
    let output = bin::run(&["--config", path, "check", "--connect"]).await;
    assert!(output.status.success(), "{}", bin::stderr(&output));
}

#[tokio::test]
async fn rows_deleted_by_a_foreign_key_cascade_are_logged() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE parent_rows (id int PRIMARY KEY); \
         CREATE TABLE child_rows (id int PRIMARY KEY, \
             parent int REFERENCES parent_rows (id) ON DELETE CASCADE);",
    )
    .await;
    let config = config(
        &db,
        "[[table]]\nname = \"child_rows\"\nmode = \"durable\"\nops = [\"INSERT\", \"DELETE\"]\n",
    );
    install(&db, &config).await;
    assert!(per_row(&db, "child_rows").await.iter().all(|(_, row)| !row));
    // PostgreSQL deletes the children with statements of its own: their
    // statement trigger fires for each.
    db.exec(
        "INSERT INTO parent_rows VALUES (1), (2), (3); \
         INSERT INTO child_rows VALUES (10, 1), (11, 1), (20, 2), (30, 3); \
         DELETE FROM parent_rows WHERE id < 3;",
    )
    .await;
    let events: Vec<(String, String)> = db
        .client
        .query("SELECT op, row_key FROM skor.event_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let event = |op: &str, id: i32| (op.to_string(), format!("{{\"id\":{id}}}"));
    assert_eq!(
        events,
        [
            event("INSERT", 10),
            event("INSERT", 11),
            event("INSERT", 20),
            event("INSERT", 30),
            event("DELETE", 10),
            event("DELETE", 11),
            event("DELETE", 20),
        ]
    );
}
