//! The MQTT case: a Mosquitto of the case's own (no queue limit, no
//! persistence) and a QoS 1 subscriber to the topics skor publishes to.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use skor_sink_mqtt::rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::arrivals::Arrivals;
use crate::skor::toml_string;

/// `$MOSQUITTO`, else Debian's /usr/sbin/mosquitto.
fn mosquitto_binary() -> PathBuf {
    std::env::var_os("MOSQUITTO")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"))
}

/// The broker and the subscriber of one case; the broker is killed when
/// this is dropped.
pub struct Consumer {
    broker: Child,
    port: u16,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.broker.kill();
        let _ = self.broker.wait();
    }
}

impl Consumer {
    /// Starts a broker on a free port, subscribes to everything under
    /// `skor_bench/` and waits for the SUBACK.
    pub async fn start(arrivals: Arc<Arrivals>) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        // Mosquitto keeps at most 1000 unsent QoS 1 messages per subscriber
        // by default and drops the rest; a burst outruns that.
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 0\n{}",
            if root { "user root\n" } else { "" }
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, config)?;
        let broker = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto, or set MOSQUITTO)")?;
        let mut consumer = Self {
            broker,
            port,
            task: tokio::spawn(async {}),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("mosquitto did not start on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut options = MqttOptions::new("skor-bench", "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        client
            .subscribe("skor_bench/#", QoS::AtLeastOnce)
            .await
            .context("subscribing")?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), event_loop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("subscribing to mosquitto: {e}"),
                Err(_) => bail!("no SUBACK from mosquitto in 10 s"),
            }
        }
        consumer.task = tokio::spawn(async move {
            // The client must live as long as its loop.
            let _client = client;
            while let Ok(event) = event_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    arrivals.record_event(&publish.payload, Instant::now());
                }
            }
        });
        Ok(consumer)
    }

    /// The `[sink.bench]` table that publishes to this broker.
    pub fn sink(&self) -> String {
        format!(
            "[sink.bench]\ntype = \"mqtt\"\nurl = {}\ntopic = \"skor_bench/{{schema}}/{{table}}/{{op}}\"\n",
            toml_string(&format!("mqtt://127.0.0.1:{}", self.port))
        )
    }
}
