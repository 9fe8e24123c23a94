//! The Pub/Sub case: one emulator (`gcloud beta emulators pubsub start`)
//! for the whole run, a topic and an ordered subscription per case, and
//! pullers that acknowledge what they record.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;
use crate::skor::toml_string;

/// The project the bench publishes in; the emulator accepts any.
const PROJECT: &str = "skor-bench";

/// Pull requests in flight at once: one emulator answer carries at most
/// 1000 messages, and the receiver must not be the bottleneck.
const PULLERS: usize = 4;

/// An emulator process group, killed when dropped.
pub struct Emulator {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts the emulator on a free port and waits until it answers.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.path().join("emulator.log"))?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new("gcloud")
                .args(["beta", "emulators", "pubsub", "start", "--quiet"])
                .arg(format!("--host-port=127.0.0.1:{port}"))
                .arg(format!("--data-dir={}", data.display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
            0,
        )
        .spawn()
        .context("starting gcloud beta emulators pubsub (run scripts/services)")?;
        let mut emulator = Self {
            child,
            port,
            _dir: dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answered = emulator
                .http
                .get(format!("http://127.0.0.1:{port}/"))
                .send()
                .await
                .is_ok();
            if answered {
                return Ok(emulator);
            }
            if let Some(status) = emulator.child.try_wait()? {
                bail!("the Pub/Sub emulator exited with {status} before answering");
            }
            if Instant::now() > deadline {
                bail!("the Pub/Sub emulator did not answer on port {port} within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/v1/projects/{PROJECT}/{path}",
            self.port
        )
    }

    /// Creates `topic` and its subscription `topic.sub`, with message ordering.
    pub async fn create_topic(&self, topic: &str) -> Result<()> {
        put(&self.http, &self.url(&format!("topics/{topic}")), json!({})).await?;
        let subscription = json!({
            "topic": format!("projects/{PROJECT}/topics/{topic}"),
            "enableMessageOrdering": ordered(),
            "ackDeadlineSeconds": 60,
        });
        put(
            &self.http,
            &self.url(&format!("subscriptions/{topic}.sub")),
            subscription,
        )
        .await
    }

    /// The `[sink.bench]` table that publishes to `topic`.
    pub fn sink(&self, topic: &str) -> String {
        format!(
            "[sink.bench]\ntype = \"pubsub\"\nproject = {}\ntopic = {}\nemulator_host = {}\n",
            toml_string(PROJECT),
            toml_string(topic),
            toml_string(&format!("127.0.0.1:{}", self.port))
        )
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // gcloud leaves its JVM behind unless the whole group goes.
        unsafe {
            libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

async fn put(http: &reqwest::Client, url: &str, body: Value) -> Result<()> {
    let response = http
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    if !response.status().is_success() {
        bail!(
            "PUT {url}: HTTP {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Pullers recording every message of a subscription.
pub struct Consumer {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Consumer {
    /// Starts pulling `topic`'s subscription.
    pub fn start(emulator: &Emulator, topic: &str, arrivals: Arc<Arrivals>) -> Self {
        let pull = emulator.url(&format!("subscriptions/{topic}.sub:pull"));
        let ack = emulator.url(&format!("subscriptions/{topic}.sub:acknowledge"));
        let tasks = (0..PULLERS)
            .map(|_| {
                let (http, pull, ack) = (emulator.http.clone(), pull.clone(), ack.clone());
                let arrivals = Arc::clone(&arrivals);
                tokio::spawn(async move {
                    loop {
                        if pull_once(&http, &pull, &ack, &arrivals).await == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }

    /// Stops pulling.
    pub async fn stop(self) {
        drop(self);
    }
}

/// One pull: records and acknowledges what came; returns how many.
async fn pull_once(http: &reqwest::Client, pull: &str, ack: &str, arrivals: &Arrivals) -> usize {
    let request = json!({"maxMessages": 1000, "returnImmediately": true});
    let Ok(response) = http
        .post(pull)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
    else {
        return 0;
    };
    let Ok(body) = response.bytes().await else {
        return 0;
    };
    let at = Instant::now();
    let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
        return 0;
    };
    let received = answer["receivedMessages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut ack_ids = Vec::with_capacity(received.len());
    for message in received {
        let data = message["message"]["data"].as_str().unwrap_or_default();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default();
        arrivals.record_event(&payload, at);
        ack_ids.push(message["ackId"].clone());
    }
    if !ack_ids.is_empty() {
        let _ = http
            .post(ack)
            .header("content-type", "application/json")
            .body(json!({ "ackIds": ack_ids }).to_string())
            .send()
            .await;
    }
    received.len()
}

/// Whether the case's subscription orders by key: `SKOR_BENCH_PUBSUB_ORDERED=0`
/// turns it off, to tell the emulator's ordering cost from skor's.
fn ordered() -> bool {
    std::env::var("SKOR_BENCH_PUBSUB_ORDERED").map_or(true, |v| v != "0")
}
