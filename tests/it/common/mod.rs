//! Shared test harness: skor-testkit (a database per test on the real
//! PostgreSQL, private servers, the brokers, recording receivers, waiting
//! with a deadline), re-exported so tests write `common::...`, plus what
//! needs skor's library: installing triggers and a daemon running
//! in-process.
#![allow(dead_code)]

pub mod bin;
pub mod wal;

pub use skor_testkit::*;

use std::net::SocketAddr;

use skor::{Config, Daemon, Stats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A daemon running in this process.
pub struct Running {
    pub stats: Stats,
    /// The admin endpoint's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    handle: JoinHandle<skor::Summary>,
}

impl Running {
    pub async fn start(config: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("SKOR_TEST_LOG").unwrap_or_else(|_| "skor=debug".into()))
            .try_init();
        let config = Config::from_toml(config, "test.toml").expect("valid config");
        let daemon = Daemon::start(&config).await.expect("daemon starts");
        let stats = daemon.stats();
        let admin = daemon.admin_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(daemon.run(shutdown.clone()));
        Self {
            stats,
            admin,
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) -> skor::Summary {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("daemon stops")
            .unwrap()
    }
}

/// Installs skor's triggers for the tables of `config` into `db`.
pub async fn install(db: &TestDb, config: &str) {
    let config = Config::from_toml(config, "test.toml").expect("valid config");
    let mut client = connect(&db.dsn()).await;
    skor::sql::install(&mut client, &config)
        .await
        .expect("install");
}

/// Installs the triggers of `config` and starts a daemon on it.
pub async fn start_installed(db: &TestDb, config: &str) -> Running {
    install(db, config).await;
    Running::start(config).await
}
