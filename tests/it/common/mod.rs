//! Shared test harness: a database per test on the real PostgreSQL, a
//! scripted HTTP receiver on 127.0.0.1:0, and a daemon running in-process.
#![allow(dead_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod bin;
pub mod https;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pg_server;
pub mod proxy;
#[cfg(feature = "pubsub")]
pub mod pubsub;
#[cfg(feature = "redis")]
pub mod redis;
pub mod wal;
pub mod wal_types;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use skor::{Config, Daemon, Stats};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The server the tests use; PG* variables point elsewhere.
pub fn server_dsn() -> String {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    format!("host={host} port={port} user={user}")
}

pub async fn connect(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A database of its own, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub client: Client,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("skor_test_{:016x}", rand::random::<u64>());
        let admin = connect(&format!("{} dbname=postgres", server_dsn())).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let client = connect(&format!("{} dbname={name}", server_dsn())).await;
        Self { name, client }
    }

    pub fn dsn(&self) -> String {
        format!("{} dbname={}", server_dsn(), self.name)
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// The ids in skor's event log, oldest first, as consumers see them.
    pub async fn event_ids(&self) -> Vec<String> {
        let rows = self
            .client
            .query("SELECT id::text FROM skor.event_log ORDER BY id", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Pids of skor's listening connections to this database.
    pub async fn listener_pids(&self) -> Vec<i32> {
        let rows = self
            .client
            .query(
                // After a quiet spell the listener's last query is its heartbeat.
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = 'skor' \
                 AND (query LIKE 'LISTEN%' OR query = 'SELECT 1') AND state = 'idle'",
                &[&self.name],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Waits until a skor listener other than `old` is connected.
    pub async fn wait_for_listener(&self, old: Option<i32>) -> i32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(pid) = self
                .listener_pids()
                .await
                .into_iter()
                .find(|p| Some(*p) != old)
            {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no skor listener connected to {}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        on_postgres_db(vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )]);
    }
}

/// Roles a test created, dropped with its database when the guard goes,
/// whether the test passed or not (roles belong to the whole server).
pub struct TestRoles {
    database: String,
    roles: Vec<String>,
}

impl TestRoles {
    /// Creates `roles` (each `NAME OPTIONS`, e.g. `"alice LOGIN"`) on `db`'s
    /// server.
    pub async fn create(db: &TestDb, roles: &[String]) -> Self {
        for role in roles {
            db.exec(&format!("CREATE ROLE {role}")).await;
        }
        Self {
            database: db.name.clone(),
            roles: roles
                .iter()
                .map(|r| r.split(' ').next().unwrap_or_default().to_string())
                .collect(),
        }
    }
}

impl Drop for TestRoles {
    fn drop(&mut self) {
        // What the roles were granted in the database goes with it first.
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        )];
        statements.extend(
            self.roles
                .iter()
                .map(|r| format!("DROP ROLE IF EXISTS {r}")),
        );
        on_postgres_db(statements);
    }
}

/// Runs `statements` in order on the `postgres` database, ignoring their
/// errors: cleanup for `Drop`, which runs outside async, so a thread with
/// its own runtime does the I/O.
pub fn on_postgres_db(statements: Vec<String>) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let admin = connect(&format!("{} dbname=postgres", server_dsn())).await;
            for statement in statements {
                let _ = admin.batch_execute(&statement).await;
            }
        });
    })
    .join();
}

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
}

pub const fn status(status: u16) -> Reply {
    Reply {
        status,
        delay: Duration::ZERO,
    }
}

