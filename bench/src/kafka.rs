//! The Kafka cases: one tansu broker (in-memory storage) for the whole run,
//! a fresh one-partition topic per case, and a consumer thread per case
//! that reads it from the beginning.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use skor_sink_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use skor_sink_kafka::rdkafka::client::DefaultClientContext;
use skor_sink_kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use skor_sink_kafka::rdkafka::message::Message as _;
use skor_sink_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use skor_sink_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::arrivals::Arrivals;
use crate::skor::toml_string;

/// Where the tansu binary is: `$TANSU`, else the cache `scripts/services` fills.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/skor-ci/tansu/bin/tansu")
}

/// A tansu process, killed when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts tansu on a free port and waits for it; its output goes to
    /// `log` when given.
    pub async fn start(log: Option<&Path>) -> Result<Self> {
        let binary = tansu_binary();
        if !binary.is_file() {
            bail!(
                "no tansu binary at {} (run scripts/services, or set TANSU)",
                binary.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::File::create(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut tansu = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = tansu.child.try_wait()? {
                bail!("tansu exited with {status} before listening");
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on {url} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(tansu)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with one partition (tansu does not create topics on
    /// first use). Each case has its own: tansu's high watermark of a topic
    /// that already holds messages is not reliable (it reported 2 for 501
    /// messages), so a case cannot start reading where the last one ended.
    pub async fn create_topic(&self, topic: &str) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .context("Kafka admin client")?;
        let topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .context("creating the topic")?;
        for result in results {
            result.map_err(|(topic, code)| anyhow!("creating topic {topic}: {code}"))?;
        }
        Ok(())
    }

    /// The `[sink.bench]` table that produces to `topic`.
    pub fn sink(&self, topic: &str) -> String {
        format!(
            "[sink.bench]\ntype = \"kafka\"\nbrokers = {}\ntopic = {}\n",
            toml_string(&self.brokers()),
            toml_string(topic)
        )
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumer thread recording every message of a topic.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Without this, a case that failed would leave the thread polling.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Consumer {
    /// Starts reading `topic` from its beginning, and returns once the
    /// consumer is fetching.
    pub async fn start(brokers: &str, topic: &str, arrivals: Arc<Arrivals>) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("skor_bench_{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .context("Kafka consumer")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        // A plain thread: polling blocks, and dropping a consumer may hang,
        // which must not hold up the runtime.
        let (brokers, topic) = (brokers.to_string(), topic.to_string());
        std::thread::spawn(move || {
            let warm =
                assign(&consumer, &topic).and_then(|()| warm_up(&consumer, &brokers, &topic));
            let failed = warm.is_err();
            let _ = ready_tx.send(warm);
            if !failed {
                while !stopping.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let payload = message.payload().unwrap_or_default();
                    if payload != MARKER {
                        arrivals.record_event(payload, Instant::now());
                    }
                }
            }
            drop(consumer);
            let _ = done_tx.send(());
        });
        ready
            .await
            .context("the consumer thread died")?
            .map_err(|e| anyhow!(e))?;
        Ok(Self {
            stop,
            done: Some(done),
        })
    }

    /// Stops the thread, waiting a little for it to close the consumer.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(done) = self.done.take() {
            let _ = tokio::task::spawn_blocking(move || done.recv_timeout(Duration::from_secs(10)))
                .await;
        }
    }
}

/// What the bench produces to check that its consumer is fetching; not a
/// skor event, so never recorded.
const MARKER: &[u8] = b"skor-bench warm-up";

/// Assigns partition 0 of `topic` from its beginning; `assign`, not
/// `subscribe`, so no group rebalance is involved and dropping the
/// consumer does not hang.
fn assign(consumer: &BaseConsumer, topic: &str) -> Result<(), String> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&assignment))
        .map_err(|e| format!("assigning the partition: {e}"))
}

/// Produces [`MARKER`] and polls until the consumer reads it back, so the
/// time librdkafka takes to start fetching is not counted as skor's latency.
fn warm_up(consumer: &BaseConsumer, brokers: &str, topic: &str) -> Result<(), String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("Kafka producer: {e}"))?;
    producer
        .send(BaseRecord::<(), [u8]>::to(topic).payload(MARKER))
        .map_err(|(e, _)| format!("producing the warm-up message: {e}"))?;
    producer
        .flush(Duration::from_secs(10))
        .map_err(|e| format!("producing the warm-up message: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            if message.payload() == Some(MARKER) {
                return Ok(());
            }
        }
    }
    Err("the consumer did not read the warm-up message within 30 s".into())
}
