//! The NATS sink against a real nats-server with JetStream: what a consumer
//! of the stream sees, in what order, what the duplicate window does with a
//! redelivery, a subject no stream covers, a server stopped and started
//! while events flow, TLS, and config errors.
use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::nats::{Message, NatsServer, Stream};
use crate::common::{assert_every_id, config, eventually_true, inserts, start_installed, TestDb};
use skor_sink_api::{ErrorKind, Event, Op, Sink};
use skor_sink_nats::{NatsConfig, NatsSink, Subject};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int NOT NULL DEFAULT 0);";

async fn setup(stream: &Stream, sink_options: &str) -> (TestDb, crate::common::Running) {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(
        &db,
        &format!("[[table]]\nname = \"items\"\n{}", stream.sink(sink_options)),
    );
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

/// An event as the daemon hands it to the sink.
fn event(seq: u64, id: Option<i64>) -> Event {
    Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "items".into(),
        op: Op::Insert,
        payload: skor_sink_api::Bytes::from(format!(r#"{{"data":{{"id":{seq}}}}}"#)),
        format: skor_sink_api::Format::Skor,
        key: None,
        id,
        seq,
    }
}

/// A sink built in this process, publishing under `stream`'s subjects.
fn sink_for(stream: &Stream) -> NatsSink {
    let mut config = NatsConfig::new(stream.url.clone());
    config.subject =
        Subject::parse(&format!("{}.{{schema}}.{{table}}.{{op}}", stream.name)).unwrap();
    NatsSink::new(&config).unwrap()
}

#[tokio::test]
async fn a_consumer_gets_the_payload_subject_and_headers() {
    let stream = Stream::new().await;
    let (db, daemon) = setup(&stream, "").await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'abc')")
        .await;
    db.exec("UPDATE items SET name = 'def' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    let messages = stream.take(3).await;
    let bodies: Vec<_> = messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"def","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"def","n":0}}"#,
        ]
    );
    let subjects: Vec<_> = messages.iter().map(|m| m.subject.clone()).collect();
    assert_eq!(
        subjects,
        ["INSERT", "UPDATE", "DELETE"].map(|op| format!("{}.public.items.{op}", stream.name))
    );
    let first = &messages[0];
    assert_eq!(first.headers["schema"], "public");
    assert_eq!(first.headers["table"], "items");
    assert_eq!(first.headers["op"], "INSERT");
    assert_eq!(first.headers["channel"], "skor");
    assert_eq!(first.headers["Content-Type"], "application/json");
    assert!(
        !first.headers.contains_key("event_id"),
        "notify mode has no event id"
    );
    let ids: BTreeSet<&str> = messages
        .iter()
        .map(|m| m.headers["Nats-Msg-Id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "one message id per event: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("msg_")), "{ids:?}");
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("three acknowledged", || sink.delivered.get() == 3).await;
    assert_eq!(daemon.stop().await.undelivered, 0);
    assert!(stream.rest().await.is_empty(), "no duplicates");
    stream.delete().await;
}

#[tokio::test]
async fn every_row_keeps_its_order_across_1000_updates_of_10_rows() {
    let stream = Stream::new().await;
    let (db, daemon) = setup(&stream, "").await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    // 100 transactions, each updating every row: 1000 events, interleaved.
    for _ in 0..100 {
        db.exec("UPDATE items SET n = n + 1").await;
    }
    let messages = stream.take(1010).await;
    assert_per_row_order(&messages, 10, 100);
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all acknowledged", || sink.delivered.get() == 1010).await;
    assert_eq!(sink.retried.get(), 0);
    daemon.stop().await;
    assert!(stream.rest().await.is_empty(), "no duplicates");
    stream.delete().await;
}

