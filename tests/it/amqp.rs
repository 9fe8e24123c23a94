//! The AMQP sink against the real RabbitMQ: what a consumer of the queue
//! sees, in what order, and what happens to a message no queue takes.
use crate::common::amqp::Rabbit;
use crate::common::{config, eventually_true, start_installed, TestDb};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int NOT NULL DEFAULT 0);";

async fn setup(rabbit: &Rabbit, sink_options: &str) -> (TestDb, crate::common::Running) {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(
        &db,
        &format!("[[table]]\nname = \"items\"\n{}", rabbit.sink(sink_options)),
    );
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

#[tokio::test]
async fn a_consumer_gets_the_payload_routing_key_headers_and_persistence() {
    let rabbit = Rabbit::new().await;
    let (db, daemon) = setup(&rabbit, "").await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'abc')")
        .await;
    db.exec("UPDATE items SET name = 'def' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    let messages = rabbit.take(3).await;
    let bodies: Vec<_> = messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"def","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"def","n":0}}"#,
        ]
    );
    let keys: Vec<_> = messages.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "public.items.INSERT",
            "public.items.UPDATE",
            "public.items.DELETE"
        ]
    );
    let first = &messages[0];
    assert_eq!(first.headers["schema"], "public");
    assert_eq!(first.headers["table"], "items");
    assert_eq!(first.headers["op"], "INSERT");
    assert_eq!(first.headers["channel"], "skor");
    assert_eq!(first.delivery_mode, Some(2), "persistent");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("three confirmed", || sink.delivered.get() == 3).await;
    assert_eq!(daemon.stop().await.undelivered, 0);
    assert!(rabbit.rest().await.is_empty(), "no duplicates");
    rabbit.delete().await;
}

#[tokio::test]
async fn the_routing_key_template_and_a_declared_exchange() {
    let rabbit = Rabbit::new().await;
    let (db, daemon) = setup(
        &rabbit,
        "declare_exchange = true\nexchange_type = \"topic\"\nrouting_key = \"cdc.{table}.{op}\"",
    )
    .await;
    db.exec("INSERT INTO items (id) VALUES (7)").await;
    let messages = rabbit.take(1).await;
    assert_eq!(messages[0].routing_key, "cdc.items.INSERT");
    daemon.stop().await;
    rabbit.delete().await;
}

#[tokio::test]
async fn every_row_keeps_its_order_across_1000_updates_of_10_rows() {
    let rabbit = Rabbit::new().await;
    let (db, daemon) = setup(&rabbit, "").await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    // 100 transactions, each updating every row: 1000 events, interleaved.
    for _ in 0..100 {
        db.exec("UPDATE items SET n = n + 1").await;
    }
    let messages = rabbit.take(1010).await;
    let mut last = [-1i64; 11];
    for message in &messages {
        let event: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap() as usize;
        let n = event["data"]["n"].as_i64().unwrap();
        assert_eq!(n, last[id] + 1, "row {id} out of order: {}", message.body);
        last[id] = n;
    }
    assert!(last[1..].iter().all(|&n| n == 100), "{last:?}");
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all confirmed", || sink.delivered.get() == 1010).await;
    assert_eq!(sink.retried.get(), 0);
    daemon.stop().await;
    rabbit.delete().await;
}

#[tokio::test]
async fn an_unroutable_message_is_counted_as_failed_not_dropped_silently() {
    let rabbit = Rabbit::unbound().await;
    let (db, daemon) = setup(&rabbit, "retries = 1\nbackoff_ms = 10").await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("the returned message counted as failed", || {
        sink.failed.get() == 1
    })
    .await;
    assert_eq!((sink.delivered.get(), sink.retried.get()), (0, 1));
    daemon.stop().await;
    rabbit.delete().await;
}

