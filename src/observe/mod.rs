//! What skor tells about itself: counters, the Prometheus registry, the
//! admin endpoint (health, readiness, metrics, the status page), the last
//! errors and the log format.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod recent;
pub mod stats;
pub mod status;
