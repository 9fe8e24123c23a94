//! The settings of a logical replication connection (wal mode), from the
//! same DSN as every other connection: host, port, user, password and
//! database. The replication client is built without its own TLS (it
//! would bring a second rustls crypto provider into every build), so a DSN
//! that requires TLS is refused for wal mode, and `prefer` connects in the
//! clear.

use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use tokio_postgres::config::Host;

use super::{Postgres, SslMode};

/// Values decoded from the stream render as row_to_json renders them only
/// in ISO DateStyle, whatever the server's default is.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY";

impl Postgres {
    /// A replication session reading `slot` through `publication`; an
    /// error when the DSN requires TLS.
    pub fn replication(
        &self,
        slot: &str,
        publication: &str,
        status_interval: Duration,
    ) -> Result<ReplicationConfig, String> {
        if matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(format!(
                "wal mode cannot use TLS for its replication connection yet, and the DSN says \
                 sslmode={}: use a connection PostgreSQL accepts without TLS (a private network, \
                 a Unix socket), or notify or durable mode",
                self.mode
            ));
        }
        let config = &self.config;
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = config
            .get_dbname()
            .map_or_else(|| user.clone(), str::to_string);
        let replication = match config.get_hosts().first() {
            Some(Host::Unix(dir)) => ReplicationConfig::unix(
                dir.display().to_string(),
                port,
                user,
                password,
                database,
                slot,
                publication,
            ),
            Some(Host::Tcp(host)) => {
                ReplicationConfig::new(host.clone(), user, password, database, slot, publication)
                    .with_port(port)
                    .with_tls(TlsConfig::disabled())
            }
            None => {
                ReplicationConfig::new("localhost", user, password, database, slot, publication)
                    .with_port(port)
                    .with_tls(TlsConfig::disabled())
            }
        };
        Ok(replication
            .with_options(SESSION_OPTIONS)
            .with_application_name("skor wal")
            .with_status_interval(status_interval)
            .with_wakeup_interval(status_interval.max(Duration::from_secs(1))))
    }
}
