//! Durable mode against the real PostgreSQL and a real HTTP receiver: no
//! event lost while skor is down, killed or its sink failing; several
//! daemons sharing one event log in per-key order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::common::bin::{config_file, run, signal, stderr};
use crate::common::{
    assert_every_id, eventually, eventually_every, eventually_within, hook_config, install, is_row,
    row_id, slow, status, Hook, Request, Running, TestDb, PATIENCE,
};
use tokio::process::Child;
use tokio::time::Instant;

const DURABLE_ITEMS: &str = "name = \"items\"\nmode = \"durable\"";

async fn items_db() -> TestDb {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, body text)")
        .await;
    db
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn pending(db: &TestDb) -> i64 {
    count(
        db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'pending'",
    )
    .await
}

/// `rows` rows with ids from 1, inserted `per_statement` at a time.
fn bulk_inserts(rows: i32, per_statement: i32) -> Vec<String> {
    (0..rows / per_statement)
        .map(|i| {
            let from = i * per_statement + 1;
            let to = from + per_statement - 1;
            format!("INSERT INTO items (id) SELECT g FROM generate_series({from}, {to}) g")
        })
        .collect()
}

/// Waits until every id in `1..=count` arrived with a 2xx answer, for at
/// most `patience`, and returns the successful payloads.
async fn delivered_ids(hook: &Hook, count: i64, patience: Duration) -> Vec<String> {
    let every = Duration::from_millis(50);
    eventually_every(&format!("{count} ids"), patience, every, || {
        // Copying and parsing every request is slow: only once enough came.
        if (hook.count() as i64) < count {
            return std::future::ready(Err(format!("{} requests", hook.count())));
        }
        let bodies: Vec<String> = hook
            .requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .map(|r| r.body)
            .collect();
        let mut ids: Vec<i64> = bodies.iter().map(|b| row_id(b)).collect();
        ids.sort_unstable();
        ids.dedup();
        std::future::ready(if ids.len() as i64 >= count {
            Ok(bodies)
        } else {
            Err(format!("{} distinct ids", ids.len()))
        })
    })
    .await
}

/// Waits until the count `sql` returns satisfies `done`.
async fn wait_until(db: &TestDb, sql: &str, what: &str, done: impl Fn(i64) -> bool) {
    eventually(what, || async {
        let n = count(db, sql).await;
        if done(n) {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await
}

async fn eventually_empty(db: &TestDb) {
    wait_until(
        db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'pending'",
        "no event left pending in the log",
        |n| n == 0,
    )
    .await;
}

/// Starts the `skor` binary on `config`, logging at info into a file next
/// to the config.
fn spawn(config: &tempfile::NamedTempFile) -> Child {
    crate::common::bin::spawn_logged(config, &config.path().with_extension("log"))
}

#[tokio::test]
async fn events_committed_while_skor_is_down_are_all_delivered() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    install(&db, &config).await;
    for statement in bulk_inserts(10_000, 1_000) {
        db.exec(&statement).await;
    }
    assert_eq!(pending(&db).await, 10_000, "the log holds every change");

    let daemon = Running::start(&config).await;
    let bodies = delivered_ids(&hook, 10_000, Duration::from_secs(60)).await;
    assert_eq!(
        assert_every_id(bodies.iter().map(String::as_str), 10_000),
        0
    );
    eventually_empty(&db).await;
    assert_eq!(count(&db, "SELECT count(*) FROM skor.event_log").await, 0);
    let summary = daemon.stop().await;
    assert_eq!(summary.undelivered, 0);
}

#[tokio::test]
async fn every_request_carries_the_event_id_and_the_payload_only_if_asked() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nid_field = \"event_id\"\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    db.exec("INSERT INTO items (id) VALUES (7)").await;
    let id: i64 = count(&db, "SELECT max(id) FROM skor.event_log").await;
    let daemon = Running::start(&config).await;
    let requests = hook.wait_for(1).await;
    assert_eq!(
        requests[0].headers["skor-event-id"],
        id.to_string().as_str()
    );
    assert_eq!(
        requests[0].body,
        format!(
            "{{\"event_id\" : {id}, \"table\" : \"items\", \"schema\" : \"public\", \"op\" : \"INSERT\", \
             \"data\" : {{\"id\":7,\"n\":0,\"body\":null}}}}"
        )
    );
    daemon.stop().await;
}

#[tokio::test]
async fn sigkill_in_a_burst_loses_nothing_and_duplicates_at_most_one_batch() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nclaim_window = 500\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    let file = config_file(&config);
    let mut first = spawn(&file);

    let writer = {
        let dsn = db.dsn();
        tokio::spawn(async move {
            let client = crate::common::connect(&dsn).await;
            for statement in bulk_inserts(50_000, 1_000) {
                client.batch_execute(&statement).await.unwrap();
            }
        })
    };
    hook.wait_within(
        "5000 requests before the kill",
        Duration::from_secs(60),
        |r| r.len() >= 5_000,
    )
    .await;
    signal(&first, "KILL");
    first.wait().await.unwrap();
    let at_kill = hook.count();
    writer.await.unwrap();

    let mut second = spawn(&file);
    let bodies = delivered_ids(&hook, 50_000, Duration::from_secs(120)).await;
    let duplicates = assert_every_id(bodies.iter().map(String::as_str), 50_000);
    eprintln!("killed after {at_kill} deliveries; {duplicates} delivered twice");
    assert!(
        duplicates <= 500,
        "{duplicates} duplicates, more than one batch (500)"
    );
    eventually_empty(&db).await;
    signal(&second, "TERM");
    second.wait().await.unwrap();
}

