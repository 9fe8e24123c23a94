//! The listener: one PostgreSQL connection that LISTENs on every configured
//! channel, turns notifications into events and hands them to the sinks'
//! queues; it reconnects when the connection drops.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{poll_fn, BoxFuture};
use futures_util::FutureExt as _;
use serde_json::value::RawValue;
use skor_sink_api::{Bytes, Op};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::capture::notify::shed;
use crate::capture::payload::{self, Notification, Reference};
use crate::capture::reconnect::{reconnect, STABLE_SESSION};
use crate::capture::Sessions;
use crate::config::{Config, TableName};
use crate::delivery::fanout::{Fanout, Incoming};
use crate::delivery::shedding::Shedding;
use crate::observe::stats::SourceStats;
use crate::postgres::catalog;
use crate::postgres::{describe, quote_ident, ContextError, PgConnection, PgError, Postgres};

/// The listening connection, driven by hand so notifications are not lost.
type Conn = PgConnection;

/// Most bytes of a rejected payload quoted in its log line.
const LOGGED_PAYLOAD_BYTES: usize = 256;

/// TCP keepalives of skor's connections unless the DSN sets them: the
/// kernel gives up on a silent peer after about 25 s instead of hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVES_RETRIES: u32 = 3;

/// The heartbeat's `SELECT 1`, in flight on the listening connection.
type Heartbeat<'a> = BoxFuture<'a, Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>>;

/// What fetching an oversized payload found.
enum Fetched {
    /// The payload, now taken out of the table.
    Payload(String),
    /// No row with that id, channel and token.
    Missing,
    /// A row larger than `max_payload_bytes`, left in the table.
    TooLarge(u64),
}

/// Why the listener could not connect or LISTEN.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No connection: refused, TLS, authentication, no answer.
    #[error(transparent)]
    Connect(#[from] PgError),
    /// Connected, but a statement failed.
    #[error(transparent)]
    Statement(#[from] ContextError),
}

/// One live LISTEN session: the client must live as long as its connection.
pub struct Session {
    client: Client,
    conn: Conn,
    /// Primary-key columns of every table that has triggers, read at connect.
    primary_keys: KeyColumns,
}

/// Key columns by schema, then table, so an event's `&str` names look
/// them up without allocating.
pub type KeyColumns = HashMap<String, HashMap<String, Arc<[String]>>>;

/// Polls `conn` while `request` runs: the connection only makes progress
/// while polled, and notifications that arrive meanwhile are of no use yet.
/// A server that does not answer within `timeout` counts as gone.
async fn drive<T>(
    conn: &mut Conn,
    timeout: Duration,
    request: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    tokio::pin!(request);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut request => return Ok(result?),
            () = &mut deadline => return Err(PgError::Timeout(timeout)),
            message = poll_fn(|cx| conn.poll_message(cx)) => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(PgError::Closed),
            },
        }
    }
}

/// The `key` columns set on `[[table]]`s, by (schema, table).
fn configured_keys(config: &Config) -> KeyColumns {
    let mut keys = KeyColumns::new();
    for table in &config.tables {
        let (Some(key), Ok(name)) = (&table.key, TableName::parse(&table.name)) else {
            continue;
        };
        keys.entry(name.schema)
            .or_default()
            .insert(name.name, Arc::from(key.as_slice()));
    }
    keys
}

/// Receives notifications and routes them to sink queues.
pub struct Listener {
    pg: Postgres,
    channels: Vec<Arc<str>>,
    max_backoff: Duration,
    fanout: Fanout,
    stats: Arc<SourceStats>,
    /// A second connection for fetching oversized payloads, opened on demand.
    fetcher: Option<Client>,
    /// Key columns set in the config, which win over primary keys.
    configured_keys: KeyColumns,
    /// The key columns events are keyed by: primary keys and configured keys.
    keys: KeyColumns,
    /// Silence on the listening connection after which a heartbeat checks it.
    heartbeat_interval: Duration,
    /// How long PostgreSQL may take to answer the listener's queries.
    query_timeout: Duration,
    /// `pg_notification_queue_usage()` past which the listener sheds load.
    shed_threshold: f64,
    /// Shared with the sink queues, which drop instead of waiting while on.
    shedding: Arc<Shedding>,
    /// Largest oversized payload fetched.
    max_payload_bytes: u64,
}

