//! The webhook sink under the shared retry policy, against a real HTTP
//! server that fails on purpose.

mod common;

use std::time::Duration;

use common::{
    config, eventually, hook_config, slow, start_installed, status, Hook, Running, TestDb,
};

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
    eventually("both events counted", || sink.delivered.get() == 2).await;
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
    eventually("second event counted", || sink.delivered.get() == 1).await;
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
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(400),
        "timeout 300 ms + backoff 100 ms, got {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(5),
        "did not wait for the hung answer: {gap:?}"
    );
    let sink = daemon.stats.sink("hook").unwrap();
    eventually("retry counted as delivered", || sink.delivered.get() == 1).await;
    assert_eq!(sink.retried.get(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried_then_counted_as_failed() {
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
             [sink.live]\ntype = \"webhook\"\nurl = \"{}\"\n",
            live.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'x')").await;
    live.wait_for(1).await;
    let dead = daemon.stats.sink("dead").unwrap();
    eventually("the dead sink gives up", || dead.failed.get() == 1).await;
    assert_eq!((dead.retried.get(), dead.delivered.get()), (2, 0));
    daemon.stop().await;
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
