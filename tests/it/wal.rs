//! Wal mode against a real PostgreSQL with `wal_level = logical`: what the
//! stream turns into events, install and uninstall, and the slot's
//! confirmed position against what the sinks confirmed.

use std::time::Duration;

use crate::common::wal::WalDb;
use crate::common::{eventually, eventually_true, status, Hook, Running, TestDb};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, note text);";

#[tokio::test]
async fn each_operation_arrives_as_the_trigger_would_have_sent_it() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY, title text, body text, secret text);")
        .await;
    let hook = Hook::start().await;
    let config = db.config(&format!(
        "[[table]]\nname = \"items\"\n\
         [[table]]\nname = \"notes\"\ncolumns = {{ insert = [\"id\", \"title\"], update = [\"id\", \"body\"], delete = [\"id\"] }}\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n",
        hook.url()
    ));
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec(
        "INSERT INTO items VALUES (1, 'a', NULL);\
         UPDATE items SET name = 'b \"quoted\"' WHERE id = 1;\
         UPDATE items SET id = 2 WHERE id = 1;\
         DELETE FROM items WHERE id = 2;\
         INSERT INTO notes VALUES (7, 't', 'b', 's');\
         UPDATE notes SET body = 'c' WHERE id = 7;\
         DELETE FROM notes WHERE id = 7;",
    )
    .await;
    let bodies: Vec<String> = hook
        .wait_for(7)
        .await
        .iter()
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"a","note":null}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"b \"quoted\"","note":null}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"name":"b \"quoted\"","note":null}, "old_key" : {"id":1}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":2}}"#,
            r#"{"table" : "notes", "schema" : "public", "op" : "INSERT", "data" : {"id":7,"title":"t"}}"#,
            r#"{"table" : "notes", "schema" : "public", "op" : "UPDATE", "data" : {"id":7,"body":"c"}}"#,
            r#"{"table" : "notes", "schema" : "public", "op" : "DELETE", "data" : {"id":7}}"#,
        ]
    );
    // The publication carries the listed columns and the key, not `secret`.
    let list: String = db
        .client
        .query_one(
            "SELECT array_to_string(attnames, ',') FROM pg_publication_tables \
              WHERE pubname = 'skor' AND tablename = 'notes'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(list, "id,title,body");
    skor.stop().await;
}

#[tokio::test]
async fn the_slot_never_passes_an_event_a_sink_has_not_confirmed() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::scripted(Vec::new(), status(503)).await;
    let config = db.hook_config(
        "name = \"items\"",
        &hook,
        "retries = 1000\nbackoff_ms = 20\nbackoff = \"linear\"\nmax_backoff_ms = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    db.install(&config).await;
    let before = db.confirmed("skor").await;
    let skor = Running::start(&config).await;
    db.exec("INSERT INTO items VALUES (1, 'held', NULL);").await;
    let written = db.current().await;
    hook.wait_for(3).await;
    // Transactions of a table skor does not capture pass meanwhile.
    db.exec("CREATE TABLE other (id int); INSERT INTO other VALUES (1);")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let confirmed = db.confirmed("skor").await;
    assert!(
        confirmed < written,
        "the slot stays before the unconfirmed insert: confirmed {confirmed}, insert ends by {written} (was {before})"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", skor.admin.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skor_wal_lag_bytes "))
        .expect("the lag metric")
        .parse()
        .unwrap();
    assert!(lag > 0.0, "lag shows the held event: {lag}");
    hook.answer(status(200));
    let wal = skor.stats.wal.clone().unwrap();
    eventually_true("the slot moves past the insert", || {
        wal.confirmed_lsn.load(std::sync::atomic::Ordering::Relaxed) as i64 >= written
    })
    .await;
    eventually("PostgreSQL to see the confirmation", || async {
        let confirmed = db.confirmed("skor").await;
        if confirmed >= written {
            Ok(())
        } else {
            Err(confirmed)
        }
    })
    .await;
    skor.stop().await;
}

