//! The event log's SQL: claiming, finishing, retrying and dead-lettering
//! events, and the advisory locks that give one daemon a key partition.

use std::time::Duration;

use futures_util::future::poll_fn;
use skor_sink_api::Op;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};
use tracing::debug;

use crate::postgres::Postgres;
use crate::source::describe;

/// Key partitions: the trigger files each event under `hashtext(key) & 63`.
pub const PARTITIONS: i16 = 64;
/// The channel the durable trigger notifies, with an empty payload.
pub const WAKE_CHANNEL: &str = "skor_event_log";
/// Advisory lock class of key partitions ("skor").
const PARTITION_LOCK: i32 = 0x736b_6f72;
/// Advisory lock class of live daemons, one lock each.
const MEMBER_LOCK: i32 = 0x736b_6f73;

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
    /// Sinks that confirmed it before it was dead-lettered and replayed.
    pub done_sinks: Vec<String>,
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

/// Why a statement on the event log failed.
pub type StoreResult<T> = Result<T, String>;

/// One connection to the event log, holding this daemon's locks.
pub struct Store {
    client: Client,
    member: i32,
}

impl Store {
    /// Connects, LISTENs for wake-ups and joins the daemons sharing the
    /// log. The receiver gets a message per wake-up, and closes when the
    /// connection is lost.
    pub async fn connect(pg: &Postgres) -> StoreResult<(Self, mpsc::Receiver<()>)> {
        let pg = pg.named("skor-durable");
        let (client, mut conn) = pg.connect().await.map_err(|e| e.to_string())?;
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
        let store = Self { client, member: 0 };
        let exists: bool = store
            .client
            .query_one("SELECT to_regclass('skor.event_log') IS NOT NULL", &[])
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        if !exists {
            return Err("skor.event_log does not exist: run `skor install` first".into());
        }
        // A daemon that vanishes without closing its connection keeps its
        // partitions until the server notices; keepalives bound that wait.
        store
            .client
            .batch_execute(&format!(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                 SET tcp_keepalives_count = 3; LISTEN {WAKE_CHANNEL};"
            ))
            .await
            .map_err(|e| describe(&e))?;
        // The backend's pid names this daemon among the live ones.
        let member: i32 = store
            .client
            .query_one(
                &format!(
                    "SELECT pg_backend_pid(), pg_advisory_lock({MEMBER_LOCK}, pg_backend_pid())"
                ),
                &[],
            )
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        Ok((Self { member, ..store }, wake_rx))
    }

    /// This daemon's id among those sharing the log.
    pub fn member(&self) -> i32 {
        self.member
    }

