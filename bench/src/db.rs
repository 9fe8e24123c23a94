//! The bench's own database: created at start, dropped at the end even when
//! the run fails, with the table every load writes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, NoTls};

/// The table the loads write and skor captures.
pub const TABLE: &str = "public.bench_events";

const SCHEMA: &str = "CREATE TABLE public.bench_events (
    id bigint PRIMARY KEY,
    account int NOT NULL,
    amount numeric(12,2) NOT NULL,
    note text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// A connection whose driver runs on its own task; for everything but the
/// ceiling listener, which must see notifications.
pub async fn connect(dsn: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({})", redact(dsn)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `dsn` without its password, for error messages.
fn redact(dsn: &str) -> String {
    dsn.split_whitespace()
        .map(|part| {
            if part.starts_with("password=") {
                "password=…"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The database `skor_bench_<pid>`, dropped by [`Database::drop_now`] or,
/// failing that, when the guard goes out of scope.
pub struct Database {
    /// The database's name.
    pub name: String,
    /// The libpq keyword DSN that reaches it.
    pub dsn: String,
    server_dsn: String,
    /// The bench's own connection to it, for truncating and preloading.
    pub client: Client,
    dropped: bool,
}

impl Database {
    /// Creates the database and its table on the server `server_dsn`.
    pub async fn create(server_dsn: &str) -> Result<Self> {
        let name = format!("skor_bench_{}", std::process::id());
        let admin = connect(&format!("{server_dsn} dbname=postgres")).await?;
        // Two calls: several statements in one are one transaction, which
        // neither statement accepts. The DROP clears a leftover of a
        // killed run that had the same pid.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping a leftover database {name}"))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let dsn = format!("{server_dsn} dbname={name}");
        // From here on the guard owns the database, even if the table fails.
        let mut database = Self {
            client: admin,
            name,
            dsn,
            server_dsn: server_dsn.to_string(),
            dropped: false,
        };
        database.client = connect(&database.dsn).await?;
        database
            .client
            .batch_execute(SCHEMA)
            .await
            .context("creating the bench table")?;
        Ok(database)
    }

    /// The server's `SELECT version()`.
    pub async fn version(&self) -> Result<String> {
        Ok(self.client.query_one("SELECT version()", &[]).await?.get(0))
    }

    /// Empties the bench table and skor's event log. TRUNCATE fires no row
    /// trigger, so this produces no event.
    pub async fn reset(&self) -> Result<()> {
        self.client
            .batch_execute(&format!("TRUNCATE {TABLE}"))
            .await
            .context("truncating the bench table")?;
        let has_log: bool = self
            .client
            .query_one("SELECT to_regclass('skor.event_log') IS NOT NULL", &[])
            .await?
            .get(0);
        if has_log {
            self.client
                .batch_execute("TRUNCATE skor.event_log")
                .await
                .context("truncating skor.event_log")?;
        }
        Ok(())
    }

    /// Installs the baseline of durable mode: what a user writes instead
    /// of skor, a minimal outbox table and a row trigger that INSERTs the
    /// event and NOTIFYs a consumer, once per row.
    pub async fn install_outbox(&self) -> Result<()> {
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS public.bench_outbox;
                 CREATE TABLE public.bench_outbox (id bigserial PRIMARY KEY, payload json NOT NULL);
                 CREATE OR REPLACE FUNCTION public.bench_outbox() RETURNS trigger
                 LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO public.bench_outbox (payload)
                     VALUES (json_build_object('table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
                                               'op', TG_OP, 'data', row_to_json(NEW)));
                     PERFORM pg_notify('bench_outbox', '');
                     RETURN NULL;
                 END $$;
                 CREATE TRIGGER bench_outbox AFTER INSERT ON {TABLE}
                     FOR EACH ROW EXECUTE FUNCTION public.bench_outbox();"
            ))
            .await
            .context("installing the outbox trigger")
    }

    /// Counts the outbox's rows, then removes the outbox and its trigger.
    pub async fn drop_outbox(&self) -> Result<i64> {
        let rows: i64 = self
            .client
            .query_one("SELECT count(*) FROM public.bench_outbox", &[])
            .await
            .context("counting the outbox")?
            .get(0);
        self.client
            .batch_execute(&format!(
                "DROP TRIGGER bench_outbox ON {TABLE};
                 DROP FUNCTION public.bench_outbox();
                 DROP TABLE public.bench_outbox;"
            ))
            .await
            .context("dropping the outbox trigger")?;
        Ok(rows)
    }

    /// Drops every replication slot of this database and skor's
    /// publication, so no WAL is kept for a case that is over. A slot's
    /// walsender may outlive its reader for a moment: waits up to 10 s for
    /// it to let go.
    pub async fn drop_replication(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let slots = self
                .client
                .query(
                    "SELECT slot_name::text, active FROM pg_replication_slots \
                      WHERE database = current_database()",
                    &[],
                )
                .await
                .context("listing the replication slots")?;
            let mut busy = false;
            for slot in slots {
                let (name, active): (String, bool) = (slot.get(0), slot.get(1));
                if active {
                    busy = true;
                    continue;
                }
                self.client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                    .await
                    .with_context(|| format!("dropping the replication slot {name}"))?;
            }
            if !busy {
                break;
            }
            if Instant::now() > deadline {
                bail!("a replication slot of {} is still being read", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.client
            .batch_execute("DROP PUBLICATION IF EXISTS skor")
            .await
            .context("dropping the publication")?;
        Ok(())
    }

    /// Drops the database now, so its error can be reported.
    pub async fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        drop_database(&self.server_dsn, &self.name).await
    }
}

async fn drop_database(server_dsn: &str, name: &str) -> Result<()> {
    let admin = connect(&format!("{server_dsn} dbname=postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .with_context(|| format!("dropping database {name}"))?;
    Ok(())
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server_dsn, name) = (self.server_dsn.clone(), self.name.clone());
        // Drop cannot await, and may run inside the runtime: a thread with
        // a runtime of its own does the I/O.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            if let Err(e) = runtime.block_on(drop_database(&server_dsn, &name)) {
                eprintln!("skor-bench: {e:#}");
            }
            Some(())
        })
        .join();
    }
}