#[tokio::test]
async fn a_failing_webhook_dead_letters_events_and_replay_delivers_them() {
    let db = items_db().await;
    let hook = Hook::scripted(Vec::new(), status(500)).await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "retries = 2\nbackoff_ms = 50");
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    let outage_ends = Instant::now() + Duration::from_secs(5);
    let mut id = 0;
    while Instant::now() < outage_ends {
        id += 1;
        db.exec(&format!("INSERT INTO items (id) VALUES ({id})"))
            .await;
        // Paced on purpose: events must keep arriving all through the
        // outage, some early enough to run out of retries before it ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hook.answer(status(200));
    for more in id + 1..=id + 5 {
        db.exec(&format!("INSERT INTO items (id) VALUES ({more})"))
            .await;
    }
    let total = id + 5;

    // Events that ran out of retries wait as dead letters with their error.
    eventually_empty(&db).await;
    let dead = count(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'dead'",
    )
    .await;
    assert!(dead > 0, "a 5 s outage exhausts 2 retries");
    let errors = count(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'dead' AND attempts = 3 \
           AND last_error LIKE 'sink hook: HTTP 500%'",
    )
    .await;
    assert_eq!(
        errors, dead,
        "each dead letter says which sink failed and why"
    );

    let file = config_file(&config);
    let path = file.path().to_str().unwrap();
    let listed = run(&["--config", path, "dead-letters", "list"]).await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(
        listed.matches("attempts=3").count() as i64,
        dead,
        "{listed}"
    );
    assert!(listed.contains("sink hook: HTTP 500"), "{listed}");

    let wrong = run(&["--config", path, "dead-letters", "replay", "--id", "999999"]).await;
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("no dead letter has id [999999]"),
        "{}",
        stderr(&wrong)
    );

    let replay = run(&["--config", path, "dead-letters", "replay", "--all"]).await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(
        String::from_utf8(replay.stdout).unwrap().trim(),
        format!("queued {dead} dead letters again")
    );
    let bodies = delivered_ids(&hook, i64::from(total), PATIENCE).await;
    assert_eq!(
        assert_every_id(bodies.iter().map(String::as_str), i64::from(total)),
        0
    );
    eventually_empty(&db).await;
    assert_eq!(count(&db, "SELECT count(*) FROM skor.event_log").await, 0);
    daemon.stop().await;
}