impl Listener {
    /// A listener for the notify-mode channels of `config`; it does not
    /// connect yet.
    pub fn new(
        mut pg: Postgres,
        config: &Config,
        mut fanout: Fanout,
        stats: Arc<SourceStats>,
    ) -> Self {
        let configured_keys = configured_keys(config);
        let settings = pg.config_mut();
        // A connection whose peer vanished (a crashed host, a dropped NAT
        // entry) is otherwise noticed only by the heartbeat, and the server
        // keeps a LISTEN session that holds up its notification queue.
        if settings.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            settings.keepalives_idle(KEEPALIVES_IDLE);
        }
        if settings.get_keepalives_interval().is_none() {
            settings.keepalives_interval(KEEPALIVES_INTERVAL);
        }
        if settings.get_keepalives_retries().is_none() {
            settings.keepalives_retries(KEEPALIVES_RETRIES);
        }
        let shedding = Arc::new(Shedding::new(stats.shedding.clone()));
        fanout.shed_with(&shedding);
        Self {
            pg,
            channels: config
                .notify_channels()
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
            max_backoff: Duration::from_millis(config.source.reconnect_max_backoff_ms),
            fanout,
            stats,
            fetcher: None,
            keys: configured_keys.clone(),
            configured_keys,
            heartbeat_interval: Duration::from_millis(config.source.heartbeat_interval_ms),
            query_timeout: Duration::from_millis(config.source.query_timeout_ms),
            shed_threshold: config.source.shed_notify_queue_usage,
            shedding,
            max_payload_bytes: config.source.max_payload_bytes,
        }
    }

    /// Connects, LISTENs on every channel and reads the tables' primary keys.
    pub async fn open(&self) -> Result<Session, OpenError> {
        let patience = self.connect_patience();
        let (client, mut conn) = tokio::time::timeout(patience, self.pg.connect())
            .await
            .map_err(|_| PgError::Timeout(patience))?
            .map_err(PgError::from)?;
        let sql: String = self
            .channels
            .iter()
            .map(|c| format!("LISTEN {};", quote_ident(c)))
            .collect();
        let rows = drive(
            &mut conn,
            self.query_timeout,
            client.query(catalog::TRIGGERED_PRIMARY_KEYS, &[]),
        )
        .await
        .map_err(|e| e.context("reading primary keys"))?;
        // LISTEN last: from here on, events are heard.
        drive(&mut conn, self.query_timeout, client.batch_execute(&sql))
            .await
            .map_err(|e| e.context("LISTEN failed"))?;
        let mut primary_keys = KeyColumns::new();
        for row in &rows {
            let columns: Vec<String> = row.get(2);
            primary_keys
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1), Arc::from(columns));
        }
        Ok(Session {
            client,
            conn,
            primary_keys,
        })
    }
    /// Reports leftover oversized payloads, unless PostgreSQL does not
    /// answer in time: the listener must get back to listening.
    async fn leftovers(&mut self) {
        let timeout = self.query_timeout;
        if tokio::time::timeout(timeout, self.report_leftovers())
            .await
            .is_err()
        {
            self.fetcher = None;
            debug!(
                timeout_ms = timeout.as_millis() as u64,
                "no answer about leftover oversized payloads"
            );
        }
    }

    /// Handles messages until shutdown (`None`) or until the connection is
    /// lost (`Some(reason)`): it closed, failed, or left a heartbeat
    /// unanswered for `query_timeout`.
    async fn pump(
        &mut self,
        session: &mut Session,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let Session { client, conn, .. } = session;
        let mut heartbeat: Option<Heartbeat<'_>> = None;
        let mut due = Instant::now() + self.heartbeat_interval;
        loop {
            let message = tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                message = poll_fn(|cx| conn.poll_message(cx)) => message,
                answer = async { heartbeat.as_mut().expect("checked").await }, if heartbeat.is_some() => {
                    heartbeat = None;
                    if let Err(e) = answer {
                        return Some(format!("the heartbeat failed: {}", describe(&e)));
                    }
                    due = Instant::now() + self.heartbeat_interval;
                    continue;
                }
                () = tokio::time::sleep_until(due) => {
                    if heartbeat.is_some() {
                        return Some(format!(
                            "no answer to the heartbeat in {} ms",
                            self.query_timeout.as_millis()
                        ));
                    }
                    heartbeat = Some(client.simple_query("SELECT 1").boxed());
                    due = Instant::now() + self.query_timeout;
                    continue;
                }
            };
            match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    self.handle(n.channel(), n.payload()).await
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    debug!(message = notice.message(), "notice from PostgreSQL");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(describe(&e)),
                None => return Some("the server closed the connection".into()),
            }
            // A message shows the connection alive, and the heartbeat's
            // answer may queue behind the notifications; time spent handling
            // (waiting for a full sink queue) is not the server's delay.
            due = Instant::now()
                + if heartbeat.is_some() {
                    self.query_timeout
                } else {
                    self.heartbeat_interval
                };
        }
    }

    /// How long opening a connection may take: the DSN's `connect_timeout`
    /// covers only the TCP connect, not the server's answer.
    fn connect_patience(&self) -> Duration {
        let connect = self.pg.config().get_connect_timeout().copied();
        connect.unwrap_or(Duration::from_secs(10)) + self.query_timeout
    }

    /// Opens a new session, backing off between attempts; `quick_losses`
    /// counts the sessions in a row that were lost soon after they opened,
    /// so a session that dies as it starts is not opened again at once.
    async fn reconnect(&self, shutdown: &CancellationToken, quick_losses: u32) -> Option<Session> {
        reconnect(
            shutdown,
            quick_losses,
            self.max_backoff,
            "PostgreSQL",
            &self.stats.link,
            || self.open(),
        )
        .await
    }

    fn use_keys(&mut self, primary_keys: KeyColumns) {
        self.keys = primary_keys;
        for (schema, tables) in &self.configured_keys {
            let known = self.keys.entry(schema.clone()).or_default();
            known.extend(tables.iter().map(|(t, k)| (t.clone(), k.clone())));
        }
    }

    /// An event's schema and table, owned, and its row key when the
    /// table's key is known.
    fn owned_fields(
        &self,
        schema: Cow<'_, str>,
        table: Cow<'_, str>,
        data: Option<&RawValue>,
    ) -> (String, String, Option<Bytes>) {
        let key = data.and_then(|data| {
            let columns = self.keys.get(&*schema)?.get(&*table)?;
            payload::row_key(data, columns)
        });
        (schema.into_owned(), table.into_owned(), key)
    }

    async fn handle(&mut self, channel: &str, text: &str) {
        match payload::parse(text) {
            Ok(Notification::Event {
                schema,
                table,
                op,
                data,
            }) => {
                let (schema, table, key) = self.owned_fields(schema, table, data);
                let payload = Bytes::copy_from_slice(text.as_bytes());
                self.dispatch(channel, schema, table, op, payload, key)
                    .await;
            }
            Ok(Notification::Reference(reference)) => {
                self.handle_oversized(channel, reference).await
            }
            Err(error) => self.skip(channel, text, &error),
        }
    }

    fn skip(&self, channel: &str, text: &str, error: &str) {
        self.stats.invalid.incr();
        warn!(channel, error, payload = %crate::observe::logging::truncate(text, LOGGED_PAYLOAD_BYTES),
              "skipping a notification that is not a skor event");
    }

    async fn handle_oversized(&mut self, channel: &str, reference: Reference<'_>) {
        let id = reference.id;
        if reference.channel != channel {
            // The trigger names the channel it notified: this reference was
            // forged to move another channel's payload to this one.
            self.skip(
                channel,
                &format!("{{\"skor_ref\":{id},\"channel\":{:?}}}", reference.channel),
                "a reference to another channel's payload",
            );
            return;
        }
        let text = match self.fetch_oversized(&reference).await {
            Ok(Fetched::Payload(text)) => text,
            Ok(Fetched::Missing) => {
                self.skip(
                    channel,
                    &format!("{{\"skor_ref\":{id}}}"),
                    "no such oversized payload with this channel and token: delivered already, or forged",
                );
                return;
            }
            Ok(Fetched::TooLarge(bytes)) => {
                self.stats.lost.incr();
                error!(channel, id, bytes, max_payload_bytes = self.max_payload_bytes,
                       "oversized payload larger than source.max_payload_bytes: not delivered, it stays in \
                        skor.oversized_payload; raise the limit and run `skor oversized deliver`");
                return;
            }
            Err(error) => {
                self.stats.lost.incr();
                error!(channel, id, %error,
                       "cannot fetch an oversized payload: not delivered, it stays in skor.oversized_payload; \
                        `skor oversized deliver` sends it again");
                return;
            }
        };
        match payload::parse(&text) {
            Ok(Notification::Event {
                schema,
                table,
                op,
                data,
            }) => {
                let (schema, table, key) = self.owned_fields(schema, table, data);
                self.dispatch(channel, schema, table, op, Bytes::from(text), key)
                    .await;
            }
            Ok(Notification::Reference(_)) => {
                self.skip(channel, &text, "a reference to a reference")
            }
            Err(error) => self.skip(channel, &text, &error),
        }
    }

    /// Takes an oversized payload out of its table if its channel and
    /// token match and it is within the size limit, reconnecting once if
    /// the fetching connection has gone.
    async fn fetch_oversized(&mut self, reference: &Reference<'_>) -> Result<Fetched, PgError> {
        // The second subquery sees the table as it was before the DELETE,
        // so it tells a payload over the limit from one that is not there.
        const SQL: &str = "\
            WITH taken AS (DELETE FROM skor.oversized_payload \
                            WHERE id = $1 AND channel = $2 AND token = $3 AND octet_length(payload) <= $4 \
                        RETURNING payload) \
            SELECT (SELECT payload FROM taken), \
                   (SELECT octet_length(payload) FROM skor.oversized_payload \
                     WHERE id = $1 AND channel = $2 AND token = $3)";
        let limit = i32::try_from(self.max_payload_bytes).unwrap_or(i32::MAX);
        let mut last_error = PgError::Closed;
        let timeout = self.query_timeout;
        for _ in 0..2 {
            let client = match self.fetcher().await {
                Ok(client) => client,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                &reference.id,
                &&*reference.channel,
                &&*reference.token,
                &limit,
            ];
            // A server that does not answer must not stop the listener.
            let Ok(fetched) = tokio::time::timeout(timeout, client.query_one(SQL, &params)).await
            else {
                self.fetcher = None;
                last_error = PgError::Timeout(timeout);
                break;
            };
            match fetched {
                Ok(row) => {
                    return Ok(match (row.get(0), row.get::<_, Option<i32>>(1)) {
                        (Some(text), _) => Fetched::Payload(text),
                        (None, Some(bytes)) => Fetched::TooLarge(bytes as u64),
                        (None, None) => Fetched::Missing,
                    })
                }
                Err(e) => {
                    let closed = client.is_closed();
                    last_error = e.into();
                    if closed {
                        self.fetcher = None;
                    } else {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    async fn fetcher(&mut self) -> Result<&Client, PgError> {
        if self.fetcher.as_ref().is_none_or(Client::is_closed) {
            let pg = self.pg.named("skor-fetch");
            let patience = self.connect_patience();
            let (client, conn) = tokio::time::timeout(patience, pg.connect())
                .await
                .map_err(|_| PgError::Timeout(patience))??;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %describe(&e), "fetching connection closed");
                }
            });
            self.fetcher = Some(client);
        }
        Ok(self.fetcher.as_ref().expect("set above"))
    }

    /// Warns about oversized payloads whose notification nobody received.
    async fn report_leftovers(&mut self) {
        const SQL: &str = "SELECT count(*), coalesce(sum(octet_length(payload)), 0)::int8 \
                             FROM skor.oversized_payload WHERE created_at < now() - interval '1 minute'";
        let Ok(client) = self.fetcher().await else {
            return;
        };
        // The table exists only once `skor install` ran; without it there is
        // nothing to report.
        if let Ok(row) = client.query_one(SQL, &[]).await {
            let (count, bytes): (i64, i64) = (row.get(0), row.get(1));
            if count > 0 {
                warn!(
                    count,
                    bytes,
                    "oversized payloads of events committed while skor was not listening wait in \
                     skor.oversized_payload: `skor oversized list` shows them, `skor oversized deliver` \
                     sends them to this daemon, `skor oversized drop` deletes them"
                );
            }
        }
    }

    async fn dispatch(
        &mut self,
        channel: &str,
        schema: String,
        table: String,
        op: Op,
        payload: Bytes,
        key: Option<Bytes>,
    ) {
        let incoming = Incoming {
            channel,
            schema,
            table,
            op,
            payload,
            key,
            id: None,
            commit: None,
        };
        if let Some(event) = self.fanout.route(incoming) {
            self.fanout.push(&event).await;
        }
    }
}

