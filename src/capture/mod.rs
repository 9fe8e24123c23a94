//! Where events come from: the capture modes, each a plug-in behind
//! [`Capture`], beside one another as the sinks are. A plug-in owns its
//! daemon source, its `skor tail` reader, its part of `skor install` and
//! `uninstall`, and how `skor backfill` sends its rows; the registry
//! ([`CAPTURES`]) is the one list of them.
//!
//! - [`notify`]: triggers NOTIFY each change; the daemon LISTENs.
//! - [`durable`]: triggers write `skor.event_log`; daemons share it.
//! - [`wal`]: logical replication from a slot; no trigger.

pub mod durable;
pub mod notify;
pub mod payload;
pub mod reconnect;
pub mod tail;
pub mod trigger;
pub mod wal;

use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode, TableConfig};
use crate::delivery::fanout::Fanout;
use crate::observe::stats::Stats;
use crate::postgres::{describe, locks, Postgres};

pub use tail::{TailError, TailReader};

/// Every capture mode skor has; adding one is a folder here and a line
/// in this list (and its name in `config::Mode`).
pub static CAPTURES: &[&dyn Capture] = &[&notify::Notify, &durable::Durable, &wal::Wal];

/// The plug-ins `config` runs, in registry order.
pub fn used(config: &Config) -> impl Iterator<Item = &'static dyn Capture> + '_ {
    CAPTURES.iter().copied().filter(|c| c.used(config))
}

/// The plug-in of `mode`.
pub fn of(mode: Mode) -> &'static dyn Capture {
    CAPTURES
        .iter()
        .copied()
        .find(|c| c.mode() == mode)
        .expect("every mode has its plug-in in CAPTURES")
}

/// What the daemon gives a plug-in to open its source with.
pub struct Wiring<'a> {
    /// The connection settings, named `skor`.
    pub pg: &'a Postgres,
    /// The whole config.
    pub config: &'a Config,
    /// A handle on the fan-out stage; each source clones its own.
    pub fanout: &'a Fanout,
    /// The daemon's counters.
    pub stats: &'a Stats,
}

/// Why a plug-in's source could not open: the daemon does not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// The parts of a backfill batch a plug-in's statement is made of (see
/// `backfill::plan`): the rows sit in `batch b`, in key order `order`.
pub struct BackfillBatch<'a> {
    /// The table's channel, schema and name, as SQL literals.
    pub channel: &'a str,
    /// See `channel`.
    pub schema: &'a str,
    /// See `channel`.
    pub table: &'a str,
    /// `ORDER BY` of the batch's rows (key order).
    pub order: &'a str,
    /// The row key expression on `b`.
    pub row_key: &'a str,
    /// `skor.payload(...)` of a row alias and an event id expression.
    pub payload: &'a dyn Fn(&str, &str) -> String,
}

/// What a plug-in removes at uninstall, besides skor's schema.
#[derive(Debug, Default)]
pub struct Removal {
    /// SQL run just before skor's schema is dropped.
    pub sql: String,
    /// Whether [`Capture::after_uninstall`] must run, after the drop.
    pub after: bool,
}

/// A capture mode. Each method has a default where most modes do nothing.
#[async_trait::async_trait]
pub trait Capture: Sync {
    /// The config's name for it.
    fn mode(&self) -> Mode;

    /// Its name in logs: `notify`, `durable`, `wal`.
    fn name(&self) -> &'static str;

    /// Whether some table of `config` (or, with none, the source) is
    /// captured in this mode: `skor tail` reads it, install sets it up.
    fn used(&self, config: &Config) -> bool;

    /// Whether the daemon runs its source for `config`.
    fn runs_source(&self, config: &Config) -> bool {
        self.used(config)
    }

