//! A sink's `format`: skor's own payload by default, byte for byte;
//! CloudEvents through the real webhook (one by one and batched), read by
//! the official CloudEvents SDK, and the same CloudEvent through every
//! broker sink; Debezium change events through a real Kafka broker,
//! field by field as Debezium documents them for PostgreSQL.

use cloudevents::{AttributesReader, Data};
use serde_json::Value;

use crate::common::bin::{config_file, run, stderr};
use crate::common::wal::WalDb;
use crate::common::{
    eventually, hook_config, start_installed, status, Hook, Request, Running, TestDb,
};

/// Debezium's PostgreSQL documentation's example table.
const CUSTOMERS: &str = "CREATE TABLE customers (id int PRIMARY KEY, first_name text NOT NULL, \
                         last_name text NOT NULL, email text NOT NULL)";

/// The documentation's example row and the changes it goes through.
const CHANGES: [&str; 3] = [
    "INSERT INTO customers VALUES (1, 'Anne', 'Kretchmar', 'annek@noanswer.org')",
    "UPDATE customers SET first_name = 'Anne Marie' WHERE id = 1",
    "DELETE FROM customers WHERE id = 1",
];

/// One CloudEvent as the SDK reads it, from the bytes skor sent.
fn cloudevent(bytes: &str) -> cloudevents::Event {
    serde_json::from_str::<cloudevents::Event>(bytes)
        .unwrap_or_else(|e| panic!("the CloudEvents SDK refuses {bytes}: {e}"))
}

/// The JSON `data` of a CloudEvent.
fn data(event: &cloudevents::Event) -> Value {
    match event.data() {
        Some(Data::Json(value)) => value.clone(),
        other => panic!("data is not JSON: {other:?}"),
    }
}

