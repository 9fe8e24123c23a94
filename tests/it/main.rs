//! skor's integration tests, in one binary so the crate is linked once:
//! a module per area, each against real servers (PostgreSQL, the brokers,
//! an HTTP receiver); the broker modules build with their sink's feature.
//! Two keep a binary of their own: `tests/shedding.rs` captures the
//! process's log lines, and `tests/amqp_outage.rs` stops the shared broker.

mod common;

mod admin;
#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "amqp")]
mod amqp_tls;
mod backfill;
mod backpressure;
mod capture;
mod cli;
mod durable;
mod durable_statements;
#[cfg(all(feature = "amqp", feature = "kafka"))]
mod fanout;
mod features;
mod formats;
mod heartbeat;
#[cfg(feature = "kafka")]
mod kafka;
mod monitoring;
#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "nats")]
mod nats;
mod partitions;
mod payload_options;
mod postgres_tls;
#[cfg(feature = "pubsub")]
mod pubsub;
mod reconnect;
#[cfg(feature = "redis")]
mod redis;
mod route_filter;
mod routing;
mod secrets;
mod security;
mod status;
mod tail;
mod trust;
mod wal;
mod wal_cli;
mod wal_recovery;
mod wal_render;
mod wal_slot;
mod webhook;
mod webhook_batch;
mod webhook_signing;
mod webhook_tls;
mod when;
