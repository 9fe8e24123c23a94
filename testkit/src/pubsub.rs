//! A Pub/Sub emulator of the test's own (`gcloud beta emulators pubsub
//! start` on a free port, killed with its Java child when dropped), topics
//! and ordered subscriptions made over its REST API, messages pulled back
//! as a subscriber sees them, and a gate that can shut the emulator's
//! address off while it restarts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{eventually_within, PATIENCE};

/// How long the emulator (gcloud, then a JVM) may take to answer: a few
/// seconds on an idle machine, more while other builds run.
const STARTUP: Duration = Duration::from_secs(90);

/// The project every test publishes in; the emulator accepts any.
pub const PROJECT: &str = "skor-test";

/// `$GCLOUD`, else `gcloud` on the PATH.
fn gcloud() -> PathBuf {
    if let Ok(path) = std::env::var("GCLOUD") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("gcloud"))
                .find(|p| p.is_file())
        })
        .expect(
            "no gcloud: run scripts/services, which installs google-cloud-cli and \
             google-cloud-cli-pubsub-emulator from Google's apt repository",
        )
}

/// One message as a subscriber pulls it.
#[derive(Clone, Debug)]
pub struct Message {
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: String,
}

/// An emulator process group on a port of its own.
pub struct Emulator {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts an emulator and waits until it answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut emulator = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            http: reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .unwrap(),
        };
        emulator.spawn().await;
        emulator
    }

    async fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = std::fs::File::create(self.dir.path().join("emulator.log")).unwrap();
        let child = Command::new(gcloud())
            .args(["beta", "emulators", "pubsub", "start", "--quiet"])
            .arg(format!("--host-port=127.0.0.1:{}", self.port))
            .arg(format!("--data-dir={}", data.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that killing it takes the JVM too.
            .process_group(0)
            .spawn()
            .expect("start gcloud beta emulators pubsub");
        self.child = Some(child);
        let host = self.host();
        let log = self.dir.path().join("emulator.log");
        let (http, child) = (&self.http, &mut self.child);
        let what = format!("the Pub/Sub emulator answering on {host}");
        eventually_within(&what, STARTUP, || {
            if let Some(status) = child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("the Pub/Sub emulator exited with {status}: {log}");
            }
            http.get(format!("http://{host}/"))
                .timeout(Duration::from_secs(2))
                .send()
        })
        .await;
    }

    /// `127.0.0.1:PORT`, as `emulator_host` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills gcloud and the JVM; topics, subscriptions and messages go
    /// with them. Returns once the port is closed.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(self.addr()).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the emulator's port stays open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a fresh, empty emulator on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/v1/projects/{PROJECT}/{path}", self.host())
    }

    async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> Value {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{what}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates `topic` and a subscription `topic.sub` to it with message
    /// ordering enabled, as an ordered consumer needs.
    pub async fn create_topic(&self, topic: &str) {
        self.call(
            self.http.put(self.url(&format!("topics/{topic}"))),
            "create topic",
        )
        .await;
        let body = json!({
            "topic": format!("projects/{PROJECT}/topics/{topic}"),
            "enableMessageOrdering": true,
            "ackDeadlineSeconds": 60,
        });
        self.call(
            self.http
                .put(self.url(&format!("subscriptions/{topic}.sub")))
                .header("content-type", "application/json")
                .body(body.to_string()),
            "create subscription",
        )
        .await;
    }

    /// Pulls and acknowledges messages from `topic`'s subscription until
    /// `n` arrived, in the order the emulator hands them out.
    pub async fn pull(&self, topic: &str, n: usize) -> Vec<Message> {
        self.pull_within(topic, n, PATIENCE).await
    }

    pub async fn pull_within(&self, topic: &str, n: usize, patience: Duration) -> Vec<Message> {
        let messages = Mutex::new(Vec::new());
        eventually_within(&format!("{n} messages"), patience, || async {
            let got = self.pull_once(topic).await;
            let mut messages = messages.lock().unwrap();
            messages.extend(got);
            if messages.len() >= n {
                Ok(())
            } else {
                Err(format!("{} of {n} messages arrived", messages.len()))
            }
        })
        .await;
        messages.into_inner().unwrap()
    }

    /// What the subscription holds now, acknowledged.
    pub async fn pull_once(&self, topic: &str) -> Vec<Message> {
        let answer = self
            .call(
                self.http
                    .post(self.url(&format!("subscriptions/{topic}.sub:pull")))
                    .header("content-type", "application/json")
                    .body(json!({"maxMessages": 1000, "returnImmediately": true}).to_string()),
                "pull",
            )
            .await;
        let received = answer["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if received.is_empty() {
            return Vec::new();
        }
        let ack_ids: Vec<Value> = received.iter().map(|r| r["ackId"].clone()).collect();
        self.call(
            self.http
                .post(self.url(&format!("subscriptions/{topic}.sub:acknowledge")))
                .header("content-type", "application/json")
                .body(json!({ "ackIds": ack_ids }).to_string()),
            "acknowledge",
        )
        .await;
        received
            .iter()
            .map(|r| {
                let message = &r["message"];
                let data = base64::engine::general_purpose::STANDARD
                    .decode(message["data"].as_str().unwrap_or_default())
                    .expect("base64 data");
                Message {
                    body: String::from_utf8(data).expect("utf-8 payload"),
                    attributes: message["attributes"]
                        .as_object()
                        .map(|a| {
                            a.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().into()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    ordering_key: message["orderingKey"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                }
            })
            .collect()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP forwarder in front of the emulator whose port can be closed, so
/// that skor finds nothing listening (connections refused, open ones
/// reset), then opened again on the same port.
pub struct Gate {
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl Gate {
    pub async fn open_to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = Self {
            addr: listener.local_addr().unwrap(),
            target,
            running: Mutex::new(None),
        };
        gate.serve(listener);
        gate
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let target = self.target;
        let handle = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = stopped.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        *self.running.lock().unwrap() = Some((stop, handle));
    }

    /// Stops listening and cuts every connection through the gate.
    pub async fn close(&self) {
        let (stop, handle) = self.running.lock().unwrap().take().expect("open");
        stop.cancel();
        handle.await.unwrap();
    }

    /// Listens again on the same port.
    pub async fn open(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the gate's port is free again");
        self.serve(listener);
    }
}
