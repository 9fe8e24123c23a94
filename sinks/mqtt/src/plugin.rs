//! The MQTT sink as the daemon sees it: checked, outlined and built through
//! [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::delay_ms;

use crate::{MqttConfig, MqttError, MqttSink};

impl From<MqttError> for OptionError {
    fn from(error: MqttError) -> Self {
        let key = match &error {
            MqttError::Url { .. } => "url",
            MqttError::Option { key, .. } | MqttError::Tls { key, .. } => *key,
        };
        OptionError::new([key], error.to_string())
    }
}

impl SinkConfig for MqttConfig {
    fn type_name(&self) -> &'static str {
        "mqtt"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("connect_timeout_ms", self.connect_timeout_ms).err());
        // Building parses the URL and reads the TLS files; the connection
        // opens with the first event.
        errors.extend(MqttSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(MqttSink::new(self)?))
    }

    fn outline(&self) -> String {
        format!("mqtt {} qos {}", self.redacted_url(), self.qos)
    }
}