#[tokio::test]
async fn uninstall_leaves_no_slot_and_no_publication() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let config = db.config("[[table]]\nname = \"items\"\n");
    db.install(&config).await;
    let count = |sql: &'static str| {
        let client = &db.client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM pg_replication_slots").await, 1);
    assert_eq!(count("SELECT count(*) FROM pg_publication").await, 1);
    // A running reader holds the slot: uninstall refuses and changes nothing.
    let skor = Running::start(&config).await;
    // The daemon is running once its stream holds the slot: before that,
    // uninstall could drop the publication and only then find the reader.
    eventually("the daemon reads the slot", || async {
        count("SELECT count(*) FROM pg_replication_slots WHERE active").await == 1
    })
    .await;
    let parsed = skor::Config::from_toml(&config, "t.toml").unwrap();
    let mut client = crate::common::connect(&db.dsn()).await;
    let refused = skor::install::uninstall(&mut client, &parsed, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is being read"), "{refused}");
    assert_eq!(count("SELECT count(*) FROM pg_publication").await, 1);
    skor.stop().await;
    skor::install::uninstall(&mut client, &parsed, false)
        .await
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM pg_replication_slots").await, 0);
    assert_eq!(count("SELECT count(*) FROM pg_publication").await, 0);
}

#[tokio::test]
async fn install_says_how_to_turn_on_logical_decoding() {
    // The shared server runs with wal_level = replica.
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = crate::common::config(&db, "mode = \"wal\"\n[[table]]\nname = \"items\"\n");
    let config = skor::Config::from_toml(&config, "t.toml").unwrap();
    let mut client = crate::common::connect(&db.dsn()).await;
    let error = skor::install::install(&mut client, &config)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "wal mode needs wal_level = logical, and it is replica: as a superuser run \
         `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL \
         (max_replication_slots and max_wal_senders must stay above 0)"
    );
}

#[tokio::test]
async fn install_refuses_a_table_whose_updates_postgresql_would_then_refuse() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE loose (id int, name text);").await;
    let error = db
        .try_install(&db.config("[[table]]\nname = \"loose\"\n"))
        .await
        .unwrap_err();
    assert!(
        error.contains("table public.loose has no replica identity"),
        "{error}"
    );
    // Nothing was published, and the application's UPDATEs still work.
    db.exec("UPDATE loose SET name = 'x';").await;
    // Asked for, install gives it REPLICA IDENTITY FULL instead.
    db.install(&db.config("[[table]]\nname = \"loose\"\nreplica_identity = \"full\"\n"))
        .await;
    db.exec("INSERT INTO loose VALUES (1, 'a'); UPDATE loose SET name = 'y';")
        .await;
    let error = db
        .try_install(&db.config("[[table]]\nname = \"loose\"\nold = true\n"))
        .await;
    assert!(error.is_ok(), "already FULL: {error:?}");
}

/// The `data` object of an event payload, as the bytes skor sent.
fn data_of(payload: &str) -> &str {
    let start = payload.find("\"data\" : ").expect("a data field") + "\"data\" : ".len();
    let rest = &payload[start..];
    // `data` is the last field unless `old`, `old_key` or
    // `unchanged_toast` follow it.
    let end = [
        ", \"old\" : ",
        ", \"old_key\" : ",
        ", \"unchanged_toast\" : ",
    ]
    .iter()
    .filter_map(|field| rest.find(field))
    .min()
    .unwrap_or(rest.len() - 1);
    &rest[..end]
}

/// The bodies of the first `n` requests, once they arrived.
async fn bodies(hook: &Hook, n: usize) -> Vec<String> {
    hook.wait_for(n).await.into_iter().map(|r| r.body).collect()
}

