//! Wiring and lifecycle: build the sinks and their workers, the fan-out
//! stage in front of them and the sources that feed it; run until shutdown,
//! then drain the queues up to a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skor_sink_api::{Sink, SinkConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capture::{OpenError, Source, Wiring, CAPTURES};
use crate::config::{Config, DeliveryConfig};
use crate::delivery::fanout::Fanout;
use crate::delivery::worker::{worker, Worker};
use crate::observe::admin::{Admin, AdminError};
use crate::observe::metrics::Metrics;
use crate::observe::stats::{DurableStats, EventStats, SinkStats, SourceStats, Stats, WalStats};
use crate::observe::status::{About, SinkAbout};
use crate::postgres::{target, DsnError};
use crate::sinks::StdoutConfig;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A sink could not be built from its config.
    #[error("sink `{name}`: {message}")]
    Sink {
        /// The sink's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A capture mode's source could not open (the first connection to
    /// PostgreSQL failed, the slot or the event log is missing); this is
    /// not retried, so a wrong password or database name stops skor at once.
    #[error("{0}")]
    Source(#[from] OpenError),
    /// The DSN could not be used, e.g. its `sslrootcert` file is gone.
    #[error("source.dsn: {0}")]
    Dsn(#[from] DsnError),
    /// The admin endpoint's address could not be bound.
    #[error("{0}")]
    Admin(#[from] AdminError),
}

/// What happened between start and shutdown.
#[derive(Debug)]
pub struct Summary {
    /// Events still queued or in flight when the drain deadline passed.
    pub undelivered: u64,
}

/// A daemon that is connected and listening, ready to run.
pub struct Daemon {
    admin: Option<Admin>,
    sources: Vec<Box<dyn Source>>,
    workers: Vec<Worker>,
    drain_timeout: Duration,
    stats: Stats,
}

impl Daemon {
    /// Builds every sink, connects to PostgreSQL and LISTENs.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let pg = config.postgres()?;
        let database = target(pg.config());
        let shown = format!("{database} sslmode={}", pg.ssl_mode());
        let outline = config.outline(&shown);
        info!(source = %outline.source, sinks = %outline.sinks, routes = %outline.routes,
              version = env!("CARGO_PKG_VERSION"), "starting");
        let mut sinks: Vec<(String, Box<dyn Sink>, DeliveryConfig)> = Vec::new();
        for (name, sink) in &config.sinks {
            let built = sink.options.build().map_err(|error| StartError::Sink {
                name: name.clone(),
                message: error.to_string(),
            })?;
            sinks.push((name.clone(), built, sink.delivery.clone()));
        }
        if sinks.is_empty() {
            info!("no sink configured: printing events on stdout");
            let stdout = StdoutConfig::default()
                .build()
                .expect("the stdout sink has no options to refuse");
            sinks.push(("stdout".into(), stdout, DeliveryConfig::default()));
        }
        let names: Vec<String> = sinks.iter().map(|(name, ..)| name.clone()).collect();
        let about = About {
            modes: CAPTURES
                .iter()
                .filter(|c| c.used(config))
                .map(|c| c.name())
                .collect(),
            database: shown,
            slot: config.uses_wal().then(|| config.source.slot.clone()),
            sinks: sinks
                .iter()
                .map(|(name, _, delivery)| SinkAbout {
                    kind: config
                        .sinks
                        .get(name)
                        .map_or("stdout", |s| s.options.type_name()),
                    target: config.sinks.get(name).map_or_else(
                        || "stdout (none configured)".to_string(),
                        |s| s.options.outline(),
                    ),
                    capacity: delivery.queue_capacity,
                })
                .collect(),
        };
        let metrics = Arc::new(Metrics::new(config.reads_event_log(), config.uses_wal()));
        let mut queues = Vec::new();
        let mut workers = Vec::new();
        for (index, (name, sink, delivery)) in sinks.into_iter().enumerate() {
            let stats = SinkStats::registered(&metrics, &name, delivery.queue_capacity);
            let (queue, worker) = worker(index, &name, sink, &delivery, Arc::new(stats));
            queues.push(queue);
            workers.push(worker);
        }
        let channels = config.notify_channels();
        let stats = Stats {
            events: Arc::new(EventStats::registered(&metrics, &config.routes)),
            source: Arc::new(SourceStats::registered(&metrics, !channels.is_empty())),
            sinks: names
                .iter()
                .cloned()
                .zip(workers.iter().map(Worker::stats))
                .collect(),
            durable: config
                .reads_event_log()
                .then(|| Arc::new(DurableStats::registered(&metrics))),
            wal: config
                .uses_wal()
                .then(|| Arc::new(WalStats::registered(&metrics))),
            errors: Arc::clone(&metrics.errors),
        };
        // Bound first: a taken port is a start-up error, not a late surprise.
        let admin = match &config.admin {
            Some(admin) => {
                let scrape_pg = pg.named("skor metrics");
                let admin = Admin::bind(
                    admin,
                    Arc::clone(&metrics),
                    stats.clone(),
                    !channels.is_empty(),
                    about,
                    scrape_pg,
                );
                Some(admin.await?)
            }
            None => None,
        };
        let known_tables = Arc::new(crate::observe::metrics::known_tables(config));
        let fanout = Fanout::new(
            config,
            &database_name(pg.config()),
            names.clone(),
            queues,
            Arc::clone(&stats.events),
            metrics.received(known_tables),
        );
        // Each source gets its own handle; the stage's queues close once
        // every source has let go of its handle.
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        let wiring = Wiring {
            pg: &pg,
            config,
            fanout: &fanout,
            stats: &stats,
        };
        for capture in CAPTURES.iter().filter(|c| c.runs_source(config)) {
            sources.push(capture.open_source(&wiring).await?);
        }
        drop(fanout);
        let names_of_sources: Vec<&str> = sources.iter().map(|s| s.name()).collect();
        info!(%database, sources = ?names_of_sources, notify_channels = ?channels, sinks = ?names,
              routes = config.routes.len(), "listening");
        Ok(Self {
            admin,
            sources,
            workers,
            drain_timeout: Duration::from_millis(config.daemon.drain_timeout_ms),
            stats,
        })
    }

    /// Where the admin endpoint listens, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(Admin::local_addr)
    }

    /// The daemon's counters; they keep counting while it runs.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Delivers events until `shutdown` fires, then lets the sinks drain
    /// their queues for at most the configured deadline.
    pub async fn run(self, shutdown: CancellationToken) -> Summary {
        let deadline = CancellationToken::new();
        // Serves until the drain is over, so probes see the shutdown.
        let admin_stop = CancellationToken::new();
        let admin = self
            .admin
            .map(|admin| tokio::spawn(admin.serve(admin_stop.clone())));
        let workers: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| tokio::spawn(w.run(deadline.clone())))
            .collect();
        let sources: Vec<_> = self
            .sources
            .into_iter()
            .map(|source| tokio::spawn(source.run(shutdown.clone())))
            .collect();
        // At shutdown each source lets go of the sink queues, so each worker
        // stops once its queue is empty.
        shutdown.cancelled().await;
        info!(
            drain_timeout_ms = self.drain_timeout.as_millis() as u64,
            "draining sink queues"
        );
        let drained = futures_util::future::join_all(workers);
        tokio::pin!(drained);
        let results = tokio::select! {
            results = &mut drained => results,
            () = tokio::time::sleep(self.drain_timeout) => {
                deadline.cancel();
                drained.await
            }
        };
        let undelivered: u64 = results.into_iter().map(|r| r.unwrap_or(0)).sum();
        // The workers have stopped, so the last outcomes are in; what a
        // source has not seen confirmed stays where it was read from.
        let sources = futures_util::future::join_all(sources);
        if tokio::time::timeout(self.drain_timeout, sources)
            .await
            .is_err()
        {
            warn!("a source did not finish in time: unfinished durable events stay pending");
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let events = &self.stats.events;
        let source = &self.stats.source;
        if undelivered > 0 {
            warn!(
                undelivered,
                "drain deadline reached: events left undelivered"
            );
        }
        for (name, sink) in &self.stats.sinks {
            info!(sink = %name, delivered = sink.delivered.get(), retried = sink.retried.get(),
                  outage_waits = sink.outage_waits.get(),
                  failed = sink.failed.get(), dropped = sink.dropped.get(), "sink totals");
        }
        if let Some(wal) = &self.stats.wal {
            info!(
                transactions = wal.transactions.get(),
                dead_lettered = wal.dead_lettered.get(),
                truncates = wal.truncates.get(),
                "wal totals"
            );
        }
        if let Some(durable) = &self.stats.durable {
            info!(
                claimed = durable.claimed.get(),
                finished = durable.finished.get(),
                dead_lettered = durable.dead_lettered.get(),
                "durable totals"
            );
        }
        info!(
            received = events.received.get(),
            invalid = source.invalid.get(),
            unrouted = events.unrouted.get(),
            reconnects = source.link.reconnects.get(),
            undelivered,
            "stopped"
        );
        Summary { undelivered }
    }
}

/// The database events come from, as formats name it: libpq's default
/// when the DSN names none is the user's name.
fn database_name(pg: &tokio_postgres::Config) -> String {
    pg.get_dbname()
        .or(pg.get_user())
        .unwrap_or("postgres")
        .to_string()
}
