//! RabbitMQ stopped for a few seconds while events flow, then started
//! again: every event arrives. A binary of its own because it stops the
//! shared broker: test binaries run one after another, so no other AMQP
//! test (they are in tests/it) runs meanwhile.
#![cfg(feature = "amqp")]

#[path = "it/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::amqp::Rabbit;
use common::{assert_every_id, config, eventually_true, inserts, start_installed, TestDb};

/// Runs `rabbitmqctl <action>`; the tests run as a user allowed to.
fn rabbitmqctl(action: &str) {
    let status = Command::new("rabbitmqctl")
        .arg(action)
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {action} failed");
}

/// Starts the broker's application again even if the test fails.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").status();
        let _ = Command::new("rabbitmqctl").arg("await_startup").status();
    }
}

#[tokio::test]
async fn rabbitmq_stopped_and_started_loses_no_event() {
    let mut rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let cfg = config(
        &db,
        &format!("[[table]]\nname = \"items\"\n{}", rabbit.sink("")),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(&inserts(1, 100)).await;
    let mut seen = rabbit.take(100).await;
    let sink = daemon.stats.sink("bus").unwrap();

    let restart = Restart;
    rabbitmqctl("stop_app");
    // Events keep coming while the broker is down; skor holds them, and
    // the broker stays down until the sink has found it gone and waited.
    db.exec(&inserts(101, 200)).await;
    eventually_true("the broker's absence is waited out", || {
        sink.disconnected.get() == 1 && sink.outage_waits.get() > 0
    })
    .await;
    drop(restart);
    rabbit.reconnect().await;
    db.exec(&inserts(201, 300)).await;

    eventually_true("every event confirmed", || sink.delivered.get() == 300).await;
    seen.extend(rabbit.take_within(200, Duration::from_secs(30)).await);
    seen.extend(rabbit.rest().await);
    let duplicates = assert_every_id(seen.iter().map(|m| m.body.as_str()), 300);
    // Retries may happen (a publish under way when the broker went away),
    // so they are reported, not asserted.
    eprintln!(
        "broker stopped: {duplicates} duplicates, {} retries, {} outage waits",
        sink.retried.get(),
        sink.outage_waits.get()
    );
    assert_eq!(sink.failed.get(), 0);
    assert_eq!(daemon.stop().await.undelivered, 0);
    rabbit.delete().await;
}
