//! A private PostgreSQL server for tests that need one of their own: with
//! TLS, to stop and start again, or to decode its WAL (`wal_level =
//! logical`, which the shared server does not have). It lives in a temporary directory, on a
//! free 127.0.0.1 port, and is stopped and removed when dropped.

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

/// A PostgreSQL server of the test's own, trust authentication for
/// everyone, user `postgres`.
pub struct PgServer {
    dir: TempDir,
    port: u16,
    bin: PathBuf,
}

/// Where initdb and pg_ctl are: `SKOR_TEST_PG_BIN`, `pg_config --bindir`,
/// or the newest /usr/lib/postgresql/*/bin.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SKOR_TEST_PG_BIN") {
        return dir.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries: set SKOR_TEST_PG_BIN")
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
        .expect("no initdb under /usr/lib/postgresql: set SKOR_TEST_PG_BIN")
        .1
}

/// PostgreSQL refuses to run as root, so as root it runs as `postgres`.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

impl PgServer {
    /// initdb, configure and start a server; with `tls`, `ssl = on` with
    /// those files.
    pub fn start(tls: Option<&TlsFiles>) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("skor-pg-")
            .tempdir()
            .expect("temporary directory");
        let mut server = PgServer {
            dir,
            port: 0,
            bin: bin_dir(),
        };
        let data = server.data();
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 16MB\nmax_connections = 30\n\
             wal_level = logical\nmax_replication_slots = 8\nmax_wal_senders = 8\n",
            server.dir.path().display()
        );
        if let Some(tls) = tls {
            let cert = server.dir.path().join("server.crt");
            let key = server.dir.path().join("server.key");
            std::fs::copy(&tls.cert, &cert).expect("copy the server certificate");
            std::fs::copy(&tls.key, &key).expect("copy the server key");
            // PostgreSQL refuses a key others can read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
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
                .expect("chown");
            assert!(status.success(), "chown the server directory to postgres");
        }
        server.run_ok(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();
        // Another process may take the free port before the server binds
        // it: try again on another.
        for attempt in 1.. {
            server.port = free_port();
            let started = server.pg_ctl_start();
            if started.status.success() {
                return server;
            }
            assert!(
                attempt < 3,
                "PostgreSQL did not start: {}\n{}",
                String::from_utf8_lossy(&started.stderr),
                server.log()
            );
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

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (`pg_ctl stop -m fast`); `start_again` brings it back.
    pub fn stop(&self) {
        let data = self.data();
        self.run_ok(
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
    }

    /// Starts the stopped server again, on the same port with the same data.
    pub fn start_again(&self) {
        let started = self.pg_ctl_start();
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

    fn pg_ctl_start(&self) -> Output {
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
                "30".as_ref(),
            ],
        )
    }

    /// Runs a PostgreSQL program, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
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
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
