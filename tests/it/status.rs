//! The status page against a running daemon: `/status` names every sink,
//! counts what the receiver got and shows a failing sink's error, with no
//! secret of the config in it nor in `/`; in wal mode it shows the slot's
//! lag while a sink holds an event back; a stopped PostgreSQL shows as a
//! lost connection and its errors; and the page itself, in a real
//! headless Chromium, follows deliveries without being reloaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::browser::Browser;
use crate::common::pg_server::PgServer;
use crate::common::wal::WalDb;
use crate::common::{
    config, eventually, server_dsn, slow, start_installed, status, Hook, Running, TestDb,
};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY)";
const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = response.status().as_u16();
    (code, response.text().await.unwrap())
}

async fn status_of(addr: SocketAddr) -> Value {
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The sink called `name` in a `/status` document.
fn sink<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sinks"]
        .as_array()
        .expect("sinks")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sink {name} in {status}"))
}

/// Every secret the config of the first test holds.
const SECRETS: [&str; 5] = [
    "pg-pass-4e1f",
    "signing-key-of-at-least-24-bytes-1a9f",
    "url-pass-9b2c",
    "header-token-7d3a",
    "amqp-pass-6d2e",
];

#[tokio::test]
async fn status_names_every_sink_counts_deliveries_and_shows_errors_but_no_secret() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    // Gone for good: every event it gets fails at once, permanently.
    let gone = Hook::scripted(Vec::new(), status(410)).await;
    // Trust authentication ignores the password, so the DSN still works.
    let dsn = server_dsn().replace("user=postgres", "user=postgres password=pg-pass-4e1f");
    let mut sinks = format!(
        r#"[[table]]
name = "items"

[sink.hook]
type = "webhook"
url = "http://skor:url-pass-9b2c@{addr}/hook"
headers = {{ Authorization = "Bearer header-token-7d3a" }}
secret = "signing-key-of-at-least-24-bytes-1a9f"

[sink.gone]
type = "webhook"
url = "{gone}"
"#,
        addr = hook.addr,
        gone = gone.url(),
    );
    if cfg!(feature = "amqp") {
        // A wrong password: RabbitMQ refuses it, and says so in the errors.
        sinks.push_str(
            "\n[sink.bus]\ntype = \"amqp\"\n\
             url = \"amqp://guest:amqp-pass-6d2e@127.0.0.1:5672/%2f\"\n\
             exchange = \"amq.topic\"\nretries = 1\nbackoff_ms = 10\nmax_outage_ms = 100\n",
        );
    }
    let config = format!(
        "{}{ADMIN}",
        crate::common::config_for(&format!("{dsn} dbname={}", db.name), &sinks)
    );
    let daemon = start_installed(&db, &config).await;
    let admin = daemon.admin.expect("admin endpoint");

    let before = status_of(admin).await;
    assert_eq!(before["modes"], serde_json::json!(["notify"]), "{before}");
    assert_eq!(before["ready"], true, "{before}");
    let names: Vec<&str> = before["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let mut expected = vec!["gone", "hook"];
    if cfg!(feature = "amqp") {
        expected.insert(0, "bus");
    }
    assert_eq!(names, expected, "{before}");
    let listener = &before["postgres"]["connections"][0];
    assert_eq!(listener["name"], "listener", "{before}");
    assert_eq!(listener["connected"], true, "{before}");
    let database = before["postgres"]["database"].as_str().unwrap();
    assert!(
        database.starts_with("postgres@") && database.contains(&db.name),
        "{database}"
    );
    let shown = sink(&before, "hook");
    assert_eq!(shown["type"], "webhook");
    assert_eq!(shown["delivered"], 0);
    assert_eq!(shown["queue_capacity"], 10_000);
    assert!(
        shown["target"]
            .as_str()
            .unwrap()
            .starts_with("webhook http://skor:<redacted>@"),
        "{shown}"
    );

    db.exec(&crate::common::inserts(1, 7)).await;
    hook.wait_for(7).await;
    let after = eventually("every sink to settle its 7 events", || async {
        let status = status_of(admin).await;
        let settled = status["sinks"].as_array().unwrap().iter().all(|s| {
            s["queue_depth"] == 0
                && s["delivered"].as_u64().unwrap() + s["failed"].as_u64().unwrap() == 7
        });
        if settled {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(after["events"]["received"], 7, "{after}");
    let hook_status = sink(&after, "hook");
    assert_eq!(
        hook_status["delivered"].as_u64().unwrap() as usize,
        hook.requests().len(),
        "delivered counts what arrived: {after}"
    );
    assert_eq!(hook_status["failed"], 0);
    assert_eq!(hook_status["in_flight"], 0);
    let gone_status = sink(&after, "gone");
    assert_eq!(gone_status["failed"], 7, "{after}");
    assert_eq!(gone_status["delivered"], 0);
    let errors = after["errors"].as_array().unwrap();
    let gone_error = errors
        .iter()
        .find(|e| e["origin"] == "sink gone")
        .unwrap_or_else(|| panic!("no error of sink gone in {after}"));
    let message = gone_error["message"].as_str().unwrap();
    assert!(
        message.contains("permanent error") && message.contains("410"),
        "{message}"
    );
    let gone_failures: u64 = errors
        .iter()
        .filter(|e| e["origin"] == "sink gone")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(gone_failures, 7, "one failure per event: {after}");
    assert!(gone_error["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    if cfg!(feature = "amqp") {
        assert!(
            errors.iter().any(|e| e["origin"] == "sink bus"),
            "RabbitMQ's refusal shows: {after}"
        );
    }

    let response = reqwest::get(format!("http://{admin}/")).await.unwrap();
    assert_eq!(response.status(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the page loads nothing from elsewhere"
    );
    let (_, json) = get(admin, "/status").await;
    for secret in SECRETS {
        assert!(!json.contains(secret), "/status shows {secret}:\n{json}");
        assert!(!page.contains(secret), "/ shows {secret}");
    }
    daemon.stop().await;
}

/// The sinks' rows the page shows: `[name, delivered]` once the first
/// reading is in.
const ROWS: &str = "return [...document.querySelectorAll('#sinks tr[data-sink]')]
    .map(r => [r.dataset.sink, r.querySelector('td.delivered').textContent]);";

/// The delivered count the page shows for `name`, as a number.
fn shown_delivered(rows: &Value, name: &str) -> Option<u64> {
    rows.as_array()?
        .iter()
        .find(|row| row[0] == name)?
        .get(1)?
        .as_str()?
        .replace(',', "")
        .parse()
        .ok()
}

#[tokio::test]
async fn the_page_in_a_browser_follows_deliveries_without_reloading() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // Slow enough that the burst below is still on its way while the
    // screenshot is taken.
    let orders = Hook::scripted(Vec::new(), slow(200, Duration::from_millis(25))).await;
    let analytics = Hook::start().await;
    let legacy = Hook::scripted(Vec::new(), status(410)).await;
    let sinks = format!(
        "[[table]]\nname = \"items\"\n\
         [sink.orders]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
         [sink.analytics]\ntype = \"webhook\"\nurl = \"{}\"\n\
         [sink.legacy]\ntype = \"webhook\"\nurl = \"{}\"\n{ADMIN}",
        orders.url(),
        analytics.url(),
        legacy.url()
    );
    let daemon = start_installed(&db, &config(&db, &sinks)).await;
    let admin = daemon.admin.expect("admin endpoint");

    let browser = Browser::start(1400, 900).await;
    browser.goto(&format!("http://{admin}/")).await;
    let rows = eventually("the page to show every sink", || async {
        let rows = browser.script(ROWS).await;
        let all = ["orders", "analytics", "legacy"]
            .iter()
            .all(|name| shown_delivered(&rows, name).is_some());
        if all {
            Ok(rows)
        } else {
            Err(rows)
        }
    })
    .await;
    assert_eq!(shown_delivered(&rows, "orders"), Some(0), "{rows}");
    // Set in this document: still there later means no reload happened.
    browser
        .script("window.skorLoaded = 'once'; return null;")
        .await;

    db.exec("INSERT INTO items SELECT generate_series(1, 200)")
        .await;
    let during = eventually("the page to show deliveries under way", || async {
        let rows = browser.script(ROWS).await;
        let rate = browser
            .script("return document.querySelector('tr[data-sink=\"orders\"] td.delivered-rate').textContent;")
            .await;
        match shown_delivered(&rows, "orders") {
            Some(n) if n > 0 && n < 200 && rate != "–" && rate != "0.0" => Ok(n),
            _ => Err((rows, rate)),
        }
    })
    .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(during < 200);

    orders.wait_for(200).await;
    let rows = eventually("the page to show all 200 delivered", || async {
        let rows = browser.script(ROWS).await;
        if shown_delivered(&rows, "orders") == Some(200)
            && shown_delivered(&rows, "analytics") == Some(200)
        {
            Ok(rows)
        } else {
            Err(rows)
        }
    })
    .await;
    assert_eq!(shown_delivered(&rows, "legacy"), Some(0), "{rows}");
    let loaded = browser.script("return window.skorLoaded || null;").await;
    assert_eq!(
        loaded, "once",
        "the page updated in place, not by reloading"
    );
    let failed = browser
        .script("return document.querySelector('tr[data-sink=\"legacy\"] td.failed').textContent;")
        .await;
    assert_eq!(failed, "200");
    let errors = browser
        .script("return document.getElementById('errors').textContent;")
        .await;
    assert!(errors.as_str().unwrap().contains("sink legacy"), "{errors}");
    drop(browser);
    daemon.stop().await;
}

#[tokio::test]
async fn in_wal_mode_status_shows_the_slot_and_its_lag() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    // Refuses until told otherwise: the slot cannot pass the insert.
    let hook = Hook::scripted(Vec::new(), status(503)).await;
    let config = db.hook_config(
        "name = \"items\"",
        &hook,
        &format!(
            "retries = 1000\nbackoff_ms = 20\nbackoff = \"linear\"\nmax_backoff_ms = 50\n{ADMIN}"
        ),
    );
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let admin = skor.admin.expect("admin endpoint");
    db.exec("INSERT INTO items VALUES (1)").await;
    hook.wait_for(3).await;

    let held = eventually("the slot's lag and the sink's retries to show", || async {
        let status = status_of(admin).await;
        let lag = status["postgres"]["wal"]["lag_bytes"]
            .as_f64()
            .unwrap_or(0.0);
        let retrying = status["errors"].as_array().unwrap().iter().any(|e| {
            e["origin"] == "sink hook"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("delivery failed, retrying: HTTP 503"))
        });
        if lag > 0.0 && retrying {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(held["modes"], serde_json::json!(["wal"]), "{held}");
    let wal = &held["postgres"]["wal"];
    assert_eq!(wal["slot"], "skor", "{held}");
    assert_eq!(wal["invalidated"], false, "{held}");
    assert!(
        wal["retained_bytes"].as_f64().unwrap() >= wal["lag_bytes"].as_f64().unwrap(),
        "{held}"
    );
    let connections = held["postgres"]["connections"].as_array().unwrap();
    let replication = connections
        .iter()
        .find(|c| c["name"] == "replication")
        .unwrap_or_else(|| panic!("no replication connection in {held}"));
    assert_eq!(replication["connected"], true, "{held}");
    let hook_status = sink(&held, "hook");
    assert_eq!(hook_status["delivered"], 0, "{held}");
    assert_eq!(hook_status["queue_depth"], 1, "{held}");
    assert_eq!(
        hook_status["in_flight"], 1,
        "the event waits to retry: {held}"
    );
    assert!(hook_status["retried"].as_u64().unwrap() >= 2, "{held}");

    hook.answer(status(200));
    let after = eventually("the event to be delivered and the lag to close", || async {
        let status = status_of(admin).await;
        let hook_status = sink(&status, "hook");
        if hook_status["delivered"] == 1 && hook_status["in_flight"] == 0 {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(sink(&after, "hook")["queue_depth"], 0, "{after}");
    skor.stop().await;
}

#[tokio::test]
async fn a_stopped_postgresql_shows_as_disconnected_with_its_error() {
    let server = tokio::task::spawn_blocking(|| PgServer::start(None))
        .await
        .unwrap();
    let hook = Hook::start().await;
    let config = format!(
        "[source]\ndsn = \"{}\"\nreconnect_max_backoff_ms = 200\n\
         [[table]]\nname = \"items\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n{ADMIN}",
        server.dsn(),
        hook.url()
    );
    let mut client = crate::common::connect(&server.dsn()).await;
    client.batch_execute(ITEMS).await.unwrap();
    let parsed = skor::Config::from_toml(&config, "test.toml").unwrap();
    skor::install::install(&mut client, &parsed).await.unwrap();
    drop(client);
    let daemon = Running::start(&config).await;
    let admin = daemon.admin.expect("admin endpoint");
    let up = status_of(admin).await;
    assert_eq!(up["postgres"]["connections"][0]["connected"], true, "{up}");
    assert_eq!(up["errors"], serde_json::json!([]), "{up}");

    let server = Arc::new(server);
    let stopping = Arc::clone(&server);
    tokio::task::spawn_blocking(move || stopping.stop())
        .await
        .unwrap();
    let down = eventually(
        "the lost connection and a refused reconnect to show",
        || async {
            let status = status_of(admin).await;
            let origins: Vec<&str> = status["errors"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["origin"] == "postgres listener")
                .filter_map(|e| e["message"].as_str())
                .collect();
            let lost = origins.iter().any(|m| m.starts_with("connection lost: "));
            let refused = origins
                .iter()
                .any(|m| m.starts_with("cannot reconnect yet: "));
            if lost && refused {
                Ok(status)
            } else {
                Err(status)
            }
        },
    )
    .await;
    assert_eq!(down["ready"], false, "{down}");
    let listener = &down["postgres"]["connections"][0];
    assert_eq!(listener["name"], "listener", "{down}");
    assert_eq!(listener["connected"], false, "{down}");
    assert!(
        down["postgres"]["reading_error"].is_string(),
        "the gauges say why they are missing: {down}"
    );
    assert_eq!(
        down["postgres"]["notify_queue_usage"],
        Value::Null,
        "{down}"
    );

    let starting = Arc::clone(&server);
    tokio::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    let back = eventually("the listener to be back", || async {
        let status = status_of(admin).await;
        if status["postgres"]["connections"][0]["connected"] == true {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert_eq!(
        back["postgres"]["connections"][0]["reconnects"], 1,
        "{back}"
    );
    daemon.stop().await;
}
