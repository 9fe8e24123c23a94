//! Payload options: `old = true` gives UPDATE events the old row, byte for
//! byte the same in notify, durable and wal mode; `metadata` adds the
//! event id, the transaction id, its time and (wal mode) the commit's WAL
//! position, each checked against what PostgreSQL says of the write.

use crate::common::wal::WalDb;
use crate::common::{hook_config, Hook, Running, TestDb};
use tokio_postgres::{Client, SimpleQueryMessage};

const ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, name text, note text, n numeric, ok boolean);";

const CHANGES: &str = "INSERT INTO items VALUES (1, 'a \"q\"', 'x', 1.50, true);\
     UPDATE items SET name = 'b' WHERE id = 1;\
     UPDATE items SET note = 'y' WHERE id = 1;\
     UPDATE items SET id = 2, n = NULL WHERE id = 1;\
     DELETE FROM items WHERE id = 2;";

const OLD_EXPECTED: [&str; 5] = [
    r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"a \"q\"","n":1.50,"ok":true}}"#,
    r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"b","n":1.50,"ok":true}, "old" : {"id":1,"name":"a \"q\"","n":1.50,"ok":true}}"#,
    r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"b","n":1.50,"ok":true}, "old" : {"id":1,"name":"b","n":1.50,"ok":true}}"#,
    r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":2,"name":"b","n":null,"ok":true}, "old_key" : {"id":1}, "old" : {"id":1,"name":"b","n":1.50,"ok":true}}"#,
    r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":2,"name":"b","n":null,"ok":true}}"#,
];

const OLD_TABLE: &str = "name = \"items\"\ncolumns = [\"id\", \"name\", \"n\", \"ok\"]\nold = true";

async fn trigger_mode_bodies(mode: &str) -> Vec<String> {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        &format!("{OLD_TABLE}\nmode = \"{mode}\""),
        &hook,
        "max_in_flight = 1",
    );
    let skor = crate::common::start_installed(&db, &config).await;
    db.exec(CHANGES).await;
    let bodies = hook.wait_for(5).await.into_iter().map(|r| r.body).collect();
    skor.stop().await;
    bodies
}

#[tokio::test]
async fn old_is_the_same_bytes_in_notify_durable_and_wal_mode() {
    let notify = trigger_mode_bodies("notify").await;
    assert_eq!(notify, OLD_EXPECTED);
    let durable = trigger_mode_bodies("durable").await;
    assert_eq!(durable, OLD_EXPECTED);

    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = db.hook_config(
        &format!("{OLD_TABLE}\nreplica_identity = \"full\""),
        &hook,
        "max_in_flight = 1",
    );
    db.install(&config).await;
    let skor = Running::start(&config).await;
    db.exec(CHANGES).await;
    let wal: Vec<String> = hook.wait_for(5).await.into_iter().map(|r| r.body).collect();
    assert_eq!(wal, OLD_EXPECTED);
    skor.stop().await;
}

/// Runs `changes` in one transaction on `client` and returns its 32-bit
/// xid and its start, as the payloads render them.
async fn in_transaction(client: &Client, changes: &str) -> (String, String) {
    let messages = client
        .simple_query(&format!(
            "BEGIN; {changes}; \
             SELECT xid(pg_current_xact_id())::text, \
                    to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); \
             COMMIT;"
        ))
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    (
        row.get(0).unwrap().to_string(),
        row.get(1).unwrap().to_string(),
    )
}

#[tokio::test]
async fn notify_mode_adds_the_transaction_id_and_start() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"items\"\ncolumns = [\"id\"]\nmetadata = [\"tx_time\", \"txid\"]",
        &hook,
        "max_in_flight = 1",
    );
    let skor = crate::common::start_installed(&db, &config).await;
    let (xid, started) = in_transaction(
        &db.client,
        "INSERT INTO items (id) VALUES (1); INSERT INTO items (id) VALUES (2)",
    )
    .await;
    let bodies: Vec<String> = hook.wait_for(2).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [1, 2]
            .map(|id| format!(
                r#"{{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {{"id":{id}}}, "txid" : {xid}, "tx_time" : "{started}"}}"#
            ))
    );
    skor.stop().await;
}

