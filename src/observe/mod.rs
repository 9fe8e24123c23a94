//! What skor tells about itself: counters, the Prometheus registry, the
//! admin endpoint (health, readiness, metrics) and the log format.

pub mod admin;
pub mod logging;
pub mod metrics;
pub mod stats;
