//! The Kafka sink as the daemon sees it: checked, outlined and built
//! through [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::delay_ms;

use crate::{KafkaConfig, KafkaError, KafkaSink};

impl SinkConfig for KafkaConfig {
    fn type_name(&self) -> &'static str {
        "kafka"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        // librdkafka reads 0 as "wait forever".
        errors.extend(delay_ms("message_timeout_ms", self.message_timeout_ms).err());
        if let Err(error) = KafkaSink::check(self) {
            let key = match &error {
                KafkaError::Property { key, .. } if self.options.contains_key(key) => {
                    vec!["options", key.as_str()]
                }
                _ => vec![],
            };
            errors.push(OptionError::new(key, error.to_string()));
        }
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        let sink = KafkaSink::new(self).map_err(|e| OptionError::whole(e.to_string()))?;
        Ok(Box::new(sink))
    }

    fn outline(&self) -> String {
        format!("kafka {}", self.brokers)
    }
}
