//! The sink types this build knows, and the stdout sink that lives with the
//! daemon. Everything else about a sink type is in its own crate, behind
//! [`skor_sink_api::SinkConfig`].

mod registry;
mod stdout;

pub use registry::{ParseError, SinkType, SINK_TYPES};
pub use stdout::StdoutConfig;
#[cfg(test)]
pub use stdout::StdoutSink;
