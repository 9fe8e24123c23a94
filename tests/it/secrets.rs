//! Secret hygiene as a user would check it: run the real binary with
//! passwords and secrets in its config, make it log everything it can
//! (start-up, retries, unreachable sinks, shutdown, `check`, a config error)
//! and grep every byte it wrote for them.

use crate::common::bin::{config_file, run, sigterm_and_wait, skor, stderr};
use crate::common::{server_dsn, status, Hook, TestDb};

/// Every secret the config below holds.
const SECRETS: [&str; 8] = [
    "pg-pass-4e1f",
    "signing-key-of-at-least-24-bytes-1a9f",
    // The `whsec_` secret, and the key it encodes (base64 of "0123456789abcdef01234567").
    "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",
    "url-pass-9b2c",
    "header-token-7d3a",
    "down-pass-5c8e",
    // Tokens in a webhook URL's path and query, as Slack and others use.
    "path-token-3f6a",
    "query-token-8e1b",
];

/// A config whose DSN, sink URLs and headers all hold secrets.
fn secret_config(db: &TestDb, hook: &Hook) -> String {
    // Trust authentication ignores the password, so the DSN still works.
    let dsn = server_dsn().replace("user=postgres", "user=postgres password=pg-pass-4e1f");
    format!(
        r#"[source]
dsn = "{dsn} dbname={db}"

[[table]]
name = "items"

[sink.hook]
type = "webhook"
url = "http://skor:url-pass-9b2c@{addr}/hook"
headers = {{ Authorization = "Bearer header-token-7d3a" }}
secret = "signing-key-of-at-least-24-bytes-1a9f"
backoff_ms = 10

[sink.down]
type = "webhook"
url = "http://skor:down-pass-5c8e@127.0.0.1:1/services/T000/path-token-3f6a?token=query-token-8e1b"
secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"
retries = 1
backoff_ms = 10
max_outage_ms = 100
"#,
        db = db.name,
        addr = hook.addr,
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_or_the_command_line_output() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    // One failure first, so the retry path logs too.
    let hook = Hook::scripted(vec![status(503)], status(200)).await;
    let file = config_file(&secret_config(&db, &hook));
    let path = file.path().to_str().unwrap();

    let install = run(&["--config", path, "install"]).await;
    assert!(install.status.success(), "{}", stderr(&install));
    let check = run(&["--config", path, "check", "--connect"]).await;
    assert!(check.status.success(), "{}", stderr(&check));
    let check_out = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check_out.contains("hook: webhook http://skor:<redacted>@"),
        "{check_out}"
    );
    assert!(
        check_out.contains("(headers Authorization) signed"),
        "{check_out}"
    );
    assert!(
        check_out.contains(
            "down: webhook http://skor:<redacted>@127.0.0.1:1/services/<redacted>?token=<redacted> signed"
        ),
        "{check_out}"
    );

    let child = skor()
        .args(["--config", path, "--log-level", "trace"])
        .spawn()
        .unwrap();
    db.wait_for_listener(None).await;
    db.exec("INSERT INTO items VALUES (1)").await;
    let requests = hook.wait_for(2).await;
    // The secrets did their job on the wire all the same.
    assert_eq!(
        requests[1].headers["authorization"],
        "Bearer header-token-7d3a"
    );
    assert!(requests[1].headers.contains_key("webhook-signature"));
    let output = sigterm_and_wait(child).await;
    let logs = stderr(&output);
    assert!(logs.contains("starting"), "{logs}");
    assert!(logs.contains("delivery failed, retrying"), "{logs}");
    assert!(logs.contains("event not delivered"), "{logs}");
    assert!(logs.contains("<redacted>"), "{logs}");

    for (what, text) in [
        ("install", stderr(&install)),
        ("check", check_out),
        ("check's log", stderr(&check)),
        ("the daemon's log", logs),
        (
            "the daemon's stdout",
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ),
    ] {
        assert_no_secret(what, &text);
    }
}

#[tokio::test]
async fn errors_about_secret_values_do_not_quote_them() {
    let db = TestDb::new().await;
    let hook = Hook::start().await;
    // A bad value on the line that holds the URL's password.
    let config = secret_config(&db, &hook).replace(
        "url = \"http://skor:url-pass-9b2c@",
        "url = \"ftp://skor:url-pass-9b2c@",
    );
    let file = config_file(&config);
    let output = run(&["--config", file.path().to_str().unwrap(), "check"]).await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("sink.hook"), "{text}");
    assert_no_secret("a config error", &text);

    // A server that refuses the connection.
    let config = secret_config(&db, &hook).replace("port=5432", "port=1");
    let file = config_file(&config);
    let output = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "check",
        "--connect",
    ])
    .await;
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
    assert_no_secret("a connection error", &text);
}
