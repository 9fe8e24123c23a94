//! Publishing over one MQTT connection whose acks are matched to events.
//!
//! rumqttc's `publish` returns once the request is queued for its event
//! loop, with no per-publish answer. The loop runs in a task of ours; it
//! assigns packet ids in the order requests were queued and reports each
//! as `Outgoing::Publish(pkid)`, so the n-th such report belongs to the
//! n-th publish queued, and a PUBACK (QoS 1) or PUBCOMP (QoS 2) with that
//! id confirms that event. When the connection is lost, every publish not
//! yet acked fails as `disconnected`, the loop is dropped, and the next
//! event opens a new connection with a clean session: skor re-sends what
//! was not confirmed itself, so it needs nothing kept by the broker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectionError, Event as LoopEvent, EventLoop, MqttOptions, Outgoing, Packet,
    QoS, StateError, TlsConfiguration, Transport,
};
use skor_sink_api::{Confirmation, Event, Sink, SinkError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::MqttConfig;
use crate::tls::tls_config;
use crate::url::{self, Endpoint};

/// The largest packet MQTT can carry (its remaining length's limit).
const MAX_PACKET: usize = 268_435_455;

/// Why an MQTT sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not an MQTT URL.
    #[error("url {url}: {reason}")]
    Url {
        /// The URL, its password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another option has a value the sink cannot use.
    #[error("{message}")]
    Option {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A TLS option is misused, or its file is missing or not what it
    /// should be.
    #[error("{key}: {message}")]
    Tls {
        /// The config key at fault.
        key: &'static str,
        /// What is wrong, naming the file.
        message: String,
    },
}

/// Which event a pending publish carries: notify-mode events by the
/// listener's number, durable ones by their log id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventKey {
    id: Option<i64>,
    seq: u64,
}

impl EventKey {
    fn of(event: &Event) -> Self {
        Self {
            id: event.id,
            seq: event.seq,
        }
    }
}

/// A publish awaiting its ack, and where to send the answer.
struct Waiter {
    key: EventKey,
    answer: oneshot::Sender<Result<(), SinkError>>,
}

/// The publishes of the current connection, and the events whose publish
/// failed with a lost connection and have not been sent again yet.
#[derive(Default)]
struct Tracker {
    /// Which connection the publishes below belong to.
    generation: u64,
    /// Queued for the event loop, packet id not yet known; in order.
    queued: VecDeque<Waiter>,
    /// Written with this packet id, awaiting the ack; in order.
    written: VecDeque<(u16, Waiter)>,
    /// The publish rumqttc holds back because its packet id is still in use
    /// (a broker that acked out of order); written when that id is acked.
    collided: Option<(u16, Waiter)>,
    /// Why the current connection ended; `Some` until the next one opens.
    lost: Option<String>,
    /// Events whose publish failed when a connection was lost, in the
    /// order they were published. Until each is published again, a later
    /// event is held back too, so it cannot overtake one of its own row
    /// on the new connection: the worker re-sends the failed events in
    /// order, oldest first.
    backlog: VecDeque<EventKey>,
}

impl Tracker {
    /// Fails every publish of connection `generation` with `reason`,
    /// remembers their events for the backlog, and marks it lost.
    fn lose(&mut self, generation: u64, reason: &str) -> usize {
        if self.generation != generation || self.lost.is_some() {
            return 0;
        }
        self.lost = Some(reason.to_string());
        let mut waiters: Vec<Waiter> = self.written.drain(..).map(|(_, w)| w).collect();
        waiters.extend(self.collided.take().map(|(_, w)| w));
        waiters.extend(self.queued.drain(..));
        let failed = waiters.len();
        for waiter in waiters {
            self.backlog.push_back(waiter.key);
            let _ = waiter.answer.send(Err(SinkError::disconnected(format!(
                "{reason}; not acked, so it is sent again"
            ))));
        }
        failed
    }

    /// Settles the written publish with packet id `pkid`, found from the
    /// front, where an in-order broker's ack always points.
    fn acked(&mut self, pkid: u16) {
        if let Some(at) = self.written.iter().position(|(id, _)| *id == pkid) {
            if let Some((_, waiter)) = self.written.remove(at) {
                let _ = waiter.answer.send(Ok(()));
            }
        }
    }
}

/// An open connection: the client that queues requests, and the task that
/// polls its event loop.
struct Link {
    client: AsyncClient,
    generation: u64,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes events to the topics its template names.
pub struct MqttSink {
    config: MqttConfig,
    endpoint: Endpoint,
    options: MqttOptions,
    qos: QoS,
    tracker: Arc<Mutex<Tracker>>,
    /// The connection; held while an event is handed over, so events are
    /// queued in the order `submit` was called.
    link: tokio::sync::Mutex<Option<Link>>,
}

/// `skor-` and a token unique to this process and sink, 23 characters at
/// most, the length every MQTT 3.1.1 broker must accept.
fn default_client_id() -> String {
    static SINKS: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let token = (millis ^ (u64::from(std::process::id()) << 36)) & 0xffff_ffff_ffff;
    let sink = SINKS.fetch_add(1, Ordering::Relaxed);
    format!("skor-{token:012x}-{sink:x}")
}

impl MqttSink {
    /// Checks the config and reads the TLS files; the connection is opened
    /// by the first event.
    pub fn new(config: &MqttConfig) -> Result<Self, MqttError> {
        let endpoint = url::parse(config.url.expose()).map_err(|reason| MqttError::Url {
            url: config.redacted_url(),
            reason,
        })?;
        let qos = match config.qos {
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            0 => {
                return Err(MqttError::Option {
                    key: "qos",
                    message: "QoS 0 is fire-and-forget: the broker never confirms a message, so \
                              skor could not know it was delivered; use 1 or 2"
                        .into(),
                })
            }
            other => {
                return Err(MqttError::Option {
                    key: "qos",
                    message: format!("expected 1 or 2, got {other}"),
                })
            }
        };
        if !(1..=u64::from(u16::MAX)).contains(&config.keep_alive_secs) {
            return Err(MqttError::Option {
                key: "keep_alive_secs",
                message: format!(
                    "expected 1 to 65535 seconds, got {}",
                    config.keep_alive_secs
                ),
            });
        }
        if config.inflight == 0 {
            return Err(MqttError::Option {
                key: "inflight",
                message: "expected 1 to 65535, got 0".into(),
            });
        }
        if config.username.is_some() && endpoint.username.is_some() {
            return Err(MqttError::Option {
                key: "username",
                message: "the url has a user name already; set it in one place".into(),
            });
        }
        if config.password.is_some() && endpoint.password.is_some() {
            return Err(MqttError::Option {
                key: "password",
                message: "the url has a password already; set it in one place".into(),
            });
        }
        let client_id = config.client_id.clone().unwrap_or_else(default_client_id);
        if client_id.is_empty() || client_id.len() > usize::from(u16::MAX) {
            return Err(MqttError::Option {
                key: "client_id",
                message: "expected 1 to 65535 bytes".into(),
            });
        }
        let tls = tls_config(config, endpoint.tls || config.tls)?;
        // rumqttc resolves `host:port` as one string, so an IPv6 address
        // goes in brackets; with TLS it also names the server, which
        // brackets would spoil.
        let host = if endpoint.host.contains(':') {
            if tls.is_some() {
                return Err(MqttError::Url {
                    url: config.redacted_url(),
                    reason: "TLS to an IPv6 address is not supported: use a host name".into(),
                });
            }
            format!("[{}]", endpoint.host)
        } else {
            endpoint.host.clone()
        };
        let mut options = MqttOptions::new(client_id, host, endpoint.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
            .set_clean_session(true)
            .set_inflight(config.inflight)
            // Incoming packets are acks; outgoing ones carry whole payloads.
            .set_max_packet_size(64 * 1024, MAX_PACKET);
        let username = config
            .username
            .clone()
            .or_else(|| endpoint.username.clone());
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().clone())
            .or_else(|| endpoint.password.clone());
        match (username, password) {
            (Some(user), password) => {
                options.set_credentials(user, password.unwrap_or_default());
            }
            (None, Some(_)) => {
                return Err(MqttError::Option {
                    key: "password",
                    message: "a password needs a username".into(),
                })
            }
            (None, None) => {}
        }
        if let Some(tls) = tls {
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        }
        Ok(Self {
            config: config.clone(),
            endpoint,
            options,
            qos,
            tracker: Arc::new(Mutex::new(Tracker::default())),
            link: tokio::sync::Mutex::new(None),
        })
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a connection: waits for the broker's CONNACK, then leaves the
    /// event loop to a task.
    async fn connect(&self) -> Result<Link, SinkError> {
        let (client, mut event_loop) =
            AsyncClient::new(self.options.clone(), usize::from(self.config.inflight));
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        // rumqttc's own limit on connecting and on each write, in seconds.
        let mut network = event_loop.network_options();
        network.set_connection_timeout(timeout.as_secs().max(1));
        event_loop.set_network_options(network);
        let url = self.config.redacted_url();
        match tokio::time::timeout(timeout, event_loop.poll()).await {
            Err(_) => {
                return Err(SinkError::disconnected(format!(
                    "no CONNACK from {url} within {} ms",
                    timeout.as_millis()
                )))
            }
            Ok(Err(error)) => {
                return Err(SinkError::disconnected(format!(
                    "connecting to {url}: {}",
                    describe(&error, self.endpoint.tls || self.config.tls)
                )))
            }
            Ok(Ok(LoopEvent::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => {
                return Err(SinkError::disconnected(format!(
                    "connecting to {url}: expected CONNACK, got {other:?}"
                )))
            }
        }
        let generation = {
            let mut tracker = self.tracker();
            tracker.generation += 1;
            tracker.lost = None;
            tracker.generation
        };
        info!(url = %url, client_id = %self.options.client_id(), "connected to the MQTT broker");
        let tracker = Arc::clone(&self.tracker);
        let task = tokio::spawn(drive(event_loop, tracker, generation, url));
        Ok(Link {
            client,
            generation,
            task,
        })
    }
}

/// Polls the event loop, matching packet ids to waiters, until the
/// connection is lost; then fails what was not acked.
async fn drive(
    mut event_loop: EventLoop,
    tracker: Arc<Mutex<Tracker>>,
    generation: u64,
    url: String,
) {
    let lock = || tracker.lock().unwrap_or_else(|e| e.into_inner());
    let error = loop {
        match event_loop.poll().await {
            Ok(LoopEvent::Outgoing(Outgoing::Publish(pkid))) => {
                let mut tracker = lock();
                let waiter = match tracker.collided.take() {
                    Some((held, waiter)) if held == pkid => Some(waiter),
                    other => {
                        tracker.collided = other;
                        tracker.queued.pop_front()
                    }
                };
                if let Some(waiter) = waiter {
                    tracker.written.push_back((pkid, waiter));
                }
            }
            Ok(LoopEvent::Outgoing(Outgoing::AwaitAck(pkid))) => {
                let mut tracker = lock();
                if let Some(waiter) = tracker.queued.pop_front() {
                    tracker.collided = Some((pkid, waiter));
                }
            }
            Ok(LoopEvent::Incoming(Packet::PubAck(ack))) => lock().acked(ack.pkid),
            Ok(LoopEvent::Incoming(Packet::PubComp(comp))) => lock().acked(comp.pkid),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    let reason = format!("lost the connection to {url}: {}", describe(&error, false));
    let failed = lock().lose(generation, &reason);
    warn!(url = %url, error = %describe(&error, false), unconfirmed = failed,
          "lost the connection to the MQTT broker; unconfirmed publishes will be sent again");
}

/// rumqttc's error in words a log reader can act on.
fn describe(error: &ConnectionError, tls: bool) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            "the broker did not answer a ping within the keep-alive".into()
        }
        ConnectionError::MqttState(StateError::Io(e)) | ConnectionError::Io(e) => {
            let mut text = e.to_string();
            if tls && text.contains("InvalidContentType") {
                text.push_str(
                    " (the server does not speak TLS on this port; MQTT over TLS is usually 8883)",
                );
            }
            text
        }
        other => {
            let mut text = other.to_string();
            if tls && text.contains("InvalidContentType") {
                text.push_str(
                    " (the server does not speak TLS on this port; MQTT over TLS is usually 8883)",
                );
            }
            text
        }
    }
}

/// Why a rendered topic cannot be published to; a permanent failure, as
/// every attempt renders the same topic.
fn topic_error(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("the topic is empty".into());
    }
    if topic.contains(['+', '#']) {
        return Some(format!(
            "topic {topic:?} holds a wildcard (+ or #), which a publish may not"
        ));
    }
    if topic.contains('\0') {
        return Some(format!("topic {topic:?} holds a NUL character"));
    }
    if topic.len() > usize::from(u16::MAX) {
        return Some(format!(
            "the topic is {} bytes, over MQTT's 65535",
            topic.len()
        ));
    }
    None
}

/// A confirmation that has already failed.
fn failed(error: SinkError) -> Confirmation {
    Box::pin(std::future::ready(Err(error)))
}

#[async_trait::async_trait]
impl Sink for MqttSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    // Connection problems come back as failed confirmations, not errors: the
    // worker settles a failed submit at once, ahead of the confirmations
    // still pending, which would re-send this event before earlier ones.
    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        let topic = self.config.topic.render(event);
        if let Some(reason) = topic_error(&topic) {
            return Err(SinkError::permanent(reason));
        }
        // Fixed header (5), topic length (2), topic, packet id (2).
        let size = topic.len() + event.payload.len() + 9;
        if size > MAX_PACKET {
            return Err(SinkError::permanent(format!(
                "the message is {size} bytes, over MQTT's limit of {MAX_PACKET}"
            )));
        }
        let key = EventKey::of(event);
        let mut link = self.link.lock().await;
        // Hold this event back while events published before it still have
        // to be sent again, unless it is one of them.
        let resent = {
            let mut tracker = self.tracker();
            match tracker.backlog.iter().position(|k| *k == key) {
                Some(at) => Some(at),
                None if tracker.backlog.is_empty() => None,
                None => {
                    let waiting = tracker.backlog.len();
                    tracker.backlog.push_back(key);
                    return Ok(failed(SinkError::disconnected(format!(
                        "held back until {waiting} earlier events are sent again after a lost connection"
                    ))));
                }
            }
        };
        let alive = match link.as_ref() {
            Some(open) => {
                let tracker = self.tracker();
                tracker.generation == open.generation && tracker.lost.is_none()
            }
            None => false,
        };
        if !alive {
            *link = None;
            match self.connect().await {
                Ok(open) => *link = Some(open),
                Err(error) => return Ok(failed(error)),
            }
        }
        let open = link.as_ref().expect("connected above");
        let (answer, confirmation) = oneshot::channel();
        {
            let mut tracker = self.tracker();
            if let Some(reason) = tracker.lost.clone() {
                // Lost since the check above: keep this event's place.
                if !tracker.backlog.is_empty() && resent.is_none() {
                    tracker.backlog.push_back(key);
                }
                return Ok(failed(SinkError::disconnected(reason)));
            }
            if let Some(at) = resent {
                tracker.backlog.drain(..=at);
            }
            tracker.queued.push_back(Waiter { key, answer });
        }
        // Once queued, the publish is the loop's: if the loop ends first,
        // it fails the waiter above, so the error here adds nothing.
        let _ = open
            .client
            .publish_bytes(topic, self.qos, self.config.retain, event.payload.clone())
            .await;
        drop(link);
        Ok(Box::pin(async move {
            match confirmation.await {
                Ok(result) => result,
                Err(_) => Err(SinkError::disconnected(
                    "the MQTT connection closed before the broker acked",
                )),
            }
        }))
    }

    /// One ack per broker round trip and packet id: the confirmations
    /// awaited at once default to what the broker may hold unacked, plus
    /// as many queued behind them.
    fn default_max_in_flight(&self) -> usize {
        2 * usize::from(self.config.inflight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(config: &MqttConfig) -> String {
        MqttSink::new(config).err().expect("refused").to_string()
    }

    #[test]
    fn qos_0_and_3_are_refused_with_a_reason() {
        let mut config = MqttConfig::new("mqtt://localhost");
        config.qos = 0;
        assert!(error(&config).starts_with("QoS 0 is fire-and-forget"));
        config.qos = 3;
        assert_eq!(error(&config), "expected 1 or 2, got 3");
        config.qos = 2;
        assert!(MqttSink::new(&config).is_ok());
    }

    #[test]
    fn a_bad_url_never_shows_the_password() {
        let shown = error(&MqttConfig::new("mqtt://skor:s3cret@localhost:notaport"));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.starts_with("url mqtt://skor:<redacted>@"), "{shown}");
        let mut twice = MqttConfig::new("mqtt://skor:s3cret@localhost");
        twice.password = Some(skor_sink_kit::Redacted::new("x".into()));
        assert!(error(&twice).starts_with("the url has a password already"));
    }

    #[test]
    fn client_ids_are_unique_per_sink_and_short() {
        let (a, b) = (default_client_id(), default_client_id());
        assert_ne!(a, b);
        assert!(a.starts_with("skor-") && a.len() <= 23, "{a}");
    }

    #[test]
    fn topics_with_wildcards_are_refused() {
        assert!(topic_error("skor/public/orders/INSERT").is_none());
        assert!(topic_error("skor/+/x").unwrap().contains("wildcard"));
        assert!(topic_error("").is_some());
    }

    fn key(seq: u64) -> EventKey {
        EventKey { id: None, seq }
    }

    #[test]
    fn a_lost_connection_fails_every_unacked_publish_in_order() {
        let mut tracker = Tracker {
            generation: 1,
            ..Tracker::default()
        };
        let mut answers = Vec::new();
        for seq in 1..=4 {
            let (answer, rx) = oneshot::channel();
            tracker.queued.push_back(Waiter {
                key: key(seq),
                answer,
            });
            answers.push(rx);
        }
        // 1 and 2 were written, 1 acked; 3 collided; 4 still queued.
        for pkid in [1, 2] {
            let waiter = tracker.queued.pop_front().unwrap();
            tracker.written.push_back((pkid, waiter));
        }
        tracker.collided = Some((1, tracker.queued.pop_front().unwrap()));
        tracker.acked(1);
        assert_eq!(tracker.lose(2, "stale"), 0, "another connection's loss");
        assert_eq!(tracker.lose(1, "gone"), 3);
        assert_eq!(tracker.backlog, [key(2), key(3), key(4)]);
        let results: Vec<_> = answers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap().map_err(|e| e.kind))
            .collect();
        use skor_sink_api::ErrorKind::Disconnected;
        assert_eq!(
            results,
            [
                Ok(()),
                Err(Disconnected),
                Err(Disconnected),
                Err(Disconnected)
            ]
        );
    }
}
