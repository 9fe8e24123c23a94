//! The listener survives its connection being killed.

mod common;

use common::{hook_config, start_installed, Hook, TestDb};

#[tokio::test]
async fn a_terminated_listener_reconnects_and_later_events_arrive() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let hook = Hook::start().await;
    let daemon = start_installed(&db, &hook_config(&db, "name = \"items\"", &hook, "")).await;
    db.exec("INSERT INTO items VALUES (1)").await;
    hook.wait_for(1).await;

    let old = db.wait_for_listener(None).await;
    db.exec(&format!("SELECT pg_terminate_backend({old})"))
        .await;
    let new = db.wait_for_listener(Some(old)).await;
    assert_ne!(old, new);

    db.exec("INSERT INTO items VALUES (2)").await;
    let requests = hook.wait_for(2).await;
    assert!(
        requests[1].body.contains(r#""id":2"#),
        "{}",
        requests[1].body
    );
    assert_eq!(daemon.stats.source.link.reconnects.get(), 1);
    daemon.stop().await;
}