/// Checks the attributes of the CloudEvent `event` of a change to row
/// `id` of `customers` in `database` whose skor payload is `payload`.
fn assert_cloudevent_of(event: &cloudevents::Event, database: &str, payload: &Value) {
    assert_eq!(event.specversion().to_string(), "1.0");
    assert_eq!(
        event.source().to_string(),
        format!("/skor/{database}/public/customers")
    );
    let op = payload["op"].as_str().unwrap().to_lowercase();
    assert_eq!(event.ty(), format!("skor.row.{op}"));
    assert_eq!(
        event.subject(),
        Some(format!(r#"{{"id":{}}}"#, payload["data"]["id"]).as_str())
    );
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(&data(event), payload);
}

/// The time a payload's metadata field `field` names, as the SDK reads it.
fn payload_time(payload: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    let text = payload[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {payload}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test]
async fn the_default_format_is_the_payload_as_the_trigger_wrote_it() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    let (default, explicit) = (Hook::start().await, Hook::start().await);
    let cfg = format!(
        "{}[sink.explicit]\ntype = \"webhook\"\nurl = \"{}\"\nformat = \"skor\"\n",
        hook_config(&db, "name = \"customers\"", &default, ""),
        explicit.url()
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(CHANGES[0]).await;
    for hook in [&default, &explicit] {
        let request = &hook.wait_for(1).await[0];
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.body,
            r#"{"table" : "customers", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"first_name":"Anne","last_name":"Kretchmar","email":"annek@noanswer.org"}}"#
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn cloudevents_one_per_request_name_the_row_and_its_transaction() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"customers\"\nmetadata = [\"txid\", \"tx_time\"]",
        &hook,
        "format = \"cloudevents\"\nmax_in_flight = 1",
    );
    let daemon = start_installed(&db, &cfg).await;
    for change in CHANGES {
        db.exec(change).await;
    }
    let requests = hook.wait_for(3).await;
    let mut ids = Vec::new();
    for (request, op) in requests.iter().zip(["INSERT", "UPDATE", "DELETE"]) {
        assert_eq!(
            request.headers["content-type"],
            "application/cloudevents+json"
        );
        let event = cloudevent(&request.body);
        let payload = data(&event);
        assert_eq!(payload["op"], op);
        assert_cloudevent_of(&event, &db.name, &payload);
        // Notify mode: the transaction's start, from the payload's tx_time.
        assert_eq!(event.time(), Some(&payload_time(&payload, "tx_time")));
        assert!(event.id().starts_with("msg_"), "{}", event.id());
        ids.push(event.id().to_string());
    }
    assert_eq!(
        data(&cloudevent(&requests[1].body))["data"]["first_name"],
        "Anne Marie"
    );
    ids.dedup();
    assert_eq!(ids.len(), 3, "every event has its own id: {ids:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_table_without_metadata_gives_cloudevents_without_a_time() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"customers\"",
        &hook,
        "format = \"cloudevents\"",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(CHANGES[0]).await;
    let event = cloudevent(&hook.wait_for(1).await[0].body);
    assert_eq!(event.time(), None);
    assert_cloudevent_of(&event, &db.name, &data(&event));
    daemon.stop().await;
}

/// The CloudEvents of a batched request.
fn batch(request: &Request) -> Vec<cloudevents::Event> {
    let array: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(&request.body).expect("a JSON array body");
    array.iter().map(|e| cloudevent(e.get())).collect()
}

#[tokio::test]
async fn batched_cloudevents_arrive_as_a_cloudevents_batch() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"customers\"",
        &hook,
        "format = \"cloudevents\"\nbatch_size = 50\nbatch_timeout_ms = 200\nmax_in_flight = 1",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(
        "INSERT INTO customers SELECT g, 'first' || g, 'last' || g, g || '@example.com' \
         FROM generate_series(1, 20) g",
    )
    .await;
    let requests = hook
        .wait_until("20 CloudEvents", |requests| {
            requests.iter().map(|r| batch(r).len()).sum::<usize>() >= 20
        })
        .await;
    let mut rows = Vec::new();
    for request in &requests {
        assert_eq!(
            request.headers["content-type"],
            "application/cloudevents-batch+json"
        );
        for event in batch(request) {
            let payload = data(&event);
            assert_cloudevent_of(&event, &db.name, &payload);
            rows.push(payload["data"]["id"].as_i64().unwrap());
        }
    }
    assert!(
        requests.len() < 20,
        "{} requests for 20 events",
        requests.len()
    );
    rows.sort_unstable();
    assert_eq!(rows, (1..=20).collect::<Vec<_>>());
    daemon.stop().await;
}

#[tokio::test]
async fn a_durable_cloudevent_has_its_event_log_id() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"customers\"\nmode = \"durable\"\nmetadata = [\"event_id\"]",
        &hook,
        "format = \"cloudevents\"",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(CHANGES[0]).await;
    let request = &hook.wait_for(1).await[0];
    let event = cloudevent(&request.body);
    let payload = data(&event);
    // The trigger wrote the event log id into the payload.
    let logged = payload["event_id"].as_i64().expect("an event_id");
    assert_eq!(event.id(), format!("evt_{logged}"));
    assert_eq!(
        request.headers["skor-event-id"].to_str().unwrap(),
        logged.to_string()
    );
    assert_cloudevent_of(&event, &db.name, &payload);
    daemon.stop().await;
}

#[tokio::test]
async fn a_dead_letter_keeps_skors_payload_and_its_replay_is_rendered_again() {
    let db = TestDb::new().await;
    db.exec(CUSTOMERS).await;
    // A permanent refusal, then 200s.
    let hook = Hook::scripted(vec![status(400)], status(200)).await;
    let cfg = hook_config(
        &db,
        "name = \"customers\"\nmode = \"durable\"",
        &hook,
        "format = \"cloudevents\"",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(CHANGES[0]).await;
    let refused = cloudevent(&hook.wait_for(1).await[0].body);
    let stored: String = eventually("a dead letter", || async {
        db.client
            .query_opt(
                "SELECT payload FROM skor.event_log WHERE state = 'dead'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, String>(0))
    })
    .await;
    assert_eq!(
        stored,
        r#"{"table" : "customers", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"first_name":"Anne","last_name":"Kretchmar","email":"annek@noanswer.org"}}"#
    );
    let file = config_file(&cfg);
    let replay = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "dead-letters",
        "replay",
        "--all",
    ])
    .await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    let requests = hook.wait_for(2).await;
    assert_eq!(
        requests[1].headers["content-type"],
        "application/cloudevents+json"
    );
    let replayed = cloudevent(&requests[1].body);
    assert_eq!(replayed.id(), refused.id(), "the same event, the same id");
    assert_eq!(data(&replayed), json_value(&stored));
    daemon.stop().await;
}

fn json_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test]
async fn a_wal_cloudevent_carries_the_commit_time() {
    let db = WalDb::start().await;
    db.exec(CUSTOMERS).await;
    let hook = Hook::start().await;
    let cfg = db.hook_config(
        "name = \"customers\"\nmetadata = [\"commit_time\", \"event_id\"]",
        &hook,
        "format = \"cloudevents\"",
    );
    db.install(&cfg).await;
    let daemon = Running::start(&cfg).await;
    let before = chrono::Utc::now();
    db.exec(CHANGES[0]).await;
    let after = chrono::Utc::now();
    let event = cloudevent(&hook.wait_for(1).await[0].body);
    let payload = data(&event);
    let time = *event.time().expect("wal mode knows the commit time");
    assert_eq!(time, payload_time(&payload, "commit_time"));
    // Microseconds of slack: PostgreSQL's clock and ours round apart.
    let slack = chrono::Duration::milliseconds(5);
    assert!(
        before - slack <= time && time <= after + slack,
        "{before} <= {time} <= {after}"
    );
    assert_eq!(event.id(), format!("evt_{}", payload["event_id"]));
    assert_cloudevent_of(&event, "postgres", &payload);
    daemon.stop().await;
}

#[tokio::test]
async fn check_names_the_format_key_and_the_choices() {
    let file = config_file(
        "[source]\ndsn = \"host=127.0.0.1\"\n\n[sink.hook]\ntype = \"webhook\"\nurl = \"http://x/\"\nformat = \"xml\"\n",
    );
    let path = file.path().to_str().unwrap();
    let output = run(&["--config", path, "check"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "key `sink.hook.format`: unknown variant `xml`, expected one of `skor`, `cloudevents`, `debezium`"
        ),
        "{}",
        stderr(&output)
    );

    let file = config_file(
        "[source]\ndsn = \"host=127.0.0.1\"\n\n[sink.hook]\ntype = \"webhook\"\nurl = \"http://x/\"\nformat = \"debezium\"\n",
    );
    let output = run(&["--config", file.path().to_str().unwrap(), "check"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("hook: webhook http://x/ (format debezium)"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Every broker sink carries the CloudEvent exactly as the webhook does.
#[cfg(any(
    feature = "amqp",
    feature = "nats",
    feature = "redis",
    feature = "mqtt",
    feature = "pubsub"
))]
mod brokers {
    use super::*;

    /// A daemon sending `customers`' changes through `sink` (a `[sink.bus]`
    /// table), after the example row's INSERT.
    async fn insert_through(sink: &str) -> (TestDb, Running) {
        let db = TestDb::new().await;
        db.exec(CUSTOMERS).await;
        let cfg = crate::common::config(&db, &format!("[[table]]\nname = \"customers\"\n{sink}"));
        let daemon = start_installed(&db, &cfg).await;
        db.exec(CHANGES[0]).await;
        (db, daemon)
    }

    /// Checks that a broker's message `body` is the CloudEvent of the example
    /// row's INSERT into `db`, as the SDK reads it.
    fn assert_inserted_cloudevent(body: &str, db: &TestDb) {
        let event = cloudevent(body);
        assert_cloudevent_of(&event, &db.name, &data(&event));
        assert_eq!(data(&event)["data"]["first_name"], "Anne");
    }

    #[cfg(feature = "amqp")]
    #[tokio::test]
    async fn amqp_carries_the_same_cloudevent_and_labels_it() {
        let rabbit = crate::common::amqp::Rabbit::new().await;
        let (db, daemon) = insert_through(&rabbit.sink("format = \"cloudevents\"")).await;
        let message = &rabbit.take(1).await[0];
        assert_eq!(
            message.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert_inserted_cloudevent(&message.body, &db);
        assert_eq!(message.headers["op"], "INSERT", "headers stay skor's");
        daemon.stop().await;
        rabbit.delete().await;
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn nats_carries_the_same_cloudevent_and_labels_it() {
        let stream = crate::common::nats::Stream::new().await;
        let (db, daemon) = insert_through(&stream.sink("format = \"cloudevents\"")).await;
        let message = &stream.take(1).await[0];
        assert_eq!(
            message.headers["Content-Type"],
            "application/cloudevents+json"
        );
        assert_inserted_cloudevent(&message.body, &db);
        daemon.stop().await;
        stream.delete().await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_carries_the_same_cloudevent() {
        let streams = crate::common::redis::Streams::new();
        let (db, daemon) = insert_through(&streams.sink("format = \"cloudevents\"")).await;
        let entry = &streams.take(&streams.stream("customers"), 1).await[0];
        assert_inserted_cloudevent(entry.payload(), &db);
        assert_eq!(entry.get("op"), Some("INSERT"), "fields stay skor's");
        daemon.stop().await;
        streams.delete();
    }

    #[cfg(feature = "mqtt")]
    #[tokio::test]
    async fn mqtt_carries_the_same_cloudevent() {
        use crate::common::mqtt::{prefix, shared_broker, Subscriber};
        let prefix = prefix();
        let (host, port) = shared_broker();
        let subscriber = Subscriber::new(&host, port, &format!("{prefix}/#")).await;
        let (db, daemon) = insert_through(&format!(
            "[sink.bus]\ntype = \"mqtt\"\nurl = \"mqtt://{host}:{port}\"\n\
             topic = \"{prefix}/{{table}}\"\nformat = \"cloudevents\"\n"
        ))
        .await;
        let message = &subscriber.take(1).await[0];
        assert_eq!(message.topic, format!("{prefix}/customers"));
        assert_inserted_cloudevent(&message.body, &db);
        daemon.stop().await;
        subscriber.close().await;
    }

    #[cfg(feature = "pubsub")]
    #[tokio::test]
    async fn pubsub_carries_the_same_cloudevent() {
        use crate::common::pubsub::{Emulator, PROJECT};
        let emulator = Emulator::start().await;
        let topic = format!("skor_test_{:016x}", rand::random::<u64>());
        emulator.create_topic(&topic).await;
        let (db, daemon) = insert_through(&format!(
            "[sink.bus]\ntype = \"pubsub\"\nproject = \"{PROJECT}\"\ntopic = \"{topic}\"\n\
             emulator_host = \"{}\"\nformat = \"cloudevents\"\n",
            emulator.host()
        ))
        .await;
        let message = &emulator.pull(&topic, 1).await[0];
        assert_inserted_cloudevent(&message.body, &db);
        assert_eq!(message.attributes["op"], "INSERT", "attributes stay skor's");
        assert_eq!(message.ordering_key, r#"{"id":1}"#);
        daemon.stop().await;
    }
}

#[cfg(feature = "kafka")]
mod debezium {
    //! Debezium's PostgreSQL connector documentation shows `customers`'
    //! create, update and delete events; skor's, through Kafka, field by
    //! field.

    use super::*;
    use crate::common::kafka::{Message, Tansu};
    use skor::backfill::{self, Options, Outcome};
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio_util::sync::CancellationToken;

    fn json(text: &str) -> Value {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    fn topic() -> String {
        format!("skor_test_{:016x}", rand::random::<u64>())
    }

    fn sink(tansu: &Tansu, topic: &str) -> String {
        format!(
            "[sink.bus]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\nformat = \"debezium\"\n",
            tansu.brokers()
        )
    }

    /// The row as Debezium's example shows it, with `first_name`.
    fn anne(first_name: &str) -> Value {
        serde_json::json!({
            "id": 1,
            "first_name": first_name,
            "last_name": "Kretchmar",
            "email": "annek@noanswer.org",
        })
    }

    /// Checks the `source` block the way Debezium documents it for
    /// PostgreSQL, with skor's own `ts_ms`, `txId` and `lsn` plausible.
    fn assert_source(value: &Value, db: &str, snapshot: &str, started_ms: i64) {
        let source = &value["source"];
        assert_eq!(source["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(source["connector"], "postgresql");
        assert_eq!(source["name"], "skor");
        assert_eq!(source["snapshot"], snapshot);
        assert_eq!(source["db"], db);
        assert_eq!(source["schema"], "public");
        assert_eq!(source["table"], "customers");
        assert_eq!(source["xmin"], Value::Null);
        let ts_ms = source["ts_ms"].as_i64().expect("ts_ms is a number");
        assert!(
            started_ms - 5 <= ts_ms && ts_ms <= now_ms(),
            "{ts_ms} after {started_ms}"
        );
        let tx_id = source["txId"].as_u64().expect("txId is a number");
        assert!(tx_id > 2 && tx_id < u64::from(u32::MAX), "{tx_id}");
        let lsn = source["lsn"].as_u64().expect("lsn is a number");
        assert!(lsn > 0, "{lsn}");
        let processed = value["ts_ms"].as_i64().expect("ts_ms is a number");
        assert!(
            ts_ms <= processed && processed <= now_ms(),
            "{ts_ms} {processed}"
        );
    }

    fn value(message: &Message) -> Value {
        json(&message.body)
    }

    #[tokio::test]
    async fn create_update_and_delete_events_are_debeziums() {
        let tansu = Tansu::start().await;
        let topic = topic();
        tansu.create_topic(&topic, 1).await;
        let db = WalDb::start().await;
        db.exec(CUSTOMERS).await;
        let cfg = db.config(&format!(
            "[[table]]\nname = \"customers\"\n{}",
            sink(&tansu, &topic)
        ));
        db.install(&cfg).await;
        let daemon = Running::start(&cfg).await;
        let started = now_ms();
        for change in CHANGES {
            db.exec(change).await;
        }
        let messages = tansu.consume(&topic, 1, 3).await;
        for message in &messages {
            // Debezium's key without schema is the row key.
            assert_eq!(message.key.as_deref(), Some(r#"{"id":1}"#));
        }
        let (create, update, delete) = (
            value(&messages[0]),
            value(&messages[1]),
            value(&messages[2]),
        );

        assert_eq!(create["before"], Value::Null);
        assert_eq!(create["after"], anne("Anne"));
        assert_eq!(create["op"], "c");
        assert_source(&create, "postgres", "false", started);

        // Without `old = true` skor does not know the row before.
        assert_eq!(update["before"], Value::Null);
        assert_eq!(update["after"], anne("Anne Marie"));
        assert_eq!(update["op"], "u");
        assert_source(&update, "postgres", "false", started);

        // As in Debezium's example: without REPLICA IDENTITY FULL the WAL
        // carries only the key of a deleted row.
        assert_eq!(delete["before"], serde_json::json!({"id": 1}));
        assert_eq!(delete["after"], Value::Null);
        assert_eq!(delete["op"], "d");
        assert_source(&delete, "postgres", "false", started);

        // Each statement was its own transaction, committed in order.
        let tx = |v: &Value| v["source"]["txId"].as_u64().unwrap();
        assert!(tx(&create) < tx(&update) && tx(&update) < tx(&delete));
        let lsn = |v: &Value| v["source"]["lsn"].as_u64().unwrap();
        assert!(lsn(&create) < lsn(&update) && lsn(&update) < lsn(&delete));
        daemon.stop().await;
    }

    #[tokio::test]
    async fn an_update_with_old_has_before_and_a_backfill_reads_with_op_r() {
        let tansu = Tansu::start().await;
        let topic = topic();
        tansu.create_topic(&topic, 1).await;
        let db = TestDb::new().await;
        db.exec(CUSTOMERS).await;
        db.exec(CHANGES[0]).await;
        let cfg = crate::common::config(
            &db,
            &format!(
                "[[table]]\nname = \"customers\"\nold = true\nmetadata = [\"txid\", \"tx_time\"]\n{}",
                sink(&tansu, &topic)
            ),
        );
        let daemon = start_installed(&db, &cfg).await;
        let started = now_ms();
        let config = skor::Config::from_toml(&cfg, "test.toml").unwrap();
        let mut client = crate::common::connect(&db.dsn()).await;
        let options = Options {
            tables: Vec::new(),
            condition: None,
            batch: 10,
            restart: false,
        };
        let outcome = backfill::run(&mut client, &config, &options, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Done);
        db.exec(CHANGES[1]).await;
        let messages = tansu.consume(&topic, 1, 2).await;
        let (read, update) = (value(&messages[0]), value(&messages[1]));
        assert_eq!(messages[0].key.as_deref(), Some(r#"{"id":1}"#));

        assert_eq!(read["op"], "r");
        assert_eq!(read["before"], Value::Null);
        assert_eq!(read["after"], anne("Anne"));
        assert_eq!(read["source"]["snapshot"], "true");
        // The backfill's own transaction, which took its xid before the
        // update's; notify mode knows no WAL position.
        let read_tx = read["source"]["txId"].as_u64().expect("the backfill's xid");
        assert!(
            update["source"]["txId"]
                .as_u64()
                .is_some_and(|tx| read_tx < tx),
            "{read} {update}"
        );
        assert_eq!(read["source"]["lsn"], Value::Null);
        assert_eq!(read["source"]["db"], db.name.as_str());

        assert_eq!(update["op"], "u");
        assert_eq!(update["before"], anne("Anne"));
        assert_eq!(update["after"], anne("Anne Marie"));
        let source = &update["source"];
        assert_eq!(source["snapshot"], "false");
        assert!(source["txId"].as_u64().is_some_and(|x| x > 2), "{source}");
        assert_eq!(source["lsn"], Value::Null, "notify mode knows no LSN");
        let ts_ms = source["ts_ms"].as_i64().expect("tx_time gives ts_ms");
        assert!(started - 5 <= ts_ms && ts_ms <= now_ms(), "{ts_ms}");
        daemon.stop().await;
    }
}