    /// How many daemons share this database's event log.
    pub async fn members(&self) -> StoreResult<i64> {
        let sql = format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid = {MEMBER_LOCK}::oid AND objsubid = 2"
        );
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(|e| describe(&e))?;
        Ok(row.get(0))
    }

    /// Locks up to `need` of `candidates`, in their order, and returns
    /// those it got; others belong to other daemons.
    pub async fn lock_partitions(&self, candidates: &[i16], need: i64) -> StoreResult<Vec<i16>> {
        // No ORDER BY: the scan stops at the LIMIT, so no extra lock is taken.
        let sql = format!(
            "SELECT p FROM unnest($1::int2[]) AS p \
              WHERE pg_try_advisory_lock({PARTITION_LOCK}, p) LIMIT $2"
        );
        let rows = self
            .client
            .query(&sql, &[&candidates, &need])
            .await
            .map_err(|e| describe(&e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Hands a partition back to the other daemons.
    pub async fn unlock_partition(&self, part: i16) -> StoreResult<()> {
        let sql = format!("SELECT pg_advisory_unlock({PARTITION_LOCK}, $1::int2)");
        self.client
            .query_one(&sql, &[&part])
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }

    /// The oldest pending events of `parts`, in id order, leaving out
    /// `claimed` (this daemon's unfinished events).
    pub async fn claim(
        &self,
        parts: &[i16],
        claimed: &[i64],
        limit: i64,
    ) -> StoreResult<Vec<Claimed>> {
        const SQL: &str = "\
            SELECT id, channel, schema_name, table_name, op, row_key, part, payload, attempts, \
                   (extract(epoch FROM next_attempt_at - clock_timestamp()) * 1000)::int8, done_sinks \
              FROM skor.event_log \
             WHERE state = 'pending' AND part = ANY($1) AND id <> ALL($2) \
             ORDER BY id LIMIT $3";
        let rows = self
            .client
            .query(SQL, &[&parts, &claimed, &limit])
            .await
            .map_err(|e| describe(&e))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let op: String = row.get(4);
            let Some(op) = Op::parse(&op) else {
                return Err(format!(
                    "event {} has an unknown op {op:?}",
                    row.get::<_, i64>(0)
                ));
            };
            events.push(Claimed {
                id: row.get(0),
                channel: row.get(1),
                schema: row.get(2),
                table: row.get(3),
                op,
                key: row.get(5),
                part: row.get(6),
                payload: row.get(7),
                attempts: row.get(8),
                due_in_ms: row.get(9),
                done_sinks: row.get(10),
            });
        }
        Ok(events)
    }

    /// Deletes delivered events, or marks them delivered when they are kept
    /// for a retention period.
    pub async fn finish(&self, ids: &[i64], keep: bool) -> StoreResult<()> {
        let sql = if keep {
            "UPDATE skor.event_log SET state = 'delivered', delivered_at = now() WHERE id = ANY($1)"
        } else {
            "DELETE FROM skor.event_log WHERE id = ANY($1)"
        };
        self.client
            .execute(sql, &[&ids])
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }

    /// Records a failed attempt and when the next one is due.
    pub async fn retrying(
        &self,
        id: i64,
        attempts: u32,
        delay: Duration,
        error: &str,
    ) -> StoreResult<()> {
        const SQL: &str = "UPDATE skor.event_log SET attempts = $2, last_error = $4, \
                           next_attempt_at = now() + $3 * interval '1 millisecond' WHERE id = $1";
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let delay = delay.as_millis() as f64;
        self.client
            .execute(SQL, &[&id, &attempts, &delay, &error])
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }

    /// Moves an event to the dead letters, remembering the sinks that have
    /// it already.
    pub async fn dead(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        done_sinks: &[String],
    ) -> StoreResult<()> {
        const SQL: &str = "UPDATE skor.event_log SET state = 'dead', attempts = $2, \
                           last_error = $3, done_sinks = $4 WHERE id = $1";
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        self.client
            .execute(SQL, &[&id, &attempts, &error, &done_sinks])
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }

    /// Removes up to `batch` delivered events older than `retention`;
    /// returns how many went.
    pub async fn clean(&self, retention: Duration, batch: i64) -> StoreResult<u64> {
        const SQL: &str = "DELETE FROM skor.event_log WHERE id IN ( \
                             SELECT id FROM skor.event_log WHERE state = 'delivered' \
                                AND delivered_at < now() - $1 * interval '1 millisecond' LIMIT $2)";
        let retention = retention.as_millis() as f64;
        self.client
            .execute(SQL, &[&retention, &batch])
            .await
            .map_err(|e| describe(&e))
    }

    /// How many events wait, and for how long the oldest has.
    pub async fn backlog(&self) -> StoreResult<Backlog> {
        backlog(&self.client).await
    }
}

/// How many events wait in the log `client` reaches, and for how long the
/// oldest has.
pub async fn backlog(client: &Client) -> StoreResult<Backlog> {
    const SQL: &str = "\
        SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead'), \
               coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0)::float8 \
          FROM skor.event_log WHERE state <> 'delivered'";
    let row = client.query_one(SQL, &[]).await.map_err(|e| describe(&e))?;
    Ok(Backlog {
        pending: row.get(0),
        dead: row.get(1),
        oldest_s: row.get(2),
    })
}
