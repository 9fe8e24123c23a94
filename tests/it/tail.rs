//! `skor tail` as a user runs it: the real binary, its standard output a
//! pipe (so one JSON line per event, the payload exactly as delivered), in
//! notify, durable and wal mode; and what it must leave alone: oversized
//! payloads, the event log, the configured slot.

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::bin::{config_file, run, signal, skor, stderr};
use crate::common::wal::WalDb;
use crate::common::{
    config, connect, eventually, hook_config, install, Hook, Running, TestDb, PATIENCE,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, name text)";

/// A running `skor tail`, its output lines as they come.
struct Tail {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    log: Arc<Mutex<String>>,
    /// Reads standard error into `log` until the pipe closes.
    log_reader: tokio::task::JoinHandle<()>,
    _config: tempfile::NamedTempFile,
}

impl Tail {
    /// Starts `skor --config CONFIG tail ARGS` and waits until it watches.
    async fn start(config: &str, args: &[&str]) -> Self {
        let tail = Self::spawn(config, args);
        tail.wait_log("tail: watching").await;
        tail
    }

    /// Starts `skor --config CONFIG tail ARGS`.
    fn spawn(config: &str, args: &[&str]) -> Self {
        let file = config_file(config);
        let mut child = skor()
            .args(["--config", file.path().to_str().unwrap(), "tail"])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let _ = sender.send(line);
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let written = Arc::clone(&log);
        let log_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut log = written.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child,
            lines,
            log,
            log_reader,
            _config: file,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    async fn wait_log(&self, text: &str) {
        eventually(&format!("\"{text}\" in tail's log"), || {
            let log = self.log();
            std::future::ready(if log.contains(text) { Ok(()) } else { Err(log) })
        })
        .await
    }

    /// The next `n` lines of standard output.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        while lines.len() < n {
            match tokio::time::timeout(PATIENCE, self.lines.recv()).await {
                Ok(Some(line)) => lines.push(line),
                other => panic!(
                    "after {lines:?}: no line more ({other:?}); log:\n{}",
                    self.log()
                ),
            }
        }
        lines
    }

    /// Nothing more is printed before a barrier: `cause` commits one
    /// more change that tail shows, and the next line must be it
    /// (`is_barrier`). tail prints in commit order, one stream, so a line
    /// that should not be there would come first.
    async fn nothing_more_before(
        &mut self,
        cause: impl std::future::Future<Output = ()>,
        is_barrier: impl Fn(&str) -> bool,
    ) {
        cause.await;
        let next = self.lines(1).await.remove(0);
        assert!(is_barrier(&next), "unexpected output: {next}");
    }

    /// SIGINT, as Ctrl-C sends; waits for the exit and returns its log.
    async fn interrupt(mut self) -> String {
        signal(&self.child, "INT");
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("tail exits on SIGINT")
            .unwrap();
        // The log reader finishes once the pipe closes.
        tokio::time::timeout(PATIENCE, self.log_reader)
            .await
            .expect("tail's standard error closes")
            .unwrap();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "tail failed: {status}\n{log}");
        log
    }
}

