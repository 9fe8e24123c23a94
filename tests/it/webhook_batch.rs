//! Webhook batching (`batch_size`): one POST carries a JSON array of the
//! original payloads, each row's events still in commit order.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::{
    hook_config, install, start_installed, status, Hook, Request, Running, TestDb,
};
use skor_sink_webhook::EVENT_ID_HEADER;

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL DEFAULT 0);";

/// The payloads of a batched request, as the bytes the triggers wrote.
fn elements(request: &Request) -> Vec<String> {
    let array: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(&request.body).expect("a JSON array body");
    array.into_iter().map(|p| p.get().to_string()).collect()
}

/// Waits until the requests answered 200 carry `events` payloads in all.
async fn wait_for_events(hook: &Hook, events: usize) -> Vec<Request> {
    let mut seen = 0;
    loop {
        let requests = hook.wait_for(seen + 1).await;
        seen = requests.len();
        let delivered: usize = requests
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| elements(r).len())
            .sum();
        if delivered >= events {
            return requests;
        }
    }
}

#[tokio::test]
async fn a_burst_arrives_in_few_arrays_of_the_original_payloads_in_row_order() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        "batch_size = 50\nbatch_timeout_ms = 20",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 200)")
        .await;
    for version in 1..=3 {
        db.exec(&format!(
            "UPDATE items SET version = {version} WHERE id <= 20"
        ))
        .await;
    }
    let requests = wait_for_events(&hook, 260).await;
    let mut versions: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut total = 0;
    for request in &requests {
        assert_eq!(request.headers["content-type"], "application/json");
        let payloads = elements(request);
        assert!(
            (1..=50).contains(&payloads.len()),
            "{} events",
            payloads.len()
        );
        for payload in payloads {
            total += 1;
            let event: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let id = event["data"]["id"].as_i64().unwrap();
            if id == 1 && event["op"] == "INSERT" {
                // The bytes the trigger wrote, not a re-serialisation.
                assert_eq!(
                    payload,
                    r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"version":0}}"#
                );
            }
            let version = event["data"]["version"].as_i64().unwrap();
            versions.entry(id).or_default().push(version);
        }
    }
    assert_eq!(total, 260, "every event once");
    assert_eq!(versions.len(), 200);
    for (id, seen) in &versions {
        let expected: Vec<i64> = if *id <= 20 { vec![0, 1, 2, 3] } else { vec![0] };
        assert_eq!(seen, &expected, "row {id} in commit order");
    }
    assert!(
        requests.len() <= 60,
        "{} requests for 260 events",
        requests.len()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_batch_is_sent_again_whole() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::scripted(vec![status(503)], status(200)).await;
    // One lane, and time for the ten rows to gather in one batch.
    let cfg = hook_config(
        &db,
        "name = \"items\"",
        &hook,
        "batch_size = 10\nbatch_timeout_ms = 500\nmax_in_flight = 1",
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 10)")
        .await;
    let requests = hook.wait_for(2).await;
    assert_eq!(requests[0].status, 503);
    assert_eq!(elements(&requests[0]).len(), 10);
    assert_eq!(requests[1].body, requests[0].body, "the same batch again");
    let sink = daemon.stats.sink("hook").unwrap();
    crate::common::eventually_true("ten delivered", || sink.delivered.get() == 10).await;
    assert_eq!(sink.retried.get(), 10);
    daemon.stop().await;
    assert_eq!(hook.count(), 2);
}

#[tokio::test]
async fn durable_batches_name_their_event_ids_in_body_order() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let cfg = hook_config(
        &db,
        "name = \"items\"\nmode = \"durable\"",
        &hook,
        "batch_size = 25\nbatch_timeout_ms = 20",
    );
    install(&db, &cfg).await;
    // Logged before the daemon starts, so their ids can be read first.
    db.exec("INSERT INTO items (id) SELECT generate_series(1, 100)")
        .await;
    let ids = db.event_ids().await;
    assert_eq!(ids.len(), 100);
    let daemon = Running::start(&cfg).await;
    let requests = wait_for_events(&hook, 100).await;
    let mut seen = BTreeSet::new();
    for request in &requests {
        let header = request.headers[EVENT_ID_HEADER].to_str().unwrap();
        let named: Vec<&str> = header.split(',').collect();
        assert_eq!(named.len(), elements(request).len(), "{header}");
        seen.extend(named.into_iter().map(str::to_string));
    }
    let expected: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(seen, expected, "each event named once, by its log id");
    crate::common::eventually("the log to empty", || async {
        let left = db.event_ids().await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_lone_event_still_arrives_as_an_array() {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let hook = Hook::start().await;
    let cfg = hook_config(&db, "name = \"items\"", &hook, "batch_size = 10");
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items (id) VALUES (7)").await;
    let requests = hook.wait_for(1).await;
    let payloads = elements(&requests[0]);
    assert_eq!(payloads.len(), 1, "{}", requests[0].body);
    assert_eq!(crate::common::row_id(&payloads[0]), 7);
    daemon.stop().await;
}
