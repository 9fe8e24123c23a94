//! The admin endpoint (`[admin] listen`): `/metrics` for Prometheus,
//! `/healthz` for liveness, `/readyz` for readiness probes, and the status
//! page: `/` for people, `/status` (the same as JSON) for scripts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::AdminConfig;
use crate::observe::metrics::Metrics;
use crate::observe::stats::Stats;
use crate::observe::status::{About, Status};
use crate::postgres::event_log as durable;
use crate::postgres::PgError;
use crate::postgres::Postgres;

/// How long a scrape waits for PostgreSQL's gauges before going without.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The status page: one file, its style and script inline, so it works
/// offline and behind any proxy.
const STATUS_PAGE: &str = include_str!("status.html");

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the admin endpoint on {addr}: {error}")]
pub struct AdminError {
    addr: SocketAddr,
    error: std::io::Error,
}

/// What the handlers read.
struct AdminState {
    metrics: Arc<Metrics>,
    stats: Stats,
    /// Whether a LISTEN connection is expected (some table in notify mode).
    listens: bool,
    /// The replication slot whose lag the scrape reads (wal mode).
    slot: Option<String>,
    stuck_after: Duration,
    /// What the status page says about the config.
    about: About,
    pg: Postgres,
    /// The connection scrapes read PostgreSQL's gauges with, opened on
    /// first use and again after an error.
    db: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// The NOTIFY queue's usage, the event log's backlog, and the slot's lag
/// and retained WAL in bytes.
type DatabaseReading = (f64, Option<durable::Backlog>, Option<(f64, f64)>);

/// A bound admin endpoint, not yet serving.
pub struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

impl Admin {
    /// Binds `config.listen`, so a taken port stops skor at start-up. The
    /// replication slot whose lag the scrape reads is `about.slot`.
    pub async fn bind(
        config: &AdminConfig,
        metrics: Arc<Metrics>,
        stats: Stats,
        listens: bool,
        about: About,
        pg: Postgres,
    ) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| AdminError {
                addr: config.listen,
                error,
            })?;
        Ok(Self {
            listener,
            state: Arc::new(AdminState {
                metrics,
                stats,
                listens,
                slot: about.slot.clone(),
                about,
                stuck_after: Duration::from_millis(config.stuck_after_ms),
                pg,
                db: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The address it is bound to (the port, when `listen` asked for 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers requests until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) {
        let addr = self
            .local_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        let app = Router::new()
            .route("/", get(page))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(self.state);
        info!(%addr, "admin endpoint serving the status page (/ and /status), /metrics, \
                      /healthz and /readyz");
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            warn!(%error, "admin endpoint stopped");
        }
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let _ = state.refresh_database_gauges().await;
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.encode(),
    )
}

/// What the status page may do: run its own inline script and style and
/// read `/status`, nothing else (it shows messages that came from sinks).
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(STATUS_PAGE),
    )
}

async fn status(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let reading_error = state.refresh_database_gauges().await;
    let status = Status::read(
        &state.about,
        &state.stats,
        state.listens,
        &state.metrics.database,
        reading_error,
        state.problems(),
    );
    let body = serde_json::to_string(&status).expect("the status serializes");
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    let problems = state.problems();
    if problems.is_empty() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = String::from("not ready\n");
    for problem in problems {
        let _ = writeln!(body, "- {problem}");
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

impl AdminState {
    /// What keeps skor from doing its job now; empty when ready.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.listens && !self.stats.source.link.is_up() {
            problems.push("not listening: the connection to PostgreSQL is down".to_string());
        }
        if self.listens && self.stats.source.shedding.get() == 1 {
            problems.push(
                "shedding load: PostgreSQL's notification queue is past \
                 shed_notify_queue_usage, events that find a full sink queue are dropped"
                    .to_string(),
            );
        }
        if let Some(wal) = &self.stats.wal {
            let drift = wal.drift.lock().map(|d| d.clone()).unwrap_or_default();
            for problem in drift {
                problems.push(format!("publication drift: {problem}"));
            }
            if wal.invalidated.get() == 1 {
                problems.push(format!(
                    "replication slot \"{}\" was invalidated by PostgreSQL (wal_status lost, \
                     max_slot_wal_keep_size exceeded): the changes in the WAL it dropped are gone; \
                     run `skor install` to make a new slot, then `skor backfill`",
                    self.slot.as_deref().unwrap_or("?")
                ));
            } else if wal.standby.get() == 1 {
                problems.push("standing by: another reader holds the replication slot".to_string());
            } else if !wal.link.is_up() {
                problems.push("the replication stream is down".to_string());
            }
        }
        if let Some(durable) = &self.stats.durable {
            if !durable.link.is_up() {
                problems.push("the connection to the event log is down".to_string());
            }
        }
        for (name, sink) in &self.stats.sinks {
            if let Some(stalled) = sink.stalled_for().filter(|s| *s >= self.stuck_after) {
                problems.push(format!(
                    "sink `{name}` is stuck: {} events waiting, none settled for {} s",
                    sink.depth.get(),
                    stalled.as_secs()
                ));
            }
        }
        problems
    }

    /// Reads the NOTIFY queue's usage and the event log's backlog; a gauge
    /// PostgreSQL cannot give now reads NaN, so a stale value never shows.
    /// Returns why PostgreSQL could not be read, if it could not.
    async fn refresh_database_gauges(&self) -> Option<String> {
        let gauges = &self.metrics.database;
        if let Some(wal) = &self.stats.wal {
            gauges
                .wal_confirmed_age_seconds
                .set(wal.confirmed_age().as_secs_f64());
        }
        let read = tokio::time::timeout(DATABASE_TIMEOUT, self.read_database()).await;
        let read = read.unwrap_or(Err(PgError::Timeout(DATABASE_TIMEOUT)));
        match read {
            Ok((usage, backlog, slot)) => {
                gauges.notify_queue_usage.set(usage);
                if let Some((lag, retained)) = slot {
                    gauges.wal_lag_bytes.set(lag);
                    gauges.wal_retained_bytes.set(retained);
                }
                if let Some(backlog) = backlog {
                    gauges.backlog.set(backlog.pending as f64);
                    gauges.dead_letters.set(backlog.dead as f64);
                    gauges.oldest_pending_seconds.set(backlog.oldest_s);
                }
                None
            }
            Err(error) => {
                debug!(%error, "metrics: cannot read PostgreSQL's gauges");
                for gauge in [
                    &gauges.notify_queue_usage,
                    &gauges.backlog,
                    &gauges.dead_letters,
                    &gauges.oldest_pending_seconds,
                    &gauges.wal_lag_bytes,
                    &gauges.wal_retained_bytes,
                ] {
                    gauge.set(f64::NAN);
                }
                Some(error.to_string())
            }
        }
    }

    async fn read_database(&self) -> Result<DatabaseReading, PgError> {
        let mut db = self.db.lock().await;
        if db.as_ref().is_none_or(|client| client.is_closed()) {
            let (client, connection) = self.pg.connect().await?;
            tokio::spawn(connection);
            *db = Some(client);
        }
        let client = db.as_ref().expect("just connected");
        let read = async {
            let usage: f64 = client
                .query_one("SELECT pg_notification_queue_usage()", &[])
                .await?
                .get(0);
            let backlog = match self.stats.durable {
                Some(_) => Some(durable::backlog(client).await?),
                None => None,
            };
            let slot = match &self.slot {
                Some(slot) => client
                    .query_opt(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8, \
                                pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::float8 \
                           FROM pg_replication_slots WHERE slot_name = $1",
                        &[slot],
                    )
                    .await?
                    .map(|row| {
                        let lag: Option<f64> = row.get(0);
                        let retained: Option<f64> = row.get(1);
                        (lag.unwrap_or(f64::NAN), retained.unwrap_or(f64::NAN))
                    }),
                None => None,
            };
            Ok((usage, backlog, slot))
        };
        let read = read.await;
        if read.is_err() {
            *db = None;
        }
        read
    }
}