fn payload(op: &str, data: &str) -> String {
    format!(r#"{{"table" : "items", "schema" : "public", "op" : "{op}", "data" : {data}}}"#)
}

/// INSERT, UPDATE and DELETE of row 1, and the payloads they make.
const CHANGES: &str = "INSERT INTO items VALUES (1, 'a'); \
                       UPDATE items SET name = 'b' WHERE id = 1; \
                       DELETE FROM items WHERE id = 1;";

fn change_payloads() -> Vec<String> {
    vec![
        payload("INSERT", r#"{"id":1,"name":"a"}"#),
        payload("UPDATE", r#"{"id":1,"name":"b"}"#),
        payload("DELETE", r#"{"id":1,"name":"b"}"#),
    ]
}

#[tokio::test]
async fn notify_mode_prints_every_payload_as_delivered() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = config(&db, "[[table]]\nname = \"items\"\n");
    install(&db, &config).await;
    let mut tail = Tail::start(&config, &[]).await;
    db.exec(CHANGES).await;
    assert_eq!(tail.lines(3).await, change_payloads());
    let log = tail.interrupt().await;
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test]
async fn tail_ends_when_its_reader_does() {
    // `skor tail | head -1`: once head has exited, the next event ends tail.
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = config(&db, "[[table]]\nname = \"items\"\n");
    install(&db, &config).await;
    let file = config_file(&config);
    let mut child = skor()
        .args(["--config", file.path().to_str().unwrap(), "tail"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = async {
        loop {
            db.exec("INSERT INTO items VALUES (1, 'a') ON CONFLICT DO NOTHING")
                .await;
            if let Ok(line) =
                tokio::time::timeout(Duration::from_millis(200), stdout.next_line()).await
            {
                return line.unwrap().unwrap();
            }
            db.exec("DELETE FROM items").await;
        }
    };
    let first = tokio::time::timeout(PATIENCE, first).await.expect("a line");
    assert!(first.contains(r#""table" : "items""#), "{first}");
    drop(stdout);
    db.exec("UPDATE items SET name = 'b'").await;
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("tail exits once nobody reads")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn tail_narrows_by_table_and_operation() {
    let db = TestDb::new().await;
    db.exec(&format!("{ITEMS}; CREATE TABLE other (id int PRIMARY KEY)"))
        .await;
    let config = config(
        &db,
        "[[table]]\nname = \"items\"\n[[table]]\nname = \"public.other\"\n",
    );
    install(&db, &config).await;
    let mut tail = Tail::start(
        &config,
        &[
            "--table",
            "public.item*",
            "--op",
            "update",
            "--op",
            "DELETE",
        ],
    )
    .await;
    db.exec(&format!(
        "INSERT INTO other VALUES (1); DELETE FROM other; {CHANGES}"
    ))
    .await;
    assert_eq!(tail.lines(2).await, change_payloads()[1..].to_vec());
    // The barrier's INSERT and `other`'s changes are filtered out too.
    let barrier = payload("UPDATE", r#"{"id":1000,"name":"zz"}"#);
    tail.nothing_more_before(
        db.exec(
            "INSERT INTO other VALUES (2); INSERT INTO items VALUES (1000, 'z'); \
             UPDATE items SET name = 'zz' WHERE id = 1000",
        ),
        |line| line == barrier,
    )
    .await;
    tail.interrupt().await;
}

#[tokio::test]
async fn tail_narrows_by_a_filter_expression() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = config(&db, "[[table]]\nname = \"items\"\n");
    install(&db, &config).await;
    let mut tail = Tail::start(&config, &["--filter", r#"data.name == "b""#]).await;
    db.exec(CHANGES).await;
    assert_eq!(tail.lines(2).await, change_payloads()[1..].to_vec());
    let barrier = payload("INSERT", r#"{"id":1000,"name":"b"}"#);
    tail.nothing_more_before(
        db.exec("INSERT INTO items VALUES (999, 'a'); INSERT INTO items VALUES (1000, 'b')"),
        |line| line == barrier,
    )
    .await;
    tail.interrupt().await;

    let file = config_file(&config);
    let output = run(&[
        "--config",
        file.path().to_str().unwrap(),
        "tail",
        "--filter",
        "data.name ==",
    ])
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--filter: "),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn an_oversized_payload_is_printed_and_left_for_the_daemon() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = config(&db, "[[table]]\nname = \"items\"\n");
    install(&db, &config).await;
    let mut tail = Tail::start(&config, &[]).await;
    let big = "x".repeat(9000);
    db.exec(&format!("INSERT INTO items VALUES (7, '{big}')"))
        .await;
    let expected = payload("INSERT", &format!(r#"{{"id":7,"name":"{big}"}}"#));
    assert_eq!(tail.lines(1).await, vec![expected.clone()]);
    let left: String = db
        .client
        .query_one("SELECT payload FROM skor.oversized_payload", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, expected, "the row stays for the daemon to deliver");
    // A reference whose row is gone (here: never there) is reported, not fatal.
    db.exec(r#"NOTIFY skor, '{"skor_ref" : 999, "channel" : "skor", "token" : "t"}'"#)
        .await;
    tail.wait_log("oversized payload 999 on channel skor is gone")
        .await;
    db.exec("INSERT INTO items VALUES (8, 'small')").await;
    assert_eq!(
        tail.lines(1).await,
        vec![payload("INSERT", r#"{"id":8,"name":"small"}"#)]
    );
    tail.interrupt().await;
}

/// Every row of the event log: (id, state, attempts).
async fn event_log(db: &TestDb) -> Vec<(i64, String, i32)> {
    db.client
        .query(
            "SELECT id, state, attempts FROM skor.event_log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn durable_mode_reads_the_event_log_and_changes_nothing() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let config = config(&db, "[[table]]\nname = \"items\"\nmode = \"durable\"\n");
    install(&db, &config).await;
    // An event from before tail started is not shown.
    db.exec("INSERT INTO items VALUES (100, 'old')").await;
    let mut tail = Tail::start(&config, &[]).await;
    db.exec(CHANGES).await;
    assert_eq!(tail.lines(3).await, change_payloads());

    // A transaction that took its id first but commits last is shown when
    // it commits.
    let first = connect(&db.dsn()).await;
    first
        .batch_execute("BEGIN; INSERT INTO items VALUES (2, 'first')")
        .await
        .unwrap();
    db.exec("INSERT INTO items VALUES (3, 'second')").await;
    assert_eq!(
        tail.lines(1).await,
        vec![payload("INSERT", r#"{"id":3,"name":"second"}"#)]
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    first.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        tail.lines(1).await,
        vec![payload("INSERT", r#"{"id":2,"name":"first"}"#)]
    );
    let barrier = payload("INSERT", r#"{"id":1000,"name":"barrier"}"#);
    tail.nothing_more_before(
        db.exec("INSERT INTO items VALUES (1000, 'barrier')"),
        |line| line == barrier,
    )
    .await;
    tail.interrupt().await;

    // Row 100 from before tail, CHANGES, rows 3 and 2, the barrier.
    let log = event_log(&db).await;
    assert_eq!(log.len(), 7, "every event is still there: {log:?}");
    assert!(
        log.iter()
            .all(|(_, state, attempts)| state == "pending" && *attempts == 0),
        "{log:?}"
    );
    let leases: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM skor.partition_lease WHERE holder IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 0, "tail takes no lease");
}

#[tokio::test]
async fn durable_mode_beside_a_running_daemon_sees_every_retained_event() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let hook = Hook::start().await;
    let config = format!(
        "{}\n[durable]\nretention_ms = 600000\n",
        hook_config(&db, "name = \"items\"\nmode = \"durable\"", &hook, "")
    );
    install(&db, &config).await;
    let skor = Running::start(&config).await;
    let mut tail = Tail::start(&config, &[]).await;
    let inserts: String = (1..=20)
        .map(|id| format!("INSERT INTO items VALUES ({id}, 'n{id}'); "))
        .collect();
    db.exec(&inserts).await;
    let mut delivered: Vec<String> = hook
        .wait_for(20)
        .await
        .into_iter()
        .map(|r| r.body)
        .collect();
    let shown = tail.lines(20).await;
    let expected: Vec<String> = (1..=20)
        .map(|id| payload("INSERT", &format!(r#"{{"id":{id},"name":"n{id}"}}"#)))
        .collect();
    assert_eq!(shown, expected, "in commit order");
    delivered.sort_by_key(|p| crate::common::row_id(p));
    assert_eq!(
        delivered, expected,
        "the daemon delivered every one, tail took none"
    );
    tail.interrupt().await;
    skor.stop().await;
}

/// The replication slots of the wal server: (name, temporary).
async fn slots(wal: &WalDb) -> Vec<(String, bool)> {
    wal.client
        .query(
            "SELECT slot_name::text, temporary FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn wal_mode_streams_a_temporary_slot_and_leaves_the_daemons_alone() {
    let wal = WalDb::start().await;
    wal.exec(ITEMS).await;
    let config = wal.config("[[table]]\nname = \"items\"\n");
    wal.install(&config).await;
    wal.exec("INSERT INTO items VALUES (100, 'before')").await;
    let confirmed = wal.confirmed("skor").await;

    let mut tail = Tail::start(&config, &[]).await;
    let during = slots(&wal).await;
    assert_eq!(during.len(), 2, "{during:?}");
    assert!(
        during
            .iter()
            .any(|(name, temporary)| name.starts_with("skor_tail_") && *temporary),
        "{during:?}"
    );
    wal.exec(CHANGES).await;
    // What the daemon sends: a DELETE carries the replica identity (the
    // primary key) only.
    let mut expected = change_payloads();
    expected[2] = payload("DELETE", r#"{"id":1}"#);
    assert_eq!(tail.lines(3).await, expected);
    tail.interrupt().await;

    assert_eq!(
        wal.confirmed("skor").await,
        confirmed,
        "the configured slot did not move"
    );
    only_the_configured_slot_remains(&wal).await;
}

/// Waits until the temporary slot is gone: PostgreSQL drops it when the
/// session that made it has ended, a moment after tail exited.
async fn only_the_configured_slot_remains(wal: &WalDb) {
    eventually("only the configured slot left", || async {
        let left = slots(wal).await;
        if left == vec![("skor".to_string(), false)] {
            Ok(())
        } else {
            Err(left)
        }
    })
    .await
}

#[tokio::test]
async fn wal_mode_beside_a_running_daemon_prints_what_it_delivers() {
    let wal = WalDb::start().await;
    wal.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, at timestamptz, j jsonb, \
                             tags text[], n numeric)",
    )
    .await;
    let hook = Hook::start().await;
    let config = wal.hook_config("name = \"items\"", &hook, "");
    wal.install(&config).await;
    let skor = Running::start(&config).await;
    let mut tail = Tail::start(&config, &[]).await;
    wal.exec(
        r#"INSERT INTO items VALUES (1, 'a "q"', '2024-01-02 03:04:05+00', '{"k": [1, 2]}', '{x,y}', 1.50);
           UPDATE items SET name = 'b', n = 'NaN' WHERE id = 1;
           DELETE FROM items WHERE id = 1;"#,
    )
    .await;
    let delivered: Vec<String> = hook.wait_for(3).await.into_iter().map(|r| r.body).collect();
    assert_eq!(
        tail.lines(3).await,
        delivered,
        "tail shows what the daemon sends"
    );

    // A backfilled row: the READ event, not skor.wal_backfill's rows.
    wal.exec("INSERT INTO items (id, name) VALUES (2, 'r')")
        .await;
    let mut client = connect(&wal.dsn()).await;
    let options = skor::backfill::Options {
        tables: Vec::new(),
        condition: None,
        batch: 10,
        restart: false,
    };
    let parsed = skor::Config::from_toml(&config, "test.toml").unwrap();
    skor::backfill::run(&mut client, &parsed, &options, &Default::default())
        .await
        .unwrap();
    let delivered: Vec<String> = hook.wait_for(5).await.into_iter().map(|r| r.body).collect();
    let shown = tail.lines(2).await;
    assert_eq!(
        shown,
        delivered[3..],
        "tail shows the backfill as the daemon sends it"
    );
    assert!(shown[1].contains(r#""op" : "READ""#), "{shown:?}");
    tail.nothing_more_before(
        wal.exec("INSERT INTO items (id, name) VALUES (1000, 'barrier')"),
        |line| line.contains(r#""op" : "INSERT""#) && line.contains(r#""id":1000"#),
    )
    .await;
    tail.interrupt().await;
    skor.stop().await;
    only_the_configured_slot_remains(&wal).await;
}

#[tokio::test]
async fn ctrl_c_while_the_slot_waits_for_a_transaction_leaves_no_slot() {
    let wal = WalDb::start().await;
    wal.exec(ITEMS).await;
    let config = wal.config("[[table]]\nname = \"items\"\n");
    wal.install(&config).await;
    // A running transaction with an xid: creating a slot waits for it.
    let open = connect(&wal.dsn()).await;
    open.batch_execute("BEGIN; INSERT INTO items VALUES (1, 'a')")
        .await
        .unwrap();
    let tail = Tail::spawn(&config, &[]);
    tail.wait_log("creating a temporary replication slot").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = tail.interrupt().await;
    assert!(!log.contains("tail: watching"), "{log}");
    assert!(
        log.contains("ended the session creating the temporary slot"),
        "{log}"
    );
    only_the_configured_slot_remains(&wal).await;
    open.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn wal_mode_without_install_says_so() {
    let wal = WalDb::start().await;
    wal.exec(ITEMS).await;
    let config = config_file(&wal.config("[[table]]\nname = \"items\"\n"));
    let output: Output = run(&["--config", config.path().to_str().unwrap(), "tail"]).await;
    assert!(!output.status.success());
    let log = stderr(&output);
    assert!(log.contains("run `skor install` first"), "{log}");
    assert!(slots(&wal).await.is_empty());
}