    /// A comment for the printed install script (`skor sql`) when used.
    fn install_script_note(&self) -> Option<&'static str> {
        None
    }

    /// The function (sql/install.sql) its tables' triggers call, when it
    /// captures with triggers.
    fn trigger_function(&self) -> Option<&'static str> {
        None
    }

    /// The payload flags of `table`'s backfilled rows (metadata a trigger
    /// adds); none where the stream adds them.
    fn backfill_flags(&self, _table: &TableConfig) -> String {
        String::new()
    }

    /// The statement that sends a backfill batch through this mode.
    fn backfill_send_sql(&self, batch: &BackfillBatch<'_>) -> String;

    /// What runs after a backfill batch in its transaction.
    fn backfill_after_batch_sql(&self) -> Option<&'static str> {
        None
    }

    /// A warning for whoever backfills a table of this mode.
    fn backfill_warning(&self) -> Option<&'static str> {
        None
    }

    /// Opens the daemon's source; an error stops start-up.
    async fn open_source(&self, wiring: &Wiring<'_>) -> Result<Box<dyn Source>, OpenError>;

    /// Opens its `skor tail` reader.
    async fn open_tail(
        &self,
        pg: &Postgres,
        config: &Config,
    ) -> Result<Box<dyn TailReader>, TailError>;

    /// Ctrl-C came while `open_tail` waited: undo what it began.
    async fn abandon_tail(&self, _pg: &Postgres) {}

    /// Before the install transaction: server settings it needs.
    async fn before_install(&self, _client: &Client, _config: &Config) -> Result<(), InstallError> {
        Ok(())
    }

    /// In the install transaction, after skor's objects and triggers;
    /// `upgrading` when the schema predates skor's record of what it created.
    async fn install(
        &self,
        _transaction: &Transaction<'_>,
        _config: &Config,
        _upgrading: bool,
    ) -> Result<(), InstallError> {
        Ok(())
    }

    /// After the install transaction committed (a replication slot cannot
    /// be made inside one), whether `config` uses this mode or not.
    async fn after_install(
        &self,
        _client: &mut Client,
        _config: &Config,
        _options: &InstallOptions,
        _upgrading: bool,
    ) -> Result<(), InstallError> {
        Ok(())
    }

    /// Before the uninstall transaction: refuse while a reader holds on.
    async fn before_uninstall(
        &self,
        _client: &Client,
        _config: &Config,
    ) -> Result<(), InstallError> {
        Ok(())
    }

    /// In the uninstall transaction, before skor's schema goes: what to
    /// remove with it.
    async fn uninstall(
        &self,
        _transaction: &Transaction<'_>,
        _config: &Config,
    ) -> Result<Removal, InstallError> {
        Ok(Removal::default())
    }

    /// In the uninstall transaction, after skor's schema went, when its
    /// [`Removal`] asked.
    async fn after_uninstall(
        &self,
        _transaction: &Transaction<'_>,
        _config: &Config,
    ) -> Result<(), InstallError> {
        Ok(())
    }

    /// `skor check --connect`: a line on its server-side state, if any.
    async fn report(
        &self,
        _client: &Client,
        _config: &Config,
    ) -> Result<Option<String>, InstallError> {
        Ok(None)
    }
}

/// A reader whose first session opens at start-up, so a wrong setting
/// stops the daemon there, and whose loop starts from that session.
#[async_trait::async_trait]
pub trait Sessions: Send + Sized + 'static {
    /// One connection's state.
    type Session: Send + 'static;
    /// Its name in logs.
    const NAME: &'static str;
    /// Reads from `session`, reconnecting whenever it is lost, until
    /// `shutdown`; then lets go of the sink queues and settles.
    async fn run(self, session: Self::Session, shutdown: CancellationToken);
}

/// A [`Sessions`] reader and its first session: a [`Source`].
pub struct Opened<R: Sessions> {
    reader: R,
    session: R::Session,
}

impl<R: Sessions> Opened<R> {
    /// The source that runs `reader` from `session`.
    pub fn new(reader: R, session: R::Session) -> Self {
        Self { reader, session }
    }
}

#[async_trait::async_trait]
impl<R: Sessions> Source for Opened<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    async fn run(self: Box<Self>, shutdown: CancellationToken) {
        let Self { reader, session } = *self;
        reader.run(session, shutdown).await;
    }
}

/// A source of events, connected and ready to run.
#[async_trait::async_trait]
pub trait Source: Send {
    /// What it reads, for logs: `notify`, `durable`.
    fn name(&self) -> &'static str;

    /// Hands events to the fan-out stage until `shutdown`, reconnecting
    /// whenever its connection is lost; then lets go of the sink queues
    /// and returns once what it must see confirmed is settled, or what is
    /// left is safe for the next run.
    async fn run(self: Box<Self>, shutdown: CancellationToken);
}

/// Why install or uninstall failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A configured table or column is not in the database.
    #[error("{0}")]
    Schema(String),
    /// Durable events are still undelivered.
    #[error("{0}")]
    Pending(String),
    /// PostgreSQL refused a statement.
    #[error("{0}")]
    Database(String),
    /// A lock wait ran out; the text names the sessions holding it.
    #[error("{0}")]
    Locked(String),
    /// A statement's lock wait ran out (lock_timeout), holders not yet
    /// named: install and uninstall turn it into [`Self::Locked`].
    #[error("{0} (a lock wait ran out: every wait is bounded by lock_timeout)")]
    LockWait(String),
}

impl From<locks::LockError> for InstallError {
    fn from(error: locks::LockError) -> Self {
        match error {
            locks::LockError::Timeout(text) => Self::Locked(text),
            locks::LockError::Db(error) => error.into(),
        }
    }
}

impl From<tokio_postgres::Error> for InstallError {
    fn from(error: tokio_postgres::Error) -> Self {
        if error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            return Self::LockWait(describe(&error));
        }
        Self::Database(describe(&error))
    }
}

/// What `skor install` may do beyond the default.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Take an existing replication slot of the configured name as skor's
    /// own (`--adopt-slot`).
    pub adopt_slot: bool,
    /// How long to wait for any one lock (`--lock-timeout`).
    pub lock_timeout: std::time::Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            adopt_slot: false,
            lock_timeout: locks::LOCK_TIMEOUT,
        }
    }
}
