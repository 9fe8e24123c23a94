//! A burst that outruns the sink, with the default `when_full`: the
//! listener waits for room and every event arrives, in each row's order.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{
    eventually_within, hook_config, slow, start_installed, Hook, TestDb, PATIENCE,
};

#[tokio::test]
async fn a_burst_larger_than_the_queue_arrives_whole_and_in_order() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        .await;
    let hook = Hook::scripted(Vec::new(), slow(200, Duration::from_millis(1))).await;
    // No when_full: the default must not drop what does not fit.
    let config = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        "queue_capacity = 100\nmax_in_flight = 8",
    );
    let daemon = start_installed(&db, &config).await;
    const ROWS: i32 = 3000;
    for first in (1..=ROWS).step_by(100) {
        db.exec(&format!(
            "INSERT INTO items (id) SELECT g FROM generate_series({first}, {}) g",
            first + 99
        ))
        .await;
    }
    db.exec("UPDATE items SET n = 1").await;

    let total = 2 * ROWS as usize;
    let stats = daemon.stats.clone();
    let sink = stats.sink("hook").unwrap();
    eventually_within(&format!("{total} events"), 2 * PATIENCE, || {
        std::future::ready(if hook.count() >= total {
            Ok(())
        } else {
            Err(format!(
                "{} arrived, {} dropped",
                hook.count(),
                sink.dropped.get()
            ))
        })
    })
    .await;
    assert_eq!(sink.dropped.get(), 0);
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), total, "each event once");
    let mut ops: HashMap<i64, Vec<String>> = HashMap::new();
    for body in &bodies {
        let event: serde_json::Value = serde_json::from_str(body).unwrap();
        let id = event["data"]["id"].as_i64().unwrap();
        ops.entry(id)
            .or_default()
            .push(event["op"].as_str().unwrap().to_string());
    }
    assert_eq!(ops.len(), ROWS as usize, "every row");
    for (id, ops) in &ops {
        assert_eq!(ops, &["INSERT", "UPDATE"], "row {id}");
    }
    daemon.stop().await;
}
