//! The write loads: what each one does to the bench table, and when each of
//! its transactions committed, per event.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio_postgres::types::Type;

use crate::arrivals::{key, Key, Op};
use crate::db::{connect, Database, TABLE};

/// Rows per multi-row statement (and so per transaction) of `burst` and `mix`.
const STATEMENT_ROWS: i64 = 1000;

/// The note is about 40 characters, like a short description column.
const NOTE_PREFIX: &str = "bench note for generated row number ";

/// What a load does, at scale 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Single-row INSERT transactions split across this many connections.
    Single(usize),
    /// Back-to-back 1000-row INSERT statements from one connection.
    Burst,
    /// UPDATEs then DELETEs of preloaded rows, 1000 rows per statement.
    Mix,
}

/// A load with its row counts at the run's scale.
#[derive(Clone, Debug)]
pub struct Load {
    /// `single-4`, `burst`, `mix`.
    pub name: String,
    /// What it does.
    pub kind: Kind,
    /// Rows inserted (single, burst) or preloaded and updated (mix).
    pub rows: i64,
    /// Rows deleted (mix only).
    pub deletes: i64,
}

fn scaled(rows: f64, scale: f64) -> i64 {
    ((rows * scale).round() as i64).max(1)
}

impl Load {
    /// The load `kind` at `scale`.
    pub fn new(kind: Kind, scale: f64) -> Self {
        match kind {
            Kind::Single(clients) => Self {
                name: format!("single-{clients}"),
                kind,
                rows: scaled(10_000.0, scale),
                deletes: 0,
            },
            Kind::Burst => Self::burst(200_000.0, scale),
            Kind::Mix => {
                let rows = scaled(100_000.0, scale);
                Self {
                    name: "mix".into(),
                    kind,
                    rows,
                    deletes: scaled(50_000.0, scale).min(rows),
                }
            }
        }
    }

    /// A `burst` of `rows` rows at scale 1.
    pub fn burst(rows: f64, scale: f64) -> Self {
        Self {
            name: "burst".into(),
            kind: Kind::Burst,
            rows: scaled(rows, scale),
            deletes: 0,
        }
    }

    /// The events this load produces.
    pub fn events(&self) -> usize {
        (self.rows + self.deletes) as usize
    }

    /// Untimed set-up before skor starts: `mix` inserts its rows with
    /// triggers skipped, so they produce no event.
    pub async fn prepare(&self, db: &Database) -> Result<()> {
        if self.kind != Kind::Mix {
            return Ok(());
        }
        let session = connect(&db.dsn).await?;
        // Replica mode skips ordinary triggers, skor's included.
        session
            .batch_execute("SET session_replication_role = replica")
            .await
            .context("SET session_replication_role (needs a superuser)")?;
        session
            .execute(&insert_series_sql(), &[&1i64, &self.rows])
            .await
            .context("preloading the mix rows")?;
        Ok(())
    }

    /// Runs the load against `dsn`, timing from its first statement.
    pub async fn run(&self, dsn: &str) -> Result<Produced> {
        match self.kind {
            Kind::Single(clients) => single(dsn, self.rows, clients).await,
            Kind::Burst => burst(dsn, self.rows).await,
            Kind::Mix => mix(dsn, self.rows, self.deletes).await,
        }
    }
}

/// What a load did: when it started and ended, and every event it
/// produced with the instant its transaction's commit returned.
pub struct Produced {
    /// Just before the first statement.
    pub start: Instant,
    /// When the last commit returned.
    pub end: Instant,
    /// One entry per event.
    pub commits: Vec<(Key, Instant)>,
}

fn insert_series_sql() -> String {
    format!(
        "INSERT INTO {TABLE} (id, account, amount, note) \
         SELECT g, g % 100, g * 0.01, '{NOTE_PREFIX}' || g FROM generate_series($1::bigint, $2::bigint) g"
    )
}

/// `first..=last` cut into statements of at most [`STATEMENT_ROWS`] rows.
fn chunks(first: i64, last: i64) -> impl Iterator<Item = (i64, i64)> {
    (first..=last)
        .step_by(STATEMENT_ROWS as usize)
        .map(move |from| (from, (from + STATEMENT_ROWS - 1).min(last)))
}

