//! Producing through one idempotent librdkafka producer; delivery reports
//! are awaited as confirmations, many at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use skor_sink_api::{Confirmation, Event, Sink, SinkError};
use tracing::warn;

use crate::config::KafkaConfig;

/// Why a Kafka sink could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused a property; its value is left out, as it may be
    /// a secret.
    #[error("librdkafka refused property \"{key}\": {reason}")]
    Property {
        /// The property's name.
        key: String,
        /// librdkafka's explanation.
        reason: String,
    },
    /// The producer could not be created.
    #[error("{0}")]
    Producer(String),
}

/// Produces events to the topics its template names.
pub struct KafkaSink {
    config: KafkaConfig,
    producer: RwLock<FutureProducer>,
    /// Set when librdkafka reports a fatal error: the producer is unusable
    /// and the next event builds a new one.
    broken: Arc<AtomicBool>,
}

/// How long to wait for room when librdkafka's local queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

impl KafkaSink {
    /// Creates the producer; it connects to the brokers in the background.
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: RwLock::new(build(config)?),
            config: config.clone(),
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The producer, rebuilt first if the last one failed fatally.
    fn producer(&self) -> Result<FutureProducer, SinkError> {
        if self.broken.swap(false, Ordering::AcqRel) {
            let fresh = build(&self.config).map_err(|e| SinkError::disconnected(e.to_string()))?;
            warn!(brokers = %self.config.brokers, "replaced the Kafka producer after a fatal error");
            *self.producer.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        Ok(self
            .producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }
}

impl KafkaSink {
    /// Checks every property with librdkafka without creating a producer,
    /// which would start connecting to the brokers.
    pub fn check(config: &KafkaConfig) -> Result<(), KafkaError> {
        client_config(config)
            .create_native_config()
            .map(drop)
            .map_err(refused)
    }
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.properties() {
        client.set(key, value);
    }
    client.set_log_level(RDKafkaLogLevel::Warning);
    client
}

fn build(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    client_config(config).create().map_err(refused)
}

/// librdkafka's refusal, without the refused value (it may be a secret).
fn refused(error: RdKafkaError) -> KafkaError {
    match error {
        RdKafkaError::ClientConfig(_, reason, key, _value) => KafkaError::Property { key, reason },
        other => KafkaError::Producer(other.to_string()),
    }
}

/// Sorts a produce failure into what the worker should do with it.
fn classify(error: RdKafkaError, producer: &FutureProducer, broken: &AtomicBool) -> SinkError {
    if let Some((code, reason)) = producer.client().fatal_error() {
        broken.store(true, Ordering::Release);
        return SinkError::disconnected(format!("fatal producer error {code:?}: {reason}"));
    }
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
        )
    );
    if permanent {
        SinkError::permanent(error.to_string())
    } else {
        SinkError::retryable(error.to_string())
    }
}

fn headers(event: &Event) -> OwnedHeaders {
    let id = event.id.map(|id| id.to_string());
    let headers = [
        ("schema", event.schema.as_str()),
        ("table", event.table.as_str()),
        ("op", event.op.as_str()),
        ("channel", &event.channel),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    });
    match &id {
        Some(id) => headers.insert(Header {
            key: "event_id",
            value: Some(id.as_bytes()),
        }),
        None => headers,
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        self.submit(event).await?.await
    }

    /// A delivery report takes a broker round trip plus librdkafka's
    /// linger; the benchmark drained a burst a quarter faster with 10,000
    /// awaited at once than with 1,000, for about 18 MB more memory.
    fn default_max_in_flight(&self) -> usize {
        10_000
    }

    async fn submit(&self, event: &Event) -> Result<Confirmation, SinkError> {
        let producer = self.producer()?;
        let topic = self.config.topic.render(event);
        let key = event.partition_key();
        let mut record = FutureRecord::to(&topic)
            .payload(&event.payload[..])
            .key(&key[..])
            .headers(headers(event));
        // The call only queues the message, in order, inside librdkafka.
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => return Err(classify(error, &producer, &self.broken)),
            }
        };
        let broken = Arc::clone(&self.broken);
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(classify(error, &producer, &broken)),
                Err(_) => Err(SinkError::disconnected(
                    "the producer closed before the broker answered",
                )),
            }
        }))
    }
}
