//! The Pub/Sub sink against the Pub/Sub emulator (each test starts its
//! own): what a subscriber pulls (payload, attributes, ordering key), per-row
//! order over an ordered subscription, an emulator killed and restarted
//! while events flow, and config errors named where they are written.
use std::collections::HashMap;

use crate::common::pubsub::{Emulator, Gate, Message, PROJECT};
use crate::common::{assert_every_id, config, eventually_true, inserts, start_installed, TestDb};

const TABLES: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int NOT NULL DEFAULT 0);
                      CREATE TABLE notes (body text);";

fn topic_prefix() -> String {
    format!("skor_test_{:016x}", rand::random::<u64>())
}

/// The sink's table, publishing to `{prefix}.{table}` through `host`.
fn sink(host: &str, prefix: &str, options: &str) -> String {
    format!(
        "[sink.bus]\ntype = \"pubsub\"\nproject = \"{PROJECT}\"\ntopic = \"{prefix}.{{table}}\"\n\
         emulator_host = \"{host}\"\n{options}\n"
    )
}

async fn setup(emulator: &Emulator, host: &str, prefix: &str) -> (TestDb, crate::common::Running) {
    for table in ["items", "notes"] {
        emulator.create_topic(&format!("{prefix}.{table}")).await;
    }
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n[[table]]\nname = \"notes\"\n{}",
            sink(host, prefix, "")
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

#[tokio::test]
async fn a_subscriber_gets_the_payload_attributes_and_ordering_key() {
    let emulator = Emulator::start().await;
    let prefix = topic_prefix();
    let (db, daemon) = setup(&emulator, &emulator.host(), &prefix).await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'abc')")
        .await;
    db.exec("UPDATE items SET name = 'def' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    db.exec("INSERT INTO notes VALUES ('hello')").await;
    let items = emulator.pull(&format!("{prefix}.items"), 3).await;
    let bodies: Vec<_> = items.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"def","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"def","n":0}}"#,
        ]
    );
    assert!(items.iter().all(|m| m.ordering_key == r#"{"id":1}"#));
    let first = &items[0].attributes;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["channel", "event_id", "op", "schema", "table"]
    );
    assert_eq!(
        (
            first["schema"].as_str(),
            first["table"].as_str(),
            first["op"].as_str(),
            first["channel"].as_str()
        ),
        ("public", "items", "INSERT", "skor")
    );
    // Notify mode: an id of this process, distinct per event.
    assert!(first["event_id"].starts_with("msg_"), "{first:?}");
    assert_ne!(items[1].attributes["event_id"], first["event_id"]);
    // A table without a key is ordered as a whole.
    let notes = emulator.pull(&format!("{prefix}.notes"), 1).await;
    assert_eq!(notes[0].ordering_key, "public.notes");
    assert_eq!(notes[0].attributes["table"], "notes");
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("four published", || sink.delivered.get() == 4).await;
    assert_eq!(daemon.stop().await.undelivered, 0);
    assert!(
        emulator
            .pull_once(&format!("{prefix}.items"))
            .await
            .is_empty(),
        "no duplicates"
    );
}

/// Checks that each row's `n` counts up by one, message after message,
/// under the row's own ordering key.
fn assert_per_row_order(messages: &[Message], rows: usize, updates: i64) {
    let mut last: HashMap<i64, i64> = HashMap::new();
    for message in messages {
        let event: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap();
        let n = event["data"]["n"].as_i64().unwrap();
        let previous = last.get(&id).copied().unwrap_or(-1);
        assert_eq!(n, previous + 1, "row {id} out of order: {}", message.body);
        assert_eq!(message.ordering_key, format!("{{\"id\":{id}}}"));
        last.insert(id, n);
    }
    assert_eq!(last.len(), rows);
    assert!(last.values().all(|&n| n == updates), "{last:?}");
}

#[tokio::test]
async fn every_row_keeps_its_order_across_1000_updates_of_10_rows() {
    let emulator = Emulator::start().await;
    let prefix = topic_prefix();
    let (db, daemon) = setup(&emulator, &emulator.host(), &prefix).await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    for _ in 0..100 {
        db.exec("UPDATE items SET n = n + 1").await;
    }
    let messages = emulator.pull(&format!("{prefix}.items"), 1010).await;
    // The ordered subscription hands each key's messages out in the order
    // Pub/Sub received them; keys interleave.
    assert_per_row_order(&messages, 10, 100);
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all published", || sink.delivered.get() == 1010).await;
    assert_eq!(sink.retried.get(), 0);
    daemon.stop().await;
}

