//! Wal mode's slot and the disk: an idle slot keeps up with WAL that other
//! databases of the cluster write (by the server's keepalives, and by
//! skor's heartbeat messages), a slot PostgreSQL invalidated stops skor
//! once, loudly and without spinning, and `slot_failover` is refused by a
//! server that has no failover slots.

use std::time::Duration;

use crate::common::bin::{config_file, run, spawn_logged, stderr};
use crate::common::wal::WalDb;
use crate::common::{connect, eventually_every, eventually_within, Hook, Running};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);";
/// What the slot may keep once the other database's writes stopped.
const BOUND: i64 = 64 * 1024 * 1024;
const MB: i64 = 1024 * 1024;

/// Writes about `mb` MB of WAL in the database `other`, 16 MB a
/// transaction (uncompressed text), truncating as it goes so the disk
/// holds little more than the WAL.
async fn write_elsewhere(db: &WalDb, mb: i64) {
    db.exec("CREATE DATABASE other").await;
    let other = connect(&db.dsn().replace("dbname=postgres", "dbname=other")).await;
    other
        .batch_execute("CREATE TABLE big (t text); ALTER TABLE big ALTER t SET STORAGE EXTERNAL;")
        .await
        .unwrap();
    for _ in 0..mb / 16 {
        // 1,000 rows of 16 KB: md5 repeated is not compressed (EXTERNAL).
        other
            .batch_execute(
                "INSERT INTO big SELECT repeat(md5(g::text), 512) FROM generate_series(1, 1000) g; \
                 TRUNCATE big;",
            )
            .await
            .unwrap();
    }
}

