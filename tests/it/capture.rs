//! What the triggers capture and what arrives at the webhook: every
//! operation with each column form, rows too big for NOTIFY, bad input.

use crate::common::{hook_config, start_installed, Hook, TestDb};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, note text);";

async fn capture(columns: &str) -> Vec<String> {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let table = format!("name = \"items\"\ncolumns = {columns}");
    let daemon = start_installed(&db, &hook_config(&db, &table, &hook, "")).await;
    db.exec("INSERT INTO items VALUES (1, 'abc1', 'first')")
        .await;
    db.exec("UPDATE items SET name = 'abc2' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    let bodies = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    daemon.stop().await;
    bodies
}

#[tokio::test]
async fn every_column_delivers_the_original_payload_for_each_op() {
    assert_eq!(
        capture("\"*\"").await,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc1","note":"first"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"abc2","note":"first"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"abc2","note":"first"}}"#,
        ]
    );
}

#[tokio::test]
async fn a_column_list_restricts_data_in_the_listed_order() {
    assert_eq!(
        capture("[\"name\", \"id\"]").await,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"name":"abc1","id":1}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"name":"abc2","id":1}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"name":"abc2","id":1}}"#,
        ]
    );
}

#[tokio::test]
async fn columns_per_operation() {
    assert_eq!(
        capture("{ insert = \"*\", update = [\"id\", \"name\"], delete = [\"id\"] }").await,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc1","note":"first"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"abc2"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1}}"#,
        ]
    );
}

#[tokio::test]
async fn a_row_too_big_for_notify_is_delivered_whole() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let daemon = start_installed(&db, &hook_config(&db, "name = \"items\"", &hook, "")).await;
    let big = "x".repeat(20_000);
    // The user's statement must succeed although NOTIFY would refuse it.
    db.exec(&format!("INSERT INTO items VALUES (1, 'big', '{big}')"))
        .await;
    db.exec("INSERT INTO items VALUES (2, 'small', '')").await;
    let mut bodies = hook.wait_for(2).await;
    // Two rows, two keys: they may arrive in either order.
    bodies.sort_by_key(|r| r.body.contains(r#""id":2"#));
    assert_eq!(
        bodies[0].body,
        format!(
            r#"{{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {{"id":1,"name":"big","note":"{big}"}}}}"#
        )
    );
    assert!(bodies[1].body.contains(r#""id":2"#), "{}", bodies[1].body);
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.oversized_payload", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the stored payload is deleted once fetched");
    daemon.stop().await;
}

#[tokio::test]
async fn a_notification_that_is_not_json_is_skipped_and_counted() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let daemon = start_installed(&db, &hook_config(&db, "name = \"items\"", &hook, "")).await;
    db.exec("NOTIFY skor, 'garbage'").await;
    db.exec(r#"NOTIFY skor, '{"table": "items"}'"#).await;
    db.exec("NOTIFY skor, '{\"skor_ref\": 999}'").await;
    db.exec("INSERT INTO items VALUES (7, 'after', 'garbage')")
        .await;
    let bodies = hook.wait_for(1).await;
    assert!(bodies[0].body.contains(r#""id":7"#), "{}", bodies[0].body);
    assert_eq!(daemon.stats.source.invalid.get(), 3);
    assert_eq!(daemon.stats.events.received.get(), 1);
    daemon.stop().await;
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test]
async fn an_update_that_changes_the_key_names_the_old_key() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let table = "name = \"items\"\ncolumns = [\"id\", \"name\"]";
    let daemon = start_installed(&db, &hook_config(&db, table, &hook, "")).await;
    db.exec("INSERT INTO items VALUES (1, 'a', '')").await;
    db.exec("UPDATE items SET id = 2 WHERE id = 1").await;
    db.exec("UPDATE items SET name = 'b' WHERE id = 2").await;
    let mut bodies: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    daemon.stop().await;
    // The key change moves the row to another key: its order against the
    // new key's events holds, against the old key's does not.
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"a"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"name":"a"}, "old_key" : {"id":1}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"name":"b"}}"#,
        ]
    );
}

