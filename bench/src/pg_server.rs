//! A private PostgreSQL server for the wal cases: they need `wal_level =
//! logical`, which the shared server does not have and must not be
//! restarted for. initdb into a temporary directory, a free 127.0.0.1 port,
//! the shared server's durability settings (fsync, synchronous_commit and
//! full_page_writes on, as there), stopped and removed when dropped, also
//! when the run fails or is interrupted. As tests/it/common/pg_server.rs does:
//! as root, every PostgreSQL program runs as `postgres`.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

/// What the bench adds to initdb's postgresql.conf, besides the addresses:
/// the shared cluster's settings that change throughput (Debian's defaults
/// plus its autovacuum = off), and what wal mode needs. fsync,
/// synchronous_commit and full_page_writes stay at their defaults (on), as
/// on the shared server the other cases run on.
pub const SETTINGS: &str = "\
wal_level = logical
max_replication_slots = 8
max_wal_senders = 8
max_connections = 100
shared_buffers = 128MB
max_wal_size = 1GB
min_wal_size = 80MB
autovacuum = off
";

/// A running private server: trust authentication, user `postgres`.
pub struct PgServer {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

/// Where initdb and pg_ctl are: `SKOR_BENCH_PG_BIN`, `pg_config --bindir`,
/// or the newest /usr/lib/postgresql/*/bin.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SKOR_BENCH_PG_BIN") {
        return Ok(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("looking for initdb in /usr/lib/postgresql (or set SKOR_BENCH_PG_BIN)")?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no initdb under /usr/lib/postgresql: set SKOR_BENCH_PG_BIN"),
    }
}

/// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl PgServer {
    /// initdb, configure and start a server. Blocking: a few seconds.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("skor-bench-pg-")
            .tempdir()
            .context("temporary directory for the wal cases' server")?;
        let mut server = PgServer {
            dir,
            port: 0,
            bin: bin_dir()?,
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .context("chown")?;
            anyhow::ensure!(
                status.success(),
                "chown the server directory to postgres failed"
            );
        }
        let data = server.data();
        server.run_ok(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        )?;
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("reading postgresql.conf")?;
        text.push_str(&format!(
            "\n# skor-bench\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n{SETTINGS}",
            server.dir.path().display()
        ));
        std::fs::write(&conf, text).context("writing postgresql.conf")?;
        // Another process may take the free port before the server binds
        // it: try again on another.
        for attempt in 1.. {
            server.port = free_port()?;
            let started = server.pg_ctl_start()?;
            if started.status.success() {
                return Ok(server);
            }
            if attempt >= 3 {
                bail!(
                    "PostgreSQL did not start: {}\n{}",
                    String::from_utf8_lossy(&started.stderr),
                    server.log()
                );
            }
        }
        unreachable!()
    }

    /// The server as a libpq keyword DSN without dbname, like `--dsn`.
    pub fn dsn(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// The server's log so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> Result<Output> {
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
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output> {
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
            .with_context(|| format!("cannot run {}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
        let out = self.run(program, args)?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
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
        if data.join("postmaster.pid").exists() {
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
                    // SAFETY: kill(2) of the postmaster this guard started.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                }
            }
        }
        // The TempDir removes the directory after this.
    }
}
