//! The Redis sink against a real redis-server: the entries a consumer reads
//! with XRANGE, per-row order, trimming, a command the server refuses, a
//! server stopped and started while events flow, TLS, a password from the
//! environment, and config errors.
use crate::common::redis::{Server, Streams};
use crate::common::{assert_every_id, config, eventually_true, inserts, start_installed, TestDb};
use skor_sink_api::{ErrorKind, Sink};
use skor_sink_redis::{redis, RedisConfig, RedisSink};

const TABLES: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, n int NOT NULL DEFAULT 0);
                      CREATE TABLE notes (body text);";

async fn setup(streams: &Streams, sink_options: &str) -> (TestDb, crate::common::Running) {
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n[[table]]\nname = \"notes\"\n{}",
            streams.sink(sink_options)
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

fn event() -> skor_sink_api::Event {
    skor_sink_api::Event {
        channel: "skor".into(),
        schema: "public".into(),
        table: "items".into(),
        op: skor_sink_api::Op::Insert,
        payload: skor_sink_api::Bytes::from_static(b"{}"),
        format: skor_sink_api::Format::Skor,
        key: None,
        id: None,
        seq: 1,
    }
}

#[tokio::test]
async fn a_consumer_reads_the_payload_and_fields_with_xrange() {
    let streams = Streams::new();
    let (db, daemon) = setup(&streams, "").await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'abc')")
        .await;
    db.exec("UPDATE items SET name = 'def' WHERE id = 1").await;
    db.exec("DELETE FROM items WHERE id = 1").await;
    db.exec("INSERT INTO notes VALUES ('hello')").await;
    let items = streams.take(&streams.stream("items"), 3).await;
    let payloads: Vec<_> = items.iter().map(|e| e.payload()).collect();
    assert_eq!(
        payloads,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"name":"def","n":0}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "DELETE", "data" : {"id":1,"name":"def","n":0}}"#,
        ]
    );
    let first = &items[0];
    assert_eq!(
        first.names(),
        ["event_id", "schema", "table", "op", "channel", "key", "payload"]
    );
    assert_eq!(first.get("schema"), Some("public"));
    assert_eq!(first.get("table"), Some("items"));
    assert_eq!(first.get("channel"), Some("skor"));
    assert_eq!(first.get("key"), Some(r#"{"id":1}"#));
    let ops: Vec<_> = items.iter().map(|e| e.get("op").unwrap()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"]);
    // Notify mode: an id stable for this process's attempts, distinct per event.
    let ids: Vec<_> = items.iter().map(|e| e.get("event_id").unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("msg_")), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2], "{ids:?}");
    assert!(items[0].id < items[1].id, "XADD * gives growing entry ids");

    // A table without a key: the entry has no key field.
    let notes = streams.take(&streams.stream("notes"), 1).await;
    assert_eq!(
        notes[0].names(),
        ["event_id", "schema", "table", "op", "channel", "payload"]
    );
    assert!(notes[0].payload().contains(r#""body":"hello""#));

    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("four confirmed", || sink.delivered.get() == 4).await;
    assert_eq!(daemon.stop().await.undelivered, 0);
    assert_eq!(streams.len(&streams.stream("items")), 3, "no duplicates");
}

#[tokio::test]
async fn durable_events_carry_their_log_id() {
    let streams = Streams::new();
    let db = TestDb::new().await;
    db.exec(TABLES).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\nmode = \"durable\"\n{}",
            streams.sink("")
        ),
    );
    crate::common::install(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1), (2), (3)").await;
    let ids: Vec<String> = db
        .event_ids()
        .await
        .iter()
        .map(|id| format!("evt_{id}"))
        .collect();
    let daemon = crate::common::Running::start(&cfg).await;
    let entries = streams.take(&streams.stream("items"), 3).await;
    let event_ids: Vec<String> = entries
        .iter()
        .map(|e| e.get("event_id").unwrap().to_string())
        .collect();
    assert_eq!(event_ids, ids);
    let durable = daemon.stats.durable.clone().unwrap();
    eventually_true("three finished", || durable.finished.get() == 3).await;
    daemon.stop().await;
}

#[tokio::test]
async fn every_row_keeps_its_order_across_1000_updates_of_10_rows() {
    let streams = Streams::new();
    let (db, daemon) = setup(&streams, "").await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    // 100 transactions, each updating every row: 1000 events, interleaved.
    for _ in 0..100 {
        db.exec("UPDATE items SET n = n + 1").await;
    }
    let entries = streams.take(&streams.stream("items"), 1010).await;
    let mut last = [-1i64; 11];
    for entry in &entries {
        let event: serde_json::Value = serde_json::from_str(entry.payload()).unwrap();
        let id = event["data"]["id"].as_i64().unwrap() as usize;
        let n = event["data"]["n"].as_i64().unwrap();
        assert_eq!(
            n,
            last[id] + 1,
            "row {id} out of order: {}",
            entry.payload()
        );
        last[id] = n;
    }
    assert!(last[1..].iter().all(|&n| n == 100), "{last:?}");
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all confirmed", || sink.delivered.get() == 1010).await;
    assert_eq!(sink.retried.get(), 0);
    daemon.stop().await;
    assert_eq!(entries.len(), 1010, "no duplicates");
}

