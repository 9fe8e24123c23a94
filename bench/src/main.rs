//! skor-bench: runs the skor binary end to end against PostgreSQL and real
//! receivers (HTTP, RabbitMQ, Kafka, Redis) under several write loads, and prints
//! receivers (HTTP, RabbitMQ, Kafka, Pub/Sub) under several write loads, and prints
//! a Markdown report of throughput, latency, losses and skor's cost.

#[cfg(feature = "amqp")]
mod amqp;
mod arrivals;
mod cases;
mod db;
#[cfg(feature = "kafka")]
mod kafka;
mod listen;
mod load;
#[cfg(feature = "mqtt")]
mod mqtt;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "pubsub")]
mod pubsub;
mod receiver;
#[cfg(feature = "redis")]
mod redis;
mod report;
mod skor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use skor_testkit::pg_server::{Options, PgServer, DURABLE_SETTINGS};

use crate::cases::{Outcome, Runner};
use crate::db::Database;
use crate::report::{Environment, Report};
use crate::skor::Skor;

/// Benchmarks skor: every case in sequence, a Markdown report on stdout.
#[derive(Debug, Parser)]
#[command(name = "skor-bench")]
struct Args {
    /// The skor binary to benchmark (built with the same features as the bench).
    #[arg(long)]
    skor: PathBuf,
    /// The PostgreSQL server, as a libpq keyword DSN without dbname.
    #[arg(long, default_value = "host=127.0.0.1 port=5432 user=postgres")]
    dsn: String,
    /// The RabbitMQ broker of the AMQP cases.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The Redis server of the Redis case.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The server of the wal cases (wal_level = logical, a REPLICATION
    /// user), as a libpq keyword DSN without dbname. Without it, the bench
    /// starts a private server of its own for them (initdb into a
    /// temporary directory, removed at the end).
    #[arg(long)]
    wal_dsn: Option<String>,
    /// Run only the cases whose name (`target/load`) contains this;
    /// repeatable, or comma-separated (`--only ceiling,wal`). The wal cases:
    /// wal-none, wal-webhook, wal-webhook-batch, wal-kafka, wal-backlog.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Multiplies every row count (0.1 for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Keep each case's skor config and log under this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("skor-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(&args) => result,
            // Dropping the run's future drops its guards: skor and tansu are
            // killed and the database dropped.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skor-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: &Args) -> Result<()> {
    anyhow::ensure!(args.scale > 0.0, "--scale must be positive");
    let started = Instant::now();
    let skor = Skor::new(args.skor.clone());
    let version = skor.version().await.map_err(anyhow::Error::msg)?;
    let cases: Vec<_> = cases::matrix(args.scale)
        .into_iter()
        .filter(|case| args.only.is_empty() || args.only.iter().any(|o| case.name().contains(o)))
        .collect();
    anyhow::ensure!(!cases.is_empty(), "no case matches {:?}", args.only);
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }

    let wanted = |wal: bool| cases.iter().any(|case| case.target.wal() == wal);
    // The wal cases' server: the one given, or a private one whose guard
    // stops and removes it when the run ends, also on failure. Declared
    // before the databases, so they are dropped before it.
    let mut wal_server = None;
    let wal_dsn = match (&args.wal_dsn, wanted(true)) {
        (_, false) => None,
        (Some(dsn), true) => Some(dsn.clone()),
        (None, true) => {
            eprintln!(
                "== starting a private PostgreSQL with wal_level = logical for the wal cases"
            );
            let server = tokio::task::spawn_blocking(|| PgServer::try_start(&Options::durable()))
                .await
                .context("starting the wal server")?
                .map_err(anyhow::Error::msg)?;
            let dsn = server.server_dsn();
            wal_server = Some(server);
            Some(dsn)
        }
    };
    // Only the wal cases' database when no other case runs.
    let db = match (wanted(false), &wal_dsn) {
        (false, Some(dsn)) => Database::create(dsn).await?,
        _ => Database::create(&args.dsn).await?,
    };
    let wal_db = match &wal_dsn {
        Some(dsn) if wanted(false) => Some(Database::create(dsn).await?),
        _ => None,
    };
    let wal_postgres = match &wal_db {
        Some(wal_db) => Some(wal_db.version().await?),
        None => wal_dsn.as_ref().map(|_| String::new()),
    };
    let mut environment = Environment::gather(db.version().await?, version);
    environment.wal_server = wal_postgres.map(|version| {
        let which = if wal_server.is_some() {
            format!(
                "a private server started for this run (initdb, settings: {})",
                DURABLE_SETTINGS.trim().replace('\n', ", ")
            )
        } else {
            "the server of --wal-dsn".to_string()
        };
        if version.is_empty() {
            which
        } else {
            format!("{which}; {version}")
        }
    });
    eprintln!("== HTTP receiver capacity (2 s)");
    let receiver_capacity = receiver::capacity(16, Duration::from_secs(2))
        .await
        .map_err(|e| format!("{e:#}"));
    #[cfg(feature = "amqp")]
    let amqp_ceiling = if cases.iter().any(|c| c.target == cases::Target::Amqp) {
        eprintln!("== RabbitMQ alone: a minimal client's publish-confirm ceiling");
        Some(
            amqp::ceiling(&args.amqp_url, 100_000)
                .await
                .map(|c| (c.per_second, c.cpu_us))
                .map_err(|e| format!("{e:#}")),
        )
    } else {
        None
    };
    #[cfg(not(feature = "amqp"))]
    let amqp_ceiling: Option<Result<(f64, f64), String>> = None;
    let mut runner = Runner {
        db: &db,
        // With no other case, the one database is on the wal server.
        wal_db: match &wal_db {
            Some(wal_db) => Some(wal_db),
            None => wal_dsn.as_ref().map(|_| &db),
        },
        skor: &skor,
        amqp_url: args.amqp_url.clone(),
        redis_url: args.redis_url.clone(),
        keep_logs: args.keep_logs.clone(),
        #[cfg(feature = "kafka")]
        tansu: None,
        #[cfg(feature = "kafka")]
        topics: 0,
        #[cfg(feature = "pubsub")]
        pubsub: None,
    };
    let mut results = Vec::with_capacity(cases.len());
    for (index, case) in cases.iter().enumerate() {
        eprintln!("== [{}/{}] {}", index + 1, cases.len(), case.name());
        let case_start = Instant::now();
        let result = runner.run(case).await;
        match &result.outcome {
            Outcome::Measured(m) => eprintln!(
                "   {} of {} delivered, {} duplicates, {:.0} events/s; load {:.1} s, case {:.1} s",
                m.delivered,
                m.produced,
                m.duplicates,
                m.events_per_second,
                m.load_seconds,
                case_start.elapsed().as_secs_f64()
            ),
            Outcome::Failed(reason) => eprintln!("   failed: {reason}"),
        }
        results.push(result);
    }
    #[cfg(feature = "kafka")]
    drop(runner.tansu.take());
    #[cfg(feature = "pubsub")]
    drop(runner.pubsub.take());
    drop(runner);
    // Uninstall is moot: the whole database goes.
    db.drop_now().await?;
    if let Some(wal_db) = wal_db {
        wal_db.drop_now().await?;
    }
    drop(wal_server);

    let text = Report {
        environment: &environment,
        scale: args.scale,
        receiver_capacity,
        amqp_ceiling,
        results: &results,
        seconds: started.elapsed().as_secs_f64(),
    }
    .render();
    print!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).with_context(|| path.display().to_string())?;
    }
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    if failed > 0 {
        eprintln!(
            "skor-bench: {failed} of {} cases failed (see the report)",
            results.len()
        );
    }
    Ok(())
}
