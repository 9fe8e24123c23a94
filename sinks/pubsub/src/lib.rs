//! The Google Cloud Pub/Sub sink: publishes each event over the REST API
//! with the row key as its ordering key, so a subscription with message
//! ordering enabled delivers each row's changes in commit order.

mod auth;
mod config;
mod plugin;
mod sink;

pub use config::{PubsubConfig, Target, DEFAULT_ENDPOINT, EMULATOR_HOST_VAR};
pub use sink::{PubsubError, PubsubSink, MAX_BATCH};