#[tokio::test]
async fn every_common_type_arrives_as_row_to_json_renders_it() {
    use crate::common::wal_types::{ROWS_SQL, SCHEMA_SQL, TABLE};
    let db = WalDb::start().await;
    // A zone whose offsets are neither whole hours nor, in 1899, whole
    // minutes, as the server's default: the replication connection takes
    // it. The reload reaches sessions that start after it.
    db.exec("ALTER SYSTEM SET TimeZone = 'America/St_Johns'")
        .await;
    db.exec("SELECT pg_reload_conf()").await;
    eventually("new sessions run in America/St_Johns", || async {
        let client = crate::common::connect(&db.dsn()).await;
        let zone: String = client
            .query_one("SELECT current_setting('TimeZone')", &[])
            .await
            .unwrap()
            .get(0);
        zone == "America/St_Johns"
    })
    .await;
    db.exec(SCHEMA_SQL).await;
    let hook = Hook::start().await;
    let config = db.hook_config(&format!("name = \"{TABLE}\""), &hook, "");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec(ROWS_SQL).await;
    let mut received: Vec<(i64, String)> = hook
        .wait_for(5)
        .await
        .iter()
        .map(|r| (crate::common::row_id(&r.body), r.body.clone()))
        .collect();
    received.sort();
    assert_eq!(received.len(), 5, "one event per row");

    // Every column of the table is compared: it has no composite, no
    // hstore-like type with a cast to json, and no int2vector/oidvector,
    // the types render.rs documents as rendered differently.
    db.exec("SET DateStyle = ISO; SET TimeZone = 'America/St_Johns';")
        .await;
    let expected: Vec<String> = db
        .client
        .query(
            &format!("SELECT row_to_json(t)::text FROM {TABLE} t ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for ((id, body), expected) in received.iter().zip(&expected) {
        assert!(
            body.starts_with(&format!(
                "{{\"table\" : \"{TABLE}\", \"schema\" : \"public\", \"op\" : \"INSERT\", \"data\" : "
            )),
            "{body}"
        );
        assert_eq!(
            data_of(body),
            expected,
            "row {id}: the WAL event's data against row_to_json"
        );
    }
    skor.stop().await;
}

#[tokio::test]
async fn a_partitioned_table_captured_by_its_root_names_the_root() {
    let db = WalDb::start().await;
    db.exec(
        "CREATE TABLE orders (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);\
         CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');\
         CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');",
    )
    .await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"orders\"", &hook, "max_in_flight = 1\n");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'eu'), (2, 'us');\
         INSERT INTO orders_us VALUES (3, 'us');\
         CREATE TABLE orders_ap PARTITION OF orders FOR VALUES IN ('ap');\
         INSERT INTO orders VALUES (4, 'ap');\
         UPDATE orders SET id = 5 WHERE id = 3;",
    )
    .await;
    let bodies = bodies(&hook, 5).await;
    assert_eq!(
        bodies,
        [
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"region":"eu"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"region":"us"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":3,"region":"us"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {"id":4,"region":"ap"}}"#,
            r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":5,"region":"us"}, "old_key" : {"id":3,"region":"us"}}"#,
        ]
    );
    skor.stop().await;
}

#[tokio::test]
async fn old_rows_and_unchanged_toasted_values() {
    let db = WalDb::start().await;
    // `full_docs` has REPLICA IDENTITY FULL and `old = true`; `docs` keeps
    // the default identity. EXTERNAL storage keeps `body` out of line and
    // uncompressed, so an UPDATE of another column leaves it unchanged
    // TOAST in the WAL.
    db.exec(
        "CREATE TABLE full_docs (id int PRIMARY KEY, title text, body text);\
         CREATE TABLE docs (id int PRIMARY KEY, title text, body text);\
         ALTER TABLE full_docs ALTER COLUMN body SET STORAGE EXTERNAL;\
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let hook = Hook::start().await;
    let config = db.config(&format!(
        "[[table]]\nname = \"full_docs\"\nold = true\nreplica_identity = \"full\"\n\
         [[table]]\nname = \"docs\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n",
        hook.url()
    ));
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let big: String = db
        .client
        .query_one(
            "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(big.len() > 8192);
    for table in ["full_docs", "docs"] {
        db.client
            .execute(&format!("INSERT INTO {table} VALUES (1, 't', $1)"), &[&big])
            .await
            .unwrap();
        // The value really lives in the TOAST table.
        let toasted: i64 = db
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}",
                    db.client
                        .query_one(
                            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = $1",
                            &[&table],
                        )
                        .await
                        .unwrap()
                        .get::<_, String>(0)
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(toasted > 0, "{table}.body is TOASTed");
        db.exec(&format!(
            "UPDATE {table} SET title = 'u' WHERE id = 1; DELETE FROM {table} WHERE id = 1;"
        ))
        .await;
    }
    // The 9,600-character value shows as `BIG` in a failure.
    let bodies: Vec<String> = bodies(&hook, 6)
        .await
        .iter()
        .map(|b| b.replace(&big, "BIG"))
        .collect();
    let big = "BIG";
    let head = |table: &str, op: &str| {
        format!(
            "{{\"table\" : \"{table}\", \"schema\" : \"public\", \"op\" : \"{op}\", \"data\" : "
        )
    };
    assert_eq!(
        bodies,
        [
            format!(
                "{}{{\"id\":1,\"title\":\"t\",\"body\":\"{big}\"}}}}",
                head("full_docs", "INSERT")
            ),
            // The unchanged body is filled in from the old row, in both.
            format!(
                "{}{{\"id\":1,\"title\":\"u\",\"body\":\"{big}\"}}, \"old\" : {{\"id\":1,\"title\":\"t\",\"body\":\"{big}\"}}}}",
                head("full_docs", "UPDATE")
            ),
            format!(
                "{}{{\"id\":1,\"title\":\"u\",\"body\":\"{big}\"}}}}",
                head("full_docs", "DELETE")
            ),
            format!(
                "{}{{\"id\":1,\"title\":\"t\",\"body\":\"{big}\"}}}}",
                head("docs", "INSERT")
            ),
            // Without FULL identity the WAL has no value for it: left out,
            // and named.
            format!(
                "{}{{\"id\":1,\"title\":\"u\"}}, \"unchanged_toast\" : [\"body\"]}}",
                head("docs", "UPDATE")
            ),
            // And a DELETE carries only the key.
            format!("{}{{\"id\":1}}}}", head("docs", "DELETE")),
        ]
    );
    skor.stop().await;
}

#[tokio::test]
async fn truncate_and_schema_changes_mid_stream_do_not_stop_the_stream() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"items\"", &hook, "max_in_flight = 1\n");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let wal = skor.stats.wal.clone().unwrap();
    db.exec("INSERT INTO items VALUES (1, 'a', NULL);").await;
    hook.wait_for(1).await;
    db.exec(
        "ALTER TABLE items ADD COLUMN extra int DEFAULT 5;\
         INSERT INTO items VALUES (2, 'b', NULL, 9);",
    )
    .await;
    hook.wait_for(2).await;
    db.exec(
        "ALTER TABLE items DROP COLUMN note;\
         INSERT INTO items VALUES (3, 'c');",
    )
    .await;
    hook.wait_for(3).await;
    db.exec("TRUNCATE items;").await;
    eventually_true("the TRUNCATE is counted", || wal.truncates.get() == 1).await;
    db.exec("INSERT INTO items VALUES (4, 'd', 6); UPDATE items SET extra = 7 WHERE id = 4;")
        .await;
    let bodies = bodies(&hook, 5).await;
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"a","note":null}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"name":"b","note":null,"extra":9}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":3,"name":"c","extra":5}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":4,"name":"d","extra":6}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":4,"name":"d","extra":7}}"#,
        ]
    );
    assert_eq!(wal.truncates.get(), 1, "one TRUNCATE seen");
    assert!(wal.link.is_up(), "the stream is still up");
    assert_eq!(wal.link.reconnects.get(), 0, "and never had to reconnect");
    skor.stop().await;
}