#[tokio::test]
async fn a_missing_exchange_holds_events_until_it_exists() {
    let rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let missing = format!("{}_later", rabbit.exchange);
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n[sink.bus]\ntype = \"amqp\"\nurl = \"{}\"\nexchange = \"{missing}\"\n",
            crate::common::amqp::url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("a failed connect attempt", || sink.disconnected.get() == 1).await;
    assert_eq!(
        (sink.retried.get(), sink.failed.get()),
        (0, 0),
        "a missing exchange costs no retries"
    );
    // Now create it and bind the test's queue: the held event arrives.
    rabbit.add_exchange(&missing).await;
    let messages = rabbit.take(1).await;
    assert!(messages[0].body.contains(r#""id":1"#));
    eventually_true("delivered", || sink.delivered.get() == 1).await;
    daemon.stop().await;
    rabbit.delete_exchange(&missing).await;
    rabbit.delete().await;
}

#[tokio::test]
async fn a_publish_the_broker_closes_the_channel_for_spends_retries_then_fails() {
    let rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    // It exists, so connecting succeeds; each publish to it is refused.
    let internal = format!("{}_internal", rabbit.exchange);
    rabbit.add_internal_exchange(&internal).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n[sink.bus]\ntype = \"amqp\"\nurl = \"{}\"\n\
             exchange = \"{internal}\"\ndeclare_exchange = false\nretries = 2\nbackoff_ms = 10\n",
            crate::common::amqp::url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("the refused event is given up on", || {
        sink.failed.get() == 1
    })
    .await;
    assert_eq!((sink.retried.get(), sink.delivered.get()), (2, 0));
    // Once the exchange accepts publishes, later events flow again.
    rabbit.delete_exchange(&internal).await;
    rabbit.add_exchange(&internal).await;
    db.exec("INSERT INTO items (id) VALUES (2)").await;
    let messages = rabbit.take(1).await;
    assert!(messages[0].body.contains(r#""id":2"#), "{messages:?}");
    eventually_true("delivered", || sink.delivered.get() == 1).await;
    assert_eq!(sink.failed.get(), 1);
    daemon.stop().await;
    rabbit.delete_exchange(&internal).await;
    rabbit.delete().await;
}

#[tokio::test]
async fn durable_events_carry_their_id_and_leave_the_log_once_confirmed() {
    let rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\nmode = \"durable\"\n{}",
            rabbit.sink("")
        ),
    );
    crate::common::install(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1), (2), (3)").await;
    let ids = db.event_ids().await;
    let daemon = crate::common::Running::start(&cfg).await;
    let messages = rabbit.take(3).await;
    let message_ids: Vec<String> = messages
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    let headers: Vec<String> = messages
        .iter()
        .map(|m| m.headers["event_id"].clone())
        .collect();
    assert_eq!(message_ids, ids);
    assert_eq!(headers, ids);
    let durable = daemon.stats.durable.clone().unwrap();
    eventually_true("three finished", || durable.finished.get() == 3).await;
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.event_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    daemon.stop().await;
    rabbit.delete().await;
}

#[tokio::test]
async fn amqps_to_the_plain_amqp_port_fails_clearly_and_hides_the_password() {
    use skor_sink_amqp::{AmqpConfig, AmqpSink};
    use skor_sink_api::Sink;
    // The broker's plain port, reached with TLS: the handshake must fail,
    // and the error must say so without the password.
    let plain = crate::common::amqp::url();
    let tls_url = plain.replacen("amqp://", "amqps://", 1);
    let password = tls_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_string())
        .expect("the test URL has a password");
    let sink = AmqpSink::new(&AmqpConfig::new(tls_url, "")).unwrap();
    let event = skor_sink_api::Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "items".into(),
        op: skor_sink_api::Op::Insert,
        payload: skor_sink_api::Bytes::from_static(b"{}"),
        format: skor_sink_api::Format::Skor,
        key: None,
        id: None,
        seq: 1,
    };
    let error = sink
        .send(&event)
        .await
        .expect_err("no TLS on the plain port");
    let shown = error.to_string();
    assert_eq!(error.kind, skor_sink_api::ErrorKind::Disconnected);
    assert!(shown.starts_with("connecting to amqps://"), "{shown}");
    assert!(shown.contains(":<redacted>@"), "{shown}");
    assert!(shown.contains("does not speak TLS on this port"), "{shown}");
    assert!(!shown.contains(&format!(":{password}@")), "{shown}");
}

/// The error `skor` gives for a config with this `[sink.NAME]` table.
fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    skor::Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn amqp_options_are_checked_where_they_are_written() {
    assert_eq!(
        sink_error("[sink.q]\ntype = \"amqp\"\nurl = \"amqp://h\"\nexchange = \"x\"\nrouting_key = \"{schema}.{tabel}\"\n"),
        "skor.toml:7:15: key `sink.q.routing_key`: unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
    );
    assert_eq!(
        sink_error("[sink.q]\ntype = \"amqp\"\nurl = \"http://guest:pw@h/\"\nexchange = \"x\"\n"),
        "skor.toml:5:7: key `sink.q.url`: url http://guest:<redacted>@h/: expected amqp://... or amqps://..."
    );
}

#[test]
fn a_zero_amqp_connect_timeout_is_refused() {
    let got = sink_error(
        "[sink.q]\ntype = \"amqp\"\nurl = \"amqp://h\"\nexchange = \"x\"\nconnect_timeout_ms = 0\n",
    );
    assert!(
        got.contains("key `sink.q.connect_timeout_ms`: expected 1 to"),
        "{got}"
    );
}
