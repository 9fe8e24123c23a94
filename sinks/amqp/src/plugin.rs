//! The AMQP sink as the daemon sees it: checked, outlined and built through
//! [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::delay_ms;

use crate::{AmqpConfig, AmqpError, AmqpSink};

impl From<AmqpError> for OptionError {
    fn from(error: AmqpError) -> Self {
        let key = match &error {
            AmqpError::Tls { key, .. } => *key,
            AmqpError::Url { .. } => "url",
        };
        OptionError::new([key], error.to_string())
    }
}

impl SinkConfig for AmqpConfig {
    fn type_name(&self) -> &'static str {
        "amqp"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("connect_timeout_ms", self.connect_timeout_ms).err());
        // Building parses the URL and reads the TLS files; the connection
        // opens with the first event.
        errors.extend(AmqpSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(AmqpSink::new(self)?))
    }

    fn outline(&self) -> String {
        format!("amqp {} exchange {:?}", self.redacted_url(), self.exchange)
    }
}
