//! Every statement on `skor.event_log` and its leases, written once:
//! claiming, finishing, retrying and dead-lettering events, the leases
//! (`skor.daemon`, `skor.partition_lease`) that give one daemon session a
//! key partition, the partition an event is filed under and the wake-up
//! notification. Durable mode reads the log; wal mode writes its dead
//! letters to it; backfill and `skor dead-letters` write to it too.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::poll_fn;
use serde::de::IgnoredAny;
use skor_sink_api::Op;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};
use tracing::{debug, warn};

use crate::postgres::{catalog, describe, PgError, Postgres};

/// Key partitions: the trigger files each event under `hashtext(key) & 63`.
pub const PARTITIONS: i16 = 64;
/// The channel the durable trigger notifies, with an empty payload.
pub const WAKE_CHANNEL: &str = "skor_event_log";
/// Wakes every daemon reading the log, as the durable trigger does.
pub const WAKE_SQL: &str = "SELECT pg_catalog.pg_notify('skor_event_log', '')";

/// The partition an event of row key `key` (a SQL expression, NULL for a
/// keyless row) in `schema`.`table` is filed under: the same expression
/// as `skor.capture()` in sql/install.sql, so a row's events from the
/// trigger, a backfill and wal mode's dead letters share one order.
pub fn partition_sql(key: &str, schema: &str, table: &str) -> String {
    format!(
        "pg_catalog.hashtext(coalesce({key}, {schema} OPERATOR(pg_catalog.||) '.' \
         OPERATOR(pg_catalog.||) {table})) OPERATOR(pg_catalog.&) {}",
        PARTITIONS - 1
    )
}

/// A dead letter written straight to the log (wal mode: the event was
/// never in it).
#[derive(Debug)]
pub struct DeadLetter<'a> {
    /// The channel of its table.
    pub channel: &'a str,
    /// Schema of the changed table.
    pub schema: &'a str,
    /// Name of the changed table.
    pub table: &'a str,
    /// INSERT, UPDATE, DELETE or READ.
    pub op: &'a str,
    /// The row key, if the row has one.
    pub key: Option<String>,
    /// The payload as the sinks got it.
    pub payload: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub error: &'a str,
    /// The sinks that delivered it.
    pub done_sinks: Vec<&'a str>,
}

/// Writes `letter` to the log as a dead letter.
pub async fn insert_dead_letter(
    client: &impl tokio_postgres::GenericClient,
    letter: &DeadLetter<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO skor.event_log (channel, schema_name, table_name, op, row_key, \
                                     part, payload, state, attempts, last_error, done_sinks) \
         VALUES ($1, $2, $3, $4, $5, {}, $6, 'dead', $7, $8, $9)",
        partition_sql("$5", "$2", "$3")
    );
    client
        .execute(
            &sql,
            &[
                &letter.channel,
                &letter.schema,
                &letter.table,
                &letter.op,
                &letter.key,
                &letter.payload,
                &letter.attempts,
                &letter.error,
                &letter.done_sinks,
            ],
        )
        .await
}
/// Daemon rows expired this long are deleted by whichever daemon looks.
const FORGET_DAEMONS_AFTER: &str = "10 minutes";

/// Why a statement on the event log failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server refused or failed one statement (it sent a SQLSTATE) and
    /// the connection is still open: back off and try again on it.
    #[error("{0}")]
    Statement(PgError),
    /// The connection is gone (or the server is shutting it down):
    /// reconnect.
    #[error("{0}")]
    Lost(PgError),
    /// `skor install` has not created the event log.
    #[error("skor.event_log or skor.partition_lease does not exist: run `skor install` first")]
    NotInstalled,
}

impl StoreError {
    /// Sorts `error`, which `client` returned, into a failed statement or a
    /// lost connection.
    fn of(client: &Client, error: tokio_postgres::Error) -> Self {
        let code = error.code().map(|c| c.code());
        // 08: connection exceptions; 57P01-57P03: the server ends the
        // session (pg_terminate_backend, shutdown, recovery).
        let ends_session = code.is_some_and(|c| c.starts_with("08") || c.starts_with("57P0"));
        if client.is_closed() || code.is_none() || ends_session {
            Self::Lost(error.into())
        } else {
            Self::Statement(error.into())
        }
    }
}

/// The result of a statement on the event log.
pub type StoreResult<T> = Result<T, StoreError>;

