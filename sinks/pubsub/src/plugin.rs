//! The Pub/Sub sink as the daemon sees it: checked, outlined and built
//! through [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::{delay_ms, MAX_DELAY_MS};

use crate::config::Target;
use crate::{PubsubConfig, PubsubError, PubsubSink};

impl From<PubsubError> for OptionError {
    fn from(error: PubsubError) -> Self {
        OptionError::new([error.key], error.message)
    }
}

impl SinkConfig for PubsubConfig {
    fn type_name(&self) -> &'static str {
        "pubsub"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("timeout_ms", self.timeout_ms).err());
        if self.batch_timeout_ms > MAX_DELAY_MS {
            errors.push(OptionError::new(
                ["batch_timeout_ms"],
                format!(
                    "expected 0 to {MAX_DELAY_MS} ms (a day), got {}",
                    self.batch_timeout_ms
                ),
            ));
        }
        // Building checks the rest and reads the credentials file; the
        // first request goes out with the first event.
        errors.extend(PubsubSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(PubsubSink::new(self)?))
    }

    fn outline(&self) -> String {
        let project = format!("project {}", self.project);
        match self.target() {
            Target::Emulator(host) => format!("pubsub emulator {host} {project}"),
            Target::Api(endpoint) => {
                let auth = match &self.credentials_file {
                    Some(path) => format!("key file {}", path.display()),
                    None => "application default credentials".to_string(),
                };
                format!("pubsub {endpoint} {project} ({auth})")
            }
        }
    }
}
