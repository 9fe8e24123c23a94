//! The settings of a logical replication connection (wal mode), from the
//! same DSN as every other connection: host, port, user, password,
//! database and TLS.
//!
//! The replication client is built without TLS of its own (it would bring
//! a second rustls crypto provider into every build), so when the DSN asks
//! for TLS, skor bridges: the client connects to a Unix socket in a
//! directory only skor's user can enter, and a task forwards that one
//! connection to the server over TLS, negotiated as libpq does (an
//! SSLRequest, then the handshake) and verified exactly as skor's other
//! connections are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tracing::warn;

use super::{Postgres, SslMode};

/// Values decoded from the stream render as row_to_json renders them only
/// in ISO DateStyle, whatever the server's default is; and the search_path
/// is pinned as on every other session (see [`super::SEARCH_PATH`]).
const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c search_path=pg_catalog,pg_temp";
/// libpq's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
/// How long the bridge waits for the replication client to connect.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// A replication session's settings, and the TLS bridge it connects
/// through, if any; keep both while the session lives.
pub struct Replication {
    /// The client's settings.
    pub config: ReplicationConfig,
    /// The bridge, when the DSN asks for TLS.
    pub bridge: Option<TlsBridge>,
}

/// Forwards one connection from a private Unix socket to the server over
/// TLS; the socket's directory goes once that connection is accepted (or
/// given up on), or when the bridge is dropped.
pub struct TlsBridge {
    dir: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for TlsBridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Postgres {
    /// A replication session reading `slot` through `publication`.
    pub fn replication(
        &self,
        slot: &str,
        publication: &str,
        status_interval: Duration,
    ) -> Result<Replication, String> {
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
        let host = match config.get_hosts().first() {
            // libpq uses no TLS on a Unix socket either.
            Some(Host::Unix(dir)) => {
                let dir = dir.display().to_string();
                let unix =
                    ReplicationConfig::unix(dir, port, user, password, database, slot, publication);
                return Ok(Replication {
                    config: finish(unix, status_interval),
                    bridge: None,
                });
            }
            Some(Host::Tcp(host)) => host.clone(),
            None => "localhost".to_string(),
        };
        if self.mode == SslMode::Disable {
            let plain = ReplicationConfig::new(host, user, password, database, slot, publication)
                .with_port(port)
                .with_tls(TlsConfig::disabled());
            return Ok(Replication {
                config: finish(plain, status_interval),
                bridge: None,
            });
        }
        let bridge = TlsBridge::open(
            host,
            port,
            Arc::clone(&self.tls_config),
            self.mode == SslMode::Prefer,
        )?;
        let config = ReplicationConfig::unix(
            bridge.dir.display().to_string(),
            port,
            user,
            password,
            database,
            slot,
            publication,
        );
        Ok(Replication {
            config: finish(config, status_interval),
            bridge: Some(bridge),
        })
    }
}

fn finish(config: ReplicationConfig, status_interval: Duration) -> ReplicationConfig {
    config
        .with_options(SESSION_OPTIONS)
        .with_application_name("skor wal")
        .with_status_interval(status_interval)
        .with_wakeup_interval(status_interval.max(Duration::from_secs(1)))
}

impl TlsBridge {
    /// Listens on `<private dir>/.s.PGSQL.<port>`, where the replication
    /// client looks for a server socket, for one connection to forward to
    /// `host:port`; with `prefer`, in the clear if the server has no TLS.
    fn open(
        host: String,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        prefer: bool,
    ) -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "skor-wal-{}-{:016x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let socket = dir.join(format!(".s.PGSQL.{port}"));
        let listener = match UnixListener::bind(&socket) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot listen on {}: {error}", socket.display()));
            }
        };
        let socket_dir = dir.clone();
        let task = tokio::spawn(async move {
            let accepted = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept()).await;
            // The one connection is made or never will be: the socket is of
            // no more use, and a skor killed while streaming leaves nothing.
            drop(listener);
            let _ = std::fs::remove_dir_all(&socket_dir);
            let Ok(Ok((mut client, _))) = accepted else {
                return;
            };
            if let Err(error) = forward(&mut client, &host, port, tls, prefer).await {
                warn!(%error, %host, port, "wal mode: the replication connection over TLS failed");
            }
        });
        Ok(Self { dir, task })
    }
}

/// Connects to the server, negotiates TLS and copies bytes both ways until
/// either side closes.
async fn forward(
    client: &mut tokio::net::UnixStream,
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    prefer: bool,
) -> Result<(), String> {
    let mut server = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    server
        .write_all(&SSL_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let answer = server.read_u8().await.map_err(|e| e.to_string())?;
    match answer {
        b'S' => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
            let mut server = tokio_rustls::TlsConnector::from(tls)
                .connect(name, server)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let _ = tokio::io::copy_bidirectional(client, &mut server).await;
        }
        b'N' if prefer => {
            let _ = tokio::io::copy_bidirectional(client, &mut server).await;
        }
        b'N' => return Err("the server does not accept TLS connections".to_string()),
        other => return Err(format!("unexpected answer {other} to the TLS request")),
    }
    Ok(())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish()
}