/// Captures an idle table in `postgres` while `other` writes 160 MB of
/// WAL; the slot's retained WAL must come back under [`BOUND`].
async fn idle_slot_follows_other_databases(heartbeat_ms: u64) -> (Running, Hook, WalDb) {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"items\"", &hook, "");
    let config = config.replace(
        "wal_status_interval_ms = 50\n",
        &format!("wal_status_interval_ms = 50\nwal_heartbeat_interval_ms = {heartbeat_ms}\n"),
    );
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let wal = skor.stats.wal.clone().expect("wal stats");
    eventually_within("the stream to start", Duration::from_secs(30), || {
        std::future::ready(wal.link.is_up())
    })
    .await;
    let confirmed_before = db.confirmed("skor").await;
    let start = db.current().await;
    write_elsewhere(&db, 160).await;
    let written = db.current().await - start;
    let retained_at_end = db.retained("skor").await.unwrap_or(-1);
    eprintln!(
        "heartbeat {heartbeat_ms} ms: wrote {} MB of WAL in another database; the slot kept {} MB when the writes stopped",
        written / MB,
        retained_at_end / MB
    );
    assert!(written > 150 * MB, "the writes made {written} bytes of WAL");
    // Checkpoints log the running transactions, from which PostgreSQL
    // takes the slot's next restart position; the server makes them
    // anyway, the test just does not wait for its timers.
    let retained = eventually_every(
        "the slot's retained WAL under 64 MB",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async {
            db.exec("CHECKPOINT").await;
            match db.retained("skor").await {
                Some(bytes) if bytes < BOUND => Ok(bytes),
                other => Err(other),
            }
        },
    )
    .await;
    let confirmed_after = db.confirmed("skor").await;
    eprintln!(
        "heartbeat {heartbeat_ms} ms: retained {} MB, confirmed moved {} MB",
        retained / MB,
        (confirmed_after - confirmed_before) / MB
    );
    assert!(
        confirmed_after - confirmed_before > 150 * MB,
        "the confirmed position followed the other database's WAL: {confirmed_before} -> {confirmed_after}"
    );
    (skor, hook, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_move_an_idle_slot_past_other_databases_wal() {
    let (skor, hook, _db) = idle_slot_follows_other_databases(0).await;
    let wal = skor.stats.wal.clone().unwrap();
    assert_eq!(wal.heartbeats.get(), 0, "heartbeats are off");
    assert_eq!(hook.count(), 0, "no event: the captured table was idle");
    skor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_slot_moving_and_never_reach_a_sink() {
    let (skor, hook, db) = idle_slot_follows_other_databases(200).await;
    let wal = skor.stats.wal.clone().unwrap();
    eventually_within("heartbeat messages", Duration::from_secs(10), || {
        std::future::ready(wal.heartbeats.get() >= 2)
    })
    .await;
    // A change after the heartbeats arrives alone: the messages before
    // it were not events.
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    hook.wait_within("the insert", Duration::from_secs(30), |r| !r.is_empty())
        .await;
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "only the insert: {requests:?}");
    let event: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(event["op"], "INSERT", "{event}");
    assert_eq!(event["data"]["id"], 1, "{event}");
    eprintln!("{} heartbeats", wal.heartbeats.get());
    skor.stop().await;
}

/// A port free right now, for an admin endpoint of a child process.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replication connections the server's log shows (`log_connections`).
fn replication_connections(db: &WalDb) -> usize {
    db.server
        .log()
        .lines()
        .filter(|l| l.contains("replication connection authorized"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_fails_readiness_once_and_install_replaces_it() {
    let db = WalDb::start_with(
        "max_slot_wal_keep_size = 16MB\nmin_wal_size = 32MB\nmax_wal_size = 64MB\nlog_connections = on\n",
    )
    .await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let admin = free_port();
    let config = db.hook_config(
        "name = \"items\"",
        &hook,
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    db.install(&config).await;
    // No skor reads the slot: 96 MB of WAL and a checkpoint take it past
    // max_slot_wal_keep_size, and PostgreSQL gives it up.
    write_elsewhere(&db, 96).await;
    eventually_every(
        "wal_status lost",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            db.exec("CHECKPOINT").await;
            let status: Option<String> = db
                .client
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'skor'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if status.as_deref() == Some("lost") {
                Ok(())
            } else {
                Err(status)
            }
        },
    )
    .await;

    let file = config_file(&config);
    let log = file.path().with_extension("skor.log");
    let before = replication_connections(&db);
    let mut daemon = spawn_logged(&file, &log);
    let needle = "PostgreSQL invalidated the replication slot";
    eventually_within("the error in the log", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        std::future::ready(if text.contains(needle) {
            Ok(())
        } else {
            Err(text)
        })
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("skor install") && text.contains("skor backfill"),
        "the error says what to do: {text}"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        body.contains("replication slot \"skor\" was invalidated"),
        "{body}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "skor_wal_slot_invalidated 1"),
        "{metrics}"
    );
    let status = reqwest::get(format!("http://127.0.0.1:{admin}/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["postgres"]["wal"]["invalidated"], true, "{status}");
    assert_eq!(status["ready"], false, "{status}");
    // Over five seconds (five re-checks at this config's backoff cap),
    // skor neither reconnects nor logs again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches(needle).count(), 1, "one error line: {text}");
    assert!(
        !text.contains("cannot start the replication stream"),
        "no retry lines: {text}"
    );
    let attempts = replication_connections(&db) - before;
    eprintln!("{attempts} replication connection(s) in five seconds; the log:\n{text}");
    assert!(
        (1..=2).contains(&attempts),
        "{attempts} replication connections in five seconds"
    );

    let output = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "check",
        "--connect",
    ])
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("replication slot \"skor\" was invalidated by PostgreSQL"),
        "{}",
        stderr(&output)
    );

    // Install replaces the slot, and skor streams from the new one.
    db.install(&config).await;
    eventually_within("the slot to be valid", Duration::from_secs(30), || async {
        let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
            .await
            .unwrap();
        let status = ready.status().as_u16();
        if status == 200 {
            Ok(())
        } else {
            Err(ready.text().await.unwrap())
        }
    })
    .await;
    db.exec("INSERT INTO items (id) VALUES (7)").await;
    hook.wait_within(
        "the insert after the new slot",
        Duration::from_secs(30),
        |r| !r.is_empty(),
    )
    .await;
    let event: serde_json::Value = serde_json::from_str(&hook.requests()[0].body).unwrap();
    assert_eq!(event["data"]["id"], 7, "{event}");
    crate::common::bin::signal(&daemon, "TERM");
    daemon.wait().await.unwrap();
}

#[tokio::test]
async fn slot_failover_is_refused_before_postgresql_17() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let plain = db.hook_config("name = \"items\"", &hook, "");
    let failover = plain.replace("[[table]]", "slot_failover = true\n[[table]]");
    let version: String = db
        .client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .unwrap()
        .get(0);
    if version.parse::<i32>().unwrap() >= 170_000 {
        eprintln!("PostgreSQL {version} has failover slots: nothing to refuse");
        return;
    }
    let expected = "slot_failover needs PostgreSQL 17 or later; this server is 1";

    let error = db.try_install(&failover).await.unwrap_err();
    assert!(error.contains(expected), "{error}");
    let slots: i64 = db
        .client
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "no slot made");

    db.install(&plain).await;
    let file = config_file(&failover);
    let path = file.path().to_str().unwrap();
    let output = run(&["--config", path, "check", "--connect"]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    let output = run(&["--config", path]).await;
    assert!(!output.status.success(), "the daemon refuses to start");
    assert!(stderr(&output).contains(expected), "{}", stderr(&output));
}
