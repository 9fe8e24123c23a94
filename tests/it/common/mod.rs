//! Shared test harness: skor-testkit (a database per test on the real
//! PostgreSQL, private servers, the brokers, recording receivers, waiting
//! with a deadline or behind a barrier), re-exported so tests write
//! `common::...`, plus what needs skor's library: installing triggers, a
//! daemon running in-process, and the barrier that also reads its stats.
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

    /// Waits until the sink `sink` settled every event it was handed
    /// (its queue depth is 0): what reached its queue before has been
    /// delivered, failed or dropped, whichever lane it took.
    pub async fn settled(&self, sink: &str) {
        let stats = self.stats.sink(sink).expect("a sink of that name");
        eventually(&format!("sink {sink} settled its queue"), || {
            let depth = stats.depth.get();
            std::future::ready(if depth == 0 { Ok(()) } else { Err(depth) })
        })
        .await
    }

    /// A webhook barrier (see [`Hook::barrier`]) that holds whichever
    /// lanes the events took: after the barrier arrived at `hook`, also
    /// waits for the sink `sink` to have settled its queue, then returns
    /// every request so far.
    pub async fn barrier(
        &self,
        sink: &str,
        hook: &Hook,
        cause: impl std::future::Future<Output = ()>,
        is_barrier: impl Fn(&str) -> bool,
    ) -> Vec<Request> {
        hook.barrier(cause, is_barrier).await;
        self.settled(sink).await;
        hook.requests()
    }
}

/// Installs skor's triggers for the tables of `config` into `db`.
pub async fn install(db: &TestDb, config: &str) {
    let config = Config::from_toml(config, "test.toml").expect("valid config");
    let mut client = connect(&db.dsn()).await;
    skor::install::install(&mut client, &config)
        .await
        .expect("install");
}

/// Installs the triggers of `config` and starts a daemon on it.
pub async fn start_installed(db: &TestDb, config: &str) -> Running {
    install(db, config).await;
    Running::start(config).await
}
