//! The command line: `skor --config FILE [run|install|uninstall|sql|check|tail|...]`,
//! and the original `skor DSN WEBHOOK_URL [LOG_LEVEL]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use skor_sink_api::Op;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::capture::durable::dead_letters;
use crate::capture::notify::oversized;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::observe::logging::{self, LogFormat};
use crate::postgres::target;
use crate::{backfill, install, tail};

/// skor: sends PostgreSQL row changes to webhooks and message brokers.
#[derive(Debug, Parser)]
#[command(
    name = "skor",
    version,
    after_help = "The original command line also works: skor '<libpq dsn>' <webhook-url> [log_level 0-5]"
)]
pub struct Cli {
    /// The TOML config file.
    #[arg(long, short, global = true, env = "SKOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or filter; overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// skor's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Listen and deliver events until SIGINT or SIGTERM (the default).
    Run,
    /// Create skor's trigger function and the triggers of every [[table]].
    Install {
        /// Take an existing replication slot of the configured name as
        /// skor's own (install refuses a slot it did not create).
        #[arg(long)]
        adopt_slot: bool,
        /// Seconds to wait for any one lock (skor's install lock, a
        /// captured table) before giving up and naming who holds it.
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        lock_timeout: f64,
    },
    /// Remove every trigger, function and table skor created; refuses while
    /// durable events are undelivered.
    Uninstall {
        /// Delete undelivered durable events (pending and dead letters) too.
        #[arg(long)]
        drop_events: bool,
    },
    /// Print the install SQL, for migration tools.
    Sql,
    /// Validate the config and exit non-zero on the first problem.
    Check {
        /// Also connect to PostgreSQL and check the configured tables exist.
        #[arg(long)]
        connect: bool,
    },
    /// Send the rows the tables already hold through the routes, as READ
    /// events, in key order; resumes where it stopped.
    Backfill {
        /// A [[table]] to backfill (`schema.table`); repeat for several;
        /// every [[table]] when omitted.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Only the rows matching this SQL condition on the table's columns.
        #[arg(long = "where", value_name = "SQL")]
        condition: Option<String>,
        /// Rows per batch; each batch is one transaction.
        #[arg(long, default_value_t = 1000, value_name = "N")]
        batch: i64,
        /// Start again from the first row, even after a finished backfill.
        #[arg(long)]
        restart: bool,
        /// Print where each backfill stands and exit.
        #[arg(long, conflicts_with_all = ["tables", "condition", "restart"])]
        status: bool,
    },
    /// Durable events that could not be delivered: list or replay them.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Notify-mode payloads too large for NOTIFY whose notification nobody
    /// heard: list, deliver or drop them.
    #[command(subcommand)]
    Oversized(Oversized),
    /// Show the events the config captures as they happen, without
    /// delivering them and without touching the event log or the slot.
    Tail {
        /// Only tables matching this pattern (`public.orders`, `billing.*`,
        /// `*`); repeat for several.
        #[arg(long = "table", value_name = "PATTERN")]
        tables: Vec<String>,
        /// Only this operation (INSERT, UPDATE, DELETE, READ); repeat for
        /// several.
        #[arg(long = "op", value_name = "OP", value_parser = tail::parse_op)]
        ops: Vec<Op>,
        /// Only events for which this expression is true, in the language
        /// of a route's `filter` (`data.status == "paid"`).
        #[arg(long, value_name = "EXPR")]
        filter: Option<String>,
        /// Print the payloads as JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
}

/// `skor oversized` actions.
#[derive(Debug, Subcommand)]
pub enum Oversized {
    /// Print the waiting payloads, oldest first.
    List,
    /// Notify them again, so the running daemon fetches and delivers them.
    Deliver {
        /// The id of a payload; repeat for several.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Vec<i64>,
        /// Every waiting payload.
        #[arg(long)]
        all: bool,
    },
    /// Delete them: their events are given up.
    Drop {
        /// The id of a payload; repeat for several.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Vec<i64>,
        /// Every waiting payload.
        #[arg(long)]
        all: bool,
    },
}

/// `skor dead-letters` actions.
#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// Print the dead letters, oldest first, with their last error.
    List {
        /// Print at most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Queue dead letters again, with a fresh retry budget.
    Replay {
        /// The id of a dead letter; repeat for several.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        id: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

const COMMANDS: [&str; 10] = [
    "run",
    "backfill",
    "install",
    "uninstall",
    "sql",
    "check",
    "dead-letters",
    "oversized",
    "tail",
    "help",
];

/// The original command line, if `args` is one: two or three positional
/// arguments, the first not a flag nor a command.
fn legacy_args(args: &[String]) -> Option<(&str, &str, Option<&str>)> {
    let [_, dsn, url, rest @ ..] = args else {
        return None;
    };
    if dsn.starts_with('-') || COMMANDS.contains(&dsn.as_str()) || rest.len() > 1 {
        return None;
    }
    Some((dsn, url, rest.first().map(String::as_str)))
}

/// The original Docker image's environment, read when skor gets no
/// argument and no `SKOR_CONFIG`: `WEBHOOKURL` and the `PG*`/`DBNAME`
/// variables make the original command line.
fn legacy_env(args: &[String]) -> Option<(String, String, Option<String>)> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if args.len() > 1 || var("SKOR_CONFIG").is_some() {
        return None;
    }
    let url = var("WEBHOOKURL")?;
    let dsn = [
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASS"),
        ("dbname", "DBNAME"),
    ]
    .iter()
    .filter_map(|(key, name)| Some(format!("{key}={}", dsn_value(&var(name)?))))
    .collect::<Vec<_>>()
    .join(" ");
    Some((dsn, url, var("LOG_LEVEL")))
}

/// A libpq keyword value, quoted so spaces and quotes survive.
fn dsn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs the command line in `args` and returns the process's exit code.
pub fn main(args: Vec<String>) -> ExitCode {
    // One thread: the listener, the workers and the sinks' connections hand
    // each event to one another many times, and across threads every handoff
    // costs a wake-up (a futex and a context switch). The benchmark measured
    // a fifth less CPU per event; one core delivers more than PostgreSQL
    // hands out, and librdkafka and lapin run their own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("skor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if let Some((dsn, url, level)) = legacy_args(&args) {
        runtime.block_on(legacy(dsn, url, level))
    } else if let Some((dsn, url, level)) = legacy_env(&args) {
        runtime.block_on(legacy(&dsn, &url, level.as_deref()))
    } else {
        let cli = Cli::parse_from(&args);
        runtime.block_on(run_cli(cli))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be set up when the error came first.
            if tracing::dispatcher::has_been_set() {
                error!("{e:#}");
            } else {
                eprintln!("skor: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn legacy(dsn: &str, url: &str, level: Option<&str>) -> anyhow::Result<()> {
    let level = logging::legacy_level(level.unwrap_or("2")).map_err(|e| anyhow!(e))?;
    logging::init(Some(level), LogFormat::Text).map_err(|e| anyhow!(e))?;
    let config = Config::legacy(dsn.to_string(), url.to_string());
    config.validate_legacy().map_err(|e| anyhow!("{e}"))?;
    info!("running with the original command line: LISTEN skor, POST to the webhook");
    serve(&config).await
}

async fn run_cli(cli: Cli) -> anyhow::Result<()> {
    logging::init(cli.log_level.as_deref(), cli.log_format).map_err(|e| anyhow!(e))?;
    let path = cli
        .config
        .ok_or_else(|| anyhow!("no config file: pass --config skor.toml (or set SKOR_CONFIG)"))?;
    let config = Config::load(&path)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(&config).await,
        Command::Install {
            adopt_slot,
            lock_timeout,
        } => {
            let lock_timeout = std::time::Duration::try_from_secs_f64(lock_timeout)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| anyhow!("--lock-timeout: expected a positive number of seconds"))?;
            let mut client = connect(&config).await?;
            let options = install::InstallOptions {
                adopt_slot,
                lock_timeout,
            };
            install::install_with(&mut client, &config, &options)
                .await
                .context("install failed, nothing was changed")?;
            info!(tables = config.tables.len(), "installed skor's triggers");
            Ok(())
        }
        Command::Uninstall { drop_events } => {
            let mut client = connect(&config).await?;
            install::uninstall(&mut client, &config, drop_events)
                .await
                .context("uninstall failed, nothing was changed")?;
            info!("removed every skor trigger, function and table");
            Ok(())
        }
        Command::Backfill { status: true, .. } => {
            let client = connect(&config).await?;
            print!("{}", backfill::status(&client).await?);
            Ok(())
        }
        Command::Backfill {
            tables,
            condition,
            batch,
            restart,
            status: false,
        } => {
            // Pasted between parentheses into the batch's WHERE, as a
            // table's `when` is into a trigger's.
            if let Some(condition) = &condition {
                crate::config::one_expression(condition).map_err(|e| anyhow!("--where: {e}"))?;
            }
            let mut client = connect(&config).await?;
            let stop = CancellationToken::new();
            let trigger = stop.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                info!("stopping after the batch being sent; the same command resumes");
                trigger.cancel();
            });
            let options = backfill::Options {
                tables,
                condition,
                batch,
                restart,
            };
            match backfill::run(&mut client, &config, &options, &stop).await? {
                backfill::Outcome::Done => Ok(()),
                backfill::Outcome::Paused { table, sent, total } => Err(anyhow!(
                    "backfill paused in {table} at {sent} of {total} rows; run the same command to resume"
                )),
            }
        }
        Command::DeadLetters(DeadLetters::List { limit }) => {
            let client = connect(&config).await?;
            let letters = dead_letters::list(&client, limit)
                .await
                .map_err(|e| anyhow!("cannot list dead letters: {e}"))?;
            print!("{}", dead_letters::render(&letters));
            Ok(())
        }
        Command::DeadLetters(DeadLetters::Replay { id, all }) => {
            let mut client = connect(&config).await?;
            let which = if all {
                dead_letters::Replay::All
            } else {
                dead_letters::Replay::Ids(id)
            };
            let count = dead_letters::replay(&mut client, &which)
                .await
                .map_err(|e| anyhow!("cannot replay dead letters: {e}"))?;
            println!("queued {count} dead letters again");
            Ok(())
        }
        Command::Oversized(action) => {
            let mut client = connect(&config).await?;
            let which = |id: Vec<i64>, all: bool| {
                if all {
                    oversized::Which::All
                } else {
                    oversized::Which::Ids(id)
                }
            };
            match action {
                Oversized::List => {
                    let waiting = oversized::list(&client)
                        .await
                        .map_err(|e| anyhow!("cannot list oversized payloads: {e}"))?;
                    print!("{}", oversized::render(&waiting));
                }
                Oversized::Deliver { id, all } => {
                    let count = oversized::deliver(&mut client, &which(id, all))
                        .await
                        .map_err(|e| anyhow!("cannot deliver oversized payloads: {e}"))?;
                    println!(
                        "notified {count} oversized payloads again; a running skor delivers them"
                    );
                }
                Oversized::Drop { id, all } => {
                    let count = oversized::drop(&mut client, &which(id, all))
                        .await
                        .map_err(|e| anyhow!("cannot drop oversized payloads: {e}"))?;
                    println!("dropped {count} oversized payloads");
                }
            }
            Ok(())
        }
        Command::Tail {
            tables,
            ops,
            filter,
            json,
        } => watch(&config, &tables, &ops, filter.as_deref(), json).await,
        Command::Sql => {
            print!("{}", install::install_sql(&config));
            Ok(())
        }
        Command::Check {
            connect: with_connection,
        } => {
            if with_connection {
                let client = connect(&config).await?;
                install::check_tables(&client, &config).await?;
                for capture in crate::capture::CAPTURES {
                    if let Some(line) = capture.report(&client, &config).await? {
                        println!("  {line}");
                    }
                }
            }
            println!(
                "{}: ok ({} tables, {} sinks, {} routes{})",
                path.display(),
                config.tables.len(),
                config.sinks.len(),
                config.routes.len(),
                if with_connection {
                    ", database reachable"
                } else {
                    ""
                }
            );
            let pg = config.postgres().map_err(|e| anyhow!("source.dsn: {e}"))?;
            let outline = config.outline(&format!(
                "{} sslmode={}",
                target(pg.config()),
                pg.ssl_mode()
            ));
            println!("  source: {}", outline.source);
            println!("  sinks:  {}", outline.sinks);
            println!("  routes: {}", outline.routes);
            Ok(())
        }
    }
}

