//! `skor dead-letters list|replay`: durable events that exhausted the retry
//! policy or met a permanent error wait in `skor.event_log` with their
//! last error, until someone queues them again.

use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::postgres::event_log::WAKE_CHANNEL;
use crate::postgres::PgError;

/// Why an action on dead letters failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// PostgreSQL refused or failed.
    #[error(transparent)]
    Db(#[from] PgError),
    /// Some of the ids given name no dead letter.
    #[error("no dead letter has id {0:?}; nothing was replayed (see `skor dead-letters list`)")]
    NotFound(Vec<i64>),
}

impl From<tokio_postgres::Error> for DeadLetterError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Db(error.into())
    }
}

/// Most payload bytes `list` prints per event.
const LISTED_PAYLOAD_BYTES: usize = 200;

/// One dead-lettered event, as `list` shows it.
#[derive(Debug)]
pub struct DeadLetter {
    /// Its id in the event log.
    pub id: i64,
    /// When its change committed, RFC 3339.
    pub created_at: String,
    /// `schema.table`.
    pub table: String,
    /// The operation.
    pub op: String,
    /// Attempts made.
    pub attempts: i32,
    /// The error that ended them, with the sink's name.
    pub last_error: String,
    /// The payload.
    pub payload: String,
}

/// The dead letters, oldest first, at most `limit`.
pub async fn list(client: &Client, limit: i64) -> Result<Vec<DeadLetter>, DeadLetterError> {
    const SQL: &str = "\
        SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
               schema_name || '.' || table_name, op, attempts, coalesce(last_error, ''), payload \
          FROM skor.event_log WHERE state = 'dead' ORDER BY id LIMIT $1";
    let rows = client.query(SQL, &[&limit]).await?;
    Ok(rows
        .iter()
        .map(|row| DeadLetter {
            id: row.get(0),
            created_at: row.get(1),
            table: row.get(2),
            op: row.get(3),
            attempts: row.get(4),
            last_error: row.get(5),
            payload: row.get(6),
        })
        .collect())
}

/// `letters` as `skor dead-letters list` prints them.
pub fn render(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = String::new();
    for letter in letters {
        let _ = writeln!(
            out,
            "{id}\t{at}\t{table}\t{op}\tattempts={attempts}\terror={error}\n\t{payload}",
            id = letter.id,
            at = letter.created_at,
            table = letter.table,
            op = letter.op,
            attempts = letter.attempts,
            error = letter.last_error,
            payload = crate::observe::logging::truncate(&letter.payload, LISTED_PAYLOAD_BYTES),
        );
    }
    out
}

/// Which dead letters to queue again.
#[derive(Debug)]
pub enum Replay {
    /// These ids.
    Ids(Vec<i64>),
    /// Every one.
    All,
}

/// Queues dead letters again with a fresh retry budget and wakes the
/// daemons; returns how many. Fails, changing nothing, if an id is not a
/// dead letter.
pub async fn replay(client: &mut Client, which: &Replay) -> Result<u64, DeadLetterError> {
    const SQL: &str = "\
        UPDATE skor.event_log SET state = 'pending', attempts = 0, next_attempt_at = now() \
         WHERE state = 'dead' AND ($1 OR id = ANY($2)) RETURNING id";
    let (all, ids) = match which {
        Replay::All => (true, Vec::new()),
        Replay::Ids(ids) => (false, ids.clone()),
    };
    let transaction = client.transaction().await?;
    let rows = transaction.query(SQL, &[&all, &ids]).await?;
    let replayed: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !replayed.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(DeadLetterError::NotFound(missing));
    }
    transaction
        .batch_execute(&format!("NOTIFY {WAKE_CHANNEL}"))
        .await?;
    transaction.commit().await?;
    Ok(replayed.len() as u64)
}
