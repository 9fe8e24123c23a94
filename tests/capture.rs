//! What the triggers capture and what arrives at the webhook: every
//! operation with each column form, rows too big for NOTIFY, bad input.

mod common;

use common::{hook_config, start_installed, Hook, TestDb};

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
    assert_eq!(daemon.stats.source.received.get(), 1);
    daemon.stop().await;
    assert_eq!(hook.requests().len(), 1);
}
