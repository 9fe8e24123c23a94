//! A tansu broker (Kafka protocol, in-memory storage) of the test's own,
//! started from the binary that the CI script builds once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{wait_for_port, PATIENCE};
use skor_sink_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use skor_sink_kafka::rdkafka::client::DefaultClientContext;
use skor_sink_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use skor_sink_kafka::rdkafka::message::{Headers, Message as _};
use skor_sink_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Where the tansu binary is: `$TANSU`, else `tansu` on the PATH, else the
/// cache the CI script fills.
fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU") {
        return PathBuf::from(path);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cached = PathBuf::from(home).join(".cache/skor-ci/tansu/bin/tansu");
    assert!(
        cached.is_file(),
        "no tansu binary: run scripts/services (it builds tansu once into ~/.cache/skor-ci) or set TANSU"
    );
    cached
}

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub body: String,
    pub key: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub headers: BTreeMap<String, String>,
}

/// A broker process on a port of its own, killed when dropped.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker and waits until it accepts connections.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut tansu = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        tansu.spawn().await;
        tansu
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(&format!("tansu ({url})"), self.port).await;
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker; its in-memory topics and messages go with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused broker must go on to die.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("tansu runs").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts a fresh broker on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Creates a topic (tansu does not create them on first use).
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topic");
        for result in results {
            result.expect("topic created");
        }
    }

    /// Reads `n` messages from every partition of `topic`, from the start.
    pub async fn consume(&self, topic: &str, partitions: i32, n: usize) -> Vec<Message> {
        self.consume_within(topic, partitions, n, PATIENCE).await
    }

    /// Reads messages from the start until `n` arrived or `patience` passed.
    pub async fn consume_within(
        &self,
        topic: &str,
        partitions: i32,
        n: usize,
        patience: Duration,
    ) -> Vec<Message> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let brokers = self.brokers();
        let topic = topic.to_string();
        // A plain thread, not spawn_blocking: if dropping the consumer
        // hangs, it must not hold up the test runtime's shutdown.
        std::thread::spawn(move || {
            let messages = read(&brokers, &topic, partitions, n, patience);
            let _ = tx.send(messages);
        });
        let messages = tokio::time::timeout(patience + Duration::from_secs(10), rx)
            .await
            .expect("the consumer thread answers")
            .expect("the consumer thread sends its messages");
        assert!(
            messages.len() >= n,
            "{} of {n} messages arrived in {patience:?}",
            messages.len()
        );
        messages
    }
}

fn read(brokers: &str, topic: &str, partitions: i32, n: usize, patience: Duration) -> Vec<Message> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("skor_test_{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&assignment).expect("assign partitions");
    let deadline = std::time::Instant::now() + patience;
    let mut messages = Vec::new();
    while messages.len() < n && std::time::Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = result else {
            continue;
        };
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_string(), value.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        messages.push(Message {
            body: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            topic: message.topic().to_string(),
            partition: message.partition(),
            headers,
        });
    }
    messages
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}