#[tokio::test]
async fn retries_resume_after_a_restart_where_they_stopped() {
    let db = items_db().await;
    let hook = Hook::scripted(Vec::new(), status(503)).await;
    let config = format!(
        "{}\n[daemon]\ndrain_timeout_ms = 100\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "retries = 5\nbackoff_ms = 3000")
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    let failed_at = hook.wait_for(1).await[0].at;
    wait_until(
        &db,
        "SELECT coalesce(max(attempts), 0)::int8 FROM skor.event_log",
        "the failed attempt recorded",
        |n| n >= 1,
    )
    .await;
    daemon.stop().await;
    assert_eq!(pending(&db).await, 1, "the event waits in the log");

    hook.answer(status(200));
    let daemon = Running::start(&config).await;
    let requests = hook.wait_for(2).await;
    assert_eq!(requests[1].status, 200);
    assert_eq!(row_id(&requests[1].body), 1);
    // The restart kept the schedule: the second attempt waited for the
    // first retry's delay instead of starting over.
    let waited = requests[1].at - failed_at;
    assert!(
        waited >= Duration::from_millis(2_500),
        "retried after {waited:?}"
    );
    eventually_empty(&db).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_one_megabyte_row_is_delivered_whole() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id, body) VALUES (1, repeat('x', 1048576))")
        .await;
    let requests = hook.wait_for(1).await;
    let event: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(event["data"]["body"].as_str().unwrap().len(), 1_048_576);
    assert_eq!(event["data"]["id"], 1);
    eventually_empty(&db).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_spoofed_notify_delivers_nothing() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    let forged = r#"{"table":"items","schema":"public","op":"INSERT","data":{"id":666}}"#;
    db.exec(&format!(
        "NOTIFY skor, '{forged}'; NOTIFY skor_event_log, '{forged}'"
    ))
    .await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    hook.wait_for(1).await;
    // The barrier: a committed change of the forged row itself, so it
    // takes the lane the forged event would have; and the sink settled.
    let requests = daemon
        .barrier(
            "hook",
            &hook,
            db.exec("INSERT INTO items (id) VALUES (666)"),
            |body| is_row(body, 666),
        )
        .await;
    let ids: Vec<i64> = requests.iter().map(|r| row_id(&r.body)).collect();
    assert_eq!(ids, vec![1, 666], "only the committed changes arrived");
    // Durable mode takes events from the log only: the forged wake-ups
    // made it claim nothing but the committed changes.
    let durable = daemon.stats.durable.as_ref().expect("durable mode runs");
    assert_eq!(durable.claimed.get(), 2);
    // The barrier's row leaves the log a moment after its delivery; what
    // is left then would be forged.
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log",
        "the log to empty: nothing forged entered it",
        |n| n == 0,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn uninstall_refuses_to_drop_undelivered_events_unless_asked() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    let file = config_file(&config);
    let path = file.path().to_str().unwrap();
    let installed = run(&["--config", path, "install"]).await;
    assert!(installed.status.success(), "{}", stderr(&installed));
    db.exec("INSERT INTO items (id) VALUES (1), (2), (3)").await;

    let refused = run(&["--config", path, "uninstall"]).await;
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("skor.event_log holds 3 pending and 0 dead-lettered events")
            && message.contains("--drop-events"),
        "{message}"
    );
    assert_eq!(pending(&db).await, 3, "nothing was dropped");

    let forced = run(&["--config", path, "uninstall", "--drop-events"]).await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'skor'"
        )
        .await,
        0
    );
    db.exec("INSERT INTO items (id) VALUES (4)").await;
}

/// Waits until `daemons` daemon sessions lease all 64 key partitions
/// between them.
async fn wait_for_partition_owners(db: &TestDb, daemons: i64) {
    let what = format!("{daemons} daemons leasing all 64 partitions");
    eventually(&what, || async {
        let owners = count(
            db,
            "SELECT count(DISTINCT holder) FROM skor.partition_lease WHERE expires_at > now()",
        )
        .await;
        let owned = count(
            db,
            "SELECT count(*) FROM skor.partition_lease WHERE holder IS NOT NULL \
               AND expires_at > now()",
        )
        .await;
        if owners == daemons && owned == 64 {
            Ok(())
        } else {
            Err(format!("{owners} daemons lease {owned} partitions"))
        }
    })
    .await
}

