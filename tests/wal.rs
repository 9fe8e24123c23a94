//! Wal mode against a real PostgreSQL with `wal_level = logical`: what the
//! stream turns into events, install and uninstall, and the slot's
//! confirmed position against what the sinks confirmed.

mod common;

use std::time::Duration;

use common::wal::WalDb;
use common::{eventually, status, Hook, Running, TestDb, PATIENCE};

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
    eventually("the slot moves past the insert", || {
        wal.confirmed_lsn.load(std::sync::atomic::Ordering::Relaxed) as i64 >= written
    })
    .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while db.confirmed("skor").await < written {
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL saw the confirmation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let parsed = skor::Config::from_toml(&config, "t.toml").unwrap();
    let mut client = common::connect(&db.dsn()).await;
    let refused = skor::sql::uninstall(&mut client, &parsed, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("is being read"), "{refused}");
    assert_eq!(count("SELECT count(*) FROM pg_publication").await, 1);
    skor.stop().await;
    skor::sql::uninstall(&mut client, &parsed, false)
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
    let config = common::config(&db, "mode = \"wal\"\n[[table]]\nname = \"items\"\n");
    let config = skor::Config::from_toml(&config, "t.toml").unwrap();
    let mut client = common::connect(&db.dsn()).await;
    let error = skor::sql::install(&mut client, &config)
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
