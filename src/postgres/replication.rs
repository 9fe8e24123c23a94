//! The settings of a logical replication connection (wal mode), from the
//! same DSN as every other connection: host, port, user, password,
//! database and the TLS mode.

use std::path::PathBuf;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, SslMode as WireSslMode, TlsConfig};
use tokio_postgres::config::Host;

use super::{Postgres, RootCerts, SslMode};

/// Values decoded from the stream render as row_to_json renders them only
/// in ISO DateStyle, whatever the server's default is.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY";

impl Postgres {
    /// A replication session reading `slot` through `publication`.
    pub fn replication(
        &self,
        slot: &str,
        publication: &str,
        status_interval: Duration,
    ) -> ReplicationConfig {
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
                    .with_tls(self.replication_tls())
            }
            None => {
                ReplicationConfig::new("localhost", user, password, database, slot, publication)
                    .with_port(port)
                    .with_tls(self.replication_tls())
            }
        };
        replication
            .with_options(SESSION_OPTIONS)
            .with_application_name("skor wal")
            .with_status_interval(status_interval)
            .with_wakeup_interval(status_interval.max(Duration::from_secs(1)))
    }

    fn replication_tls(&self) -> TlsConfig {
        let file = match &self.roots {
            Some(RootCerts::File(path)) => Some(PathBuf::from(path)),
            _ => None,
        };
        match self.mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: WireSslMode::Prefer,
                ..TlsConfig::disabled()
            },
            SslMode::Require if file.is_none() => TlsConfig::require(),
            SslMode::Require | SslMode::VerifyCa => TlsConfig::verify_ca(file),
            SslMode::VerifyFull => TlsConfig::verify_full(file),
        }
    }
}
