//! The MQTT sink against a real Mosquitto: what a subscriber sees, in what
//! order, a broker stopped and started while events flow, credentials from
//! the environment, and config errors naming their key.
use std::collections::HashMap;

use crate::common::mqtt::{prefix, shared_broker, Message, Mosquitto, Subscriber};
use crate::common::{config, eventually_true, start_installed, TestDb};
use skor_sink_mqtt::rumqttc::QoS;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int NOT NULL DEFAULT 0);";

/// A database with `items`, and a daemon publishing its changes through a
/// sink `bus` with `sink` as its table.
async fn setup(sink: &str) -> (TestDb, crate::common::Running) {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(&db, &format!("[[table]]\nname = \"items\"\n{sink}"));
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

/// `[sink.bus]` publishing to `url` under `prefix`, with `options`.
fn sink_table(url: &str, prefix: &str, options: &str) -> String {
    format!(
        "[sink.bus]\ntype = \"mqtt\"\nurl = \"{url}\"\ntopic = \"{prefix}/{{schema}}/{{table}}/{{op}}\"\n{options}\n"
    )
}

fn shared_url() -> String {
    let (host, port) = shared_broker();
    format!("mqtt://{host}:{port}")
}

async fn shared_subscriber(prefix: &str) -> Subscriber {
    let (host, port) = shared_broker();
    Subscriber::new(&host, port, &format!("{prefix}/#")).await
}

#[tokio::test]
async fn a_subscriber_gets_the_payload_on_the_templated_topic_with_qos_1_unretained() {
    let prefix = prefix();
    let subscriber = shared_subscriber(&prefix).await;
    let (db, daemon) = setup(&sink_table(&shared_url(), &prefix, "")).await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'abc')")
        .await;
    db.exec("UPDATE items SET name = 'def' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    let messages = subscriber.take(3).await;
    let bodies: Vec<_> = messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"def","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"def","n":0}}"#,
        ]
    );
    let topics: Vec<_> = messages.iter().map(|m| m.topic.clone()).collect();
    assert_eq!(
        topics,
        ["INSERT", "UPDATE", "DELETE"].map(|op| format!("{prefix}/public/items/{op}"))
    );
    assert!(
        messages
            .iter()
            .all(|m| m.qos == QoS::AtLeastOnce && !m.retain),
        "{messages:?}"
    );
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("three acked", || sink.delivered.get() == 3).await;
    assert_eq!(daemon.stop().await.undelivered, 0);
    assert_eq!(subscriber.messages().len(), 3, "no duplicates");
    subscriber.close().await;
}

#[tokio::test]
async fn qos_2_and_retain_reach_a_subscriber_that_comes_later() {
    let prefix = prefix();
    let (host, port) = shared_broker();
    let early = Subscriber::with(&host, port, &format!("{prefix}/#"), QoS::ExactlyOnce, true).await;
    let (db, daemon) = setup(&sink_table(
        &shared_url(),
        &prefix,
        "qos = 2\nretain = true",
    ))
    .await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let live = early.take(1).await;
    // Exactly once end to end; a live subscriber sees no retain flag.
    assert_eq!((live[0].qos, live[0].retain), (QoS::ExactlyOnce, false));
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("PUBCOMP received", || sink.delivered.get() == 1).await;
    daemon.stop().await;
    let topic = format!("{prefix}/public/items/INSERT");
    let late = Subscriber::with(&host, port, &topic, QoS::ExactlyOnce, true).await;
    let kept = late.take(1).await;
    assert_eq!(kept[0].body, live[0].body);
    assert!(kept[0].retain, "the broker kept it: {kept:?}");
    late.clear_retained(&topic).await;
    late.close().await;
    early.close().await;
}

/// Checks that each row's messages count `n` up without a gap: a message
/// may repeat an earlier one (at least once), but never arrive before one
/// that precedes it; and that every row reached `last`.
fn assert_per_row_order(messages: &[Message], rows: usize, last: i64) -> usize {
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut repeats = 0;
    for message in messages {
        let event: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap();
        let n = event["data"]["n"].as_i64().unwrap();
        let high = seen.entry(id).or_insert(-1);
        assert!(
            n <= *high + 1,
            "row {id}: n = {n} arrived before n = {}",
            *high + 1
        );
        if n <= *high {
            repeats += 1;
        }
        *high = (*high).max(n);
    }
    assert_eq!(seen.len(), rows, "{seen:?}");
    assert!(seen.values().all(|&n| n == last), "{seen:?}");
    repeats
}