/// Updates one row b -> c -> b inside one transaction, then to "end";
/// returns the names the webhook got, once `expected` arrived.
async fn same_row_twice_in_one_transaction(table_options: &str, expected: usize) -> Vec<String> {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let table = format!("name = \"items\"\nops = [\"UPDATE\"]\n{table_options}");
    let daemon = start_installed(&db, &hook_config(&db, &table, &hook, "")).await;
    db.exec("INSERT INTO items VALUES (1, 'a', '')").await;
    db.exec(
        "BEGIN; UPDATE items SET name = 'b'; UPDATE items SET name = 'c'; \
         UPDATE items SET name = 'b'; COMMIT; UPDATE items SET name = 'end';",
    )
    .await;
    // "end" comes last in the row's order: once it is there, all is.
    hook.wait_for(expected).await;
    daemon.stop().await;
    hook.requests()
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            event["data"]["name"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn postgres_merges_identical_notifications_of_one_transaction() {
    // The documented default: the second b is the first one's duplicate.
    assert_eq!(
        same_row_twice_in_one_transaction("", 3).await,
        ["b", "c", "end"]
    );
}

#[tokio::test]
async fn unique_payloads_keep_every_change_of_one_transaction() {
    let db_names = same_row_twice_in_one_transaction("unique_payloads = true", 4).await;
    assert_eq!(db_names, ["b", "c", "b", "end"]);
}

#[tokio::test]
async fn unique_payloads_number_the_events_after_the_original_fields() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let table = "name = \"items\"\ncolumns = [\"id\"]\nunique_payloads = true";
    let daemon = start_installed(&db, &hook_config(&db, table, &hook, "")).await;
    db.exec("INSERT INTO items VALUES (1, 'a', ''); INSERT INTO items VALUES (2, 'a', '');")
        .await;
    let mut bodies: Vec<String> = hook.wait_for(2).await.into_iter().map(|r| r.body).collect();
    daemon.stop().await;
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1}, "skor_seq" : 1}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":2}, "skor_seq" : 2}"#,
        ]
    );
}

#[tokio::test]
async fn install_requires_the_key_in_every_published_column_list() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let table =
        "name = \"items\"\ncolumns = { insert = \"*\", update = [\"name\"], delete = [\"id\"] }";
    let config = skor::Config::from_toml(
        &crate::common::config(&db, &format!("[[table]]\n{table}\n")),
        "t.toml",
    )
    .unwrap();
    let mut client = crate::common::connect(&db.dsn()).await;
    let error = skor::install::install(&mut client, &config)
        .await
        .expect_err("install refuses")
        .to_string();
    assert_eq!(
        error,
        "table public.items: the columns published on UPDATE lack its primary key column(s) [\"id\"]; \
         add them to `columns`, so every event of a row carries its key"
    );
    let triggers: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'skor%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);
}

#[tokio::test]
async fn oversized_payloads_left_from_downtime_are_delivered_on_demand() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let config = hook_config(&db, "name = \"items\"", &hook, "");
    crate::common::install(&db, &config).await;
    // Committed while no skor listens: the notification is lost, the
    // payload stays.
    let big = "x".repeat(10_000);
    db.exec(&format!("INSERT INTO items VALUES (1, 'big', '{big}')"))
        .await;
    let daemon = crate::common::Running::start(&config).await;
    db.wait_for_listener(None).await;
    let mut client = crate::common::connect(&db.dsn()).await;
    let waiting = skor::oversized::list(&client).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].channel, "skor");
    let sent = skor::oversized::deliver(&mut client, &skor::oversized::Which::All)
        .await
        .unwrap();
    assert_eq!(sent, 1);
    let bodies = hook.wait_for(1).await;
    assert!(bodies[0].body.ends_with(&format!("\"note\":\"{big}\"}}}}")));
    daemon.stop().await;
    assert!(skor::oversized::list(&client).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_payload_over_max_payload_bytes_stays_in_the_table_and_is_counted() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let config = hook_config(&db, "name = \"items\"", &hook, "")
        .replace("[[table]]", "max_payload_bytes = 10000\n[[table]]");
    let daemon = start_installed(&db, &config).await;
    db.exec(&format!(
        "INSERT INTO items VALUES (1, 'huge', '{}')",
        "x".repeat(20_000)
    ))
    .await;
    db.exec("INSERT INTO items VALUES (2, 'small', '')").await;
    let bodies = hook.wait_for(1).await;
    assert!(bodies[0].body.contains(r#""id":2"#));
    crate::common::eventually_true("the huge event is counted lost", || {
        daemon.stats.source.lost.get() == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(hook.count(), 1);
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.oversized_payload", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the payload waits to be delivered or dropped");
}
