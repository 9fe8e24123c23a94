//! skor: turns PostgreSQL row changes into messages.
//!
//! The layers, each a folder: `config` (the TOML, validated), `capture`
//! (the three ways changes leave PostgreSQL: notify, durable, wal, each a
//! plug-in behind one trait), `delivery` (routing, fan-out, the worker per
//! sink), `sinks` (the registry of sink types), `postgres` (connecting, and
//! every catalog query and statement on skor's own tables), `install`,
//! `backfill` and `tail` (commands that read the capture plug-ins),
//! `observe` (stats, metrics, the admin endpoint) and `daemon` (wiring).
//! The binary in `main.rs` is a thin command line over this.

pub mod backfill;
pub mod backoff;
pub mod capture;
pub mod cli;
pub mod config;
pub mod counter;
pub mod daemon;
pub mod delivery;
pub mod install;
pub mod observe;
pub mod postgres;
pub mod sinks;
pub mod tail;

pub use config::Config;
pub use daemon::{Daemon, Summary};
pub use observe::stats::Stats;
