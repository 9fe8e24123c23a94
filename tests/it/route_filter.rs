//! Route filters: one table fans out to different sinks by value, against
//! real PostgreSQL triggers and real webhook receivers; a missing field is no
//! match and not a crash; a bad expression is a config error naming the
//! route and the position in the expression.

use crate::common::bin::{config_file, run, stderr};
use crate::common::wal::WalDb;
use crate::common::{config, start_installed, Hook, Running, TestDb};

/// An event payload as the trigger writes it.
fn event(table: &str, op: &str, data: &str) -> String {
    format!(r#"{{"table" : "{table}", "schema" : "public", "op" : "{op}", "data" : {data}}}"#)
}

#[tokio::test]
async fn two_filtered_routes_split_one_table_between_two_hooks() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        .await;
    let (paid, other) = (Hook::start().await, Hook::start().await);
    // One delivery at a time, so each hook sees its events in commit order.
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"orders\"\n\
             [sink.paid]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [sink.other]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [[route]]\ntables = [\"orders\"]\nfilter = 'op == \"UPDATE\" && data.status == \"paid\"'\nsinks = [\"paid\"]\n\
             [[route]]\ntables = [\"orders\"]\nfilter = 'op != \"UPDATE\" || data.status == \"refunded\"'\nsinks = [\"other\"]\n",
            paid.url(),
            other.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    for sql in [
        "INSERT INTO orders VALUES (1, 'new')",
        "UPDATE orders SET status = 'paid' WHERE id = 1",
        "INSERT INTO orders VALUES (2, 'paid')",
        "UPDATE orders SET status = 'shipped' WHERE id = 1", // neither route
        "UPDATE orders SET status = 'refunded' WHERE id = 2",
        "UPDATE orders SET status = 'paid' WHERE id = 2",
        "DELETE FROM orders WHERE id = 1",
    ] {
        db.exec(sql).await;
    }
    let row = |id: i32, status: &str| format!(r#"{{"id":{id},"status":"{status}"}}"#);
    let other_expected = vec![
        event("orders", "INSERT", &row(1, "new")),
        event("orders", "INSERT", &row(2, "paid")),
        event("orders", "UPDATE", &row(2, "refunded")),
        event("orders", "DELETE", &row(1, "shipped")),
    ];
    let paid_expected = vec![
        event("orders", "UPDATE", &row(1, "paid")),
        event("orders", "UPDATE", &row(2, "paid")),
    ];
    let bodies = |requests: Vec<crate::common::Request>| -> Vec<String> {
        requests.into_iter().map(|r| r.body).collect()
    };
    assert_eq!(bodies(other.wait_for(4).await), other_expected);
    assert_eq!(bodies(paid.wait_for(2).await), paid_expected);
    crate::common::eventually_true("the shipped update counted as unrouted", || {
        daemon.stats.events.unrouted.get() == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(other.bodies(), other_expected);
    assert_eq!(paid.bodies(), paid_expected);
}

#[tokio::test]
async fn a_missing_field_is_no_match_and_the_daemon_goes_on() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE orders (id int PRIMARY KEY, status text); \
         CREATE TABLE notes (id int PRIMARY KEY);",
    )
    .await;
    let (paid, bare) = (Hook::start().await, Hook::start().await);
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"orders\"\n[[table]]\nname = \"notes\"\n\
             [sink.paid]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [sink.bare]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [[route]]\nfilter = 'data.status == \"paid\"'\nsinks = [\"paid\"]\n\
             [[route]]\nfilter = '!has(data.status)'\nsinks = [\"bare\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            paid.url(),
            bare.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    // `notes` has no `status`: the first filter cannot be evaluated (no
    // match), the second tests for the field and matches.
    db.exec("INSERT INTO notes VALUES (1)").await;
    db.exec("INSERT INTO orders VALUES (2, 'paid')").await;
    // A NULL column is there, with the value null: neither route.
    db.exec("INSERT INTO orders VALUES (3, NULL)").await;
    db.exec("INSERT INTO notes VALUES (4)").await;
    db.exec("INSERT INTO orders VALUES (5, 'paid')").await;
    let order = |id: i32, status: &str| {
        event(
            "orders",
            "INSERT",
            &format!(r#"{{"id":{id},"status":{status}}}"#),
        )
    };
    let note = |id: i32| event("notes", "INSERT", &format!(r#"{{"id":{id}}}"#));
    let bodies = |requests: Vec<crate::common::Request>| -> Vec<String> {
        requests.into_iter().map(|r| r.body).collect()
    };
    assert_eq!(
        bodies(paid.wait_for(2).await),
        vec![order(2, "\"paid\""), order(5, "\"paid\"")]
    );
    assert_eq!(bodies(bare.wait_for(2).await), vec![note(1), note(4)]);
    crate::common::eventually_true("the NULL status counted as unrouted", || {
        daemon.stats.events.unrouted.get() == 1
    })
    .await;
    assert_eq!(daemon.stats.events.received.get(), 5);
    // The two notes failed the first route's filter, and /metrics says so
    // by route; the second route's filter never failed.
    let admin = daemon.admin.expect("admin endpoint");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut series: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("skor_route_filter_errors_total"))
        .collect();
    series.sort_unstable();
    assert_eq!(
        series,
        vec![
            r#"skor_route_filter_errors_total{route="0"} 2"#,
            r#"skor_route_filter_errors_total{route="1"} 0"#
        ],
        "{metrics}"
    );
    daemon.stop().await;
    assert_eq!(paid.count(), 2);
    assert_eq!(bare.count(), 2);
}

#[tokio::test]
async fn filters_read_the_old_row_of_a_wal_table() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        .await;
    let (changed, rest, by_function) = (
        Hook::start().await,
        Hook::start().await,
        Hook::start().await,
    );
    let cfg = db.config(&format!(
        "[[table]]\nname = \"orders\"\nold = true\nreplica_identity = \"full\"\n\
         [sink.changed]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
         [sink.rest]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
         [sink.by_function]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
         [[route]]\nfilter = 'old != null && old.status != data.status'\nsinks = [\"changed\"]\n\
         [[route]]\nfilter = 'old == null'\nsinks = [\"rest\"]\n\
         [[route]]\nfilter = 'changed(\"status\")'\nsinks = [\"by_function\"]\n",
        changed.url(),
        rest.url(),
        by_function.url()
    ));
    db.install(&cfg).await;
    let daemon = Running::start(&cfg).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'new'); \
         UPDATE orders SET status = 'paid' WHERE id = 1; \
         UPDATE orders SET status = 'paid' WHERE id = 1; \
         DELETE FROM orders WHERE id = 1;",
    )
    .await;
    let row = |status: &str| format!(r#"{{"id":1,"status":"{status}"}}"#);
    let bodies = |requests: Vec<crate::common::Request>| -> Vec<String> {
        requests.into_iter().map(|r| r.body).collect()
    };
    // The second UPDATE changes nothing: neither route (its old row is
    // there, and equal).
    let status_changed = vec![format!(
        r#"{{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {}, "old" : {}}}"#,
        row("paid"),
        row("new")
    )];
    assert_eq!(bodies(changed.wait_for(1).await), status_changed);
    assert_eq!(bodies(by_function.wait_for(1).await), status_changed);
    assert_eq!(
        bodies(rest.wait_for(2).await),
        vec![
            event("orders", "INSERT", &row("new")),
            event("orders", "DELETE", &row("paid")),
        ]
    );
    crate::common::eventually_true("the unchanged update counted as unrouted", || {
        daemon.stats.events.unrouted.get() == 1
    })
    .await;
    daemon.stop().await;
    assert_eq!(changed.count(), 1);
    assert_eq!(by_function.count(), 1);
    assert_eq!(rest.count(), 2);
}

/// `changed()` in both trigger modes: only the UPDATEs that change the
/// column reach the route, whatever else they change.
#[tokio::test]
async fn changed_picks_the_updates_that_change_a_column() {
    for mode in ["notify", "durable"] {
        let db = TestDb::new().await;
        db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL, note text)")
            .await;
        let hook = Hook::start().await;
        let cfg = config(
            &db,
            &format!(
                "[[table]]\nname = \"orders\"\nmode = \"{mode}\"\nold = true\n\
                 [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
                 [[route]]\nfilter = 'changed(\"status\")'\nsinks = [\"hook\"]\n",
                hook.url()
            ),
        );
        let daemon = start_installed(&db, &cfg).await;
        for sql in [
            "INSERT INTO orders VALUES (1, 'new', NULL)",
            "UPDATE orders SET note = 'call first' WHERE id = 1", // status unchanged
            "UPDATE orders SET status = 'paid', note = NULL WHERE id = 1",
            "UPDATE orders SET status = 'paid' WHERE id = 1", // same value
            "UPDATE orders SET status = 'shipped' WHERE id = 1",
            "DELETE FROM orders WHERE id = 1",
        ] {
            db.exec(sql).await;
        }
        let statuses = |requests: Vec<crate::common::Request>| -> Vec<(String, String)> {
            requests
                .into_iter()
                .map(|r| {
                    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                    (
                        body["old"]["status"].to_string(),
                        body["data"]["status"].to_string(),
                    )
                })
                .collect()
        };
        assert_eq!(
            statuses(hook.wait_for(2).await),
            vec![
                ("\"new\"".to_string(), "\"paid\"".to_string()),
                ("\"paid\"".to_string(), "\"shipped\"".to_string()),
            ],
            "{mode} mode"
        );
        crate::common::eventually_true("the other four events counted as unrouted", || {
            daemon.stats.events.unrouted.get() == 4
        })
        .await;
        daemon.stop().await;
        assert_eq!(hook.count(), 2, "{mode} mode");
    }
}

#[tokio::test]
async fn skor_check_says_changed_needs_the_old_row() {
    let config = |old: &str| {
        format!(
            "[source]\ndsn = \"host=127.0.0.1\"\nmode = \"wal\"\n\
             [[table]]\nname = \"public.orders\"\n{old}\
             [sink.a]\ntype = \"stdout\"\n\
             [[route]]\nfilter = 'changed(\"status\")'\nsinks = [\"a\"]\n"
        )
    };
    let file = config_file(&config(""));
    let output = run(&["--config", file.path().to_str().unwrap(), "check"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(
            "key `route[0].filter`: changed() compares the old row with the new one, and table \
             public.orders does not send its old row: set `old = true` on its [[table]] (wal mode \
             sends it with REPLICA IDENTITY FULL: also set `replica_identity = \"full\"`)"
        ),
        "{}",
        stderr(&output)
    );
    let good = config_file(&config("old = true\nreplica_identity = \"full\"\n"));
    let output = run(&["--config", good.path().to_str().unwrap(), "check"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

const BAD_ROUTE: &str = "[source]\ndsn = \"host=127.0.0.1\"\n\
    [sink.a]\ntype = \"stdout\"\n\
    [[route]]\nsinks = [\"a\"]\n\
    [[route]]\nfilter = 'op == \"UPDATE\" && data.status = \"paid\"'\nsinks = [\"a\"]\n";

#[test]
fn a_bad_expression_is_a_config_error_naming_the_route_and_the_position() {
    let error = skor::config::Config::from_toml(BAD_ROUTE, "skor.toml").unwrap_err();
    assert_eq!(
        error.to_string(),
        "skor.toml:8:10: key `route[1].filter`: invalid filter expression at line 1, column 31: \
         Syntax error: token recognition error at: '= '"
    );
}

#[tokio::test]
async fn skor_check_reports_a_bad_expression() {
    let file = config_file(BAD_ROUTE);
    let path = file.path().to_str().unwrap();
    let output = run(&["--config", path, "check"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "{path}:8:10: key `route[1].filter`: invalid filter expression at line 1, column 31"
        )),
        "{}",
        stderr(&output)
    );
    let good = config_file(&BAD_ROUTE.replace("status = ", "status == "));
    let output = run(&["--config", good.path().to_str().unwrap(), "check"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn durable_events_no_filter_takes_leave_the_event_log() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
        .await;
    let paid = Hook::start().await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"orders\"\nmode = \"durable\"\n\
             [sink.paid]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             [[route]]\nfilter = 'data.status == \"paid\"'\nsinks = [\"paid\"]\n",
            paid.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec(
        "INSERT INTO orders VALUES (1, 'new'); INSERT INTO orders VALUES (2, 'paid'); \
         UPDATE orders SET status = 'paid' WHERE id = 1",
    )
    .await;
    let bodies: Vec<String> = paid.wait_for(2).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        bodies,
        [
            event("orders", "INSERT", r#"{"id":2,"status":"paid"}"#),
            event("orders", "UPDATE", r#"{"id":1,"status":"paid"}"#),
        ]
    );
    // The event the filter turned away is done with, not left pending.
    let durable = daemon.stats.durable.clone().unwrap();
    crate::common::eventually_true("three finished", || durable.finished.get() == 3).await;
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.event_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no event left in the log, none a dead letter");
    assert_eq!(paid.count(), 2);
    daemon.stop().await;
}
