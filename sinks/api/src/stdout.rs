//! The stdout sink: one JSON line per event, the default destination.

use std::io::Write;

use crate::{Event, Sink, SinkError};

/// Options of the stdout sink (it has none yet).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

/// Writes each payload to standard output, followed by a newline.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl StdoutSink {
    /// Creates the sink.
    pub fn new(_config: &StdoutConfig) -> Self {
        Self
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