async fn single(dsn: &str, rows: i64, clients: usize) -> Result<Produced> {
    let sql = format!("INSERT INTO {TABLE} (id, account, amount, note) VALUES ($1, $2, $3, $4)");
    // Connected and prepared before the clock starts.
    let mut sessions = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = connect(dsn).await?;
        // amount is numeric(12,2); float8 converts to it on assignment and
        // needs no decimal crate here.
        let statement = client
            .prepare_typed(&sql, &[Type::INT8, Type::INT4, Type::FLOAT8, Type::TEXT])
            .await
            .context("preparing the single-row INSERT")?;
        sessions.push((client, statement));
    }
    let per_client = rows / clients as i64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for (index, (client, statement)) in sessions.into_iter().enumerate() {
        let first = 1 + index as i64 * per_client;
        let last = if index + 1 == clients {
            rows
        } else {
            first + per_client - 1
        };
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::with_capacity((last - first + 1).max(0) as usize);
            for id in first..=last {
                let note = format!("{NOTE_PREFIX}{id}");
                client
                    .execute(
                        &statement,
                        &[&id, &((id % 100) as i32), &(id as f64 * 0.01), &note],
                    )
                    .await
                    .with_context(|| format!("inserting row {id}"))?;
                commits.push((key(Op::Insert, id), Instant::now()));
            }
            anyhow::Ok(commits)
        }));
    }
    let mut commits = Vec::with_capacity(rows as usize);
    for task in tasks {
        commits.extend(task.await??);
    }
    let end = commits.iter().map(|(_, at)| *at).max().unwrap_or(start);
    Ok(Produced {
        start,
        end,
        commits,
    })
}

async fn burst(dsn: &str, rows: i64) -> Result<Produced> {
    let client = connect(dsn).await?;
    let statement = client
        .prepare(&insert_series_sql())
        .await
        .context("preparing the burst INSERT")?;
    let mut commits = Vec::with_capacity(rows as usize);
    let start = Instant::now();
    for (from, to) in chunks(1, rows) {
        client
            .execute(&statement, &[&from, &to])
            .await
            .with_context(|| format!("inserting rows {from} to {to}"))?;
        let at = Instant::now();
        commits.extend((from..=to).map(|id| (key(Op::Insert, id), at)));
    }
    Ok(Produced {
        start,
        end: Instant::now(),
        commits,
    })
}

async fn mix(dsn: &str, rows: i64, deletes: i64) -> Result<Produced> {
    let client = connect(dsn).await?;
    let update = client
        .prepare(&format!(
            "UPDATE {TABLE} SET amount = amount + 1 WHERE id BETWEEN $1 AND $2"
        ))
        .await?;
    let delete = client
        .prepare(&format!("DELETE FROM {TABLE} WHERE id BETWEEN $1 AND $2"))
        .await?;
    let mut commits = Vec::with_capacity((rows + deletes) as usize);
    let start = Instant::now();
    for (op, statement, last) in [(Op::Update, &update, rows), (Op::Delete, &delete, deletes)] {
        for (from, to) in chunks(1, last) {
            let changed = client
                .execute(statement, &[&from, &to])
                .await
                .with_context(|| format!("{op:?} of rows {from} to {to}"))?;
            let at = Instant::now();
            if changed != (to - from + 1) as u64 {
                bail!("{op:?} of rows {from} to {to} changed {changed} rows: the preload is missing rows");
            }
            commits.extend((from..=to).map(|id| (key(op, id), at)));
        }
    }
    Ok(Produced {
        start,
        end: Instant::now(),
        commits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_cover_the_range_in_order() {
        let all: Vec<_> = chunks(1, 2500).collect();
        assert_eq!(all, [(1, 1000), (1001, 2000), (2001, 2500)]);
        assert_eq!(chunks(1, 1).collect::<Vec<_>>(), [(1, 1)]);
    }

    #[test]
    fn scale_keeps_at_least_one_row() {
        assert_eq!(Load::new(Kind::Burst, 0.05).rows, 10_000);
        assert_eq!(Load::new(Kind::Single(16), 0.0).rows, 1);
        let mix = Load::new(Kind::Mix, 0.1);
        assert_eq!(
            (mix.rows, mix.deletes, mix.events()),
            (10_000, 5_000, 15_000)
        );
    }
}
