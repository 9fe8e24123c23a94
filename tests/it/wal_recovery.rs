//! Wal mode when things go away: the daemon killed mid-burst, changes
//! committed while no daemon runs, PostgreSQL restarted under the stream,
//! and a standby taking over the slot from a killed reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::bin::{config_file, signal, spawn_logged};
use crate::common::wal::WalDb;
use crate::common::{
    assert_every_id, eventually, eventually_every, eventually_true, row_id, Hook, Running, PATIENCE,
};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);";

fn log_path(config: &tempfile::NamedTempFile, name: &str) -> PathBuf {
    config.path().with_extension(format!("{name}.log"))
}

/// Waits until the log at `path` contains `needle`.
async fn wait_for_log(path: &Path, needle: &str) {
    eventually(&format!("{needle:?} in the log"), || {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        std::future::ready(if log.contains(needle) {
            Ok(())
        } else {
            Err(log)
        })
    })
    .await
}

/// Waits until requests for every id in `1..=count` arrived; returns them.
async fn wait_for_ids(hook: &Hook, count: i64, patience: Duration) -> Vec<crate::common::Request> {
    let every = Duration::from_millis(50);
    eventually_every(
        &format!("requests for {count} ids"),
        patience,
        every,
        || {
            std::future::ready(if hook.count() as i64 >= count {
                let requests = hook.requests();
                let mut ids: Vec<i64> = requests.iter().map(|r| row_id(&r.body)).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() as i64 >= count {
                    Ok(requests)
                } else {
                    Err(format!("{} distinct ids", ids.len()))
                }
            } else {
                Err(format!("{} requests", hook.count()))
            })
        },
    )
    .await
}

/// A port free right now, for an admin endpoint of a child process.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sigkill_mid_burst_redelivers_with_the_same_event_ids() {
    const ROWS: i64 = 3_000;
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    // The confirmed position is reported every 10 s, so none is reported
    // before the kill: what the first daemon delivered comes again, and
    // the test sees the duplicates' ids.
    let config = db.hook_config("name = \"items\"", &hook, "").replace(
        "wal_status_interval_ms = 50",
        "wal_status_interval_ms = 10000",
    );
    db.install(&config).await;
    let file = config_file(&config);
    let log = log_path(&file, "skor");
    let mut first = spawn_logged(&file, &log);
    let writer = {
        let dsn = db.dsn();
        tokio::spawn(async move {
            let client = crate::common::connect(&dsn).await;
            for id in 1..=ROWS {
                // One transaction per row.
                client
                    .execute("INSERT INTO items (id) VALUES ($1)", &[&(id as i32)])
                    .await
                    .unwrap();
            }
        })
    };
    hook.wait_within(
        "300 requests before the kill",
        Duration::from_secs(60),
        |r| r.len() >= 300,
    )
    .await;
    signal(&first, "KILL");
    first.wait().await.unwrap();
    let at_kill = hook.count();
    writer.await.unwrap();

    let mut second = spawn_logged(&file, &log);
    let requests = wait_for_ids(&hook, ROWS, Duration::from_secs(120)).await;
    let duplicates = assert_every_id(requests.iter().map(|r| r.body.as_str()), ROWS);
    eprintln!("killed after {at_kill} deliveries; {duplicates} delivered twice");
    assert!(
        duplicates > 0,
        "what was delivered before the kill came again"
    );
    // Every delivery of a row carries the one event id of its change.
    let mut ids: HashMap<i64, Vec<String>> = HashMap::new();
    for request in &requests {
        let id = request
            .headers
            .get("skor-event-id")
            .expect("an event id header")
            .to_str()
            .unwrap()
            .to_string();
        ids.entry(row_id(&request.body)).or_default().push(id);
    }
    for (row, event_ids) in &ids {
        assert!(
            event_ids.iter().all(|id| id == &event_ids[0]),
            "row {row} came with different event ids: {event_ids:?}"
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.values().map(|v| &v[0]).collect();
    assert_eq!(distinct.len() as i64, ROWS, "one event id per change");
    signal(&second, "TERM");
    second.wait().await.unwrap();
}

#[tokio::test]
async fn changes_committed_while_no_daemon_runs_arrive_on_start_in_order() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"items\"", &hook, "");
    db.install(&config).await;
    // 10,000 rows: three big transactions and 100 single ones; then each
    // of the first 2,000 updated in one transaction, and the first 50
    // twice more, one transaction each.
    db.exec(
        "INSERT INTO items (id) SELECT g FROM generate_series(1, 4000) g;\
         INSERT INTO items (id) SELECT g FROM generate_series(4001, 8000) g;",
    )
    .await;
    db.exec("INSERT INTO items (id) SELECT g FROM generate_series(8001, 9900) g;")
        .await;
    for id in 9901..=10_000 {
        db.exec(&format!("INSERT INTO items (id) VALUES ({id})"))
            .await;
    }
    db.exec("UPDATE items SET n = n + 1 WHERE id <= 2000").await;
    for _ in 0..2 {
        for id in 1..=50 {
            db.exec(&format!("UPDATE items SET n = n + 1 WHERE id = {id}"))
                .await;
        }
    }
    let expected = 10_000 + 2_000 + 2 * 50;
    let skor = Running::start(&config).await;
    hook.wait_within(
        &format!("{expected} events"),
        Duration::from_secs(120),
        |r| r.len() >= expected,
    )
    .await;
    let requests = hook.requests();
    assert_eq!(requests.len(), expected, "each change once");
    let mut versions: HashMap<i64, Vec<i64>> = HashMap::new();
    for request in &requests {
        let event: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        versions
            .entry(event["data"]["id"].as_i64().unwrap())
            .or_default()
            .push(event["data"]["n"].as_i64().unwrap());
    }
    assert_eq!(versions.len(), 10_000, "every row");
    for (id, seen) in &versions {
        let last = match id {
            1..=50 => 3,
            51..=2000 => 1,
            _ => 0,
        };
        assert_eq!(
            seen,
            &(0..=last).collect::<Vec<_>>(),
            "row {id}'s changes in commit order"
        );
    }
    skor.stop().await;
}

