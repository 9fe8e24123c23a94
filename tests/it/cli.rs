//! The `skor` binary as a user runs it: install and uninstall, config
//! errors, the original command line, fatal start-up errors, SIGTERM.

use std::process::Output;
use std::time::Duration;

use crate::common::bin::{config_file, run, sigterm_and_wait, skor, stderr};
use crate::common::{config, hook_config, slow, Hook, TestDb};

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

const SKOR_TRIGGERS: &str = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'skor\\_%'";
const SKOR_OBJECTS: &str = "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'skor') \
     + (SELECT count(*) FROM pg_proc WHERE proname = 'notify' AND pronamespace::regnamespace::text = 'skor') \
     + (SELECT count(*) FROM pg_proc WHERE pronamespace::regnamespace::text = 'skor') \
     + (SELECT count(*) FROM pg_class WHERE relname LIKE 'oversized_payload%' OR relname LIKE 'event_log%' \
                                         OR relname = 'payload_seq')";

#[tokio::test]
async fn install_twice_is_harmless_and_uninstall_leaves_no_skor_object() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE TABLE notes (id int PRIMARY KEY, body text);
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER audit_items AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION audit();",
    )
    .await;
    let file = config_file(&config(
        &db,
        "[[table]]\nname = \"items\"\n[[table]]\nname = \"notes\"\nops = [\"DELETE\"]\ncolumns = [\"id\"]\n",
    ));
    let path = file.path().to_str().unwrap();
    for _ in 0..2 {
        let output = run(&["--config", path, "install"]).await;
        assert!(output.status.success(), "{}", stderr(&output));
    }
    // items: INSERT, DELETE, and UPDATE twice (keeping or changing the key).
    assert_eq!(count(&db, SKOR_TRIGGERS).await, 5);
    db.exec("INSERT INTO items VALUES (1, 'x'); DELETE FROM notes;")
        .await;

    let output = run(&["--config", path, "uninstall"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(count(&db, SKOR_TRIGGERS).await, 0);
    assert_eq!(count(&db, SKOR_OBJECTS).await, 0);
    // What the user made stays.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_items'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM items").await, 1);
}

#[tokio::test]
async fn install_refuses_a_missing_column_and_changes_nothing() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await;
    let file = config_file(&config(
        &db,
        "[[table]]\nname = \"items\"\ncolumns = [\"id\", \"nope\"]\n",
    ));
    let path = file.path().to_str().unwrap();
    for command in ["install", "check --connect"] {
        let mut args = vec!["--config", path];
        args.extend(command.split(' '));
        let output = run(&args).await;
        assert_eq!(output.status.code(), Some(1), "{command}");
        assert!(
            stderr(&output)
                .contains(r#"table public.items has no column "nope" (configured for INSERT)"#),
            "{command}: {}",
            stderr(&output)
        );
    }
    assert_eq!(count(&db, SKOR_OBJECTS).await, 0);
}

#[tokio::test]
async fn sql_prints_the_install_script() {
    let file = config_file("[source]\ndsn = \"host=127.0.0.1\"\n[[table]]\nname = \"shop.orders\"\nops = [\"UPDATE\"]\n");
    let output = run(&["--config", file.path().to_str().unwrap(), "sql"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let sql = String::from_utf8(output.stdout).unwrap();
    assert!(sql.contains("CREATE OR REPLACE FUNCTION skor.notify()"));
    assert!(sql.contains(
        "SELECT skor.create_trigger('\"shop\".\"orders\"', 'skor_update', 'UPDATE', 'notify', 'skor', NULL, ARRAY[]::text[], false);"
    ), "{sql}");
}

#[tokio::test]
async fn check_reports_config_errors_with_file_line_and_key() {
    let bad = "[source]\ndsn = \"host=127.0.0.1\"\n\n[sink.hook]\ntype = \"webhook\"\nurl = \"http://x/\"\ntimeout_ms = \"5s\"\n";
    let file = config_file(bad);
    let path = file.path().to_str().unwrap();
    let output = run(&["--config", path, "check"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "{path}:7:14: key `sink.hook.timeout_ms`: invalid type: string \"5s\", expected u64"
        )),
        "{}",
        stderr(&output)
    );

    let good = config_file("[source]\ndsn = \"host=127.0.0.1\"\n");
    let output = run(&["--config", good.path().to_str().unwrap(), "check"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (0 tables, 0 sinks, 0 routes)"));

    let output = run(&["check"]).await;
    assert!(
        stderr(&output).contains("no config file: pass --config"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn check_connect_and_run_fail_fast_on_an_unknown_database() {
    let file = config_file(&format!(
        "[source]\ndsn = \"{} dbname=skor_no_such_db\"\n",
        crate::common::server_dsn()
    ));
    let path = file.path().to_str().unwrap();
    for args in [
        &["--config", path, "check", "--connect"][..],
        &["--config", path],
    ] {
        let output = run(args).await;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(r#"database "skor_no_such_db" does not exist"#),
            "{}",
            stderr(&output)
        );
    }
}

/// The original skor's generated trigger, as its users have it installed.
const ORIGINAL_TRIGGER: &str = r#"
CREATE TABLE test_table (id int PRIMARY KEY, name text);
CREATE OR REPLACE FUNCTION public.notify_skor_test_table_insert() RETURNS trigger LANGUAGE plpgsql AS $$
  DECLARE cur_rec record;
  BEGIN
    PERFORM pg_notify('skor', json_build_object('table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
                                                'op', TG_OP, 'data', row_to_json(NEW))::text);
    RETURN cur_rec;
  END;
$$;
CREATE TRIGGER notify_skor_test_table_insert AFTER INSERT ON public.test_table
  FOR EACH ROW EXECUTE PROCEDURE public.notify_skor_test_table_insert();
"#;

#[tokio::test]
async fn the_original_command_line_delivers_the_original_payloads() {
    let db = TestDb::new().await;
    db.exec(ORIGINAL_TRIGGER).await;
    let hook = Hook::start().await;
    let child = skor().args([&db.dsn(), &hook.url(), "2"]).spawn().unwrap();
    db.wait_for_listener(None).await;
    db.exec("INSERT INTO test_table VALUES (1, 'abc1'), (2, 'abc2')")
        .await;
    let requests = hook.wait_for(2).await;
    // Two rows, two keys: they may arrive in either order.
    let mut bodies: Vec<&str> = requests.iter().map(|r| r.body.as_str()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"table" : "test_table", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc1"}}"#,
            r#"{"table" : "test_table", "schema" : "public", "op" : "INSERT", "data" : {"id":2,"name":"abc2"}}"#,
        ]
    );
    assert_eq!(requests[0].headers["content-type"], "application/json");
    let output = sigterm_and_wait(child).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test]
async fn the_original_images_environment_variables_still_work() {
    let db = TestDb::new().await;
    db.exec(ORIGINAL_TRIGGER).await;
    let hook = Hook::start().await;
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    // No argument and no config file: the variables make the command line.
    let child = skor()
        .env("DBNAME", &db.name)
        .env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGUSER", user)
        .env("PGPASS", "it's ignored under trust")
        .env("WEBHOOKURL", hook.url())
        .env("LOG_LEVEL", "3")
        .spawn()
        .unwrap();
    db.wait_for_listener(None).await;
    db.exec("INSERT INTO test_table VALUES (1, 'abc1')").await;
    let requests = hook.wait_for(1).await;
    assert_eq!(
        requests[0].body,
        r#"{"table" : "test_table", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"abc1"}}"#
    );
    let output = sigterm_and_wait(child).await;
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Installs and runs the binary on `items`, commits three events, and
/// sends SIGTERM once the first reached the hook.
async fn three_events_then_sigterm(db: &TestDb, hook: &Hook, sink_options: &str) -> Output {
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let file = config_file(&hook_config(db, "name = \"items\"", hook, sink_options));
    let path = file.path().to_str().unwrap();
    let output = run(&["--config", path, "install"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let child = skor().args(["--config", path]).spawn().unwrap();
    db.wait_for_listener(None).await;
    db.exec(
        "INSERT INTO items VALUES (1); INSERT INTO items VALUES (2); INSERT INTO items VALUES (3);",
    )
    .await;
    hook.wait_for(1).await;
    sigterm_and_wait(child).await
}

#[tokio::test]
async fn sigterm_drains_the_queues_before_exiting() {
    let db = TestDb::new().await;
    let hook = Hook::scripted(vec![], slow(200, Duration::from_millis(300))).await;
    let output = three_events_then_sigterm(&db, &hook, "").await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(hook.requests().len(), 3, "the queued events were delivered");
    assert!(
        stderr(&output).contains("undelivered=0"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown_and_reports_what_was_left() {
    let db = TestDb::new().await;
    let hook = Hook::scripted(vec![], slow(200, Duration::from_secs(30))).await;
    let options = "timeout_ms = 60000\n[daemon]\ndrain_timeout_ms = 300";
    let output = three_events_then_sigterm(&db, &hook, options).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("undelivered=3"),
        "{}",
        stderr(&output)
    );
}