/// `daemons` skor processes share 20 rows' 2020 events; with `kill`, the
/// first is SIGKILLed half-way. Every event arrives, each row's in order.
async fn daemons_share_the_log(daemons: usize, kill: bool) {
    const ROWS: i64 = 20;
    const ROUNDS: i64 = 100;
    let db = items_db().await;
    let hook = Hook::start().await;
    let configs: Vec<_> = (0..daemons)
        .map(|i| {
            config_file(&hook_config(
                &db,
                DURABLE_ITEMS,
                &hook,
                &format!("headers = {{ x-daemon = \"{i}\" }}"),
            ))
        })
        .collect();
    install(&db, &std::fs::read_to_string(configs[0].path()).unwrap()).await;
    let mut children: Vec<Child> = configs.iter().map(spawn).collect();
    wait_for_partition_owners(&db, daemons as i64).await;

    db.exec(&format!(
        "INSERT INTO items (id) SELECT g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    for round in 1..=ROUNDS {
        db.exec("UPDATE items SET n = n + 1").await;
        if kill && round == ROUNDS / 2 {
            signal(&children[0], "KILL");
            children[0].wait().await.unwrap();
        }
        // Paced on purpose: the updates span the daemons' claims, so the
        // kill lands while the log is being worked through.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let expected = (ROWS * (ROUNDS + 1)) as usize;
    let (patience, every) = (Duration::from_secs(60), Duration::from_millis(50));
    let requests = eventually_every(&format!("{expected} events"), patience, every, || {
        if hook.count() < expected {
            return std::future::ready(Err(format!("{} requests", hook.count())));
        }
        let requests = hook.requests();
        let distinct: std::collections::HashSet<(i64, i64)> = requests
            .iter()
            .map(|r| {
                let event: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                (
                    event["data"]["id"].as_i64().unwrap(),
                    event["data"]["n"].as_i64().unwrap(),
                )
            })
            .collect();
        std::future::ready(if distinct.len() == expected {
            Ok(requests)
        } else {
            Err(format!("{} distinct events", distinct.len()))
        })
    })
    .await;
    let mut by_daemon: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_row: HashMap<i64, Vec<i64>> = HashMap::new();
    for request in &requests {
        let daemon = request.headers["x-daemon"].to_str().unwrap().to_string();
        *by_daemon.entry(daemon).or_default() += 1;
        let event: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        let seen = by_row
            .entry(event["data"]["id"].as_i64().unwrap())
            .or_default();
        let n = event["data"]["n"].as_i64().unwrap();
        // A redelivery after the kill repeats what was already seen; the
        // first arrival of each version must follow the previous version.
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    for (row, versions) in &by_row {
        assert_eq!(
            *versions,
            (0..=ROUNDS).collect::<Vec<_>>(),
            "row {row} arrived out of order"
        );
    }
    assert_eq!(
        by_daemon.len(),
        daemons,
        "every daemon delivered: {by_daemon:?}"
    );
    let duplicates = requests.len() - expected;
    eprintln!("per daemon {by_daemon:?}, {duplicates} duplicates");
    if !kill {
        assert_eq!(duplicates, 0);
    }
    eventually_empty(&db).await;
    for child in children.iter_mut().skip(usize::from(kill)) {
        signal(child, "TERM");
        child.wait().await.unwrap();
    }
}

#[tokio::test]
async fn two_daemons_share_the_log_in_per_key_order() {
    daemons_share_the_log(2, false).await;
}

#[tokio::test]
async fn three_daemons_keep_per_key_order_when_one_is_killed() {
    daemons_share_the_log(3, true).await;
}

#[tokio::test]
async fn a_replayed_dead_letter_goes_only_to_the_sinks_that_missed_it() {
    let db = items_db().await;
    let good = Hook::start().await;
    let bad = Hook::scripted(Vec::new(), status(400)).await;
    let config = crate::common::config(
        &db,
        &format!(
            "[[table]]\n{DURABLE_ITEMS}\n\
             [sink.good]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [sink.bad]\ntype = \"webhook\"\nurl = \"{}\"\n",
            good.url(),
            bad.url()
        ),
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    good.wait_for(1).await;
    bad.wait_for(1).await;
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'dead'",
        "the 400 dead-letters the event",
        |n| n == 1,
    )
    .await;
    let row = db
        .client
        .query_one("SELECT done_sinks, last_error FROM skor.event_log", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<String>>(0), vec!["good".to_string()]);
    assert!(row.get::<_, String>(1).starts_with("sink bad: HTTP 400"));

    bad.answer(status(200));
    let file = config_file(&config);
    let replay = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "dead-letters",
        "replay",
        "--all",
    ])
    .await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    bad.wait_for(2).await;
    eventually_empty(&db).await;
    assert_eq!(good.count(), 1, "the sink that had it did not get it again");
    daemon.stop().await;
}

#[tokio::test]
async fn delivered_events_are_kept_for_the_retention_then_removed() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nretention_ms = 1500\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id) VALUES (1), (2), (3)").await;
    hook.wait_for(3).await;
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'delivered'",
        "events marked delivered",
        |n| n == 3,
    )
    .await;
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log",
        "delivered events removed after their retention",
        |n| n == 0,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn notify_and_durable_tables_run_side_by_side() {
    let db = items_db().await;
    db.exec("CREATE TABLE notes (id int PRIMARY KEY)").await;
    let hook = Hook::start().await;
    let config = hook_config(
        &db,
        &format!("{DURABLE_ITEMS}\n[[table]]\nname = \"notes\"\nmode = \"notify\""),
        &hook,
        "",
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id) VALUES (1); INSERT INTO notes (id) VALUES (2)")
        .await;
    let mut tables: Vec<String> = hook
        .wait_for(2)
        .await
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            let id = r.headers.get("skor-event-id").is_some();
            format!("{} id-header={id}", event["table"].as_str().unwrap())
        })
        .collect();
    tables.sort();
    assert_eq!(tables, ["items id-header=true", "notes id-header=false"]);
    eventually_empty(&db).await;
    daemon.stop().await;
}

