//! The NATS sink as the daemon sees it: checked, outlined and built through
//! [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::delay_ms;

use crate::{NatsConfig, NatsError, NatsSink};

impl From<NatsError> for OptionError {
    fn from(error: NatsError) -> Self {
        OptionError::new([error.key], error.message)
    }
}

impl SinkConfig for NatsConfig {
    fn type_name(&self) -> &'static str {
        "nats"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("connect_timeout_ms", self.connect_timeout_ms).err());
        errors.extend(delay_ms("ack_timeout_ms", self.ack_timeout_ms).err());
        // Building parses the URLs, the credentials and the TLS files; the
        // connection opens with the first event.
        errors.extend(NatsSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(NatsSink::new(self)?))
    }

    fn outline(&self) -> String {
        format!(
            "nats {} subject {:?}",
            self.redacted_url(),
            self.subject.text()
        )
    }
}
