//! Wal mode's harness: a private PostgreSQL with `wal_level = logical`
//! (the shared server keeps `replica`), a client on it, and the slot's
//! positions as PostgreSQL reports them.

use tokio_postgres::Client;

use super::pg_server::PgServer;
use super::{connect, Hook};

/// A private server that decodes its WAL, and a client on its `postgres`
/// database; stopped and removed when dropped.
pub struct WalDb {
    pub server: PgServer,
    pub client: Client,
}

impl WalDb {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A server with `settings` (postgresql.conf lines) after the tests'.
    pub async fn start_with(settings: &str) -> Self {
        let mut options = super::pg_server::Options::tests(None);
        options.settings.push_str(settings);
        let server = tokio::task::spawn_blocking(move || PgServer::try_start(&options))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        let client = connect(&server.dsn()).await;
        Self { server, client }
    }

    /// WAL the slot keeps on disk: from its restart position to now, in
    /// bytes; `None` once it has none (invalidated).
    pub async fn retained(&self, slot: &str) -> Option<i64> {
        self.client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub fn dsn(&self) -> String {
        self.server.dsn()
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// A new client, after the server was restarted.
    pub async fn reconnect(&mut self) {
        self.client = connect(&self.dsn()).await;
    }

    /// A config in wal mode with `rest` after `[source]`.
    pub fn config(&self, rest: &str) -> String {
        format!(
            "[source]\ndsn = \"{}\"\nmode = \"wal\"\nreconnect_max_backoff_ms = 500\nwal_status_interval_ms = 50\n{rest}",
            self.dsn()
        )
    }

    /// A wal-mode config capturing `table` (its `[[table]]` keys) into
    /// the webhook `hook`, with `sink_options` added to the sink.
    pub fn hook_config(&self, table: &str, hook: &Hook, sink_options: &str) -> String {
        self.config(&format!(
            "[[table]]\n{table}\n[sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n{sink_options}\n",
            hook.url()
        ))
    }

    /// The slot's confirmed position, as a number of bytes into the WAL.
    pub async fn confirmed(&self, slot: &str) -> i64 {
        self.client
            .query_one(
                "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 \
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The server's current WAL position, in bytes.
    pub async fn current(&self) -> i64 {
        self.client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl WalDb {
    /// `skor install` of `config`.
    pub async fn install(&self, config: &str) {
        self.try_install(config).await.expect("install");
    }

    /// `skor install` of `config`, its error as text.
    pub async fn try_install(&self, config: &str) -> Result<(), String> {
        let config = skor::Config::from_toml(config, "test.toml").expect("valid config");
        let mut client = connect(&self.dsn()).await;
        skor::install::install(&mut client, &config)
            .await
            .map_err(|e| e.to_string())
    }
}
