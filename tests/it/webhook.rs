//! The webhook sink under the shared retry policy, against a real HTTP
//! server that fails on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::bin::{config_file, run, sigterm_and_wait, skor, stderr};
use crate::common::{
    config, eventually_true, hook_config, inserts, row_id, slow, start_installed, status, Hook,
    Running, TestDb,
};
use tokio::time::Instant;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text);";

async fn setup(hook: &Hook, sink_options: &str) -> (TestDb, Running) {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = hook_config(&db, "name = \"items\"", hook, sink_options);
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

#[tokio::test]
async fn two_500s_then_200_delivers_once_after_100_and_200_ms() {
    let hook = Hook::scripted(vec![status(500), status(500)], status(200)).await;
    let (db, daemon) = setup(&hook, "").await;
    // Two versions of one row: the second waits for the first's retries.
    db.exec("INSERT INTO items VALUES (1, 'retried')").await;
    db.exec("UPDATE items SET name = 'next' WHERE id = 1").await;
    let requests = hook.wait_for(4).await;
    let bodies: Vec<_> = requests.iter().map(|r| r.body.as_str()).collect();
    assert!(bodies[..3].iter().all(|b| *b == bodies[0]), "{bodies:#?}");
    assert!(bodies[0].contains(r#""retried""#), "{}", bodies[0]);
    assert!(bodies[3].contains(r#""next""#), "order kept: {bodies:#?}");
    let first_gap = requests[1].at - requests[0].at;
    let second_gap = requests[2].at - requests[1].at;
    assert!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(200), "{second_gap:?}");
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("both events counted", || sink.delivered.get() == 2).await;
    assert_eq!((sink.retried.get(), sink.failed.get()), (2, 0));
    daemon.stop().await;
    assert_eq!(hook.requests().len(), 4, "the 200 was the last attempt");
}

#[tokio::test]
async fn a_403_is_not_retried() {
    let hook = Hook::scripted(vec![status(403)], status(200)).await;
    let (db, daemon) = setup(&hook, "").await;
    db.exec("INSERT INTO items VALUES (1, 'forbidden')").await;
    db.exec("UPDATE items SET name = 'allowed' WHERE id = 1")
        .await;
    // One row's events are delivered in order, so a retry of the first
    // would come before the second.
    let requests = hook.wait_for(2).await;
    assert!(requests[0].body.contains(r#""forbidden""#));
    assert!(requests[1].body.contains(r#""allowed""#), "{:#?}", requests);
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("second event counted", || sink.delivered.get() == 1).await;
    assert_eq!((sink.retried.get(), sink.failed.get()), (0, 1));
    daemon.stop().await;
}

#[tokio::test]
async fn a_hung_webhook_times_out_and_is_retried() {
    let hook = Hook::scripted(vec![slow(200, Duration::from_secs(5))], status(200)).await;
    let (db, daemon) = setup(&hook, "timeout_ms = 300").await;
    db.exec("INSERT INTO items VALUES (1, 'patience')").await;
    let requests = hook.wait_for(2).await;
    assert_eq!(requests[0].body, requests[1].body);
    // skor's clock starts before the first request reaches the receiver,
    // so the gap between arrivals may fall a little short of 300 + 100 ms;
    // a retry without the backoff would land near 300 ms.
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(360),
        "timeout 300 ms + backoff 100 ms, got {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(5),
        "did not wait for the hung answer: {gap:?}"
    );
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("retry counted as delivered", || sink.delivered.get() == 1).await;
    assert_eq!(sink.retried.get(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_webhook_down_for_3_seconds_loses_nothing_and_spends_no_retry() {
    let hook = Hook::start().await;
    let (db, daemon) = setup(&hook, "").await;
    db.exec("INSERT INTO items SELECT id, 'v1' FROM generate_series(1, 5) id")
        .await;
    hook.wait_for(5).await;
    let sink = daemon.stats.sink("hook").unwrap();

    hook.stop().await;
    db.exec(&inserts(6, 10)).await;
    eventually_true("the outage is seen", || sink.disconnected.get() == 1).await;
    let down = Instant::now();
    // Events keep coming while the receiver is down; versions of one row
    // must still arrive in commit order. The sleeps are the point: the
    // outage must outlast what five retries would have waited.
    for version in 2..=4 {
        db.exec(&format!("UPDATE items SET name = 'v{version}'"))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        down.elapsed() >= Duration::from_secs(3),
        "longer than the 1.5 s the retries span"
    );
    hook.restart().await;

    // 5 inserts, 5 more while down, 3 updates of 10 rows.
    let requests = hook.wait_for(5 + 5 + 30).await;
    eventually_true("every event counted", || sink.delivered.get() == 40).await;
    let mut versions = std::collections::BTreeMap::<i64, Vec<String>>::new();
    for request in &requests {
        let event: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let name = event["data"]["name"].as_str().unwrap_or("null").to_string();
        versions
            .entry(row_id(&request.body))
            .or_default()
            .push(name);
    }
    for (id, seen) in &versions {
        let first = if *id <= 5 { "v1" } else { "null" };
        assert_eq!(seen, &[first, "v2", "v3", "v4"], "row {id}");
    }
    assert_eq!(versions.len(), 10);
    assert_eq!(
        (sink.retried.get(), sink.failed.get()),
        (0, 0),
        "the outage cost no retry"
    );
    assert!(
        sink.outage_waits.get() > 0,
        "the outage was waited out, and counted as such"
    );
    assert_eq!(sink.disconnected.get(), 0, "back");
    daemon.stop().await;
}

#[tokio::test]
async fn an_unreachable_webhook_is_waited_for_up_to_max_outage_ms_then_failed() {
    // Bind and drop a listener so the port is closed.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let live = Hook::start().await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n\
             [sink.dead]\ntype = \"webhook\"\nurl = \"http://{addr}/\"\nretries = 2\nbackoff_ms = 10\n\
             max_outage_ms = 300\n\
             [sink.live]\ntype = \"webhook\"\nurl = \"{}\"\n",
            live.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    let started = Instant::now();
    db.exec("INSERT INTO items VALUES (1, 'x')").await;
    live.wait_for(1).await;
    let dead = daemon.stats.sink("dead").unwrap();
    eventually_true("the dead sink gives up", || dead.failed.get() == 1).await;
    // Waited out for 300 ms, then two retries of 10 and 20 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((dead.retried.get(), dead.delivered.get()), (2, 0));
    assert!(dead.outage_waits.get() > 0, "waited before the limit");
    daemon.stop().await;
}

#[tokio::test]
async fn max_outage_ms_gives_up_with_an_error_that_says_so() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let live = Hook::start().await;
    let file = config_file(&config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n\
             [sink.dead]\ntype = \"webhook\"\nurl = \"http://{addr}/hook\"\n\
             max_outage_ms = 200\nretries = 1\nbackoff_ms = 10\n\
             [sink.live]\ntype = \"webhook\"\nurl = \"{}\"\n",
            live.url()
        ),
    ));
    let path = file.path().to_str().unwrap();
    let install = run(&["--config", path, "install"]).await;
    assert!(install.status.success(), "{}", stderr(&install));
    let child = skor().args(["--config", path]).spawn().unwrap();
    db.wait_for_listener(None).await;
    db.exec("INSERT INTO items VALUES (1, 'x')").await;
    live.wait_for(1).await;
    // Shutting down lets the dead sink settle what it holds.
    let output = sigterm_and_wait(child).await;
    let logs = stderr(&output);
    let failed = logs
        .lines()
        .find(|line| line.contains("event not delivered"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(
        failed.contains("sink=dead")
            && failed.contains("longer than max_outage_ms = 200: unreachable: ")
            && failed.contains("retries exhausted"),
        "{failed}"
    );
    assert_eq!(
        logs.matches("sink unreachable").count(),
        1,
        "one warning for the outage:\n{logs}"
    );
}

/// A receiver that answers `/old` with a 302 and `/temp` with a 307, both
/// to `/new`, and records the method, path and body of every request.
async fn redirecting_receiver() -> (SocketAddr, Arc<Mutex<Vec<(String, String, String)>>>) {
    use axum::http::{header, Method, StatusCode, Uri};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: String| {
        let record = Arc::clone(&record);
        async move {
            let path = uri.path().to_string();
            record
                .lock()
                .unwrap()
                .push((method.to_string(), path.clone(), body));
            let (status, location) = match path.as_str() {
                "/old" => (StatusCode::FOUND, "/new"),
                "/temp" => (StatusCode::TEMPORARY_REDIRECT, "/new"),
                _ => (StatusCode::OK, ""),
            };
            (status, [(header::LOCATION, location)])
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test]
async fn a_302_fails_without_a_get_while_a_same_origin_307_delivers_the_post() {
    let (addr, seen) = redirecting_receiver().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n\
             [sink.moved]\ntype = \"webhook\"\nurl = \"http://{addr}/old\"\n\
             [sink.temp]\ntype = \"webhook\"\nurl = \"http://{addr}/temp\"\n"
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'x')").await;
    let moved = daemon.stats.sink("moved").unwrap();
    let temp = daemon.stats.sink("temp").unwrap();
    eventually_true("the 302 is a final error", || moved.failed.get() == 1).await;
    eventually_true("the 307 is followed", || temp.delivered.get() == 1).await;
    assert_eq!(moved.retried.get(), 0, "a redirect is not retried");
    let seen = seen.lock().unwrap().clone();
    let at_new: Vec<_> = seen.iter().filter(|(_, path, _)| path == "/new").collect();
    assert_eq!(at_new.len(), 1, "only the 307 reached /new: {seen:#?}");
    assert_eq!(at_new[0].0, "POST");
    assert_eq!(row_id(&at_new[0].2), 1, "with its body");
    daemon.stop().await;
}

#[tokio::test]
async fn a_zero_timeout_is_a_config_error_naming_the_key() {
    let file = config_file(
        "[source]\ndsn = \"host=127.0.0.1\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\ntimeout_ms = 0\n",
    );
    let output = run(&["--config", file.path().to_str().unwrap(), "check"]).await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains(
            ":6:14: key `sink.hook.timeout_ms`: expected 1 to 86400000 ms (a day), got 0"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn concurrent_requests_keep_each_rows_versions_in_commit_order() {
    // 2 ms per answer: with one request at a time this would take 1.6 s,
    // so requests overlap across the sink's lanes.
    let hook = Hook::scripted(vec![], slow(200, Duration::from_millis(2))).await;
    let (db, daemon) = setup(&hook, "").await;
    db.exec("INSERT INTO items SELECT id, '0' FROM generate_series(1, 20) id")
        .await;
    for version in 1..=39 {
        db.exec(&format!("UPDATE items SET name = '{version}'"))
            .await;
    }
    let requests = hook.wait_for(800).await;
    let mut versions = std::collections::BTreeMap::<i64, Vec<i64>>::new();
    for request in &requests {
        let event: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap();
        let version: i64 = event["data"]["name"].as_str().unwrap().parse().unwrap();
        versions.entry(id).or_default().push(version);
    }
    let expected: Vec<i64> = (0..=39).collect();
    for (id, seen) in &versions {
        assert_eq!(seen, &expected, "row {id}");
    }
    assert_eq!(versions.len(), 20);
    // Requests overlapped: some arrived before the one before them was answered.
    let overlapping = requests
        .windows(2)
        .filter(|pair| pair[1].at - pair[0].at < Duration::from_millis(1))
        .count();
    assert!(overlapping > 100, "{overlapping} overlapping requests");
    daemon.stop().await;
}
