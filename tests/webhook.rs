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
    db.exec("INSERT INTO items VALUES (1, 'retried')").await;
    db.exec("INSERT INTO items VALUES (2, 'next')").await;
    let requests = hook.wait_for(4).await;
    let bodies: Vec<_> = requests.iter().map(|r| r.body.as_str()).collect();
    assert!(bodies[..3].iter().all(|b| *b == bodies[0]), "{bodies:#?}");
    assert!(bodies[0].contains(r#""id":1"#), "{}", bodies[0]);
    assert!(bodies[3].contains(r#""id":2"#), "order kept: {bodies:#?}");
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
    db.exec("INSERT INTO items VALUES (2, 'allowed')").await;
    // Delivery is in order, so a retry of the first would come before the second.
    let requests = hook.wait_for(2).await;
    assert!(requests[0].body.contains(r#""id":1"#));
    assert!(requests[1].body.contains(r#""id":2"#), "{:#?}", requests);
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
