//! The admin endpoint against a running daemon: `/metrics` scraped before,
//! during and after a burst; `/readyz` turning unready while a sink is
//! stuck and while PostgreSQL is stopped; durable mode's backlog gauges; a
//! taken port refused at start-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::pg_server::PgServer;
use crate::common::{
    config, eventually, eventually_true, hook_config, slow, start_installed, status, Hook, Running,
    TestDb, PATIENCE,
};
use skor::{Config, Daemon};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY)";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The samples of one scrape, by series as written (`name{labels}`).
struct Scrape(String);

impl Scrape {
    async fn of(addr: SocketAddr) -> Self {
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        Self(text)
    }

    /// The value of `series`, if the scrape has it.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.parse().expect("a number"))
        })
    }

    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.0))
    }
}

const RECEIVED: &str =
    r#"skor_events_received_total{channel="skor",table="public.items",op="INSERT"}"#;
const DELIVERED: &str = r#"skor_sink_delivered_total{sink="hook"}"#;
const DEPTH: &str = r#"skor_sink_queue_depth{sink="hook"}"#;
const LATENCY_COUNT: &str = r#"skor_sink_delivery_seconds_count{sink="hook"}"#;

#[tokio::test]
async fn metrics_follow_a_burst_from_queue_to_delivery() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // One request at a time, 20 ms each: the burst has to wait in the queue.
    let hook = Hook::scripted(Vec::new(), slow(200, Duration::from_millis(20))).await;
    let config = format!(
        "{}{ADMIN}",
        hook_config(&db, "name = \"items\"", &hook, "max_in_flight = 1")
    );
    let daemon = start_installed(&db, &config).await;
    let admin = daemon.admin.expect("admin endpoint");

    let before = Scrape::of(admin).await;
    assert_eq!(before.get(RECEIVED), None, "nothing received yet");
    assert_eq!(before.value(DELIVERED), 0.0);
    assert_eq!(before.value(DEPTH), 0.0);
    assert_eq!(
        before.value(r#"skor_sink_queue_capacity{sink="hook"}"#),
        10_000.0
    );
    assert_eq!(
        before.value(r#"skor_postgres_connected{connection="listener"}"#),
        1.0
    );
    let usage = before.value("skor_notification_queue_usage");
    assert!((0.0..1.0).contains(&usage), "usage {usage}");

    db.exec("INSERT INTO items SELECT generate_series(1, 60)")
        .await;
    // While the sink works through the burst, the queue shows it.
    let during = eventually("the queue depth to rise", || async {
        let scrape = Scrape::of(admin).await;
        let depth = scrape.value(DEPTH);
        if depth > 0.0 {
            Ok(scrape)
        } else {
            Err(depth)
        }
    })
    .await;
    assert_eq!(during.value(RECEIVED), 60.0);
    assert!(
        during.value(DEPTH) + during.value(DELIVERED) == 60.0,
        "every event is queued or delivered: {} + {}",
        during.value(DEPTH),
        during.value(DELIVERED)
    );

    hook.wait_for(60).await;
    eventually_true("60 delivered", || {
        daemon.stats.sink("hook").unwrap().delivered.get() == 60
    })
    .await;
    let after = Scrape::of(admin).await;
    assert_eq!(after.value(RECEIVED), 60.0);
    assert_eq!(after.value(DELIVERED), 60.0);
    assert_eq!(after.value(DEPTH), 0.0);
    assert_eq!(after.value(r#"skor_sink_failed_total{sink="hook"}"#), 0.0);
    assert_eq!(after.value(r#"skor_sink_retried_total{sink="hook"}"#), 0.0);
    assert_eq!(after.value(LATENCY_COUNT), 60.0);
    // Each request takes 20 ms, so no event is confirmed in under 16 ms.
    assert_eq!(
        after.value(r#"skor_sink_delivery_seconds_bucket{sink="hook",le="0.016"}"#),
        0.0
    );
    assert_eq!(
        after.value(r#"skor_sink_delivery_seconds_bucket{sink="hook",le="+Inf"}"#),
        60.0
    );
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
    daemon.stop().await;
}

#[tokio::test]
async fn readyz_says_which_sink_is_stuck_until_it_delivers_again() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::scripted(Vec::new(), status(503)).await;
    let config = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\nstuck_after_ms = 300\n",
        hook_config(
            &db,
            "name = \"items\"",
            &hook,
            "retries = 100\nbackoff_ms = 50"
        )
    );
    let daemon = start_installed(&db, &config).await;
    let admin = daemon.admin.expect("admin endpoint");
    assert_eq!(get(admin, "/readyz").await.0, 200);

    db.exec("INSERT INTO items VALUES (1)").await;
    hook.wait_for(2).await;
    let (code, body) = wait_for_readyz(admin, |code| code != 200).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("sink `hook` is stuck: 1 events waiting, none settled for"),
        "{body}"
    );
    assert_eq!(get(admin, "/healthz").await.0, 200, "alive all the same");
    let scrape = Scrape::of(admin).await;
    assert!(scrape.value(r#"skor_sink_retried_total{sink="hook"}"#) >= 1.0);
    assert_eq!(scrape.value(DEPTH), 1.0);

    hook.answer(status(200));
    wait_for_readyz(admin, |code| code == 200).await;
    assert_eq!(Scrape::of(admin).await.value(DELIVERED), 1.0);
    daemon.stop().await;
}

#[tokio::test]
async fn durable_mode_exports_its_backlog_and_its_age() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::scripted(Vec::new(), status(503)).await;
    let config = format!(
        "{}{ADMIN}",
        hook_config(
            &db,
            "name = \"items\"\nmode = \"durable\"",
            &hook,
            "retries = 100\nbackoff_ms = 50"
        )
    );
    let daemon = start_installed(&db, &config).await;
    let admin = daemon.admin.expect("admin endpoint");
    db.exec("INSERT INTO items SELECT generate_series(1, 5)")
        .await;
    hook.wait_for(2).await;
    // The oldest event's age is read from the log at each scrape: it must
    // pass a second while the sink keeps failing.
    let scrape = eventually("the oldest event to age a second", || async {
        let scrape = Scrape::of(admin).await;
        let age = scrape.value("skor_durable_oldest_pending_seconds");
        if age >= 1.0 {
            Ok(scrape)
        } else {
            Err(age)
        }
    })
    .await;
    assert_eq!(scrape.value("skor_durable_backlog_events"), 5.0);
    assert_eq!(scrape.value("skor_durable_dead_letters"), 0.0);
    let age = scrape.value("skor_durable_oldest_pending_seconds");
    assert!((1.0..PATIENCE.as_secs_f64()).contains(&age), "age {age}");
    assert_eq!(scrape.value("skor_durable_claimed_total"), 5.0);
    assert_eq!(
        scrape.value(r#"skor_postgres_connected{connection="event_log"}"#),
        1.0
    );
    // Nothing listens in durable mode: no listener series to read as down.
    assert_eq!(
        scrape.get(r#"skor_postgres_connected{connection="listener"}"#),
        None
    );
    assert_eq!(scrape.value(RECEIVED), 5.0);

    hook.answer(status(200));
    eventually("the backlog to drain", || async {
        let backlog = Scrape::of(admin).await.value("skor_durable_backlog_events");
        if backlog == 0.0 {
            Ok(())
        } else {
            Err(backlog)
        }
    })
    .await;
    assert_eq!(Scrape::of(admin).await.value(DELIVERED), 5.0);
    daemon.stop().await;
}

#[tokio::test]
async fn a_taken_admin_port_stops_skor_at_start_up() {
    let db = TestDb::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = config(&db, &format!("[admin]\nlisten = \"{addr}\"\n"));
    let config = Config::from_toml(&config, "test.toml").unwrap();
    let error = match Daemon::start(&config).await {
        Ok(_) => panic!("started on a taken port"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.starts_with(&format!("cannot serve the admin endpoint on {addr}: ")),
        "{error}"
    );
}

#[tokio::test]
async fn readyz_is_unready_while_postgres_is_stopped_and_ready_once_it_is_back() {
    let server = tokio::task::spawn_blocking(|| PgServer::start(None))
        .await
        .unwrap();
    let hook = Hook::start().await;
    let config = format!(
        "[source]\ndsn = \"{}\"\nreconnect_max_backoff_ms = 200\n\
         [[table]]\nname = \"items\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n{ADMIN}",
        server.dsn(),
        hook.url()
    );
    let mut client = crate::common::connect(&server.dsn()).await;
    client.batch_execute(ITEMS).await.unwrap();
    let parsed = Config::from_toml(&config, "test.toml").unwrap();
    skor::install::install(&mut client, &parsed).await.unwrap();
    drop(client);
    let daemon = Running::start(&config).await;
    let admin = daemon.admin.expect("admin endpoint");
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));

    let server = Arc::new(server);
    let stopping = Arc::clone(&server);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    let (code, body) = wait_for_readyz(admin, |code| code != 200).await;
    assert_eq!(code, 503);
    assert_eq!(
        body,
        "not ready\n- not listening: the connection to PostgreSQL is down\n"
    );
    assert_eq!(get(admin, "/healthz").await.0, 200, "alive all the same");
    let down = Scrape::of(admin).await;
    assert_eq!(
        down.value(r#"skor_postgres_connected{connection="listener"}"#),
        0.0
    );
    assert!(down.value("skor_notification_queue_usage").is_nan());

    let starting = Arc::clone(&server);
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    assert_eq!(
        wait_for_readyz(admin, |code| code == 200).await.1,
        "ready\n"
    );
    let back = Scrape::of(admin).await;
    assert_eq!(
        back.value(r#"skor_postgres_connected{connection="listener"}"#),
        1.0
    );
    assert_eq!(
        back.value(r#"skor_postgres_reconnects_total{connection="listener"}"#),
        1.0
    );
    assert_eq!(back.value("skor_notification_queue_usage"), 0.0);
    // Ready means listening: a change made now arrives.
    let client = crate::common::connect(&server.dsn()).await;
    client
        .batch_execute("INSERT INTO items VALUES (42)")
        .await
        .unwrap();
    assert_eq!(crate::common::row_id(&hook.wait_for(1).await[0].body), 42);
    daemon.stop().await;
}

/// Polls `/readyz` until its status satisfies `wanted`.
async fn wait_for_readyz(addr: SocketAddr, wanted: impl Fn(u16) -> bool) -> (u16, String) {
    eventually("/readyz to answer as wanted", || async {
        let (code, body) = get(addr, "/readyz").await;
        if wanted(code) {
            Ok((code, body))
        } else {
            Err((code, body))
        }
    })
    .await
}
