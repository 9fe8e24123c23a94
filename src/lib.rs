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
pub(crate) mod capture;
pub mod cli;
pub mod config;
pub(crate) mod counter;
pub(crate) mod daemon;
pub(crate) mod delivery;
pub mod install;
pub(crate) mod observe;
pub(crate) mod postgres;
pub(crate) mod sinks;
pub(crate) mod tail;

pub use capture::notify::oversized;
pub use capture::wal::render;
pub use config::Config;
pub use daemon::{Daemon, Summary};
pub use delivery::router::Router;
pub use observe::stats::Stats;