/// An event claimed from the log.
#[derive(Debug)]
pub struct Claimed {
    /// Its stable id.
    pub id: i64,
    /// The channel its table is configured with.
    pub channel: String,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// What happened.
    pub op: Op,
    /// The row key, `{"col":value}`, when the table has one.
    pub key: Option<String>,
    /// Its key partition.
    pub part: i16,
    /// The payload, as notify mode would send it.
    pub payload: String,
    /// Attempts already made.
    pub attempts: i32,
    /// Milliseconds until the next attempt is due; 0 or less when due.
    pub due_in_ms: i64,
    /// Sinks that need nothing more: they confirmed it (or, for an event
    /// parked for a full sink, are not routed to it).
    pub done_sinks: Vec<String>,
}

/// A row of the log skor cannot deliver as an event.
#[derive(Debug)]
pub struct Unparseable {
    /// Its id.
    pub id: i64,
    /// Its key partition.
    pub part: i16,
    /// What is wrong with it.
    pub reason: String,
}

/// What is waiting in the log.
#[derive(Debug)]
pub struct Backlog {
    /// Events not yet delivered.
    pub pending: i64,
    /// Events in the dead letters.
    pub dead: i64,
    /// Age of the oldest pending event, in seconds.
    pub oldest_s: f64,
}

/// One connection to the event log: one daemon session, identified by a
/// random id in `skor.daemon`, holding partition leases.
pub struct Store {
    client: Client,
    session: String,
    ttl_ms: f64,
}

/// `true` for a JSON object, in a text that must hold one.
fn is_object(text: &str) -> bool {
    serde_json::from_str::<BTreeMap<String, IgnoredAny>>(text).is_ok()
}

/// Why a claimed row cannot be delivered, if it cannot.
fn problem(op: &str, key: Option<&str>, payload: &str) -> Option<String> {
    if Op::parse(op).is_none() {
        return Some(format!("unparseable event: unknown op {op:?}"));
    }
    if key.is_some_and(|key| !is_object(key)) {
        return Some("unparseable event: row_key is not a JSON object".into());
    }
    match serde_json::from_str::<BTreeMap<String, IgnoredAny>>(payload) {
        Ok(fields)
            if ["table", "schema", "op"]
                .iter()
                .all(|f| fields.contains_key(*f)) =>
        {
            None
        }
        Ok(_) => {
            Some("unparseable event: payload is a JSON object without table, schema and op".into())
        }
        Err(e) => Some(format!(
            "unparseable event: payload is not a JSON object: {e}"
        )),
    }
}

