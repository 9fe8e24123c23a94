//! `skor backfill` against the real PostgreSQL and a real HTTP receiver:
//! the rows a table holds arrive as READ events through its mode's path,
//! a paused or killed backfill resumes without sending a row twice, and
//! live changes racing a backfill never leave a consumer with a stale row.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::bin::{config_file, run, signal, skor, stderr};
use crate::common::wal::WalDb;
use crate::common::{
    connect, eventually, eventually_every, hook_config, install, is_row, Hook, Request, Running,
    TestDb, PATIENCE,
};
use skor::backfill::{self, Options, Outcome};
use skor::Config;
use tokio_util::sync::CancellationToken;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, body text)";

fn options(batch: i64) -> Options {
    Options {
        tables: Vec::new(),
        condition: None,
        batch,
        restart: false,
    }
}

/// Runs a backfill of `config` in this process.
async fn backfill(dsn: &str, config: &str, options: &Options, stop: &CancellationToken) -> Outcome {
    let config = Config::from_toml(config, "test.toml").unwrap();
    let mut client = connect(dsn).await;
    backfill::run(&mut client, &config, options, stop)
        .await
        .unwrap_or_else(|e| panic!("backfill: {e:#}"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"))
}

/// The events of a request: one, or a batch's array of them.
fn events(body: &str) -> Vec<serde_json::Value> {
    match json(body) {
        serde_json::Value::Array(events) => events,
        event => vec![event],
    }
}

/// Rows `1..=rows` of `items`, as a table holds them before skor.
fn rows_sql(rows: i64) -> String {
    format!("{ITEMS}; INSERT INTO items (id) SELECT g FROM generate_series(1, {rows}) g")
}

/// Waits until `n` requests with `"op" : "READ"` arrived, and returns them.
async fn reads(hook: &Hook, n: usize, patience: Duration) -> Vec<String> {
    // Parsing every body is not free, and the daemon shares the runtime.
    let every = Duration::from_millis(100);
    eventually_every(&format!("{n} READ events"), patience, every, || {
        // A single event as it came, byte for byte; a batch's re-encoded.
        let reads: Vec<String> = hook
            .bodies()
            .into_iter()
            .flat_map(|b| match json(&b) {
                serde_json::Value::Array(events) => events.iter().map(|e| e.to_string()).collect(),
                _ => vec![b],
            })
            .filter(|b| json(b)["op"] == "READ")
            .collect();
        std::future::ready(if reads.len() >= n {
            Ok(reads)
        } else {
            Err(format!("{} READ events", reads.len()))
        })
    })
    .await
}

#[tokio::test]
async fn notify_mode_sends_each_row_as_its_insert_would_with_op_read() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let big = "x".repeat(9000);
    db.exec(&format!(
        "INSERT INTO items VALUES (2, 20, 'two'), (1, 10, NULL), (3, 30, '{big}')"
    ))
    .await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"items\"\ncolumns = [\"id\", \"body\"]",
        &hook,
        "max_in_flight = 1",
    );
    let daemon = crate::common::start_installed(&db, &config).await;

    let outcome = backfill(&db.dsn(), &config, &options(2), &CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Done);
    let bodies = reads(&hook, 3, PATIENCE).await;
    assert_eq!(
        bodies[..2],
        [
            r#"{"table" : "items", "schema" : "public", "op" : "READ", "data" : {"id":1,"body":null}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "READ", "data" : {"id":2,"body":"two"}}"#,
        ],
        "in key order, restricted to the configured columns"
    );
    assert_eq!(
        bodies[2],
        format!(
            r#"{{"table" : "items", "schema" : "public", "op" : "READ", "data" : {{"id":3,"body":"{big}"}}}}"#
        ),
        "a payload too large for NOTIFY arrives whole"
    );

    // Done: running it again sends nothing, unless told to restart.
    backfill(&db.dsn(), &config, &options(2), &CancellationToken::new()).await;
    // The barrier: a live change committed after the second run, down the
    // one lane (max_in_flight = 1) its READ events would have taken.
    let requests = hook
        .barrier(db.exec("INSERT INTO items (id) VALUES (100)"), |body| {
            is_row(body, 100)
        })
        .await;
    assert_eq!(
        requests.len(),
        4,
        "nothing between the reads and the barrier"
    );
    let restart = Options {
        restart: true,
        condition: Some("n >= 20".into()),
        ..options(10)
    };
    backfill(&db.dsn(), &config, &restart, &CancellationToken::new()).await;
    let bodies = reads(&hook, 5, PATIENCE).await;
    let ids: Vec<i64> = bodies[3..]
        .iter()
        .map(|b| json(b)["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [2, 3], "--where chose the rows");
    daemon.stop().await;
}

#[tokio::test]
async fn a_paused_durable_backfill_resumes_after_its_last_batch() {
    const ROWS: i64 = 3000;
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    db.exec(&format!(
        "INSERT INTO items (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let hook = Hook::start().await;
    let config = hook_config(&db, "name = \"items\"\nmode = \"durable\"", &hook, "");
    install(&db, &config).await;

    // Paused once the first batches committed, by the signal's token.
    let stop = CancellationToken::new();
    let watcher = {
        let (dsn, stop) = (db.dsn(), stop.clone());
        tokio::spawn(async move {
            let client = connect(&dsn).await;
            loop {
                let sent: i64 = client
                    .query_one("SELECT coalesce(max(rows_sent), 0) FROM skor.backfill", &[])
                    .await
                    .unwrap()
                    .get(0);
                if sent >= 500 {
                    stop.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let outcome = backfill(&db.dsn(), &config, &options(100), &stop).await;
    watcher.await.unwrap();
    let Outcome::Paused { table, sent, total } = outcome else {
        panic!("paused: {outcome:?}");
    };
    assert_eq!((table.as_str(), total), ("public.items", ROWS));
    assert!((500..ROWS).contains(&sent), "paused at {sent}");
    let logged: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.event_log WHERE op = 'READ'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        logged, sent,
        "the events of the committed batches, and only those"
    );

    let outcome = backfill(&db.dsn(), &config, &options(100), &CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Done);
    let daemon = Running::start(&config).await;
    let bodies = reads(&hook, ROWS as usize, PATIENCE).await;
    let mut ids: Vec<i64> = bodies
        .iter()
        .map(|b| json(b)["data"]["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=ROWS).collect::<Vec<_>>(), "every row once");
    let ids: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| r.headers["skor-event-id"].to_str().unwrap().to_string())
        .collect();
    assert!(
        ids.iter().all(|id| id.parse::<i64>().is_ok()),
        "durable event ids: {:?}",
        &ids[..3]
    );
    daemon.stop().await;
}

/// Rows `1..=rows` changing under a backfill: updates of single rows and
/// of runs of rows, and deletes, from `writers` connections until `stop`.
fn churn(
    dsn: String,
    rows: i64,
    writer: i64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = connect(&dsn).await;
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ (writer as u64);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut changes = 0;
        while !stop.is_cancelled() {
            let id = (next() % rows as u64) as i64 + 1;
            let sql = match next() % 10 {
                0 => format!("DELETE FROM items WHERE id = {id}"),
                1..=3 => format!("UPDATE items SET n = n + 1 WHERE id BETWEEN {id} AND {id} + 20"),
                _ => format!("UPDATE items SET n = n + 1 WHERE id = {id}"),
            };
            // A deadlock between two writers is theirs, not skor's.
            if client.batch_execute(&sql).await.is_ok() {
                changes += 1;
            }
        }
        changes
    })
}

/// The last event of each row, in the order they arrived.
fn last_seen(requests: &[Request]) -> HashMap<i64, serde_json::Value> {
    let mut last = HashMap::new();
    for request in requests.iter().filter(|r| r.status < 300) {
        for event in events(&request.body) {
            last.insert(event["data"]["id"].as_i64().unwrap(), event);
        }
    }
    last
}

/// Backfills `rows` rows while writers change them, then checks that the
/// last event of every row at the consumer is its final state.
async fn backfill_under_churn(
    dsn: &str,
    config: &str,
    rows: i64,
    hook: &Hook,
    client: &tokio_postgres::Client,
) {
    let daemon = Running::start(config).await;
    let stop = CancellationToken::new();
    let writers: Vec<_> = (0..4)
        .map(|w| churn(dsn.to_string(), rows, w, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = backfill(dsn, config, &options(1000), &CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::Done);
    stop.cancel();
    let mut changes = 0;
    for writer in writers {
        changes += writer.await.unwrap();
    }
    assert!(
        changes > 100,
        "the writers raced the backfill: {changes} changes"
    );

    let finals: HashMap<i64, i32> = client
        .query("SELECT id, n FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1)))
        .collect();
    let what = "every row's last event at the consumer to be its final state";
    let (patience, every) = (Duration::from_secs(120), Duration::from_millis(500));
    eventually_every(what, patience, every, || {
        let last = last_seen(&hook.requests());
        let stale: Vec<String> = (1..=rows)
            .filter_map(|id| {
                let event = last.get(&id);
                let ok = match (finals.get(&id), event) {
                    (Some(n), Some(e)) => e["op"] != "DELETE" && e["data"]["n"] == *n,
                    (None, Some(e)) => e["op"] == "DELETE",
                    (None, None) => true,
                    (Some(_), None) => false,
                };
                (!ok).then(|| {
                    format!(
                        "row {id}: final {:?}, last event {:?}",
                        finals.get(&id),
                        event
                    )
                })
            })
            .collect();
        std::future::ready(if stale.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} rows stale, e.g. {:?}",
                stale.len(),
                &stale[..stale.len().min(3)]
            ))
        })
    })
    .await;
    let read_count = reads(hook, 0, PATIENCE).await.len();
    assert!(
        read_count >= finals.len(),
        "{read_count} READ events for {} rows",
        finals.len()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn durable_backfill_racing_writers_leaves_every_row_current() {
    let db = TestDb::new().await;
    db.exec(&rows_sql(100_000)).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"items\"\nmode = \"durable\"",
        &hook,
        "batch_size = 200",
    );
    install(&db, &config).await;
    backfill_under_churn(&db.dsn(), &config, 100_000, &hook, &db.client).await;
}

#[tokio::test]
async fn wal_backfill_racing_writers_leaves_every_row_current() {
    let db = WalDb::start().await;
    db.exec(&rows_sql(100_000)).await;
    let hook = Hook::start().await;
    let config = db.hook_config("name = \"items\"", &hook, "batch_size = 200");
    db.install(&config).await;
    backfill_under_churn(&db.dsn(), &config, 100_000, &hook, &db.client).await;
}

#[tokio::test]
async fn wal_backfill_sends_reads_through_the_slot() {
    let db = WalDb::start().await;
    db.exec(ITEMS).await;
    db.exec("INSERT INTO items VALUES (1, 1, 'a'), (2, 2, NULL)")
        .await;
    let hook = Hook::start().await;
    let config = db.hook_config(
        "name = \"items\"\nops = [\"UPDATE\"]",
        &hook,
        "max_in_flight = 1",
    );
    db.install(&config).await;

    // No daemon yet: the events wait in the slot.
    backfill(&db.dsn(), &config, &options(1), &CancellationToken::new()).await;
    let left: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.wal_backfill", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the batches emptied their table");
    let daemon = Running::start(&config).await;
    let bodies = reads(&hook, 2, PATIENCE).await;
    assert_eq!(
        bodies,
        [
            r#"{"table" : "items", "schema" : "public", "op" : "READ", "data" : {"id":1,"n":1,"body":"a"}}"#,
            r#"{"table" : "items", "schema" : "public", "op" : "READ", "data" : {"id":2,"n":2,"body":null}}"#,
        ]
    );
    // The table captures UPDATE only: the inserts the publication now
    // carries for the backfill are not its events.
    db.exec("INSERT INTO items VALUES (3, 3, 'c'); UPDATE items SET n = 5 WHERE id = 1")
        .await;
    let all = hook.wait_for(3).await;
    assert_eq!(json(&all[2].body)["op"], "UPDATE");
    // The barrier: an UPDATE committed after them, down the one lane
    // (max_in_flight = 1): the INSERT would have arrived before it.
    let requests = hook
        .barrier(db.exec("UPDATE items SET n = 6 WHERE id = 2"), |body| {
            json(body)["op"] == "UPDATE" && is_row(body, 2)
        })
        .await;
    assert_eq!(requests.len(), 4, "{requests:#?}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_command_reports_progress_resumes_after_sigkill_and_explains_errors() {
    const ROWS: i64 = 20_000;
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE notes (body text)").await;
    db.exec(&format!(
        "INSERT INTO items (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        "name = \"items\"\nmode = \"durable\"\n[[table]]\nname = \"notes\"\nmode = \"durable\"",
        &hook,
        "",
    );
    install(&db, &config).await;
    let file = config_file(&config);
    let path = file.path().to_str().unwrap();

    let output = run(&["--config", path, "backfill", "--table", "public.orders"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--table public.orders: not a [[table]] of the config"),
        "{}",
        stderr(&output)
    );
    let output = run(&["--config", path, "backfill", "--table", "notes"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output)
            .contains("table public.notes has no primary key: backfill walks a table by its key"),
        "{}",
        stderr(&output)
    );

    // Killed mid-way with batches of one row: the batch in flight rolls back.
    let mut child = skor()
        .args([
            "--config", path, "backfill", "--table", "items", "--batch", "1",
        ])
        .spawn()
        .unwrap();
    eventually("the backfill to send 50 rows", || async {
        let sent: i64 = db
            .client
            .query_one("SELECT coalesce(max(rows_sent), 0) FROM skor.backfill", &[])
            .await
            .unwrap()
            .get(0);
        if sent >= 50 {
            Ok(())
        } else {
            Err(sent)
        }
    })
    .await;
    signal(&child, "KILL");
    child.wait().await.unwrap();

    let output = run(&[
        "--config",
        path,
        "--log-level",
        "info",
        "backfill",
        "--table",
        "items",
        "--batch",
        "500",
    ])
    .await;
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("backfill resuming"), "{log}");
    assert!(
        log.contains("backfill done") && log.contains(&format!("rows={ROWS} of={ROWS}")),
        "{log}"
    );
    let (events, distinct): (i64, i64) = {
        let row = db
            .client
            .query_one(
                "SELECT count(*), count(DISTINCT row_key) FROM skor.event_log WHERE op = 'READ'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (events, distinct),
        (ROWS, ROWS),
        "every row once, none twice"
    );

    let output = run(&["--config", path, "backfill", "--status"]).await;
    let status = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        status.starts_with(&format!(
            "public.items: {ROWS} of {ROWS} rows, done (started "
        )),
        "{status}"
    );
}

/// The `event_id` a payload carries equals the id its sink sent it under.
fn assert_event_id_is_the_headers(request: &Request) {
    let event = json(&request.body);
    assert_eq!(event["op"], "READ", "{}", request.body);
    assert_eq!(
        event["event_id"].to_string(),
        request.headers["skor-event-id"].to_str().unwrap(),
        "{}",
        request.body
    );
    assert!(event["txid"].as_u64().is_some(), "{}", request.body);
}

#[tokio::test]
async fn read_events_carry_the_tables_metadata_in_durable_and_wal_mode() {
    const TABLE: &str = "name = \"items\"\nmetadata = [\"event_id\", \"txid\"]";
    let db = TestDb::new().await;
    db.exec(&rows_sql(2)).await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        &format!("{TABLE}\nmode = \"durable\""),
        &hook,
        "max_in_flight = 1",
    );
    install(&db, &config).await;
    backfill(&db.dsn(), &config, &options(10), &CancellationToken::new()).await;
    let daemon = Running::start(&config).await;
    for request in hook.wait_for(2).await {
        assert_event_id_is_the_headers(&request);
    }
    daemon.stop().await;

    let db = WalDb::start().await;
    db.exec(&rows_sql(2)).await;
    let hook = Hook::start().await;
    let config = db.hook_config(
        &format!("{TABLE}\nreplica_identity = \"default\""),
        &hook,
        "max_in_flight = 1",
    );
    db.install(&config).await;
    let daemon = Running::start(&config).await;
    backfill(&db.dsn(), &config, &options(10), &CancellationToken::new()).await;
    for request in hook.wait_for(2).await {
        assert_event_id_is_the_headers(&request);
    }
    daemon.stop().await;
}
