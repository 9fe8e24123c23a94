//! Routes fan events out to several sinks; a slow sink does not hold up a
//! fast one.

use std::time::Duration;

use crate::common::{config, slow, start_installed, Hook, TestDb};

#[tokio::test]
async fn two_routes_fan_one_table_out_to_two_webhooks_and_another_to_one() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE notes (id int PRIMARY KEY);")
        .await;
    let (a, b) = (Hook::start().await, Hook::start().await);
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"orders\"\n[[table]]\nname = \"public.notes\"\n\
             [sink.a]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [sink.b]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [[route]]\ntables = [\"orders\"]\nsinks = [\"a\", \"b\"]\n\
             [[route]]\ntables = [\"public.no*\"]\nops = [\"INSERT\"]\nsinks = [\"b\"]\n",
            a.url(),
            b.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO orders VALUES (1)").await;
    db.exec("INSERT INTO notes VALUES (2)").await;
    db.exec("DELETE FROM notes").await; // no route takes a DELETE on notes
    db.exec("INSERT INTO orders VALUES (3)").await;
    let order = |id: i32| {
        format!(
            r#"{{"table" : "orders", "schema" : "public", "op" : "INSERT", "data" : {{"id":{id}}}}}"#
        )
    };
    let note = r#"{"table" : "notes", "schema" : "public", "op" : "INSERT", "data" : {"id":2}}"#;
    // Different rows may arrive in any order.
    let sorted = |requests: Vec<crate::common::Request>| {
        let mut bodies: Vec<String> = requests.into_iter().map(|r| r.body).collect();
        bodies.sort();
        bodies
    };
    let b_bodies = sorted(b.wait_for(3).await);
    assert_eq!(b_bodies, vec![note.to_string(), order(1), order(3)]);
    let a_bodies = sorted(a.wait_for(2).await);
    assert_eq!(a_bodies, vec![order(1), order(3)]);
    assert_eq!(daemon.stats.events.unrouted.get(), 1);
    daemon.stop().await;
    assert_eq!(a.requests().len(), 2);
    assert_eq!(b.requests().len(), 3);
}

#[tokio::test]
async fn a_slow_sink_does_not_delay_a_fast_one() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let slow_hook = Hook::scripted(vec![], slow(200, Duration::from_secs(1))).await;
    let fast_hook = Hook::start().await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n\
             [sink.slow]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [sink.fast]\ntype = \"webhook\"\nurl = \"{}\"\n",
            slow_hook.url(),
            fast_hook.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    for id in 1..=5 {
        db.exec(&format!("INSERT INTO items VALUES ({id})")).await;
    }
    let fast = fast_hook.wait_for(5).await;
    // The slow sink, one request at a time, needs a second per event; the
    // fast one got all five while the slow one was still on its first or
    // second.
    assert!(
        slow_hook.requests().len() <= 2,
        "{}",
        slow_hook.requests().len()
    );
    let ids: Vec<bool> = (1..=5)
        .map(|id| {
            fast.iter()
                .any(|r| r.body.contains(&format!(r#""id":{id}"#)))
        })
        .collect();
    assert_eq!(ids, vec![true; 5], "every row arrived");
    daemon.stop().await;
}