/// A plain connection for administrative commands.
async fn connect(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config
        .postgres()
        .map_err(|e| anyhow!("source.dsn: {e}"))?
        .connect()
        .await
        .map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `skor tail`: prints the events `config` captures until SIGINT or
/// SIGTERM; readable (coloured unless NO_COLOR) on a terminal, the
/// payloads as JSON lines otherwise.
async fn watch(
    config: &Config,
    tables: &[String],
    ops: &[Op],
    filter: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let selection = tail::Selection::new(tables, ops, filter)?;
    let stdout = std::io::stdout();
    let terminal = stdout.is_terminal();
    let mut printer = if json || !terminal {
        tail::Printer::json(stdout.lock())
    } else {
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        tail::Printer::readable(stdout.lock(), colour)
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        trigger.cancel();
    });
    tail::run(config, &selection, &mut printer, shutdown).await?;
    Ok(())
}

/// Runs the daemon until SIGINT or SIGTERM.
async fn serve(config: &Config) -> anyhow::Result<()> {
    let daemon = Daemon::start(config).await?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        trigger.cancel();
    });
    daemon.run(shutdown).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn recognises_the_original_command_line() {
        let a = args(&["skor", "host=db", "http://hook/", "3"]);
        assert_eq!(
            legacy_args(&a),
            Some(("host=db", "http://hook/", Some("3")))
        );
        let a = args(&["skor", "postgres://db/app", "http://hook/"]);
        assert_eq!(
            legacy_args(&a),
            Some(("postgres://db/app", "http://hook/", None))
        );
        for new in [
            &["skor", "--config", "skor.toml"][..],
            &["skor", "install", "--config"],
            &["skor", "check", "--connect"],
            &["skor", "a", "b", "c", "d"],
        ] {
            assert_eq!(legacy_args(&args(new)), None, "{new:?}");
        }
    }

    #[test]
    fn dsn_values_are_quoted_for_libpq() {
        assert_eq!(dsn_value("a b"), "'a b'");
        assert_eq!(dsn_value(r"it's\x"), r"'it\'s\\x'");
    }
}