/// `(id, n)` of an event payload: the row and its version.
fn version(body: &str) -> (i64, i64) {
    let event: serde_json::Value = serde_json::from_str(body).unwrap();
    (
        event["data"]["id"].as_i64().unwrap(),
        event["data"]["n"].as_i64().unwrap(),
    )
}

/// Waits until the 2xx requests of `hook` hold every version `0..=last` of
/// rows `1..=rows`, and returns them in arrival order.
async fn wait_for_versions(hook: &Hook, rows: i64, last: i64, patience: Duration) -> Vec<Request> {
    let expected = (rows * (last + 1)) as usize;
    let every = Duration::from_millis(50);
    eventually_every(&format!("{expected} events"), patience, every, || {
        let requests: Vec<Request> = hook
            .requests()
            .into_iter()
            .filter(|r| r.status < 300)
            .collect();
        let distinct: std::collections::HashSet<(i64, i64)> =
            requests.iter().map(|r| version(&r.body)).collect();
        std::future::ready(if distinct.len() == expected {
            Ok(requests)
        } else {
            Err(format!("{} distinct events", distinct.len()))
        })
    })
    .await
}

/// Checks that each row's versions first arrived in order.
fn assert_per_row_order(requests: &[Request], rows: i64, last: i64) {
    let mut by_row: HashMap<i64, Vec<i64>> = HashMap::new();
    for request in requests {
        let (row, n) = version(&request.body);
        let seen = by_row.entry(row).or_default();
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    for row in 1..=rows {
        assert_eq!(
            by_row.get(&row).cloned().unwrap_or_default(),
            (0..=last).collect::<Vec<_>>(),
            "row {row} arrived out of order"
        );
    }
}

/// `rows` rows inserted, then each updated `last` times: versions n = 0..=last.
async fn versions(db: &TestDb, rows: i64, last: i64) {
    db.exec(&format!(
        "INSERT INTO items (id) SELECT g FROM generate_series(1, {rows}) g"
    ))
    .await;
    for _ in 0..last {
        db.exec("UPDATE items SET n = n + 1").await;
    }
}

#[tokio::test]
async fn a_daemon_whose_session_is_gone_stops_before_another_takes_over() {
    const ROWS: i64 = 3;
    const LAST: i64 = 10;
    let db = items_db().await;
    // Daemon A logs in as a role of its own, so the test can keep it from
    // coming back once its session is terminated.
    let role = format!("skor_fence_{}", &db.name["skor_test_".len()..]);
    let _roles = crate::common::TestRoles::create(&db, &[format!("{role} LOGIN SUPERUSER")]).await;
    let hook = Hook::scripted(Vec::new(), slow(200, Duration::from_millis(300))).await;
    let daemon_config = |dsn: String, name: &str| {
        format!(
            "[source]\ndsn = \"{dsn}\"\n[[table]]\n{DURABLE_ITEMS}\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\nmax_in_flight = 1\n\
             headers = {{ x-daemon = \"{name}\" }}\n\
             [durable]\nlease_ttl_ms = 2000\n",
            hook.url()
        )
    };
    let a_config = daemon_config(format!("{} user={role}", db.dsn()), "a");
    install(&db, &a_config).await;
    versions(&db, ROWS, LAST).await;

    let a = Running::start(&a_config).await;
    hook.wait_for(3).await;
    db.exec(&format!("ALTER ROLE {role} NOLOGIN")).await;
    let terminated = count(
        &db,
        &format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
              WHERE application_name = 'skor-durable' AND usename = '{role}'"
        ),
    )
    .await;
    assert_eq!(terminated, 1, "daemon A's event log session");
    let b = Running::start(&daemon_config(db.dsn(), "b")).await;

    let requests = wait_for_versions(&hook, ROWS, LAST, Duration::from_secs(60)).await;
    let daemon = |r: &Request| r.headers["x-daemon"].to_str().unwrap().to_string();
    for row in 1..=ROWS {
        let of_row: Vec<&Request> = requests
            .iter()
            .filter(|r| version(&r.body).0 == row)
            .collect();
        let Some(first_b) = of_row.iter().position(|r| daemon(r) == "b") else {
            continue;
        };
        let late: Vec<(i64, i64)> = of_row[first_b..]
            .iter()
            .filter(|r| daemon(r) == "a")
            .map(|r| version(&r.body))
            .collect();
        assert!(
            late.is_empty(),
            "daemon A sent {late:?} after daemon B's first delivery of row {row}"
        );
    }
    assert!(
        requests.iter().any(|r| daemon(r) == "b"),
        "daemon B took over"
    );
    assert_per_row_order(&requests, ROWS, LAST);
    eventually_empty(&db).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_sink_that_is_down_holds_back_no_other_sink() {
    const ROWS: i64 = 100;
    const LAST: i64 = 4;
    let db = items_db().await;
    let good = Hook::start().await;
    let down = Hook::scripted(Vec::new(), status(503)).await;
    let config = crate::common::config(
        &db,
        &format!(
            "[[table]]\n{DURABLE_ITEMS}\n\
             [sink.good]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [sink.down]\ntype = \"webhook\"\nurl = \"{}\"\n\
             retries = 100000\nbackoff_ms = 10\nmax_backoff_ms = 50\n\
             [durable]\nbatch_size = 50\n",
            good.url(),
            down.url()
        ),
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    versions(&db, ROWS, LAST).await;

    let delivered = wait_for_versions(&good, ROWS, LAST, PATIENCE).await;
    assert_per_row_order(&delivered, ROWS, LAST);
    assert!(
        down.requests().iter().all(|r| r.status == 503),
        "the down sink confirmed nothing yet"
    );

    down.answer(status(200));
    let delivered = wait_for_versions(&down, ROWS, LAST, Duration::from_secs(60)).await;
    assert_per_row_order(&delivered, ROWS, LAST);
    eventually_empty(&db).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM skor.event_log").await,
        0,
        "no dead letter either"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_unrouted_event_is_a_dead_letter_until_a_route_takes_it() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let routed = hook_config(&db, DURABLE_ITEMS, &hook, "");
    let unrouted = format!("{routed}\n[[route]]\nops = [\"DELETE\"]\nsinks = [\"hook\"]\n");
    install(&db, &unrouted).await;
    let daemon = Running::start(&unrouted).await;
    db.exec("INSERT INTO items (id) VALUES (1), (2), (3)").await;
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'dead' AND last_error = 'no route'",
        "unrouted events kept as dead letters",
        |n| n == 3,
    )
    .await;
    assert_eq!(hook.count(), 0);
    assert_eq!(daemon.stats.events.unrouted.get(), 3);
    daemon.stop().await;

    // The route is fixed: a replay delivers them.
    let daemon = Running::start(&routed).await;
    let file = config_file(&routed);
    let replay = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "dead-letters",
        "replay",
        "--all",
    ])
    .await;
    assert!(replay.status.success(), "{}", stderr(&replay));
    let bodies: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    assert_eq!(assert_every_id(bodies.iter().map(String::as_str), 3), 0);
    eventually_empty(&db).await;
    assert_eq!(count(&db, "SELECT count(*) FROM skor.event_log").await, 0);
    daemon.stop().await;
}

