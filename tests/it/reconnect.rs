//! The listener survives its connection being killed.

use crate::common::{eventually, hook_config, start_installed, Hook, TestDb};

/// Every connection skor's listener holds to `db`, whatever it is doing
/// (the other connections skor opens have names of their own): its pid and
/// whether its last statement was LISTEN.
async fn listener_connections(db: &TestDb) -> Vec<(i32, bool)> {
    let rows = db
        .client
        .query(
            "SELECT pid, query LIKE 'LISTEN %' FROM pg_stat_activity \
              WHERE datname = $1 AND application_name = 'skor' ORDER BY pid",
            &[&db.name],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

#[tokio::test]
async fn a_terminated_listener_reconnects_and_later_events_arrive() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let hook = Hook::start().await;
    // No heartbeat in the test's time, so a listener's last statement stays
    // its LISTEN and says which connection listens.
    let config = hook_config(&db, "name = \"items\"", &hook, "")
        .replace("[[table]]", "heartbeat_interval_ms = 600000\n[[table]]");
    let daemon = start_installed(&db, &config).await;
    db.exec("INSERT INTO items VALUES (1)").await;
    hook.wait_for(1).await;
    let link = &daemon.stats.source.link;

    let old = db.wait_for_listener(None).await;
    assert_eq!(listener_connections(&db).await, vec![(old, true)]);
    let terminated: bool = db
        .client
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .unwrap()
        .get(0);
    assert!(terminated, "backend {old} was there to terminate");

    // Replaced means: the killed backend is gone, and skor holds exactly one
    // connection again, a new backend whose last statement was LISTEN.
    let new = eventually(
        &format!("a new listener in place of the killed {old}"),
        || async {
            let connections = listener_connections(&db).await;
            match connections[..] {
                [(pid, true)] if pid != old => Ok(pid),
                // skor's connections (pid, listens)
                _ => Err(connections),
            }
        },
    )
    .await;
    assert_eq!(link.reconnects.get(), 1);
    assert!(link.is_up());

    db.exec("INSERT INTO items VALUES (2)").await;
    let requests = hook.wait_for(2).await;
    assert!(
        requests[1].body.contains(r#""id":2"#),
        "{}",
        requests[1].body
    );
    // Heard on that connection: it is still skor's only one, never replaced.
    assert_eq!(listener_connections(&db).await, vec![(new, true)]);
    assert_eq!(link.reconnects.get(), 1);
    daemon.stop().await;
}