/// The value of the metric line starting with `name` and holding `label`.
async fn metric(admin_port: u16, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in:\n{text}"))
        .parse()
        .unwrap()
}

/// `/readyz` of a child's admin endpoint, once it answers.
async fn readyz(admin_port: u16) -> (u16, String) {
    let response = eventually("/readyz to answer", || {
        reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz"))
    })
    .await;
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

// Multi-threaded: pg_ctl blocks a thread while the receiver must go on
// answering, since PostgreSQL's fast shutdown waits for the slot's reader
// to confirm what it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_mid_stream_loses_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;
    let mut db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let admin = free_port();
    let config = db.hook_config(
        "name = \"items\"",
        &hook,
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
    );
    db.install(&config).await;
    let file = config_file(&config);
    let log = log_path(&file, "skor");
    let mut daemon = spawn_logged(&file, &log);
    wait_for_log(&log, "streaming from the replication slot").await;

    // A writer that goes on through the restart: one row per transaction,
    // an insert that failed is tried again (ON CONFLICT: it may have
    // committed before the connection went).
    let committed = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dsn, committed, stop) = (db.dsn(), Arc::clone(&committed), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id = 1i32;
            while !stop.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                        Ok((c, connection)) => {
                            tokio::spawn(connection);
                            Some(c)
                        }
                        Err(_) => None,
                    };
                }
                let inserted = match &client {
                    Some(c) => c
                        .execute(
                            "INSERT INTO items (id) VALUES ($1) ON CONFLICT DO NOTHING",
                            &[&id],
                        )
                        .await
                        .is_ok(),
                    None => false,
                };
                if inserted {
                    committed.store(i64::from(id), Ordering::Relaxed);
                    id += 1;
                }
                // Paced so that inserts span the restart rather than all
                // landing before it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    hook.wait_for(100).await;
    tokio::task::block_in_place(|| db.server.stop());
    wait_for_log(&log, "replication stream lost").await;
    let before_restart = committed.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| db.server.start_again());
    db.reconnect().await;
    wait_for_log(&log, "replication stream re-established").await;
    eventually_true("the writer commits again", || {
        committed.load(Ordering::Relaxed) >= before_restart + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let rows: i64 = db
        .client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows,
        committed.load(Ordering::Relaxed),
        "ids 1..=N committed"
    );
    let requests = wait_for_ids(&hook, rows, Duration::from_secs(60)).await;
    let duplicates = assert_every_id(requests.iter().map(|r| r.body.as_str()), rows);
    eprintln!("{rows} rows, {before_restart} before the restart, {duplicates} delivered twice");
    assert!(
        metric(admin, "skor_postgres_reconnects", "replication").await >= 1.0,
        "the reconnect is counted"
    );
    assert_eq!(
        metric(admin, "skor_postgres_connected", "replication").await,
        1.0
    );
    signal(&daemon, "TERM");
    daemon.wait().await.unwrap();
}

#[tokio::test]
async fn a_standby_takes_over_the_slot_when_the_reader_is_killed() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let (admin1, admin2) = (free_port(), free_port());
    let config = |admin: u16| {
        db.hook_config(
            "name = \"items\"",
            &hook,
            &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        )
    };
    db.install(&config(admin1)).await;
    let (file1, file2) = (config_file(&config(admin1)), config_file(&config(admin2)));
    let (log1, log2) = (log_path(&file1, "first"), log_path(&file2, "second"));
    let mut first = spawn_logged(&file1, &log1);
    wait_for_log(&log1, "streaming from the replication slot").await;
    let mut second = spawn_logged(&file2, &log2);
    wait_for_log(&log2, "standing by").await;
    let (status, body) = readyz(admin2).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("standing by"), "{body}");
    assert_eq!(readyz(admin1).await.0, 200, "the reader is ready");

    db.exec("INSERT INTO items (id) VALUES (1)").await;
    hook.wait_for(1).await;
    signal(&first, "KILL");
    first.wait().await.unwrap();
    wait_for_log(&log2, "took over the replication slot").await;
    db.exec("INSERT INTO items (id) VALUES (2)").await;
    let requests = wait_for_ids(&hook, 2, PATIENCE).await;
    assert_every_id(requests.iter().map(|r| r.body.as_str()), 2);
    eventually("the new reader to be ready", || async {
        match readyz(admin2).await {
            (200, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(
        log.find("standing by") < log.find("took over the replication slot"),
        "{log}"
    );
    signal(&second, "TERM");
    second.wait().await.unwrap();
}