pub const fn slow(status: u16, delay: Duration) -> Reply {
    Reply { status, delay }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Request {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: String,
    /// The status the receiver answered with.
    pub status: u16,
}

struct HookState {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    requests: Mutex<Vec<Request>>,
    arrived: Notify,
}

/// An HTTP webhook receiver that answers from a script (then 200, or a
/// default reply) and records every request.
pub struct Hook {
    pub addr: SocketAddr,
    state: Arc<HookState>,
    /// Stops the server that listens now, and waits for it to be gone.
    server: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

async fn receive(
    State(state): State<Arc<HookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(*state.default.lock().unwrap());
    state.requests.lock().unwrap().push(Request {
        at: Instant::now(),
        headers,
        body: String::from_utf8(body.to_vec()).expect("utf-8 body"),
        status: reply.status,
    });
    state.arrived.notify_waiters();
    tokio::time::sleep(reply.delay).await;
    StatusCode::from_u16(reply.status).unwrap()
}

impl Hook {
    pub async fn start() -> Self {
        Self::scripted(Vec::new(), status(200)).await
    }

    pub async fn scripted(script: Vec<Reply>, default: Reply) -> Self {
        let state = Arc::new(HookState {
            script: Mutex::new(script.into()),
            default: Mutex::new(default),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Self {
            addr,
            state,
            server: Mutex::new(None),
        };
        hook.serve(listener);
        hook
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&self.state));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        *self.server.lock().unwrap() = Some((stop, handle));
    }

    /// Takes the receiver down: the port is closed and every connection,
    /// kept-alive ones included, is closed once its answer is sent.
    pub async fn stop(&self) {
        let (stop, handle) = self.server.lock().unwrap().take().expect("running");
        stop.cancel();
        tokio::time::timeout(PATIENCE, handle)
            .await
            .expect("the receiver stops")
            .unwrap();
    }

    /// Brings the receiver back on the same port.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the receiver's port is free again");
        self.serve(listener);
    }

    /// From now on, answer every request with `reply`.
    pub fn answer(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// How many requests arrived, without copying them.
    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    /// Waits until at least `n` requests arrived and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Request> {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let arrived = self.state.arrived.notified();
                if self.state.requests.lock().unwrap().len() >= n {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        let requests = self.requests();
        assert!(
            waited.is_ok(),
            "expected {n} requests, got {}: {:#?}",
            requests.len(),
            requests
        );
        requests
    }
}

/// A daemon running in this process.
pub struct Running {
    pub stats: Stats,
    /// The admin endpoint's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    handle: JoinHandle<skor::Summary>,
}

impl Running {
    pub async fn start(config: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("SKOR_TEST_LOG").unwrap_or_else(|_| "skor=debug".into()))
            .try_init();
        let config = Config::from_toml(config, "test.toml").expect("valid config");
        let daemon = Daemon::start(&config).await.expect("daemon starts");
        let stats = daemon.stats();
        let admin = daemon.admin_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(daemon.run(shutdown.clone()));
        Self {
            stats,
            admin,
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) -> skor::Summary {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("daemon stops")
            .unwrap()
    }
}

/// Installs skor's triggers for the tables of `config` into `db`.
pub async fn install(db: &TestDb, config: &str) {
    let config = Config::from_toml(config, "test.toml").expect("valid config");
    let mut client = connect(&db.dsn()).await;
    skor::install::install(&mut client, &config)
        .await
        .expect("install");
}

/// A config for `db` with `rest` appended after `[source]`.
pub fn config(db: &TestDb, rest: &str) -> String {
    format!("[source]\ndsn = \"{}\"\n{rest}", db.dsn())
}

/// Waits until `condition` holds, for counters that move just after the
/// request a test saw.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A config capturing one `[[table]]` (its keys in `table`) into a webhook
/// sink named `hook`, with `sink_options` added to the sink.
pub fn hook_config(db: &TestDb, table: &str, hook: &Hook, sink_options: &str) -> String {
    config(
        db,
        &format!(
            "[[table]]\n{table}\n[sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n{sink_options}\n",
            hook.url()
        ),
    )
}

/// Installs the triggers of `config` and starts a daemon on it.
pub async fn start_installed(db: &TestDb, config: &str) -> Running {
    install(db, config).await;
    Running::start(config).await
}

/// `INSERT`s of ids `from..=to` into `items`, one transaction each.
pub fn inserts(from: i32, to: i32) -> String {
    (from..=to)
        .map(|id| format!("INSERT INTO items (id) VALUES ({id}); "))
        .collect()
}

/// The `data.id` of an event payload.
pub fn row_id(payload: &str) -> i64 {
    let event: serde_json::Value = serde_json::from_str(payload).unwrap();
    event["data"]["id"].as_i64().unwrap()
}

/// Checks that the payloads hold exactly the ids `1..=count`, each at least
/// once, and returns how many were duplicates.
pub fn assert_every_id<'a>(payloads: impl IntoIterator<Item = &'a str>, count: i64) -> usize {
    let mut ids: Vec<i64> = payloads.into_iter().map(row_id).collect();
    let received = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, (1..=count).collect::<Vec<_>>(), "every event arrived");
    received - ids.len()
}