#[tokio::test]
async fn an_emulator_killed_and_restarted_loses_no_event_and_spends_no_retry() {
    let mut emulator = Emulator::start().await;
    // skor reaches the emulator through a gate, closed while the emulator
    // restarts: a real Pub/Sub keeps its topics across an outage, a
    // restarted emulator has none until the test makes them again, and
    // skor must not publish into that gap (404 is permanent).
    let gate = Gate::open_to(emulator.addr()).await;
    let prefix = topic_prefix();
    let topic = format!("{prefix}.items");
    let (db, daemon) = setup(&emulator, &gate.addr.to_string(), &prefix).await;
    // Before: published and pulled, so the emulator holds nothing unread
    // when it dies (its messages die with it).
    db.exec(&inserts(1, 100)).await;
    let mut seen = emulator.pull(&topic, 100).await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("the first hundred published", || {
        sink.delivered.get() == 100
    })
    .await;

    emulator.kill();
    gate.close().await;
    // During: events keep coming while nothing listens; skor holds them.
    db.exec(&inserts(101, 200)).await;
    emulator.restart().await;
    for table in ["items", "notes"] {
        emulator.create_topic(&format!("{prefix}.{table}")).await;
    }
    gate.open().await;
    db.exec(&inserts(201, 300)).await;

    eventually_true("every event published", || sink.delivered.get() == 300).await;
    seen.extend(
        emulator
            .pull_within(&topic, 200, std::time::Duration::from_secs(30))
            .await,
    );
    let duplicates = assert_every_id(seen.iter().map(|m| m.body.as_str()), 300);
    eprintln!(
        "restarted emulator: {duplicates} duplicates, {} retries",
        sink.retried.get()
    );
    assert_eq!(sink.failed.get(), 0);
    assert_eq!(sink.retried.get(), 0, "the outage was waited out");
    assert_eq!(daemon.stop().await.undelivered, 0);
}

#[tokio::test]
async fn durable_events_carry_their_stable_id() {
    let emulator = Emulator::start().await;
    let prefix = topic_prefix();
    emulator.create_topic(&format!("{prefix}.items")).await;
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\nmode = \"durable\"\n{}",
            sink(&emulator.host(), &prefix, "")
        ),
    );
    crate::common::install(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1), (2)").await;
    let ids = db.event_ids().await;
    let daemon = crate::common::Running::start(&cfg).await;
    let mut messages = emulator.pull(&format!("{prefix}.items"), 2).await;
    messages.sort_by(|a, b| a.ordering_key.cmp(&b.ordering_key));
    let got: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.attributes["event_id"].as_str(), m.ordering_key.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (format!("evt_{}", ids[0]).as_str(), r#"{"id":1}"#),
            (format!("evt_{}", ids[1]).as_str(), r#"{"id":2}"#),
        ]
    );
    let durable = daemon.stats.durable.clone().unwrap();
    eventually_true("both finished", || durable.finished.get() == 2).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_missing_topic_fails_at_once_and_says_so() {
    let emulator = Emulator::start().await;
    let prefix = topic_prefix();
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n{}",
            sink(&emulator.host(), &prefix, "")
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("the event failed", || sink.failed.get() == 1).await;
    assert_eq!(sink.retried.get(), 0, "404 is permanent");
    daemon.stop().await;
}

/// The error `skor` gives for a config with this `[sink.NAME]` table.
fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    skor::Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn pubsub_options_are_checked_where_they_are_written() {
    assert_eq!(
        sink_error("[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"pg.{tabel}\"\n"),
        "skor.toml:6:9: key `sink.ps.topic`: unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
    );
    assert_eq!(
        sink_error("[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredentials_file = \"/nonexistent/key.json\"\n"),
        "skor.toml:7:20: key `sink.ps.credentials_file`: cannot read /nonexistent/key.json: No such file or directory (os error 2)"
    );
    assert_eq!(
        sink_error("[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"t\"\nemulator_host = \"http://localhost:8085\"\n"),
        "skor.toml:7:17: key `sink.ps.emulator_host`: \"http://localhost:8085\": expected host:port, such as \"localhost:8085\""
    );
    assert_eq!(
        sink_error(
            "[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"t\"\nbatch_size = 5000\n"
        ),
        "skor.toml:7:14: key `sink.ps.batch_size`: expected 1 to 1000, got 5000"
    );
}

#[test]
fn a_key_file_that_is_not_one_is_refused_without_quoting_it() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        r#"{"type": "service_account", "private_key": "s3cret"}"#,
    )
    .unwrap();
    let got = sink_error(&format!(
        "[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"t\"\ncredentials_file = \"{}\"\n",
        file.path().display()
    ));
    assert!(
        got.contains("key `sink.ps.credentials_file`: ")
            && got.contains("not a service-account key file"),
        "{got}"
    );
    assert!(!got.contains("s3cret"), "{got}");
}

#[test]
fn a_zero_pubsub_timeout_is_refused() {
    let got = sink_error(
        "[sink.ps]\ntype = \"pubsub\"\nproject = \"p\"\ntopic = \"t\"\ntimeout_ms = 0\n",
    );
    assert!(
        got.contains("key `sink.ps.timeout_ms`: expected 1 to"),
        "{got}"
    );
}