#[tokio::test]
async fn durable_mode_adds_the_event_logs_id_the_transaction_id_and_start() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"items\"\nmode = \"durable\"\ncolumns = [\"id\", \"name\"]\nold = true\n\
         unique_payloads = true\nmetadata = [\"tx_time\", \"event_id\", \"txid\"]",
        &hook,
        "max_in_flight = 1",
    );
    crate::common::install(&db, &config).await;
    let (xid, started) = in_transaction(
        &db.client,
        "INSERT INTO items (id, name) VALUES (1, 'a'); UPDATE items SET name = 'b' WHERE id = 1",
    )
    .await;
    let logged: Vec<(i64, String)> = db
        .client
        .query("SELECT id, payload FROM skor.event_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(logged.len(), 2);
    let skor = Running::start(&config).await;
    let requests = hook.wait_for(2).await;
    for (request, (id, payload)) in requests.iter().zip(&logged) {
        assert_eq!(
            request.headers["skor-event-id"].to_str().unwrap(),
            id.to_string()
        );
        assert_eq!(&request.body, payload);
    }
    let seq = |body: &str| -> i64 {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["skor_seq"]
            .as_i64()
            .unwrap()
    };
    let (insert, update) = (&logged[0], &logged[1]);
    assert_eq!(
        insert.1,
        format!(
            r#"{{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {{"id":1,"name":"a"}}, "skor_seq" : {}, "event_id" : {}, "txid" : {xid}, "tx_time" : "{started}"}}"#,
            seq(&insert.1),
            insert.0
        )
    );
    assert_eq!(
        update.1,
        format!(
            r#"{{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {{"id":1,"name":"b"}}, "old" : {{"id":1,"name":"a"}}, "skor_seq" : {}, "event_id" : {}, "txid" : {xid}, "tx_time" : "{started}"}}"#,
            seq(&update.1),
            update.0
        )
    );
    skor.stop().await;
}

#[tokio::test]
async fn wal_mode_adds_the_event_id_the_transaction_id_the_commit_time_and_lsn() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = db.hook_config(
        "name = \"items\"\ncolumns = [\"id\", \"name\"]\nold = true\nreplica_identity = \"full\"\n\
         metadata = [\"lsn\", \"commit_time\", \"txid\", \"event_id\"]",
        &hook,
        "max_in_flight = 1",
    );
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let before: String = db
        .client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let (xid, started) = in_transaction(
        &db.client,
        "INSERT INTO items (id, name) VALUES (1, 'a'); UPDATE items SET name = 'b' WHERE id = 1",
    )
    .await;
    let (after, now): (String, String) = {
        let row = db
            .client
            .query_one(
                "SELECT pg_current_wal_insert_lsn()::text, \
                        to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let requests = hook.wait_for(2).await;
    let field = |body: &str, name: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(body).unwrap()[name].clone()
    };
    let first = &requests[0].body;
    let lsn = field(first, "lsn").as_str().unwrap().to_string();
    let commit_time = field(first, "commit_time").as_str().unwrap().to_string();
    let in_range: bool = db
        .client
        .query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn AND $1::text::pg_lsn <= $3::text::pg_lsn",
            &[&lsn, &before, &after],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_range, "commit lsn {lsn} within {before}..{after}");
    assert!(
        started <= commit_time && commit_time <= now,
        "{started} <= {commit_time} <= {now}"
    );
    let bodies = [
        r#""op" : "INSERT", "data" : {"id":1,"name":"a"}"#,
        r#""op" : "UPDATE", "data" : {"id":1,"name":"b"}, "old" : {"id":1,"name":"a"}"#,
    ];
    for (request, body) in requests.iter().zip(bodies) {
        let id = request.headers["skor-event-id"].to_str().unwrap();
        assert_eq!(
            request.body,
            format!(
                r#"{{"table" : "items", "schema" : "public", {body}, "event_id" : {id}, "txid" : {xid}, "commit_time" : "{commit_time}", "lsn" : "{lsn}"}}"#
            )
        );
    }
    skor.stop().await;
}

#[tokio::test]
async fn a_read_built_by_skor_payload_never_carries_old() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = hook_config(&db, "name = \"items\"\nold = true", &hook, "");
    crate::common::install(&db, &config).await;
    let payload: String = db
        .client
        .query_one(
            "SELECT skor.payload('READ', 'public', 'items', '[0:6]={skor,ox,\"\",\"\",1,id,id}'::text[], \
                                 '{\"id\":1,\"name\":\"a\"}'::json, '{\"id\":0}'::json, NULL, \
                                 ROW(1, 'a', NULL, NULL, NULL)::items, ROW(0, NULL, NULL, NULL, NULL)::items)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The READ wrote nothing: its transaction has no xid, and gets none.
    assert_eq!(
        payload,
        r#"{"table" : "items", "schema" : "public", "op" : "READ", "data" : {"id":1}, "txid" : null}"#
    );
}
