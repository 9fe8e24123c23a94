//! Dropping is loud and bounded: past `shed_notify_queue_usage` a blocked
//! listener sheds load so the application's writes keep succeeding, and
//! dropped events are logged once a second with a count and one sample.

#[path = "it/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use common::pg_server::PgServer;
use common::{
    config, connect, eventually_true, install, slow, status, Hook, Running, TestDb, PATIENCE,
};
use tokio::time::Instant;

/// Every log line of this test binary's daemons.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the daemons' log lines to `LOGS`; before `Running::start`, whose
/// own subscriber then stays out.
fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_env_filter("skor=info")
        .try_init();
}

/// The captured lines that contain every one of `words`.
fn lines_with(words: &[&str]) -> Vec<String> {
    let logs = String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned();
    logs.lines()
        .filter(|line| words.iter().all(|w| line.contains(w)))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn past_the_threshold_the_listener_sheds_load_and_writes_keep_succeeding() {
    capture_logs();
    let server = PgServer::start(None);
    let admin = connect(&server.dsn()).await;
    admin
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, pad text NOT NULL)")
        .await
        .unwrap();
    // One delivery every 2 s: the sink is as good as stuck.
    let hook = Hook::scripted(Vec::new(), slow(200, Duration::from_secs(2))).await;
    // A few hundred 8 kB pages of PostgreSQL's 8 GB queue.
    let config = format!(
        "[source]\ndsn = \"{}\"\nshed_notify_queue_usage = 0.0002\n\
         [[table]]\nname = \"items\"\n\
         [sink.shed_hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
         queue_capacity = 10\nmax_in_flight = 1\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        server.dsn(),
        hook.url()
    );
    let mut client = connect(&server.dsn()).await;
    let parsed = skor::Config::from_toml(&config, "test.toml").unwrap();
    skor::install::install(&mut client, &parsed).await.unwrap();
    let daemon = Running::start(&config).await;
    let sink = daemon.stats.sink("shed_hook").unwrap();

    // Bursts of 500 rows of 1 kB until skor sheds; every INSERT succeeds.
    let started = Instant::now();
    let mut rows = 0;
    while sink.dropped.get() == 0 {
        assert!(
            started.elapsed() < 4 * PATIENCE,
            "no shedding after {rows} rows: {:?}",
            lines_with(&["shed_hook"])
        );
        admin
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, repeat('x', 1000) \
                 FROM generate_series({}, {}) g",
                rows + 1,
                rows + 500
            ))
            .await
            .expect("the application's INSERT succeeds");
        rows += 500;
    }
    assert_eq!(daemon.stats.source.shedding.get(), 1);
    assert_eq!(
        lines_with(&["past shed_notify_queue_usage: shedding load"]).len(),
        1
    );
    let readyz = reqwest::get(format!("http://{}/readyz", daemon.admin.unwrap()))
        .await
        .unwrap();
    assert_eq!(readyz.status().as_u16(), 503);
    let body = readyz.text().await.unwrap();
    assert!(body.contains("shedding load"), "{body}");
    let shed_since = Instant::now();
    // Writes go on succeeding while skor sheds.
    for _ in 0..4 {
        admin
            .batch_execute(&format!(
                "INSERT INTO items SELECT g, repeat('x', 1000) \
                 FROM generate_series({}, {}) g",
                rows + 1,
                rows + 500
            ))
            .await
            .expect("the application's INSERT succeeds while skor sheds");
        rows += 500;
    }
    // Every event is delivered, dropped and counted, or on its way.
    eventually_true("every event received", || {
        daemon.stats.events.received.get() == rows as u64
    })
    .await;
    let drop_lines = lines_with(&["events dropped for this sink", "sink=shed_hook"]);
    assert!(!drop_lines.is_empty());
    assert!(
        drop_lines.len() as u64 <= shed_since.elapsed().as_secs() + 2,
        "at most one line a second: {drop_lines:#?}"
    );
    assert!(drop_lines[0].contains("sample="), "{}", drop_lines[0]);

    // The sink recovers: shedding stops and later events arrive.
    hook.answer(status(200));
    eventually_true("shedding stops", || daemon.stats.source.shedding.get() == 0).await;
    // Each episode is said when it starts and when it stops.
    let starts = lines_with(&["past shed_notify_queue_usage: shedding load"]);
    assert_eq!(lines_with(&["stopped shedding load"]).len(), starts.len());
    admin
        .batch_execute("INSERT INTO items VALUES (0, 'after')")
        .await
        .unwrap();
    hook.wait_until("the event after recovery", |requests| {
        requests.iter().any(|r| r.body.contains(r#""pad":"after""#))
    })
    .await;
    eventually_true("every event delivered or dropped", || {
        sink.delivered.get() + sink.dropped.get() == rows as u64 + 1
    })
    .await;
    daemon.stop().await;
    drop(server);
}

#[tokio::test]
async fn dropped_events_are_logged_once_a_second_with_a_count_and_a_sample() {
    capture_logs();
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let hook = Hook::scripted(Vec::new(), slow(200, Duration::from_millis(500))).await;
    let config = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n\
             [sink.drop_hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
             queue_capacity = 10\nmax_in_flight = 1\nwhen_full = \"drop\"\n",
            hook.url()
        ),
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    let sink = daemon.stats.sink("drop_hook").unwrap();
    let started = Instant::now();
    db.exec("INSERT INTO items SELECT g FROM generate_series(1, 3000) g")
        .await;
    eventually_true("every event received", || {
        daemon.stats.events.received.get() == 3000
    })
    .await;
    let elapsed = started.elapsed();
    assert!(sink.dropped.get() >= 2900, "{}", sink.dropped.get());
    let lines = lines_with(&["dropped for this sink", "sink=drop_hook"]);
    assert!(!lines.is_empty());
    assert!(
        lines.len() as u64 <= elapsed.as_secs() + 1,
        "{} drops, {} lines in {elapsed:?}: {lines:#?}",
        sink.dropped.get(),
        lines.len()
    );
    for line in &lines {
        assert!(line.contains("dropped="), "{line}");
        assert_eq!(line.matches("sample=").count(), 1, "{line}");
    }
    daemon.stop().await;
}