#[tokio::test]
async fn a_row_skor_cannot_parse_is_a_dead_letter_and_stalls_nothing() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    install(&db, &config).await;
    // Rows written past the trigger, in row 1's partition, before its
    // real events: valid JSON that is no event, a key that is no JSON, and
    // (where no constraint forbids it) an operation skor does not know.
    let insert = |op: &str, key: &str, payload: &str| {
        format!(
            "INSERT INTO skor.event_log (channel, schema_name, table_name, op, row_key, part, payload) \
             VALUES ('skor', 'public', 'items', '{op}', {key}, hashtext('{{\"id\":1}}') & 63, '{payload}')"
        )
    };
    let event = r#"{"table":"items","schema":"public","op":"INSERT","data":{"id":1}}"#;
    db.exec(&insert("INSERT", "NULL", "\"not an event\"")).await;
    db.exec(&insert("INSERT", "'{\"id\":1'", event)).await;
    db.exec(&format!(
        "DO $$ BEGIN {}; EXCEPTION WHEN check_violation THEN NULL; END $$",
        insert("TRUNCATE", "NULL", event)
    ))
    .await;
    let bad = count(&db, "SELECT count(*) FROM skor.event_log").await;
    assert!(bad >= 2);

    let daemon = Running::start(&config).await;
    db.exec(&crate::common::inserts(1, 5)).await;
    let bodies: Vec<String> = hook.wait_for(5).await.into_iter().map(|r| r.body).collect();
    assert_eq!(assert_every_id(bodies.iter().map(String::as_str), 5), 0);
    wait_until(
        &db,
        "SELECT count(*) FROM skor.event_log WHERE state = 'dead' \
           AND last_error LIKE 'unparseable event: %'",
        "every unparseable row dead-lettered",
        |n| n == bad,
    )
    .await;
    let reasons: Vec<String> = db
        .client
        .query(
            "SELECT last_error FROM skor.event_log WHERE state = 'dead' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        reasons[0].contains("payload is not a JSON object"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("row_key is not a JSON object"),
        "{reasons:?}"
    );
    if bad == 3 {
        assert_eq!(reasons[2], "unparseable event: unknown op \"TRUNCATE\"");
    }
    assert_eq!(hook.count(), 5, "nothing unparseable was sent");
    eventually_empty(&db).await;
    daemon.stop().await;
}