#[async_trait::async_trait]
impl Sessions for Listener {
    type Session = Session;
    const NAME: &'static str = "notify";

    /// Routes notifications until `shutdown`, reconnecting whenever the
    /// connection is lost. Dropping the listener closes the sink queues.
    async fn run(mut self, mut session: Session, shutdown: CancellationToken) {
        self.fanout.stop_waiting_on(&shutdown);
        let stop_watch = shutdown.child_token();
        let _stop_watch_on_return = stop_watch.clone().drop_guard();
        tokio::spawn(shed::watch(
            self.pg.named("skor-watch"),
            Arc::clone(&self.shedding),
            self.shed_threshold,
            self.query_timeout,
            stop_watch,
        ));
        self.stats.link.set(true);
        self.leftovers().await;
        let mut quick_losses = 0u32;
        loop {
            self.use_keys(std::mem::take(&mut session.primary_keys));
            let opened = Instant::now();
            let Some(reason) = self.pump(&mut session, &shutdown).await else {
                info!("stopped listening");
                return;
            };
            self.stats
                .link
                .failed(format_args!("connection lost: {reason}"));
            warn!(error = %reason, "lost the connection to PostgreSQL, reconnecting");
            // Closed now, so the server ends a session that could still
            // hold up its notification queue.
            drop(session);
            let down_since = Instant::now();
            quick_losses = if opened.elapsed() < STABLE_SESSION {
                quick_losses.saturating_add(1)
            } else {
                0
            };
            let Some(next) = self.reconnect(&shutdown, quick_losses).await else {
                info!("stopped reconnecting: shutting down");
                return;
            };
            session = next;
            self.stats.link.set(true);
            self.stats.link.reconnects.incr();
            warn!(
                disconnected_ms = down_since.elapsed().as_millis() as u64,
                "reconnected and listening again; events committed while disconnected were not captured"
            );
            self.leftovers().await;
        }
    }
}