#[tokio::test]
async fn writes_to_other_tables_move_the_slot_while_the_captured_one_is_idle() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE other (id int);").await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"items\"", &hook, "");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    eventually("the slot is being read", || async {
        db.client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'skor'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    // Several rounds: the position keeps moving, not once.
    for round in 0..3 {
        db.exec(&format!(
            "INSERT INTO other SELECT g FROM generate_series(1, 1000) g; -- round {round}"
        ))
        .await;
        let written = db.current().await;
        eventually(
            &format!("round {round}: confirmed_flush_lsn reaches {written}"),
            || async { db.confirmed("skor").await >= written },
        )
        .await;
    }
    assert_eq!(hook.count(), 0, "nothing of `other` was delivered");
    skor.stop().await;
}

#[tokio::test]
async fn an_event_a_sink_gives_up_on_becomes_a_dead_letter_and_the_slot_moves_on() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::scripted(vec![status(400)], status(200)).await;
    let config = db.hook_config("name = \"items\"", &hook, "retries = 5\nbackoff_ms = 10\n");
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec("INSERT INTO items VALUES (1, 'refused', NULL);")
        .await;
    let written = db.current().await;
    let requests = hook.wait_for(1).await;
    assert_eq!(requests[0].status, 400);
    eventually("the dead letter is written", || async {
        db.client
            .query_one("SELECT count(*) FROM skor.event_log", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    let row = db
        .client
        .query_one(
            "SELECT state::text, table_name, op, payload::text, last_error, attempts \
               FROM skor.event_log",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dead");
    assert_eq!(row.get::<_, String>(1), "items");
    assert_eq!(row.get::<_, String>(2), "INSERT");
    assert_eq!(
        row.get::<_, String>(3),
        r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"refused","note":null}}"#
    );
    let error: String = row.get(4);
    assert!(error.contains("400"), "the sink's error: {error}");
    assert_eq!(row.get::<_, i32>(5), 1, "a 400 is not retried");
    assert_eq!(hook.count(), 1, "a 400 is not retried");
    eventually("the slot moves past the dead letter", || async {
        db.confirmed("skor").await >= written
    })
    .await;
    assert_eq!(skor.stats.wal.as_ref().unwrap().dead_lettered.get(), 1);
    // And what follows is delivered.
    db.exec("INSERT INTO items VALUES (2, 'fine', NULL);").await;
    let requests = hook.wait_for(2).await;
    assert_eq!(crate::common::row_id(&requests[1].body), 2);
    assert_eq!(requests[1].status, 200);
    skor.stop().await;
}
