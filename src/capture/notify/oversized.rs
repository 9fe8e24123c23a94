//! `skor oversized list|deliver|drop`: notify-mode payloads too large for
//! NOTIFY wait in `skor.oversized_payload` until the daemon fetches them;
//! those whose notification nobody heard (skor was down) stay there until
//! someone sends them again or drops them.

use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::postgres::PgError;

/// Why an action on oversized payloads failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum OversizedError {
    /// PostgreSQL refused or failed.
    #[error(transparent)]
    Db(#[from] PgError),
    /// Some of the ids given name no oversized payload.
    #[error("no oversized payload has id {0:?}; nothing was done (see `skor oversized list`)")]
    NotFound(Vec<i64>),
}

impl From<tokio_postgres::Error> for OversizedError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Db(error.into())
    }
}

/// One waiting payload, as `list` shows it.
#[derive(Debug)]
pub struct Waiting {
    /// Its id.
    pub id: i64,
    /// When its change committed, RFC 3339.
    pub created_at: String,
    /// The channel its table notifies.
    pub channel: String,
    /// Its size in bytes.
    pub bytes: i32,
}

/// The waiting payloads, oldest first.
pub async fn list(client: &Client) -> Result<Vec<Waiting>, OversizedError> {
    const SQL: &str = "\
        SELECT id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
               channel, octet_length(payload) \
          FROM skor.oversized_payload ORDER BY id";
    let rows = client.query(SQL, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| Waiting {
            id: row.get(0),
            created_at: row.get(1),
            channel: row.get(2),
            bytes: row.get(3),
        })
        .collect())
}

/// `waiting` as `skor oversized list` prints it.
pub fn render(waiting: &[Waiting]) -> String {
    if waiting.is_empty() {
        return "no oversized payloads wait\n".into();
    }
    let mut out = String::new();
    for w in waiting {
        let _ = writeln!(
            out,
            "{}\t{}\tchannel={}\tbytes={}",
            w.id, w.created_at, w.channel, w.bytes
        );
    }
    out
}

/// Which payloads an action takes.
#[derive(Debug)]
pub enum Which {
    /// These ids.
    Ids(Vec<i64>),
    /// Every one.
    All,
}

/// Notifies each chosen payload's reference again, on its channel, so a
/// running daemon fetches and delivers it; returns how many. Changes
/// nothing if an id is not waiting.
pub async fn deliver(client: &mut Client, which: &Which) -> Result<u64, OversizedError> {
    const SQL: &str = "\
        SELECT id, pg_notify(channel, json_build_object('skor_ref', id, 'channel', channel, \
                                                        'token', token)::text) \
          FROM skor.oversized_payload WHERE $1 OR id = ANY($2)";
    act(client, which, SQL).await
}

/// Deletes the chosen payloads: their events are given up; returns how many.
pub async fn drop(client: &mut Client, which: &Which) -> Result<u64, OversizedError> {
    const SQL: &str = "DELETE FROM skor.oversized_payload WHERE $1 OR id = ANY($2) RETURNING id";
    act(client, which, SQL).await
}

async fn act(client: &mut Client, which: &Which, sql: &str) -> Result<u64, OversizedError> {
    let (all, ids) = match which {
        Which::All => (true, Vec::new()),
        Which::Ids(ids) => (false, ids.clone()),
    };
    let transaction = client.transaction().await?;
    let rows = transaction.query(sql, &[&all, &ids]).await?;
    let found: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    if !missing.is_empty() {
        return Err(OversizedError::NotFound(missing));
    }
    transaction.commit().await?;
    Ok(found.len() as u64)
}
