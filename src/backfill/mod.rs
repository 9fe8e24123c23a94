//! `skor backfill`: sends the rows tables already hold through the same
//! routes and sinks as their changes, as events with `"op" : "READ"`.
//!
//! Each batch is one transaction that reads the next rows in key order
//! (keyset pagination: `ROW(key) > ROW(last key) ORDER BY key LIMIT n`),
//! hands their payloads to the table's own capture path (NOTIFY, the event
//! log, or the publication's `skor.wal_backfill`), and records the last key
//! in `skor.backfill`; so a backfill stopped anyhow resumes after the last
//! batch that committed. The daemon then delivers the events like any
//! other.
//!
//! Ordering against live changes: a batch takes `FOR SHARE` locks on its
//! rows, so a concurrent UPDATE or DELETE of one either committed before
//! the batch read the row (the READ event carries its result) or waits
//! until the batch commits (its event comes after the READ event, in the
//! event log's and the WAL's commit order). Delivery keeps the order of
//! one row's events, so no consumer is left with a stale row.

mod plan;
mod report;

use std::time::SystemTime;

use anyhow::{anyhow, bail, Context};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture;
use crate::config::{Config, TableConfig, TableName};
use crate::postgres::describe;
use plan::{Locking, Plan};
use report::Report;

/// What `skor backfill` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// The `[[table]]`s to backfill; every one when empty.
    pub tables: Vec<String>,
    /// Only rows matching this SQL condition (`--where`).
    pub condition: Option<String>,
    /// Rows per batch.
    pub batch: i64,
    /// Start again from the first row.
    pub restart: bool,
}

/// How a backfill ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every row was sent.
    Done,
    /// Stopped by a signal; the same command resumes it.
    Paused {
        /// The table it stopped in.
        table: String,
        /// Rows of it sent so far.
        sent: i64,
        /// Rows it had when it started.
        total: i64,
    },
}

/// The tables `options` names, from `config`.
fn chosen<'a>(config: &'a Config, options: &Options) -> anyhow::Result<Vec<&'a TableConfig>> {
    if options.tables.is_empty() {
        if config.tables.is_empty() {
            bail!("the config lists no [[table]] to backfill");
        }
        return Ok(config.tables.iter().collect());
    }
    let mut chosen = Vec::new();
    for wanted in &options.tables {
        let name = TableName::parse(wanted).map_err(|e| anyhow!("--table {wanted}: {e}"))?;
        let table = config
            .tables
            .iter()
            .find(|t| TableName::parse(&t.name).is_ok_and(|n| n == name))
            .ok_or_else(|| {
                anyhow!("--table {wanted}: not a [[table]] of the config; backfill sends a captured table's rows")
            })?;
        chosen.push(table);
    }
    Ok(chosen)
}

/// Backfills the chosen tables one after the other, until done or `stop`.
pub async fn run(
    client: &mut Client,
    config: &Config,
    options: &Options,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    if options.batch < 1 {
        bail!("--batch must be at least 1");
    }
    let tables = chosen(config, options)?;
    let installed: bool = client
        .query_one("SELECT to_regclass('skor.backfill') IS NOT NULL", &[])
        .await?
        .get(0);
    if !installed {
        bail!("skor.backfill does not exist: run `skor install` (again, after an upgrade) first");
    }
    for table in tables {
        let plan = Plan::new(&*client, config, table, options.condition.as_deref())
            .await
            .map_err(|e| anyhow!("cannot backfill {}: {e}", table.name))?;
        if let Some(warning) = capture::of(config.table_mode(table)).backfill_warning() {
            warn!(table = %plan.name, "{warning}");
        }
        let outcome = backfill(client, &plan, options, stop)
            .await
            .with_context(|| {
                format!(
                    "backfill of {} stopped; run the same command to resume",
                    plan.name
                )
            })?;
        if outcome != Outcome::Done {
            return Ok(outcome);
        }
    }
    Ok(Outcome::Done)
}

/// Where a backfill stands, as `skor.backfill` holds it.
struct Standing {
    last_key: Option<Vec<String>>,
    sent: i64,
    total: i64,
    finished: Option<SystemTime>,
}

const STANDING_SQL: &str = "SELECT last_key, rows_sent, rows_total, finished_at \
                              FROM skor.backfill WHERE table_name = $1 AND condition = $2";

fn standing(row: &tokio_postgres::Row) -> Standing {
    Standing {
        last_key: row.get(0),
        sent: row.get(1),
        total: row.get(2),
        finished: row.get(3),
    }
}