impl Store {
    /// Connects, LISTENs for wake-ups and registers a new daemon session
    /// whose leases last `ttl`. The receiver gets a message per wake-up, and
    /// closes when the connection is lost.
    pub async fn connect(pg: &Postgres, ttl: Duration) -> StoreResult<(Self, mpsc::Receiver<()>)> {
        let mut pg = pg.named("skor-durable");
        // A dead peer must be noticed before the lease runs out, not after
        // the kernel's two hours: keepalives for an idle connection, a user
        // timeout for one with unacknowledged data.
        pg.config_mut()
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(ttl / 2);
        let (client, mut conn) = pg.connect().await.map_err(|e| StoreError::Lost(e.into()))?;
        let (wake_tx, wake_rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                match poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        let _ = wake_tx.try_send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        debug!(error = %describe(&e), "event log connection closed");
                        return;
                    }
                    None => return,
                }
            }
        });
        let ttl_ms = ttl.as_millis() as f64;
        let mut store = Self {
            client,
            session: String::new(),
            ttl_ms,
        };
        let installed: bool = store
            .client
            .query_one(
                "SELECT to_regclass('skor.event_log') IS NOT NULL \
                    AND to_regclass('skor.partition_lease') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| store.error(e))?
            .get(0);
        if !installed {
            return Err(StoreError::NotInstalled);
        }
        // No statement may outlive a lease: one that hangs is cancelled and
        // reported instead of holding the session.
        store
            .client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET tcp_keepalives_idle = 5; \
                 SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3; \
                 LISTEN {WAKE_CHANNEL};",
                ttl.as_millis()
            ))
            .await
            .map_err(|e| store.error(e))?;
        let session: String = store
            .client
            .query_one(
                "INSERT INTO skor.daemon (id, expires_at, backend_pid, application_name) \
                 VALUES (pg_catalog.gen_random_uuid(), now() + $1 * interval '1 millisecond', \
                         pg_backend_pid(), current_setting('application_name')) \
                 RETURNING id::text",
                &[&ttl_ms],
            )
            .await
            .map_err(|e| store.error(e))?
            .get(0);
        store.session = session;
        Ok((store, wake_rx))
    }

    fn error(&self, error: tokio_postgres::Error) -> StoreError {
        StoreError::of(&self.client, error)
    }

    /// This session's id in `skor.daemon`.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The durable tables whose statement trigger misses rows now (see
    /// [`catalog::STALE_STATEMENT_TRIGGERS`]).
    pub async fn stale_statement_triggers(&self) -> StoreResult<Vec<String>> {
        let rows = self
            .client
            .query(catalog::STALE_STATEMENT_TRIGGERS, &[])
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// How many live daemon sessions share this database's event log
    /// (forgetting those long expired).
    pub async fn members(&self) -> StoreResult<i64> {
        let sql = format!(
            "WITH gone AS (DELETE FROM skor.daemon \
                            WHERE expires_at < now() - interval '{FORGET_DAEMONS_AFTER}') \
             SELECT count(*) FROM skor.daemon WHERE expires_at > now()"
        );
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(|e| self.error(e))?;
        Ok(row.get(0))
    }

    /// Extends this session's heartbeat and every lease it still holds
    /// unexpired; returns the partitions renewed. A lease not among them
    /// has expired by the database's clock and may belong to another
    /// session already.
    pub async fn renew(&self) -> StoreResult<Vec<i16>> {
        const SQL: &str = "\
            WITH me AS (INSERT INTO skor.daemon (id, expires_at, backend_pid, application_name) \
                        VALUES ($1::text::uuid, now() + $2 * interval '1 millisecond', \
                                pg_backend_pid(), current_setting('application_name')) \
                        ON CONFLICT (id) DO UPDATE \
                           SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at) \
            UPDATE skor.partition_lease SET expires_at = now() + $2 * interval '1 millisecond' \
             WHERE holder = $1::text::uuid AND expires_at > now() RETURNING part";
        let rows = self
            .client
            .query(SQL, &[&self.session, &self.ttl_ms])
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Takes up to `need` of `candidates`, in their order, among those no
    /// session holds (released, or expired by the database's clock), and
    /// returns those it got.
    pub async fn take(&self, candidates: &[i16], need: i64) -> StoreResult<Vec<i16>> {
        const SQL: &str = "\
            WITH free AS (SELECT part FROM skor.partition_lease \
                           WHERE part = ANY($2) AND (holder IS NULL OR expires_at <= now()) \
                           ORDER BY pg_catalog.array_position($2, part) LIMIT $3 FOR UPDATE SKIP LOCKED) \
            UPDATE skor.partition_lease l \
               SET holder = $1::text::uuid, expires_at = now() + $4 * interval '1 millisecond', \
                   taken_at = now() \
              FROM free WHERE l.part = free.part RETURNING l.part";
        let rows = self
            .client
            .query(SQL, &[&self.session, &candidates, &need, &self.ttl_ms])
            .await
            .map_err(|e| self.error(e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Hands a partition back to the other daemons.
    pub async fn release(&self, part: i16) -> StoreResult<()> {
        const SQL: &str =
            "UPDATE skor.partition_lease SET holder = NULL, expires_at = '-infinity' \
                            WHERE part = $2 AND holder = $1::text::uuid";
        self.client
            .execute(SQL, &[&self.session, &part])
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Ends this session: releases its leases and removes its row, so the
    /// other daemons take its partitions at once.
    pub async fn leave(&self) -> StoreResult<()> {
        const SQL: &str = "\
            WITH leases AS (UPDATE skor.partition_lease SET holder = NULL, expires_at = '-infinity' \
                             WHERE holder = $1::text::uuid) \
            DELETE FROM skor.daemon WHERE id = $1::text::uuid";
        self.client
            .execute(SQL, &[&self.session])
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The oldest pending events of `parts` (those of them this session
    /// still leases), in id order: at most `limit`, and no more payload
    /// bytes than `max_bytes` beyond the first. Leaves out `claimed` (this
    /// daemon's unfinished events) and events every sink in `open_sinks`
    /// has done: their only missing sinks are full.
    pub async fn claim(
        &self,
        parts: &[i16],
        claimed: &[i64],
        open_sinks: &[String],
        limit: i64,
        max_bytes: i64,
    ) -> StoreResult<Vec<Result<(Claimed, i64), Unparseable>>> {
        // Sizes first, from the TOAST header without reading the payload;
        // the payloads of the events within the budget after. The leased
        // partitions are an array computed once, so the scan stays the
        // pending index in id order, stopping at the limit.
        const SQL: &str = "\
            WITH next AS (SELECT id, octet_length(payload)::int8 AS size FROM skor.event_log \
                           WHERE state = 'pending' \
                             AND part = ANY(ARRAY(SELECT part FROM skor.partition_lease \
                                  WHERE part = ANY($1) AND holder = $6::text::uuid \
                                    AND expires_at > now())) \
                             AND id <> ALL($2) AND NOT (done_sinks @> $3) \
                           ORDER BY id LIMIT $4), \
                 upto AS (SELECT id, size, (sum(size) OVER (ORDER BY id))::int8 AS bytes, \
                                 row_number() OVER (ORDER BY id) AS n FROM next) \
            SELECT e.id, e.channel, e.schema_name, e.table_name, e.op, e.row_key, e.part, e.payload, \
                   e.attempts, \
                   (extract(epoch FROM e.next_attempt_at - clock_timestamp()) * 1000)::int8, \
                   e.done_sinks, upto.size \
              FROM upto JOIN skor.event_log e ON e.id = upto.id \
             WHERE upto.n = 1 OR upto.bytes <= $5 \
             ORDER BY e.id";
        let rows = self
            .client
            .query(
                SQL,
                &[
                    &parts,
                    &claimed,
                    &open_sinks,
                    &limit,
                    &max_bytes,
                    &self.session,
                ],
            )
            .await
            .map_err(|e| self.error(e))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.get(0);
            let part: i16 = row.get(6);
            let op: String = row.get(4);
            let key: Option<String> = row.get(5);
            let payload: String = row.get(7);
            if let Some(reason) = problem(&op, key.as_deref(), &payload) {
                events.push(Err(Unparseable { id, part, reason }));
                continue;
            }
            let claimed = Claimed {
                id,
                channel: row.get(1),
                schema: row.get(2),
                table: row.get(3),
                op: Op::parse(&op).expect("checked"),
                key,
                part,
                payload,
                attempts: row.get(8),
                due_in_ms: row.get(9),
                done_sinks: row.get(10),
            };
            events.push(Ok((claimed, row.get(11))));
        }
        Ok(events)
    }

    /// Deletes delivered events, or marks them delivered when they are kept
    /// for a retention period. Only pending events: a confirmation by every
    /// sink is true whoever holds the lease by now, so it needs none.
    pub async fn finish(&self, ids: &[i64], keep: bool) -> StoreResult<()> {
        let sql = if keep {
            "UPDATE skor.event_log SET state = 'delivered', delivered_at = now() \
              WHERE id = ANY($1) AND state = 'pending'"
        } else {
            "DELETE FROM skor.event_log WHERE id = ANY($1) AND state = 'pending'"
        };
        let matched = self
            .client
            .execute(sql, &[&ids])
            .await
            .map_err(|e| self.error(e))?;
        if matched < ids.len() as u64 {
            warn!(
                events = ids.len(),
                matched, "finished events no longer pending (dead-lettered or removed meanwhile)"
            );
        }
        Ok(())
    }

    /// Adds sinks to the done sinks of events that stay pending for others:
    /// `done[i]` is a JSON array of names for `ids[i]`.
    pub async fn progress(&self, ids: &[i64], done: &[String]) -> StoreResult<()> {
        const SQL: &str = "\
            UPDATE skor.event_log e \
               SET done_sinks = ARRAY(SELECT DISTINCT s FROM unnest(e.done_sinks || \
                                ARRAY(SELECT json_array_elements_text(u.done::json))) AS s ORDER BY s) \
              FROM unnest($1::int8[], $2::text[]) AS u(id, done) \
             WHERE e.id = u.id AND e.state = 'pending'";
        let matched = self
            .client
            .execute(SQL, &[&ids, &done])
            .await
            .map_err(|e| self.error(e))?;
        if matched < ids.len() as u64 {
            warn!(
                events = ids.len(),
                matched, "sink confirmations of events no longer pending were not recorded"
            );
        }
        Ok(())
    }

    /// Records failed attempts (`id` → attempts, delay, error) and when the
    /// next ones are due, for the events still pending in a partition this
    /// session leases.
    pub async fn retrying(&self, failed: HashMap<i64, (u32, Duration, String)>) -> StoreResult<()> {
        const SQL: &str = "\
            UPDATE skor.event_log e SET attempts = u.attempts, last_error = u.error, \
                   next_attempt_at = now() + u.delay * interval '1 millisecond' \
              FROM unnest($1::int8[], $2::int4[], $3::float8[], $4::text[]) \
                   AS u(id, attempts, delay, error) \
             WHERE e.id = u.id AND e.state = 'pending' AND EXISTS ( \
                   SELECT 1 FROM skor.partition_lease l WHERE l.part = e.part \
                      AND l.holder = $5::text::uuid AND l.expires_at > now())";
        let mut ids = Vec::with_capacity(failed.len());
        let mut attempts = Vec::with_capacity(failed.len());
        let mut delays = Vec::with_capacity(failed.len());
        let mut errors = Vec::with_capacity(failed.len());
        for (id, (tries, delay, error)) in failed {
            ids.push(id);
            attempts.push(i32::try_from(tries).unwrap_or(i32::MAX));
            delays.push(delay.as_millis() as f64);
            errors.push(error);
        }
        let matched = self
            .client
            .execute(SQL, &[&ids, &attempts, &delays, &errors, &self.session])
            .await
            .map_err(|e| self.error(e))?;
        if matched < ids.len() as u64 {
            warn!(
                events = ids.len(),
                matched,
                "failed attempts not recorded: events no longer pending under this daemon's lease"
            );
        }
        Ok(())
    }

    /// Moves an event to the dead letters, remembering the sinks that have
    /// it already, if it is still pending in a partition this session
    /// leases.
    pub async fn dead(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        done_sinks: &[String],
    ) -> StoreResult<()> {
        const SQL: &str = "\
            UPDATE skor.event_log e SET state = 'dead', attempts = $2, last_error = $3, \
                   done_sinks = $4 \
             WHERE id = $1 AND state = 'pending' AND EXISTS ( \
                   SELECT 1 FROM skor.partition_lease l WHERE l.part = e.part \
                      AND l.holder = $5::text::uuid AND l.expires_at > now())";
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let matched = self
            .client
            .execute(SQL, &[&id, &attempts, &error, &done_sinks, &self.session])
            .await
            .map_err(|e| self.error(e))?;
        if matched == 0 {
            warn!(
                id,
                "dead letter not recorded: the event is no longer pending under this daemon's lease"
            );
        }
        Ok(())
    }

    /// Removes up to `batch` delivered events older than `retention`;
    /// returns how many went.
    pub async fn clean(&self, retention: Duration, batch: i64) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM skor.event_log WHERE id IN ( \
                             SELECT id FROM skor.event_log WHERE state = 'delivered' \
                                AND delivered_at < now() - $1 * interval '1 millisecond' \
                              ORDER BY delivered_at LIMIT $2)";
        let retention = retention.as_millis() as f64;
        self.client
            .execute(SQL, &[&retention, &batch])
            .await
            .map_err(|e| self.error(e))
    }

    /// How many events wait, and for how long the oldest has.
    pub async fn backlog(&self) -> StoreResult<Backlog> {
        read_backlog(&self.client).await.map_err(|e| self.error(e))
    }
}

/// How many events wait in the log `client` reaches, and for how long the
/// oldest has.
pub async fn backlog(client: &Client) -> Result<Backlog, PgError> {
    Ok(read_backlog(client).await?)
}

/// The backlog's statement. Each part reads one partial index (`event_log_pending`,
/// `event_log_dead`): the counts can be index-only scans and the oldest
/// pending event is the first entry, so a scrape never scans the log.
async fn read_backlog(client: &Client) -> Result<Backlog, tokio_postgres::Error> {
    const SQL: &str = "\
        SELECT (SELECT count(*) FROM skor.event_log WHERE state = 'pending'), \
               (SELECT count(*) FROM skor.event_log WHERE state = 'dead'), \
               coalesce((SELECT extract(epoch FROM now() - created_at)::float8 \
                           FROM skor.event_log WHERE state = 'pending' ORDER BY id LIMIT 1), 0)";
    let row = client.query_one(SQL, &[]).await?;
    Ok(Backlog {
        pending: row.get(0),
        dead: row.get(1),
        oldest_s: row.get(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_that_are_not_events_are_named() {
        let payload = r#"{"table":"t","schema":"public","op":"INSERT","data":{}}"#;
        assert_eq!(problem("INSERT", Some(r#"{"id":1}"#), payload), None);
        assert_eq!(problem("DELETE", None, payload), None);
        assert_eq!(
            problem("TRUNCATE", None, payload).unwrap(),
            "unparseable event: unknown op \"TRUNCATE\""
        );
        assert!(problem("INSERT", Some("1,2"), payload)
            .unwrap()
            .contains("row_key is not a JSON object"));
        assert!(problem("INSERT", None, "[1]")
            .unwrap()
            .contains("payload is not a JSON object"));
        assert!(problem("INSERT", None, r#"{"data":{}}"#)
            .unwrap()
            .contains("without table, schema and op"));
    }
}
