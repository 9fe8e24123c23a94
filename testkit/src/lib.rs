//! What skor's integration tests (`tests/`) and its benchmark (`bench/`)
//! share: a database per test on the shared PostgreSQL, private PostgreSQL
//! servers, the brokers' helpers, recording HTTP and HTTPS receivers, a
//! headless browser ([`browser::Browser`]), and waiting with a deadline
//! ([`eventually`]) or behind a barrier ([`Hook::barrier`]) instead of
//! sleeping.
//!
//! Nothing here calls skor's library: what does (installing triggers,
//! running a daemon in process) is in `tests/it/common`, which re-exports
//! this crate.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod browser;
pub mod https;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pg_server;
pub mod proxy;
pub mod pubsub;
#[cfg(feature = "redis")]
pub mod redis;
pub mod wal_types;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// What one look of [`eventually`] saw: done (with a value), or not yet
/// (with what was seen instead, for the failure message).
pub trait Observation {
    type Value;
    fn settle(self) -> Result<Self::Value, String>;
}

/// `Some(value)` is done; `None` is not yet.
impl<T> Observation for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_string())
    }
}

/// `Ok(value)` is done; `Err(seen)` is not yet, and says what was seen.
impl<T, E: Debug> Observation for Result<T, E> {
    type Value = T;
    fn settle(self) -> Result<T, String> {
        self.map_err(|seen| format!("{seen:?}"))
    }
}

/// `true` is done.
impl Observation for bool {
    type Value = ();
    fn settle(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".to_string())
        }
    }
}

/// Looks with `look` until it is done (`Some`, `Ok` or `true`) and
/// returns its value; after [`PATIENCE`], panics with `what` and the last
/// thing it saw (`Err(seen)`).
pub async fn eventually<O, F, Fut>(what: &str, look: F) -> O::Value
where
    O: Observation,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    eventually_within(what, PATIENCE, look).await
}

/// [`eventually`], waiting at most `patience`.
pub async fn eventually_within<O, F, Fut>(what: &str, patience: Duration, look: F) -> O::Value
where
    O: Observation,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    eventually_every(what, patience, POLL, look).await
}

/// [`eventually_within`], looking every `interval`: for looks that cost
/// (copying and parsing thousands of requests).
pub async fn eventually_every<O, F, Fut>(
    what: &str,
    patience: Duration,
    interval: Duration,
    mut look: F,
) -> O::Value
where
    O: Observation,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let deadline = Instant::now() + patience;
    loop {
        match look().await.settle() {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for: {what}; last saw: {seen}"
            ),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`
/// (a server this harness started); `what` names it.
pub async fn wait_for_port(what: &str, port: u16) {
    eventually(&format!("{what} listening on port {port}"), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map(drop)
    })
    .await
}

/// Waits until `condition` holds, for conditions that need no I/O
/// (counters that move just after the request a test saw).
pub async fn eventually_true(what: &str, mut condition: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(condition())).await
}

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
        eventually(
            &format!("a skor listener connected to {}", self.name),
            || async {
                self.listener_pids()
                    .await
                    .into_iter()
                    .find(|p| Some(*p) != old)
            },
        )
        .await
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
        self.wait_until(&format!("{n} requests"), |requests| requests.len() >= n)
            .await
    }

    /// Waits until the requests so far satisfy `done` and returns them.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Request]) -> bool) -> Vec<Request> {
        self.wait_within(what, PATIENCE, done).await
    }

    /// [`Hook::wait_until`], waiting at most `patience`.
    pub async fn wait_within(
        &self,
        what: &str,
        patience: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let waited = tokio::time::timeout(patience, async {
            loop {
                let arrived = self.state.arrived.notified();
                if done(&self.state.requests.lock().unwrap()) {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        let requests = self.requests();
        if waited.is_err() {
            // Thousands of requests would bury the message.
            let shown = if requests.len() <= 20 {
                format!(": {requests:#?}")
            } else {
                String::new()
            };
            panic!(
                "timed out after {patience:?} waiting for {what}; got {} requests{shown}",
                requests.len()
            );
        }
        requests
    }

    /// "Nothing more arrives", proved instead of slept on. `cause` makes
    /// one more event, the barrier, after the changes whose events must
    /// not arrive (an `INSERT` of a marked row, say); once a request
    /// `is_barrier` accepts (by body) arrived, returns every request up to
    /// and including that one, so a test can assert exactly what came
    /// before it.
    ///
    /// That proves something only if the barrier travels behind the
    /// events it fences: the webhook sink sends each row's events down one
    /// lane in commit order, but rows on other lanes may overtake each
    /// other. So the barrier must be an event of the same row as the
    /// events that must not arrive, or the sink must have a single lane
    /// (`max_in_flight = 1`), or the test must also wait for the sink to
    /// have settled its queue (tests/it/common's `barrier` does).
    pub async fn barrier(
        &self,
        cause: impl Future<Output = ()>,
        is_barrier: impl Fn(&str) -> bool,
    ) -> Vec<Request> {
        cause.await;
        let requests = self
            .wait_until("the barrier event", |requests| {
                requests.iter().any(|r| is_barrier(&r.body))
            })
            .await;
        let at = requests
            .iter()
            .position(|r| is_barrier(&r.body))
            .expect("the barrier arrived");
        requests[..=at].to_vec()
    }
}

/// A config for the database `dsn` with `rest` appended after `[source]`.
pub fn config_for(dsn: &str, rest: &str) -> String {
    format!("[source]\ndsn = \"{dsn}\"\n{rest}")
}

/// A config for `db` with `rest` appended after `[source]`.
pub fn config(db: &TestDb, rest: &str) -> String {
    config_for(&db.dsn(), rest)
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

/// Whether `payload` is one event of the row whose `data.id` is `id`
/// (for [`Hook::barrier`]).
pub fn is_row(payload: &str, id: i64) -> bool {
    serde_json::from_str::<serde_json::Value>(payload)
        .is_ok_and(|event| event["data"]["id"].as_i64() == Some(id))
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
