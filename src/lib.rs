//! skor: turns PostgreSQL row changes into messages.
//!
//! Triggers publish each change with NOTIFY; the listener reads the routing
//! fields once, the router picks the sinks, and one worker per sink delivers
//! with retries. The binary in `main.rs` is a thin command line over this.

pub mod admin;
pub mod backfill;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod counter;
pub mod daemon;
pub mod dead_letters;
pub mod fanout;
pub mod filter;
pub mod logging;
pub mod metrics;
pub mod oversized;
pub mod payload;
pub mod postgres;
pub mod publication;
pub mod retry;
pub mod router;
pub mod shed;
pub mod sinks;
pub mod source;
pub mod sql;
pub mod stats;
pub mod tail;
pub mod worker;

pub use config::Config;
pub use daemon::{Daemon, Summary};
pub use stats::Stats;