/// Checks that each row's `n` counts up by one, message after message.
fn assert_per_row_order(messages: &[Message], rows: usize, updates: i64) {
    let mut last = vec![-1i64; rows + 1];
    for message in messages {
        let event: serde_json::Value = serde_json::from_str(&message.body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap() as usize;
        let n = event["data"]["n"].as_i64().unwrap();
        assert_eq!(n, last[id] + 1, "row {id} out of order: {}", message.body);
        last[id] = n;
    }
    assert!(last[1..].iter().all(|&n| n == updates), "{last:?}");
}

#[tokio::test]
async fn a_redelivered_event_is_stored_once() {
    let stream = Stream::new().await;
    let sink = sink_for(&stream);
    // The same event twice, as after a lost acknowledgement: the second
    // publish carries the same Nats-Msg-Id and the stream drops it.
    let notify = event(7, None);
    sink.send(&notify).await.expect("first publish");
    sink.send(&notify)
        .await
        .expect("the duplicate is acknowledged too");
    // A durable event's id is stable across restarts: a new sink (a new
    // daemon) sending it again is dropped as well.
    let durable = event(8, Some(42));
    sink.send(&durable).await.unwrap();
    sink_for(&stream).send(&durable).await.unwrap();
    let messages = stream.take(2).await;
    assert_eq!(stream.count().await, 2, "{messages:?}");
    assert_eq!(messages[0].headers["Nats-Msg-Id"], notify.message_id());
    assert_eq!(messages[1].headers["Nats-Msg-Id"], "evt_42");
    assert_eq!(messages[1].headers["event_id"], "42");
    stream.delete().await;
}

#[tokio::test]
async fn a_subject_no_stream_covers_is_a_permanent_error_that_says_so() {
    let stream = Stream::new().await;
    let mut config = NatsConfig::new(stream.url.clone());
    let uncovered = format!("{}_nostream", stream.name);
    config.subject = Subject::parse(&format!("{uncovered}.{{table}}")).unwrap();
    let sink = NatsSink::new(&config).unwrap();
    let error = sink.send(&event(1, None)).await.expect_err("no stream");
    assert_eq!(error.kind, ErrorKind::Permanent, "{error}");
    assert!(
        error.message.starts_with(&format!(
            "no JetStream stream covers subject \"{uncovered}.items\": create one"
        )),
        "{error}"
    );

    // Through the daemon: given up at once, no retry spent.
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config_with(
        &db,
        &format!(
            "[sink.bus]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{uncovered}.{{table}}\"\n",
            stream.url
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let stats = daemon.stats.sink("bus").unwrap();
    eventually_true("the event given up on", || stats.failed.get() == 1).await;
    assert_eq!((stats.retried.get(), stats.delivered.get()), (0, 0));
    daemon.stop().await;
    stream.delete().await;
}

fn config_with(db: &TestDb, sink: &str) -> String {
    config(db, &format!("[[table]]\nname = \"items\"\n{sink}"))
}

#[tokio::test]
async fn create_stream_makes_the_stream_over_the_subjects_wildcard() {
    let url = crate::common::nats::url();
    let name = crate::common::nats::unique_name();
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config_with(
        &db,
        &format!(
            "[sink.bus]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{name}.{{schema}}.{{table}}.{{op}}\"\n\
             stream = \"{name}\"\ncreate_stream = true\n"
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let stats = daemon.stats.sink("bus").unwrap();
    eventually_true("delivered", || stats.delivered.get() == 1).await;
    daemon.stop().await;
    let client = skor_sink_nats::async_nats::connect(url.as_str())
        .await
        .unwrap();
    let jetstream = skor_sink_nats::async_nats::jetstream::new(client);
    let info = jetstream
        .get_stream(&name)
        .await
        .expect("skor created the stream")
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.config.subjects, [format!("{name}.*.*.*")]);
    assert_eq!(info.state.messages, 1);
    crate::common::nats::delete_stream(&url, &name).await;
}

#[tokio::test]
async fn a_server_stopped_and_started_while_events_flow_loses_none_and_spends_no_retry() {
    let mut server = NatsServer::start(&[]).await;
    let mut stream = Stream::on(&server.url()).await;
    let (db, daemon) = setup(&stream, "").await;
    let sink = daemon.stats.sink("bus").unwrap();
    // A writer of its own commits ten rows at a time, before, during and
    // after the outage.
    let writer = crate::common::connect(&db.dsn()).await;
    let writing = tokio::spawn(async move {
        for first in (1..=400).step_by(10) {
            writer
                .batch_execute(&inserts(first, first + 9))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    eventually_true("some events acknowledged", || sink.delivered.get() >= 50).await;
    server.stop();
    eventually_true("the outage noticed", || sink.disconnected.get() == 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.start_again().await;
    stream.reconnect().await;
    writing.await.unwrap();
    db.exec(&inserts(401, 500)).await;

    eventually_true("every event acknowledged", || sink.delivered.get() == 500).await;
    let seen = stream.take_within(500, Duration::from_secs(30)).await;
    assert!(stream.rest().await.is_empty(), "no more than 500 stored");
    let duplicates = assert_every_id(seen.iter().map(|m| m.body.as_str()), 500);
    assert_eq!(duplicates, 0, "the duplicate window drops redeliveries");
    let ids: Vec<i64> = seen.iter().map(Message::row_id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "commit order kept: {ids:?}"
    );
    assert_eq!((sink.failed.get(), sink.retried.get()), (0, 0));
    assert_eq!(daemon.stop().await.undelivered, 0);
    stream.delete().await;
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    use crate::common::https::{pem_file, TestCa};
    let ca = TestCa::new("skor test NATS CA");
    let server_id = ca.server();
    let (cert, key, ca_file) = (
        pem_file(&server_id.cert_pem),
        pem_file(&server_id.key_pem),
        pem_file(&ca.pem),
    );
    let path = |f: &tempfile::NamedTempFile| f.path().display().to_string();
    let server = NatsServer::start(&[
        "--tls".into(),
        "--tlscert".into(),
        path(&cert),
        "--tlskey".into(),
        path(&key),
        "--tlsverify".into(),
        "--tlscacert".into(),
        path(&ca_file),
    ])
    .await;
    let client_id = ca.client("skor");
    let (client_cert, client_key) = (pem_file(&client_id.cert_pem), pem_file(&client_id.key_pem));
    let tls_url = format!("tls://127.0.0.1:{}", server.port());

    // The test's own client, with the same files, makes the stream.
    let admin = skor_sink_nats::async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca_file.path().into())
        .add_client_certificate(client_cert.path().into(), client_key.path().into())
        .connect(tls_url.as_str())
        .await
        .expect("the test connects with TLS");
    let name = crate::common::nats::unique_name();
    skor_sink_nats::async_nats::jetstream::new(admin)
        .create_stream(skor_sink_nats::async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    let mut config = NatsConfig::new(tls_url.clone());
    config.subject = Subject::parse(&format!("{name}.{{table}}")).unwrap();
    config.ca_file = Some(ca_file.path().into());
    // Without a client certificate the server refuses the handshake: an
    // outage to wait out, named as a TLS problem.
    let refused = NatsSink::new(&config)
        .unwrap()
        .send(&event(1, None))
        .await
        .expect_err("the server wants a client certificate");
    assert_eq!(refused.kind, ErrorKind::Disconnected, "{refused}");
    assert!(
        refused
            .message
            .starts_with(&format!("connecting to {tls_url}")),
        "{refused}"
    );
    config.client_cert = Some(client_cert.path().into());
    config.client_key = Some(client_key.path().into());
    NatsSink::new(&config)
        .unwrap()
        .send(&event(1, None))
        .await
        .expect("delivered over mutual TLS");
}

#[tokio::test]
async fn user_and_password_come_from_the_environment() {
    let password = format!("pw{:08x}", rand::random::<u32>());
    let server = NatsServer::start(&[
        "--user".into(),
        "skor".into(),
        "--pass".into(),
        password.clone(),
    ])
    .await;
    let url = format!("nats://skor:{password}@127.0.0.1:{}", server.port());
    let stream = Stream::on(&url).await;
    let variable = format!("SKOR_TEST_NATS_PASSWORD_{:08x}", rand::random::<u32>());
    // A variable of its own, read by this test only.
    std::env::set_var(&variable, &password);
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config_with(
        &db,
        &format!(
            "[sink.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nuser = \"skor\"\npassword = \"${{{variable}}}\"\n\
             subject = \"{}.{{table}}\"\n",
            server.port(),
            stream.name
        ),
    );
    let parsed = skor::Config::from_toml(&cfg, "skor.toml").unwrap();
    assert!(!format!("{parsed:?}").contains(&password), "never shown");
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let messages = stream.take(1).await;
    assert_eq!(messages[0].row_id(), 1);
    daemon.stop().await;
    // Credentials in the URL work too.
    sink_for(&stream)
        .send(&event(2, None))
        .await
        .expect("user and password from the URL");
    assert_eq!(stream.take(1).await[0].row_id(), 2);
    stream.delete().await;
}

/// The error `skor` gives for a config with this `[sink.NAME]` table.
fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    skor::Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn nats_options_are_checked_where_they_are_written() {
    assert_eq!(
        sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h\"\nsubject = \"pg.{tabel}\"\n"),
        "skor.toml:6:11: key `sink.n.subject`: unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
    );
    assert_eq!(
        sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h:4222,http://skor:s3cret@h/\"\n"),
        "skor.toml:5:7: key `sink.n.url`: http://skor:<redacted>@h/: expected nats://host:port or tls://host:port"
    );
    assert_eq!(
        sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h\"\ncreate_stream = true\n"),
        "skor.toml:3:1: key `sink.n.stream`: create_stream = true needs the name of the stream to create"
    );
    assert_eq!(
        sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h\"\nuser = \"skor\"\npassword = \"pw\"\ntoken = \"t0k3n\"\n"),
        "skor.toml:8:9: key `sink.n.token`: user is set too: use one of user/password, token, nkey_seed, credentials_file or credentials in the url"
    );
    let got =
        sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h\"\nnkey_seed = \"SUs3cret\"\n");
    assert!(
        got.starts_with("skor.toml:6:13: key `sink.n.nkey_seed`: not a valid nkey seed"),
        "{got}"
    );
    assert!(!got.contains("s3cret"), "{got}");
}

#[test]
fn a_zero_nats_ack_timeout_is_refused() {
    let got = sink_error("[sink.n]\ntype = \"nats\"\nurl = \"nats://h\"\nack_timeout_ms = 0\n");
    assert!(
        got.contains("key `sink.n.ack_timeout_ms`: expected 1 to"),
        "{got}"
    );
}

#[test]
fn the_example_configs_nats_sink_parses_once_uncommented() {
    let example = include_str!("../../config.example.toml");
    let start = example
        .find("# [sink.nats]")
        .expect("the example has a NATS sink");
    let block: String = example[start..]
        .lines()
        .take_while(|line| line.starts_with('#'))
        // `# # ` lines are comments inside the commented-out table.
        .filter(|line| !line.starts_with("# #"))
        .map(|line| format!("{}\n", line.trim_start_matches("# ")))
        .collect();
    let text = format!("[source]\ndsn = \"host=h\"\n{block}");
    let config = skor::Config::from_toml_with_env(&text, "example.toml", &|name| {
        (name == "NATS_PASSWORD").then(|| "s3cret".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let options: &dyn std::any::Any = &*config.sinks["nats"].options;
    let nats: &NatsConfig = options.downcast_ref().expect("a NATS sink");
    assert_eq!(nats.subject.text(), "skor.{schema}.{table}.{op}");
    assert_eq!(nats.stream.as_deref(), Some("SKOR"));
    assert_eq!(
        config.sinks["nats"].options.outline(),
        r#"nats nats://127.0.0.1:4222 subject "skor.{schema}.{table}.{op}""#
    );
}

#[test]
fn only_the_nats_feature_pulls_async_nats() {
    let tree = |features: &[&str]| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "tree",
                "--offline",
                "--package",
                "skor",
                "--edges",
                "normal",
            ])
            .args(["--prefix", "none", "--format", "{p}"]);
        if !features.is_empty() {
            command.args(["--features", &features.join(",")]);
        }
        let output = command.output().expect("run cargo tree");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let has = |tree: &str| tree.lines().any(|l| l.starts_with("async-nats v"));
    let default = tree(&[]);
    assert!(
        default.lines().any(|l| l.starts_with("reqwest v")),
        "{default}"
    );
    assert!(!has(&default), "the default build has no NATS client");
    assert!(!has(&tree(&["amqp", "kafka"])));
    assert!(has(&tree(&["nats"])));
}
