//! The Redis sink as the daemon sees it: checked, outlined and built
//! through [`SinkConfig`].

use skor_sink_api::{OptionError, Sink, SinkConfig};
use skor_sink_kit::delay_ms;

use crate::{RedisConfig, RedisSink, RedisSinkError};

impl From<RedisSinkError> for OptionError {
    fn from(error: RedisSinkError) -> Self {
        match error {
            RedisSinkError::Url { .. } => OptionError::new(["url"], error.to_string()),
            RedisSinkError::Option { key, message } => OptionError::new([key], message),
        }
    }
}

impl SinkConfig for RedisConfig {
    fn type_name(&self) -> &'static str {
        "redis"
    }

    fn check(&self) -> Vec<OptionError> {
        let mut errors = Vec::new();
        errors.extend(delay_ms("connect_timeout_ms", self.connect_timeout_ms).err());
        errors.extend(delay_ms("response_timeout_ms", self.response_timeout_ms).err());
        if self.maxlen == Some(0) {
            errors.push(OptionError::new(
                ["maxlen"],
                "expected at least 1; leave maxlen out to keep every entry",
            ));
        }
        if let Some(db) = self.db.filter(|db| *db < 0) {
            errors.push(OptionError::new(
                ["db"],
                format!("expected a database number from 0, got {db}"),
            ));
        }
        // Building parses the URL and reads the TLS files; the connection
        // opens with the first event.
        errors.extend(RedisSink::new(self).err().map(OptionError::from));
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(RedisSink::new(self)?))
    }

    fn outline(&self) -> String {
        let mut outline = format!("redis {}", self.redacted_url());
        if let Some(db) = self.db {
            outline.push_str(&format!(" db {db}"));
        }
        if let Some(maxlen) = self.maxlen {
            outline.push_str(&format!(" maxlen ~{maxlen}"));
        }
        outline
    }
}
