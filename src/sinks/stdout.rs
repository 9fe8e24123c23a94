//! The stdout sink: one JSON line per event, the default destination.

use std::io::Write;

use skor_sink_api::{Event, OptionError, Sink, SinkConfig, SinkError};

/// Options of the stdout sink (it has none yet).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

/// Writes each payload to standard output, followed by a newline.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl SinkConfig for StdoutConfig {
    fn type_name(&self) -> &'static str {
        "stdout"
    }

    fn check(&self) -> Vec<OptionError> {
        Vec::new()
    }

    fn build(&self) -> Result<Box<dyn Sink>, OptionError> {
        Ok(Box::new(StdoutSink))
    }

    fn outline(&self) -> String {
        "stdout".to_string()
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn send(&self, event: &Event) -> Result<(), SinkError> {
        // One locked write per line keeps lines whole when stdout is shared.
        let mut out = std::io::stdout().lock();
        out.write_all(&event.payload)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::retryable(format!("writing to stdout: {e}")))
    }
}