#[tokio::test]
async fn maxlen_trims_each_stream_approximately() {
    let streams = Streams::new();
    let (db, daemon) = setup(&streams, "maxlen = 10").await;
    db.exec(&inserts(1, 500)).await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("all confirmed", || sink.delivered.get() == 500).await;
    // `~` lets Redis drop only whole nodes (100 entries by default): the
    // stream keeps at least 10 entries, the newest, and far fewer than 500.
    let entries = streams.entries(&streams.stream("items"));
    assert!(
        (10..=200).contains(&entries.len()),
        "{} entries",
        entries.len()
    );
    assert_eq!(
        crate::common::row_id(entries.last().unwrap().payload()),
        500
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_key_of_the_wrong_type_fails_the_event_at_once_and_later_ones_flow() {
    let streams = Streams::new();
    let stream = streams.stream("items");
    streams.command(redis::cmd("SET").arg(&stream).arg("not a stream"));
    let (db, daemon) = setup(&streams, "retries = 3\nbackoff_ms = 10").await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let sink = daemon.stats.sink("bus").unwrap();
    eventually_true("the refused event is given up on", || {
        sink.failed.get() == 1
    })
    .await;
    assert_eq!(
        (sink.retried.get(), sink.delivered.get()),
        (0, 0),
        "WRONGTYPE is permanent: no retry"
    );
    streams.command(redis::cmd("DEL").arg(&stream));
    db.exec("INSERT INTO items (id) VALUES (2)").await;
    let entries = streams.take(&stream, 1).await;
    assert_eq!(crate::common::row_id(entries[0].payload()), 2);
    eventually_true("delivered", || sink.delivered.get() == 1).await;
    daemon.stop().await;

    // The error a log line shows names the stream and the server's words.
    let sink = RedisSink::new(&RedisConfig {
        stream: skor_sink_kit::Template::parse(&stream).unwrap(),
        ..RedisConfig::new(crate::common::redis::url())
    })
    .unwrap();
    streams.command(redis::cmd("SET").arg(&stream).arg("not a stream"));
    let error = sink.send(&event()).await.expect_err("WRONGTYPE");
    assert_eq!(error.kind, ErrorKind::Permanent);
    assert_eq!(
        error.message,
        format!(
            "XADD to stream \"{stream}\" refused: WRONGTYPE Operation against a key holding the wrong kind of value"
        )
    );
}

#[tokio::test]
async fn redis_stopped_and_started_while_events_flow_loses_nothing_and_spends_no_retry() {
    let mut server = Server::start().await;
    let streams = Streams::on(&server.url());
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n{}",
            streams.sink("retries = 2\nbackoff_ms = 10")
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    let stream = streams.stream("items");
    db.exec(&inserts(1, 100)).await;
    streams.take(&stream, 100).await;
    let sink = daemon.stats.sink("bus").unwrap();

    // Down while the next events arrive: they wait, costing no retry.
    let writer = tokio::spawn({
        let dsn = db.dsn();
        async move {
            let client = crate::common::connect(&dsn).await;
            for id in 101..=300 {
                client
                    .batch_execute(&format!("INSERT INTO items (id) VALUES ({id})"))
                    .await
                    .unwrap();
                if id % 20 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    });
    eventually_true("some events after the first 100", || {
        sink.delivered.get() > 110
    })
    .await;
    server.stop();
    // At least these find the server gone, whether or not the writer is done.
    db.exec(&inserts(301, 310)).await;
    eventually_true("the sink waits for the server", || {
        sink.disconnected.get() == 1
    })
    .await;
    server.restart().await;
    writer.await.unwrap();
    db.exec(&inserts(311, 400)).await;
    eventually_true("every event confirmed", || sink.delivered.get() == 400).await;

    let entries = streams.entries(&stream);
    let duplicates = assert_every_id(entries.iter().map(|e| e.payload()), 400);
    eprintln!(
        "server stopped: {duplicates} duplicates, {} retries",
        sink.retried.get()
    );
    assert_eq!((sink.failed.get(), sink.retried.get()), (0, 0));
    assert_eq!(daemon.stop().await.undelivered, 0);
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let ca = crate::common::https::TestCa::new("skor test redis CA");
    let server_identity = ca.server();
    let server = Server::tls(
        &server_identity.cert_pem,
        &server_identity.key_pem,
        Some(&ca.pem),
    )
    .await;
    let client = ca.client("skor");
    let write = |name: &str, text: &str| {
        let path = server.path(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem);
    let client_cert = write("client.pem", &client.cert_pem);
    let client_key = write("client.key", &client.key_pem);
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let mut config = RedisConfig::new(url.clone());
    config.stream = skor_sink_kit::Template::parse("tls:{table}").unwrap();
    config.ca_file = Some(ca_file);
    config.connect_timeout_ms = 5_000;

    // Without a client certificate the server refuses the handshake.
    let error = RedisSink::new(&config)
        .unwrap()
        .send(&event())
        .await
        .expect_err("the server wants a client certificate");
    assert_eq!(error.kind, ErrorKind::Disconnected);
    assert!(
        error.message.starts_with(&format!("connecting to {url}")),
        "{error}"
    );

    config.client_cert = Some(client_cert);
    config.client_key = Some(client_key);
    let sink = RedisSink::new(&config).unwrap();
    sink.send(&event())
        .await
        .expect("delivered over mutual TLS");

    // Without ca_file, the system roots do not know the test CA.
    config.ca_file = None;
    let error = RedisSink::new(&config)
        .unwrap()
        .send(&event())
        .await
        .expect_err("an unknown CA");
    assert_eq!(error.kind, ErrorKind::Disconnected);
    assert!(error.message.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_password_from_the_environment_is_used_and_never_shown() {
    let server = Server::with_args(&["--requirepass", "s3cret-pw"]).await;
    let streams = Streams::on(&format!("redis://:s3cret-pw@127.0.0.1:{}", server.port));
    let variable = format!("SKOR_TEST_REDIS_PASSWORD_{}", server.port);
    // Config files name passwords as ${VAR}; the name is this test's own.
    std::env::set_var(&variable, "s3cret-pw");
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let sink = format!(
        "[sink.bus]\ntype = \"redis\"\nurl = \"{}\"\npassword = \"${{{variable}}}\"\nstream = \"{}:{{table}}\"\n",
        server.url(),
        streams.prefix
    );
    let cfg = config(&db, &format!("[[table]]\nname = \"items\"\n{sink}"));
    let parsed = skor::Config::from_toml(&cfg, "test.toml").unwrap();
    assert!(!format!("{parsed:?}").contains("s3cret-pw"));
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let entries = streams.take(&streams.stream("items"), 1).await;
    assert_eq!(crate::common::row_id(entries[0].payload()), 1);
    daemon.stop().await;

    // A wrong password in the URL: the sink waits, and says why without it.
    let url = format!("redis://app:wrong-pw@127.0.0.1:{}/0", server.port);
    let error = RedisSink::new(&RedisConfig::new(url))
        .unwrap()
        .send(&event())
        .await
        .expect_err("a wrong password");
    assert_eq!(error.kind, ErrorKind::Disconnected);
    assert!(!error.message.contains("wrong-pw"), "{error}");
    assert!(
        error.message.starts_with(&format!(
            "connecting to redis://app:<redacted>@127.0.0.1:{}/0: ",
            server.port
        )),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_outage() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let sink = RedisSink::new(&RedisConfig::new(format!("redis://127.0.0.1:{port}"))).unwrap();
    let error = sink.send(&event()).await.expect_err("nothing listens");
    assert_eq!(error.kind, ErrorKind::Disconnected);
}

/// The error `skor` gives for a config with this `[sink.NAME]` table.
fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    skor::Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn redis_options_are_checked_where_they_are_written() {
    assert_eq!(
        sink_error("[sink.r]\ntype = \"redis\"\nurl = \"redis://h\"\nstream = \"cdc:{tabel}\"\n"),
        "skor.toml:6:10: key `sink.r.stream`: unknown placeholder `{tabel}`: expected {schema}, {table}, {op} or {channel}"
    );
    assert_eq!(
        sink_error("[sink.r]\ntype = \"redis\"\nurl = \"http://app:pw@h/\"\n"),
        "skor.toml:5:7: key `sink.r.url`: url http://app:<redacted>@h/: expected redis://host[:port][/db], rediss://... (TLS) or unix:///path"
    );
    assert_eq!(
        sink_error("[sink.r]\ntype = \"redis\"\nurl = \"redis://h\"\nmaxlen = 0\n"),
        "skor.toml:6:10: key `sink.r.maxlen`: expected at least 1; leave maxlen out to keep every entry"
    );
    assert_eq!(
        sink_error("[sink.r]\ntype = \"redis\"\nurl = \"redis://:pw@h\"\nca_file = \"/x/ca.pem\"\n"),
        "skor.toml:6:11: key `sink.r.ca_file`: applies to rediss:// URLs only, and the url is redis://:<redacted>@h"
    );
    let got =
        sink_error("[sink.r]\ntype = \"redis\"\nurl = \"redis://h\"\nresponse_timeout_ms = 0\n");
    assert!(
        got.contains("key `sink.r.response_timeout_ms`: expected 1 to"),
        "{got}"
    );
}
