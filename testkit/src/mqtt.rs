//! MQTT for the tests: a subscriber on a topic prefix of the test's own on
//! the shared Mosquitto, and a private Mosquitto to stop and start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{eventually, eventually_within, PATIENCE};
use skor_sink_mqtt::rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The shared broker's `host:port`.
pub fn shared_broker() -> (String, u16) {
    let host = std::env::var("SKOR_TEST_MQTT_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("SKOR_TEST_MQTT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1883);
    (host, port)
}

/// A topic prefix no other test uses.
pub fn prefix() -> String {
    format!("skor_test/{:016x}", rand::random::<u64>())
}

/// One message as a subscriber sees it.
#[derive(Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub body: String,
    pub qos: QoS,
    pub retain: bool,
}

struct Inbox {
    messages: Mutex<Vec<Message>>,
    arrived: Notify,
    subscribed: AtomicBool,
}

/// A subscriber to `filter`, collecting every message; with a persistent
/// session it reconnects after the broker restarts and gets what the
/// broker kept for it meanwhile.
pub struct Subscriber {
    client: AsyncClient,
    inbox: Arc<Inbox>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes with QoS 1 and a clean session.
    pub async fn new(host: &str, port: u16, filter: &str) -> Self {
        Self::with(host, port, filter, QoS::AtLeastOnce, true).await
    }

    /// Subscribes with `qos`; `clean = false` keeps the session (and its
    /// queued messages) on the broker while the subscriber is away.
    pub async fn with(host: &str, port: u16, filter: &str, qos: QoS, clean: bool) -> Self {
        let id = format!(
            "skor-test-{:012x}",
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(clean)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        let inbox = Arc::new(Inbox {
            messages: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            subscribed: AtomicBool::new(false),
        });
        let collected = Arc::clone(&inbox);
        let resubscribe = client.clone();
        let topic = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        collected.messages.lock().unwrap().push(Message {
                            topic: publish.topic.clone(),
                            body: String::from_utf8_lossy(&publish.payload).into_owned(),
                            qos: publish.qos,
                            retain: publish.retain,
                        });
                        collected.arrived.notify_waiters();
                    }
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        // A new session has no subscription yet.
                        let _ = resubscribe.try_subscribe(topic.clone(), qos);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        assert!(
                            ack.return_codes
                                .iter()
                                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                            "subscription refused: {ack:?}"
                        );
                        collected.subscribed.store(true, Ordering::Release);
                        collected.arrived.notify_waiters();
                    }
                    Ok(_) => {}
                    // The broker is down: poll again to reconnect.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let subscriber = Self {
            client,
            inbox,
            task,
        };
        subscriber
            .wait("the subscription", |inbox| {
                inbox.subscribed.load(Ordering::Acquire)
            })
            .await;
        subscriber
    }

    async fn wait(&self, what: &str, done: impl Fn(&Inbox) -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                let arrived = self.inbox.arrived.notified();
                if done(&self.inbox) {
                    return;
                }
                // Woken by a message, or after a while to look again.
                let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}");
    }

    /// Waits until at least `n` messages arrived and returns them all.
    pub async fn take(&self, n: usize) -> Vec<Message> {
        self.take_within(n, PATIENCE).await
    }

    /// Waits at most `patience` until at least `n` messages arrived.
    pub async fn take_within(&self, n: usize, patience: Duration) -> Vec<Message> {
        eventually_within(&format!("{n} messages"), patience, || async {
            let got = self.messages();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} of {n} messages arrived", got.len()))
            }
        })
        .await
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Message> {
        self.inbox.messages.lock().unwrap().clone()
    }

    /// Publishes an empty retained message to `topic`, which clears what
    /// the broker retained there.
    pub async fn clear_retained(&self, topic: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await
            .expect("queue the clearing publish");
    }

    /// Disconnects, ending a persistent session's connection too.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        // Let the loop send DISCONNECT before it stops.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

/// A Mosquitto of the test's own on a free 127.0.0.1 port, with
/// persistence in a temporary directory, so that a restart keeps the
/// sessions and the messages queued for them; killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker that lets anyone in; `extra` lines go to its config.
    pub async fn start(extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skor-mqtt-")
            .tempdir()
            .expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}/\n\
             max_queued_messages 0\n\
             log_dest file {}\n\
             {}{extra}\n",
            dir.path().display(),
            dir.path().join("mosquitto.log").display(),
            // As root, Mosquitto switches to its own user, which could not
            // write the temporary directory.
            if root { "user root\n" } else { "" },
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        let mut broker = Self {
            child: None,
            port,
            dir,
        };
        broker.spawn().await;
        broker
    }

    /// The temporary directory, for files the config names.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn spawn(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let port = self.port;
        let log = self.dir.path().join("mosquitto.log");
        let child = &mut self.child;
        eventually(&format!("mosquitto listening on port {port}"), || {
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("mosquitto exited with {status}: {log}");
            }
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(drop)
            }
        })
        .await;
    }

    /// The broker's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker cleanly (SIGTERM), so it saves its sessions and
    /// queued messages, and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with what it saved.
    pub async fn start_again(&mut self) {
        self.spawn().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `$MOSQUITTO`, else `mosquitto` on the PATH, else Debian's /usr/sbin.
fn mosquitto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MOSQUITTO") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("mosquitto"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}
