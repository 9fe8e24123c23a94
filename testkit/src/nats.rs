//! A JetStream stream of the test's own on the real NATS server, read back
//! message by message; and a private nats-server process for tests that
//! stop their server or need TLS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, eventually_within, wait_for_port, PATIENCE};
use skor_sink_nats::async_nats::jetstream::{self, stream};
use skor_sink_nats::async_nats::{self, Client};

/// The server the tests use.
pub fn url() -> String {
    std::env::var("SKOR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Connects to `url`, with the user and password it holds (async-nats
/// reads none from the URL).
pub async fn connect(url: &str) -> Result<Client, async_nats::ConnectError> {
    let addr: async_nats::ServerAddr = url.parse().expect("a NATS URL");
    let options = match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        }
        _ => async_nats::ConnectOptions::new(),
    };
    options.connect(addr).await
}

/// A random name for a stream and its subject prefix.
pub fn unique_name() -> String {
    format!("skor_test_{:016x}", rand::random::<u64>())
}

/// One message as a consumer of the stream sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub body: String,
    pub subject: String,
    pub sequence: u64,
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// The `data.id` of the payload.
    pub fn row_id(&self) -> i64 {
        crate::row_id(&self.body)
    }
}

/// A file-backed stream over `<name>.>`, deleted by `delete`.
pub struct Stream {
    client: Client,
    jetstream: jetstream::Context,
    /// The stream's name, also the prefix of its subjects.
    pub name: String,
    /// The server it lives on.
    pub url: String,
    /// The next sequence `take` reads.
    next: std::sync::atomic::AtomicU64,
}

impl Stream {
    /// A stream on the shared server.
    pub async fn new() -> Self {
        Self::on(&url()).await
    }

    /// A stream on the server at `url`.
    pub async fn on(url: &str) -> Self {
        let client = connect(url).await.expect("connect to NATS");
        let jetstream = jetstream::new(client.clone());
        let name = unique_name();
        let stream = Self {
            client,
            jetstream,
            name,
            url: url.to_string(),
            next: 1.into(),
        };
        stream.create().await;
        stream
    }

    /// Creates the stream (again, after its server lost it).
    pub async fn create(&self) {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: self.name.clone(),
                subjects: vec![format!("{}.>", self.name)],
                storage: stream::StorageType::File,
                ..stream::Config::default()
            })
            .await
            .expect("create stream");
    }

    /// Connects again, after the server restarted.
    pub async fn reconnect(&mut self) {
        let url = &self.url;
        self.client = eventually("a connection to NATS again", || connect(url)).await;
        self.jetstream = jetstream::new(self.client.clone());
    }

    /// The `[sink.bus]` table of a NATS sink publishing into this stream.
    pub fn sink(&self, options: &str) -> String {
        format!(
            "[sink.bus]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{}.{{schema}}.{{table}}.{{op}}\"\n{options}\n",
            self.url, self.name
        )
    }

    /// How many messages the stream holds.
    pub async fn count(&self) -> u64 {
        let stream = self.jetstream.get_stream(&self.name).await.expect("stream");
        stream.get_info().await.expect("stream info").state.messages
    }

    /// Reads the next `n` messages, waiting for them to be stored.
    pub async fn take(&self, n: usize) -> Vec<Message> {
        self.take_within(n, PATIENCE).await
    }

    /// Reads the next `n` messages, waiting at most `patience`.
    pub async fn take_within(&self, n: usize, patience: Duration) -> Vec<Message> {
        use std::sync::atomic::Ordering;
        let first = self.next.load(Ordering::Relaxed);
        let last = first + n as u64 - 1;
        let stream = self.jetstream.get_stream(&self.name).await.expect("stream");
        eventually_within(&format!("{n} messages"), patience, || async {
            let stored = stream
                .get_info()
                .await
                .expect("stream info")
                .state
                .last_sequence;
            if stored >= last {
                Ok(())
            } else {
                Err(format!(
                    "{} of {n} messages arrived",
                    stored.saturating_sub(first - 1)
                ))
            }
        })
        .await;
        let mut messages = Vec::with_capacity(n);
        for sequence in first..=last {
            let raw = stream.get_raw_message(sequence).await.expect("get message");
            let headers = raw
                .headers
                .iter()
                .map(|(name, values)| (name.to_string(), values[0].to_string()))
                .collect();
            messages.push(Message {
                body: String::from_utf8(raw.payload.to_vec()).expect("UTF-8 body"),
                subject: raw.subject.to_string(),
                sequence,
                headers,
            });
        }
        self.next.store(last + 1, Ordering::Relaxed);
        messages
    }

    /// Every message still unread, without waiting.
    pub async fn rest(&self) -> Vec<Message> {
        let first = self.next.load(std::sync::atomic::Ordering::Relaxed);
        let stream = self.jetstream.get_stream(&self.name).await.expect("stream");
        let last = stream
            .get_info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        if last < first {
            return Vec::new();
        }
        self.take((last - first + 1) as usize).await
    }

    /// Deletes the stream.
    pub async fn delete(self) {
        let _ = self.jetstream.delete_stream(&self.name).await;
    }
}

/// Deletes the stream `name` on `url`, if there is one.
pub async fn delete_stream(url: &str, name: &str) {
    if let Ok(client) = connect(url).await {
        let _ = jetstream::new(client).delete_stream(name).await;
    }
}

/// A nats-server of the test's own with JetStream, storing in a temporary
/// directory, on a free 127.0.0.1 port; killed when dropped.
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

/// Where nats-server is: `$NATS_SERVER`, else the Debian package's path,
/// else the PATH.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let debian = Path::new("/usr/sbin/nats-server");
    if debian.exists() {
        return debian.into();
    }
    "nats-server".into()
}

impl NatsServer {
    /// Starts a server with `args` added to its command line (TLS options).
    pub async fn start(args: &[String]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = Self {
            dir: tempfile::Builder::new()
                .prefix("skor-nats-")
                .tempdir()
                .expect("temp dir"),
            port,
            args: args.to_vec(),
            child: None,
        };
        server.start_again().await;
        server
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the stopped server again, on the same port with the same
    /// storage, and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_for_port("nats-server", self.port).await;
    }

    /// Stops the server the way an init system does (SIGTERM), so
    /// JetStream writes what it acknowledged, and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