#[tokio::test]
async fn every_row_keeps_its_order_across_1000_updates_of_10_rows() {
    let prefix = prefix();
    let subscriber = shared_subscriber(&prefix).await;
    let (db, daemon) = setup(&sink_table(&shared_url(), &prefix, "")).await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    // 100 transactions, each updating every row: 1000 events, interleaved.
    for _ in 0..100 {
        db.exec("UPDATE items SET n = n + 1").await;
    }
    let messages = subscriber.take(1010).await;
    assert_eq!(assert_per_row_order(&messages, 10, 100), 0, "no repeats");
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all acked", || sink.delivered.get() == 1010).await;
    assert_eq!((sink.retried.get(), sink.failed.get()), (0, 0));
    daemon.stop().await;
    assert_eq!(subscriber.messages().len(), 1010, "no duplicates");
    subscriber.close().await;
}

#[tokio::test]
async fn a_broker_stopped_and_started_while_events_flow_loses_none_and_keeps_row_order() {
    let mut broker = Mosquitto::start("").await;
    let prefix = prefix();
    // A persistent session: what the broker accepts while this subscriber
    // is away is kept for it, across the restart too.
    let subscriber = Subscriber::with(
        "127.0.0.1",
        broker.port(),
        &format!("{prefix}/#"),
        QoS::AtLeastOnce,
        false,
    )
    .await;
    let (db, daemon) = setup(&sink_table(&broker.url(), &prefix, "")).await;
    let sink = daemon.stats.sink("bus").unwrap();
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    subscriber.take(10).await;

    // Updates keep coming, one transaction of ten every few milliseconds,
    // while the broker goes down and comes back.
    let rounds = 150;
    let writer = {
        let dsn = db.dsn();
        tokio::spawn(async move {
            let client = crate::common::connect(&dsn).await;
            for _ in 0..rounds {
                client
                    .batch_execute("UPDATE items SET n = n + 1")
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
    };
    eventually_true("some updates delivered", || sink.delivered.get() >= 200).await;
    broker.stop();
    eventually_true("skor saw the broker go", || sink.disconnected.get() == 1).await;
    broker.start_again().await;
    writer.await.unwrap();

    let total = 10 + 10 * rounds as u64;
    eventually_true("every event acked", || sink.delivered.get() >= total).await;
    // Everything acked reached the broker; the subscriber may still be
    // catching up with what the broker kept for it.
    let messages = subscriber
        .take_within(total as usize, std::time::Duration::from_secs(30))
        .await;
    let repeats = assert_per_row_order(&messages, 10, rounds);
    eprintln!(
        "broker restarted: {repeats} repeats, {} retries, {} outage waits",
        sink.retried.get(),
        sink.outage_waits.get()
    );
    assert!(sink.outage_waits.get() > 0, "the outage was waited out");
    assert_eq!(
        (sink.failed.get(), sink.retried.get()),
        (0, 0),
        "an outage spends no retry"
    );
    assert_eq!(daemon.stop().await.undelivered, 0);
    subscriber.close().await;
}

#[tokio::test]
async fn credentials_come_from_the_environment_and_a_wrong_password_is_waited_out() {
    let mut broker = Mosquitto::start("").await;
    let passwords = broker.dir().join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["skor", "s3cret-mqtt"])
        .status()
        .expect("run mosquitto_passwd");
    assert!(made.success());
    // A broker that lets in only skor with its password.
    broker.stop();
    let conf = broker.dir().join("mosquitto.conf");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("allow_anonymous true", "allow_anonymous false")
        + &format!("password_file {}\n", passwords.display());
    std::fs::write(&conf, text).unwrap();
    broker.start_again().await;

    let prefix = prefix();
    std::env::set_var("SKOR_TEST_MQTT_PASSWORD", "s3cret-mqtt");
    let (db, daemon) = setup(&sink_table(
        &broker.url(),
        &prefix,
        "username = \"skor\"\npassword = \"${SKOR_TEST_MQTT_PASSWORD}\"",
    ))
    .await;
    // The subscriber needs credentials too: read back through skor's own
    // connection's success instead.
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("acked with the password", || sink.delivered.get() == 1).await;
    daemon.stop().await;

    // A wrong password: refused at connect, waited out without retries.
    let (db, daemon) = setup(&sink_table(
        &broker.url(),
        &prefix,
        "username = \"skor\"\npassword = \"wrong\"",
    ))
    .await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("a refused connect", || sink.disconnected.get() == 1).await;
    eventually_true("waited out", || sink.outage_waits.get() > 0).await;
    assert_eq!((sink.retried.get(), sink.failed.get()), (0, 0));
    assert_eq!(daemon.stop().await.undelivered, 1);
}

#[tokio::test]
async fn mqtts_with_a_private_ca_and_a_client_certificate_delivers() {
    use crate::common::https::{acceptor, pem_file, TestCa, TlsProxy};
    let ca = TestCa::new("skor test mqtt CA");
    let client = ca.client("skor");
    let (host, port) = shared_broker();
    let backend = format!("{host}:{port}").parse().expect("an IP address");
    // Mutual TLS in front of the shared broker, as a load balancer would.
    let proxy = TlsProxy::start(acceptor(&ca.server(), Some(&ca)), backend).await;
    let (ca_file, cert, key) = (
        pem_file(&ca.pem),
        pem_file(&client.cert_pem),
        pem_file(&client.key_pem),
    );
    let prefix = prefix();
    let subscriber = shared_subscriber(&prefix).await;
    let options = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        ca_file.path().display(),
        cert.path().display(),
        key.path().display()
    );
    let (db, daemon) = setup(&sink_table(
        &format!("mqtts://{}", proxy.addr),
        &prefix,
        &options,
    ))
    .await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'over tls')")
        .await;
    let messages = subscriber.take(1).await;
    assert!(messages[0].body.contains("over tls"), "{messages:?}");
    let certs = proxy.client_certs();
    assert!(
        !certs.is_empty() && certs.iter().all(Option::is_some),
        "skor presented its client certificate"
    );
    daemon.stop().await;

    // Without the CA, the broker's certificate is not trusted: an outage
    // whose reason the log can show, no retry spent.
    let plain = skor_sink_mqtt::MqttSink::new(&skor_sink_mqtt::MqttConfig::new(format!(
        "mqtts://skor:s3cret@{}",
        proxy.addr
    )))
    .unwrap();
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
    use skor_sink_api::Sink;
    let error = plain.send(&event).await.expect_err("untrusted certificate");
    assert_eq!(error.kind, skor_sink_api::ErrorKind::Disconnected);
    let shown = error.to_string();
    assert!(shown.contains("UnknownIssuer"), "{shown}");
    assert!(
        shown.starts_with("connecting to mqtts://skor:<redacted>@"),
        "{shown}"
    );
    subscriber.close().await;
}