#[tokio::test]
async fn claims_stay_within_the_byte_budget() {
    const BUDGET: u64 = 8 * 1024 * 1024;
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nmax_claim_bytes = {BUDGET}\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    db.exec(
        "INSERT INTO items (id, body) SELECT g, repeat(md5(g::text), 62500) \
           FROM generate_series(1, 40) g",
    )
    .await;
    let daemon = Running::start(&config).await;
    let bodies = delivered_ids(&hook, 40, Duration::from_secs(60)).await;
    assert_eq!(assert_every_id(bodies.iter().map(String::as_str), 40), 0);
    assert!(bodies.iter().all(|b| b.len() > 2_000_000));
    eventually_empty(&db).await;
    let peak = daemon
        .stats
        .durable
        .as_ref()
        .unwrap()
        .peak_claimed_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak > 2_000_000 && peak <= BUDGET,
        "held {peak} bytes at most, budget {BUDGET}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn retention_removal_keeps_up_with_a_large_backlog() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nretention_ms = 1000\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    // 30,000 events delivered an hour ago, as a busy hour leaves them.
    db.exec(
        "INSERT INTO skor.event_log (channel, schema_name, table_name, op, row_key, part, \
                                    payload, state, delivered_at) \
         SELECT 'skor', 'public', 'items', 'INSERT', '{\"id\":' || g || '}', g % 64, \
                '{\"table\":\"items\",\"schema\":\"public\",\"op\":\"INSERT\",\"data\":{}}', \
                'delivered', now() - interval '1 hour' \
           FROM generate_series(1, 30000) g",
    )
    .await;
    let daemon = Running::start(&config).await;
    // Removing 1000 a second would take 30 s.
    let what = "the delivered events removed from the log";
    eventually_within(what, Duration::from_secs(10), || async {
        match count(&db, "SELECT count(*) FROM skor.event_log").await {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    assert_eq!(hook.count(), 0, "delivered events are not sent again");
    daemon.stop().await;
}

#[tokio::test]
async fn a_failing_statement_is_retried_without_reconnecting() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\npoll_interval_ms = 50\n",
        hook_config(&db, DURABLE_ITEMS, &hook, "")
    );
    install(&db, &config).await;
    let daemon = Running::start(&config).await;
    db.exec("INSERT INTO items (id) VALUES (1)").await;
    hook.wait_for(1).await;
    let durable = daemon.stats.durable.clone().unwrap();
    // The log is away for a moment: statements on it fail with a SQLSTATE
    // on a connection that stays open.
    db.exec("ALTER TABLE skor.event_log RENAME TO event_log_away")
        .await;
    crate::common::eventually_true("a statement on the event log failed", || {
        durable.statement_errors.get() > 0
    })
    .await;
    db.exec("ALTER TABLE skor.event_log_away RENAME TO event_log")
        .await;
    db.exec("INSERT INTO items (id) VALUES (2)").await;
    let requests = hook.wait_for(2).await;
    assert_eq!(row_id(&requests[1].body), 2);
    assert_eq!(durable.link.reconnects.get(), 0, "the session was kept");
    eventually_empty(&db).await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_role_that_can_only_connect_cannot_hold_or_take_partitions() {
    let db = items_db().await;
    let hook = Hook::start().await;
    let config = hook_config(&db, DURABLE_ITEMS, &hook, "");
    install(&db, &config).await;
    let role = format!("skor_conn_{}", &db.name["skor_test_".len()..]);
    let _roles = crate::common::TestRoles::create(&db, &[format!("{role} LOGIN")]).await;
    let intruder = crate::common::connect(&format!("{} user={role}", db.dsn())).await;
    // What stopped delivery before leases: every partition's advisory lock
    // and a member lock, held for the whole test.
    intruder
        .batch_execute(
            "SELECT pg_advisory_lock(1936420722, p) FROM generate_series(0, 63) p; \
             SELECT pg_advisory_lock(1936420723, pg_backend_pid());",
        )
        .await
        .unwrap();
    for attack in [
        "UPDATE skor.partition_lease SET holder = gen_random_uuid(), \
                expires_at = now() + interval '1 day'",
        "INSERT INTO skor.daemon (id, expires_at) \
         SELECT gen_random_uuid(), now() + interval '1 day' FROM generate_series(1, 1000)",
        "DELETE FROM skor.daemon",
    ] {
        let error = intruder.batch_execute(attack).await.unwrap_err();
        assert!(
            error
                .as_db_error()
                .is_some_and(|e| e.message().contains("permission denied")),
            "{attack}: {error:?}"
        );
    }

    let daemon = Running::start(&config).await;
    db.exec(&crate::common::inserts(1, 20)).await;
    let bodies = delivered_ids(&hook, 20, PATIENCE).await;
    assert_eq!(assert_every_id(bodies.iter().map(String::as_str), 20), 0);
    eventually_empty(&db).await;
    daemon.stop().await;
    drop(intruder);
}
