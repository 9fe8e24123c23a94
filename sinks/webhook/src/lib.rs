//! The webhook sink: POSTs each event's payload to an HTTP endpoint.
//!
//! The daemon sees only [`WebhookConfig`] and [`WebhookSink::new`]; retries
//! and ordering belong to the daemon's worker, this crate only says which
//! failures are worth retrying.

mod config;
mod plugin;
mod signing;
mod sink;
mod tls;

pub use config::WebhookConfig;
pub use signing::{WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER};
pub use sink::{WebhookError, WebhookSink, EVENT_ID_HEADER};
