//! Redis streams of the test's own on the shared server, and private
//! `redis-server` processes for the tests that stop the server or need
//! TLS or a password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{eventually_within, wait_for_port, PATIENCE};
use skor_sink_redis::redis::{self, Commands, Value};

/// The server the tests share.
pub fn url() -> String {
    std::env::var("SKOR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One stream entry as a consumer sees it with XRANGE.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The id the server gave the entry (`1700000000000-0`).
    pub id: String,
    /// Its fields, in the order they were written.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The value of `field`.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, value)| value.as_str())
    }

    /// The `payload` field.
    pub fn payload(&self) -> &str {
        self.get("payload").expect("a payload field")
    }

    /// The field names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Streams named `<prefix>:...` on one server, deleted when dropped.
pub struct Streams {
    /// The random prefix of every stream this test uses.
    pub prefix: String,
    url: String,
    client: redis::Client,
}

impl Streams {
    /// A fresh prefix on the shared server.
    // Not Default: each call makes a new prefix and a client.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self::on(&url())
    }

    /// A fresh prefix on the server at `url`.
    pub fn on(url: &str) -> Self {
        Self {
            prefix: format!("skor_test_{:016x}", rand::random::<u64>()),
            url: url.to_string(),
            client: redis::Client::open(url).expect("a Redis URL"),
        }
    }

    /// The name of this test's stream for `table`, as the default
    /// [`Streams::sink`] template names it.
    pub fn stream(&self, table: &str) -> String {
        format!("{}:{table}", self.prefix)
    }

    /// A `[sink.bus]` table appending to `<prefix>:{table}`, with `options` added.
    pub fn sink(&self, options: &str) -> String {
        format!(
            "[sink.bus]\ntype = \"redis\"\nurl = \"{}\"\nstream = \"{}:{{table}}\"\n{options}\n",
            self.url, self.prefix
        )
    }

    fn connection(&self) -> redis::Connection {
        self.client
            .get_connection_with_timeout(PATIENCE)
            .expect("connect to Redis")
    }

    /// Runs one command on the server.
    pub fn command(&self, cmd: &redis::Cmd) -> Value {
        cmd.query(&mut self.connection()).expect("a Redis command")
    }

    /// How many entries `stream` holds.
    pub fn len(&self, stream: &str) -> usize {
        redis::cmd("XLEN")
            .arg(stream)
            .query(&mut self.connection())
            .expect("XLEN")
    }

    /// Every entry of `stream`, oldest first.
    pub fn entries(&self, stream: &str) -> Vec<Entry> {
        let reply = self.command(redis::cmd("XRANGE").arg(stream).arg("-").arg("+"));
        let Value::Array(entries) = reply else {
            panic!("XRANGE answered {reply:?}");
        };
        entries.into_iter().map(to_entry).collect()
    }

    /// Waits until `stream` holds at least `n` entries and returns them all.
    pub async fn take(&self, stream: &str, n: usize) -> Vec<Entry> {
        eventually_within(&format!("{n} entries in {stream}"), PATIENCE * 2, || {
            let len = self.len(stream);
            std::future::ready(if len >= n {
                Ok(())
            } else {
                Err(format!("{len} of {n} entries arrived"))
            })
        })
        .await;
        self.entries(stream)
    }

    /// Deletes every key under the prefix.
    pub fn delete(&self) {
        let Ok(mut connection) = self.client.get_connection_with_timeout(PATIENCE) else {
            return;
        };
        let keys: Vec<String> = connection
            .keys(format!("{}:*", self.prefix))
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = connection.del(keys);
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.delete();
    }
}

fn text(value: Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).expect("UTF-8"),
        Value::SimpleString(text) => text,
        other => panic!("expected a string, got {other:?}"),
    }
}

fn to_entry(value: Value) -> Entry {
    let Value::Array(mut parts) = value else {
        panic!("an entry is [id, fields], got {value:?}");
    };
    let Value::Array(flat) = parts.pop().expect("fields") else {
        panic!("fields are a flat array");
    };
    let id = text(parts.pop().expect("an id"));
    let mut fields = Vec::new();
    let mut flat = flat.into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        fields.push((text(name), text(value)));
    }
    Entry { id, fields }
}

/// A `redis-server` of the test's own, on a free port, killed when dropped.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on (the TLS port when it has TLS).
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Server {
    /// A plain server that writes every entry to its append-only file
    /// before answering, so a restart keeps every acknowledged entry.
    pub async fn start() -> Self {
        Self::with_args(&[]).await
    }

    /// A server with `args` added to its command line.
    pub async fn with_args(args: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn().await;
        server
    }

    /// A server that speaks only TLS, with `cert`/`key` (PEM text) and
    /// clients checked against `client_ca` when given.
    pub async fn tls(cert: &str, key: &str, client_ca: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let cert = write("server.pem", cert);
        let key = write("server.key", key);
        let mut args = vec![
            "--tls-cert-file".to_string(),
            cert,
            "--tls-key-file".into(),
            key,
        ];
        match client_ca {
            Some(ca) => {
                args.extend(["--tls-ca-cert-file".into(), write("clients.pem", ca)]);
                args.extend(["--tls-auth-clients".into(), "yes".into()]);
            }
            None => args.extend(["--tls-auth-clients".into(), "no".into()]),
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        args.extend([
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
        ]);
        let mut server = Self {
            child: None,
            port,
            dir,
            args,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            // Later arguments win: a TLS server sets --port 0 here.
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(command.spawn().expect("start redis-server"));
        wait_for_port("redis-server", self.port).await;
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A file in the server's directory, for TLS files a test writes.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server the way an operator would (SIGTERM: it finishes
    /// its append-only file and exits) and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory: it reloads
    /// its append-only file.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
