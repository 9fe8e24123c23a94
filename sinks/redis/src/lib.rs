//! The Redis sink: appends each event to a stream with XADD, pipelined on
//! one multiplexed connection, so an event counts as delivered once the
//! server answered with the entry's id.

mod config;
mod plugin;
mod sink;

pub use config::RedisConfig;
pub use sink::{RedisSink, RedisSinkError};

/// The Redis client this sink is built on, for tests and tools that talk to the same server.
pub use redis;