/// The error `skor` gives for a config with this `[sink.NAME]` table.
fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    skor::Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn mqtt_options_are_checked_where_they_are_written() {
    assert_eq!(
        sink_error("[sink.m]\ntype = \"mqtt\"\nurl = \"mqtt://h\"\nqos = 0\n"),
        "skor.toml:6:7: key `sink.m.qos`: QoS 0 is fire-and-forget: the broker never confirms \
         a message, so skor could not know it was delivered; use 1 or 2"
    );
    assert_eq!(
        sink_error("[sink.m]\ntype = \"mqtt\"\nurl = \"mqtt://h\"\ntopic = \"skor/{tabel}\"\n"),
        "skor.toml:6:9: key `sink.m.topic`: unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
    );
    assert_eq!(
        sink_error("[sink.m]\ntype = \"mqtt\"\nurl = \"tcp://skor:pw@h:1883\"\n"),
        "skor.toml:5:7: key `sink.m.url`: url tcp://skor:<redacted>@h:1883: expected mqtt://host[:port] or mqtts://host[:port]"
    );
    let got =
        sink_error("[sink.m]\ntype = \"mqtt\"\nurl = \"mqtt://h\"\nca_file = \"/etc/ca.pem\"\n");
    assert!(
        got.contains("key `sink.m.ca_file`: ca_file: applies with TLS only"),
        "{got}"
    );
}

#[test]
fn the_example_configs_mqtt_sink_parses_once_uncommented() {
    let example = include_str!("../../config.example.toml");
    let block: String = example
        .lines()
        .skip_while(|line| *line != "# [sink.mqtt]")
        .take_while(|line| !line.is_empty())
        .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or(line)))
        .collect();
    assert!(
        block.starts_with("[sink.mqtt]\ntype = \"mqtt\"\n"),
        "{block}"
    );
    let config = skor::Config::from_toml(
        &format!("[source]\ndsn = \"host=h\"\n{block}"),
        "config.example.toml",
    )
    .expect("the example's MQTT sink parses");
    assert!(config.sinks.contains_key("mqtt"));
}