async fn backfill(
    client: &mut Client,
    plan: &Plan,
    options: &Options,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let condition = options.condition.clone().unwrap_or_default();
    client
        .execute(
            "INSERT INTO skor.backfill (table_name, condition) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&plan.name, &condition],
        )
        .await?;
    if options.restart {
        client
            .execute(
                "UPDATE skor.backfill SET last_key = NULL, rows_sent = 0, rows_total = 0, \
                        started_at = now(), updated_at = now(), finished_at = NULL \
                  WHERE table_name = $1 AND condition = $2",
                &[&plan.name, &condition],
            )
            .await?;
    }
    let mut now = standing(
        &client
            .query_one(STANDING_SQL, &[&plan.name, &condition])
            .await?,
    );
    if now.finished.is_some() {
        info!(table = %plan.name, rows = now.sent,
              "backfilled already; pass --restart to send its rows again");
        return Ok(Outcome::Done);
    }
    if now.last_key.is_none() {
        let total: i64 = client
            .query_one(&plan.count_sql(), &[])
            .await
            .map_err(|e| anyhow!("cannot count the rows: {}", describe(&e)))?
            .get(0);
        client
            .execute(
                "UPDATE skor.backfill SET rows_total = $3 WHERE table_name = $1 AND condition = $2",
                &[&plan.name, &condition, &total],
            )
            .await?;
        now.total = total;
        info!(table = %plan.name, rows = total, "backfill starting");
    } else {
        info!(table = %plan.name, rows = now.sent, of = now.total, "backfill resuming");
    }
    let mut report = Report::new(&plan.name, now.sent as u64, now.total as u64);
    // After a batch found a row locked: rows one at a time, waiting, for
    // this many rows.
    let mut single = 0;
    loop {
        if stop.is_cancelled() {
            report.finish("paused");
            return Ok(Outcome::Paused {
                table: plan.name.clone(),
                sent: now.sent,
                total: now.total,
            });
        }
        let (limit, locking) = if single > 0 {
            (1, Locking::Wait)
        } else {
            (options.batch, Locking::NoWait)
        };
        match batch(client, plan, &condition, limit, locking).await {
            Ok(None) => break,
            Ok(Some(sent)) => {
                now.sent += sent;
                report.advance(sent as u64);
                single = (single - sent).max(0);
            }
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                single = options.batch;
            }
            Err(e) => return Err(anyhow!("{}", describe(&e))),
        }
    }
    report.finish("done");
    Ok(Outcome::Done)
}

/// Sends one batch in one transaction with its progress: how many rows it
/// sent, or `None` once no row is left (the backfill is marked finished).
async fn batch(
    client: &mut Client,
    plan: &Plan,
    condition: &str,
    limit: i64,
    locking: Locking,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    // Locked, so two runs of one backfill never send a batch twice.
    let row = transaction
        .query_one(
            &format!("{STANDING_SQL} FOR UPDATE"),
            &[&plan.name, &condition],
        )
        .await?;
    let now = standing(&row);
    if now.finished.is_some() {
        transaction.commit().await?;
        return Ok(None);
    }
    let sql = plan.batch_sql(now.last_key.is_some(), limit, locking);
    let row = match &now.last_key {
        Some(key) => transaction.query_one(&sql, &[key]).await?,
        None => transaction.query_one(&sql, &[]).await?,
    };
    let (sent, last): (i64, Option<Vec<String>>) = (row.get(0), row.get(1));
    if let Some(after) = plan.after_batch_sql() {
        transaction.batch_execute(after).await?;
    }
    match last {
        Some(last) => {
            transaction
                .execute(
                    "UPDATE skor.backfill SET last_key = $3, rows_sent = rows_sent + $4, updated_at = now() \
                      WHERE table_name = $1 AND condition = $2",
                    &[&plan.name, &condition, &last, &sent],
                )
                .await?;
        }
        None => {
            transaction
                .execute(
                    "UPDATE skor.backfill SET finished_at = now(), updated_at = now() \
                      WHERE table_name = $1 AND condition = $2",
                    &[&plan.name, &condition],
                )
                .await?;
        }
    }
    transaction.commit().await?;
    Ok((sent > 0).then_some(sent))
}

/// Every backfill `skor.backfill` knows of, one line each.
pub async fn status(client: &Client) -> anyhow::Result<String> {
    let rows = client
        .query(
            "SELECT table_name, condition, rows_sent, rows_total, \
                    to_char(started_at, 'YYYY-MM-DD HH24:MI:SS'), \
                    to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS'), \
                    finished_at IS NOT NULL \
               FROM skor.backfill ORDER BY started_at, table_name",
            &[],
        )
        .await
        .map_err(|e| {
            anyhow!(
                "cannot read skor.backfill (run `skor install` first?): {}",
                describe(&e)
            )
        })?;
    let mut out = String::new();
    for row in rows {
        let (table, condition): (String, String) = (row.get(0), row.get(1));
        let (sent, total): (i64, i64) = (row.get(2), row.get(3));
        let (started, updated): (String, String) = (row.get(4), row.get(5));
        let state = if row.get::<_, bool>(6) {
            "done"
        } else {
            "paused or running"
        };
        let condition = if condition.is_empty() {
            String::new()
        } else {
            format!(" where {condition}")
        };
        out.push_str(&format!(
            "{table}{condition}: {sent} of {total} rows, {state} (started {started}, last batch {updated})\n"
        ));
    }
    if out.is_empty() {
        out.push_str("no backfill has run\n");
    }
    Ok(out)
}
