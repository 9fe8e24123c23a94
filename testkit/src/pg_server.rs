//! A private PostgreSQL server, for tests that need one of their own (with
//! TLS, to stop and start again, or to decode its WAL: `wal_level =
//! logical`, which the shared server does not have) and for the bench's
//! wal cases. initdb into a temporary directory, a free 127.0.0.1 port,
//! stopped and removed when dropped, also when the test or run fails. As
//! root, every PostgreSQL program runs as `postgres`.

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The server's certificate (PEM, the chain if any) and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
}

/// How to make a server: [`Options::tests`] or [`Options::durable`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Lines for postgresql.conf, after the addresses.
    pub settings: String,
    /// `ssl = on` with these files.
    pub tls: Option<TlsFiles>,
    /// `initdb --no-sync`: faster, for data thrown away anyway.
    pub no_sync: bool,
    /// The temporary directory's name starts with it.
    pub prefix: &'static str,
}

/// What the tests' servers add to postgresql.conf: small, no durability,
/// and what wal mode needs.
pub const TEST_SETTINGS: &str = "\
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 30
wal_level = logical
max_replication_slots = 8
max_wal_senders = 8
";

/// What the bench's server adds to postgresql.conf: the shared cluster's
/// settings that change throughput (Debian's defaults plus its autovacuum
/// = off), and what wal mode needs. fsync, synchronous_commit and
/// full_page_writes stay at their defaults (on), as on the shared server
/// the other cases run on.
pub const DURABLE_SETTINGS: &str = "\
wal_level = logical
max_replication_slots = 8
max_wal_senders = 8
max_connections = 100
shared_buffers = 128MB
max_wal_size = 1GB
min_wal_size = 80MB
autovacuum = off
";

impl Options {
    /// A test's server: [`TEST_SETTINGS`], with `tls` if given.
    pub fn tests(tls: Option<&TlsFiles>) -> Self {
        Self {
            settings: TEST_SETTINGS.to_string(),
            tls: tls.cloned(),
            no_sync: true,
            prefix: "skor-pg-",
        }
    }

    /// A server whose throughput means something: [`DURABLE_SETTINGS`].
    pub fn durable() -> Self {
        Self {
            settings: DURABLE_SETTINGS.to_string(),
            tls: None,
            no_sync: false,
            prefix: "skor-bench-pg-",
        }
    }
}

/// A PostgreSQL server of our own, trust authentication for everyone,
/// user `postgres`.
pub struct PgServer {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

/// Where initdb and pg_ctl are: `SKOR_TEST_PG_BIN` (or the bench's
/// `SKOR_BENCH_PG_BIN`), `pg_config --bindir`, or the newest
/// /usr/lib/postgresql/*/bin.
fn bin_dir() -> Result<PathBuf, String> {
    for var in ["SKOR_TEST_PG_BIN", "SKOR_BENCH_PG_BIN"] {
        if let Some(dir) = std::env::var_os(var) {
            return Ok(dir.into());
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("PostgreSQL binaries in /usr/lib/postgresql ({e}): set SKOR_TEST_PG_BIN")
        })?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no initdb under /usr/lib/postgresql: set SKOR_TEST_PG_BIN".to_string())
}

/// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    Ok(listener.local_addr().unwrap().port())
}

impl PgServer {
    /// initdb, configure and start a test's server; with `tls`, `ssl =
    /// on` with those files. Blocking: a few seconds.
    pub fn start(tls: Option<&TlsFiles>) -> PgServer {
        Self::try_start(&Options::tests(tls)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// initdb, configure and start a server as `options` say. Blocking.
    pub fn try_start(options: &Options) -> Result<PgServer, String> {
        let dir = tempfile::Builder::new()
            .prefix(options.prefix)
            .tempdir()
            .map_err(|e| format!("temporary directory for PostgreSQL: {e}"))?;
        let mut server = PgServer {
            dir,
            port: 0,
            bin: bin_dir()?,
        };
        let data = server.data();
        let mut settings = format!(
            "\n# skor-testkit\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n{}",
            server.dir.path().display(),
            options.settings
        );
        if let Some(tls) = &options.tls {
            let cert = server.dir.path().join("server.crt");
            let key = server.dir.path().join("server.key");
            std::fs::copy(&tls.cert, &cert)
                .map_err(|e| format!("copy the server certificate: {e}"))?;
            std::fs::copy(&tls.key, &key).map_err(|e| format!("copy the server key: {e}"))?;
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod the server key: {e}"))?;
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err("chown the server directory to postgres failed".into());
            }
        }
        let mut initdb: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-A".as_ref(),
            "trust".as_ref(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
            "--locale=C".as_ref(),
        ];
        if options.no_sync {
            initdb.push("--no-sync".as_ref());
        }
        server.run_ok("initdb", &initdb)?;
        let conf = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(|e| format!("reading postgresql.conf: {e}"))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(|e| format!("writing postgresql.conf: {e}"))?;
        // Another process may take the free port before the server binds
        // it: try again on another.
        for attempt in 1.. {
            server.port = free_port()?;
            let started = server.pg_ctl_start()?;
            if started.status.success() {
                return Ok(server);
            }
            if attempt >= 3 {
                return Err(format!(
                    "PostgreSQL did not start: {}\n{}",
                    String::from_utf8_lossy(&started.stderr),
                    server.log()
                ));
            }
        }
        unreachable!()
    }

    /// `host=127.0.0.1 port=N user=postgres dbname=postgres`.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// The server as a libpq keyword DSN without dbname, like skor's
    /// `--dsn`.
    pub fn server_dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (`pg_ctl stop -m fast`); `start_again` brings it back.
    pub fn stop(&self) {
        let data = self.data();
        let stopped = self.run_ok(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
            ],
        );
        stopped.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        let started = self.pg_ctl_start().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.status.success(),
            "PostgreSQL did not start again: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            self.log()
        );
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<Output, String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let port = format!("-p {}", self.port);
        self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                port.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
            ],
        )
    }

    /// Runs a PostgreSQL program, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, String> {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            // postgres must be able to enter the working directory.
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let out = self.run(program, args)?;
        if !out.status.success() {
            return Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// The postmaster's pid while it runs.
    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data();
        if !data.join("postmaster.pid").exists() {
            return;
        }
        // The data is thrown away: no need for a clean shutdown.
        let _ = self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
            ],
        );
        if let Some(pid) = self.pid() {
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}
