//! The run matrix, and one case end to end: install the triggers, start the
//! receiving side and skor, run the load, wait for every event, measure.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arrivals::{Arrivals, Key};
use crate::db::{Database, TABLE};
use crate::load::{Kind, Load, Produced};
use crate::skor::{self, Running, Skor, Usage};
use crate::{listen, receiver};

/// A case ends this long after the last new arrival, its missing events lost.
const STALL: Duration = Duration::from_secs(10);

/// Rows of the wal-backlog case at scale 1: 2.5 times the burst.
const BACKLOG_ROWS: f64 = 500_000.0;

/// Rows of the recovery cases at scale 1: the backlog an outage leaves.
const RECOVERY_ROWS: f64 = 50_000.0;

/// How long the receiver stays down after the recovery load committed.
const OUTAGE_AFTER_LOAD: Duration = Duration::from_secs(2);

/// When amqp-recovery cuts the broker off, from the start of its load.
#[cfg(feature = "amqp")]
const CUT_INTO_LOAD: Duration = Duration::from_millis(100);

/// What receives the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// No skor: the bench LISTENs itself.
    Ceiling,
    /// skor POSTs each event to the bench's HTTP receiver.
    Webhook,
    /// Same, 500 events per request at most.
    WebhookBatch,
    /// Same as webhook, but the receiver takes 5 ms per request and the
    /// sink blocks when full.
    WebhookSlow,
    /// skor publishes to RabbitMQ; the bench consumes.
    Amqp,
    /// skor produces to tansu; the bench consumes.
    Kafka,
    /// skor appends to a Redis stream; the bench reads it.
    Redis,
    /// skor publishes to a Mosquitto of the case's own; the bench subscribes.
    Mqtt,
    /// skor publishes to a Pub/Sub emulator; the bench pulls.
    Pubsub,
    /// skor publishes to NATS JetStream; the bench consumes the stream.
    Nats,
    /// No skor: a minimal hand-written outbox trigger (one INSERT and one
    /// `pg_notify` per row), what durable mode's triggers are measured
    /// against.
    Outbox,
    /// No skor: the durable-mode triggers only write the event log, whose
    /// rows the bench counts once the load is over.
    DurableLog,
    /// Webhook, with the table in durable mode.
    DurableWebhook,
    /// Webhook batches, with the table in durable mode.
    DurableWebhookBatch,
    /// Webhook, one POST per event, the sink's `format = "cloudevents"`:
    /// what rendering CloudEvents costs against `webhook`.
    WebhookCloudEvents,
    /// The same with `format = "debezium"`.
    WebhookDebezium,
    /// Webhook batches with the receiver down (connection refused) while
    /// a backlog builds up, then up: how fast skor drains it.
    Recovery,
    /// The same, with the table in durable mode.
    DurableRecovery,
    /// AMQP through a proxy that cuts skor's connections to RabbitMQ in the
    /// middle of the load and refuses new ones until after it: the window
    /// of unconfirmed messages is lost with the connection.
    AmqpRecovery,
    /// The wal cases' baseline, on the wal server: no trigger, no slot,
    /// nobody reading, only the load; its commit rate is what the other
    /// wal cases of the same load are measured against.
    WalNone,
    /// Webhook, with the table in wal mode (publication and slot).
    WalWebhook,
    /// Webhook batches, with the table in wal mode.
    WalWebhookBatch,
    /// Kafka (tansu), with the table in wal mode.
    WalKafka,
    /// Webhook batches in wal mode, but the whole load is committed before
    /// skor starts: the slot holds the backlog, skor's memory should not.
    WalBacklog,
}

impl Target {
    /// The name in the report and for `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Webhook => "webhook",
            Self::WebhookBatch => "webhook-batch",
            Self::WebhookSlow => "webhook-slow",
            Self::Amqp => "amqp",
            Self::Kafka => "kafka",
            Self::Redis => "redis",
            Self::Mqtt => "mqtt",
            Self::Pubsub => "pubsub",
            Self::Nats => "nats",
            Self::Outbox => "outbox",
            Self::DurableLog => "durable-log",
            Self::DurableWebhook => "durable-webhook",
            Self::DurableWebhookBatch => "durable-webhook-batch",
            Self::WebhookCloudEvents => "webhook-cloudevents",
            Self::WebhookDebezium => "webhook-debezium",
            Self::Recovery => "recovery",
            Self::DurableRecovery => "durable-recovery",
            Self::AmqpRecovery => "amqp-recovery",
            Self::WalNone => "wal-none",
            Self::WalWebhook => "wal-webhook",
            Self::WalWebhookBatch => "wal-webhook-batch",
            Self::WalKafka => "wal-kafka",
            Self::WalBacklog => "wal-backlog",
        }
    }

    /// Whether the case runs on the wal server (`wal_level = logical`).
    pub fn wal(self) -> bool {
        matches!(
            self,
            Self::WalNone
                | Self::WalWebhook
                | Self::WalWebhookBatch
                | Self::WalKafka
                | Self::WalBacklog
        )
    }

    /// Whether skor captures in wal mode (a publication and a slot).
    fn wal_capture(self) -> bool {
        self.wal() && self != Self::WalNone
    }

    fn durable(self) -> bool {
        matches!(
            self,
            Self::DurableLog
                | Self::DurableWebhook
                | Self::DurableWebhookBatch
                | Self::DurableRecovery
        )
    }

    /// Whether the receiver is down while the load runs.
    fn outage(self) -> bool {
        matches!(
            self,
            Self::Recovery | Self::DurableRecovery | Self::AmqpRecovery
        )
    }
}

/// One target under one load.
#[derive(Clone, Debug)]
pub struct Case {
    /// What receives the events.
    pub target: Target,
    /// What writes them.
    pub load: Load,
}

impl Case {
    /// `target/load`, e.g. `webhook-batch/burst`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.target.name(), self.load.name)
    }
}

/// Every case, in run order, at `scale`.
pub fn matrix(scale: f64) -> Vec<Case> {
    let loads = [
        Kind::Single(1),
        Kind::Single(4),
        Kind::Single(16),
        Kind::Burst,
        Kind::Mix,
    ];
    let mut cases = Vec::new();
    for kind in loads {
        let load = Load::new(kind, scale);
        let mut targets = vec![Target::Ceiling, Target::Webhook];
        if matches!(kind, Kind::Burst | Kind::Mix | Kind::Single(4)) {
            targets.push(Target::WebhookBatch);
        }
        if matches!(kind, Kind::Burst | Kind::Single(4)) {
            targets.extend([Target::WebhookCloudEvents, Target::WebhookDebezium]);
            if cfg!(feature = "amqp") {
                targets.push(Target::Amqp);
            }
            if cfg!(feature = "kafka") {
                targets.push(Target::Kafka);
            }
            if cfg!(feature = "redis") {
                targets.push(Target::Redis);
            }
            if cfg!(feature = "mqtt") {
                targets.push(Target::Mqtt);
            }
            if cfg!(feature = "nats") {
                targets.push(Target::Nats);
            }
            targets.extend([Target::Outbox, Target::DurableLog, Target::DurableWebhook]);
        }
        if kind == Kind::Burst {
            targets.push(Target::DurableWebhookBatch);
            if cfg!(feature = "pubsub") {
                targets.push(Target::Pubsub);
            }
        }
        // The wal cases, each load's baseline first.
        match kind {
            Kind::Single(4) => targets.extend([Target::WalNone, Target::WalWebhook]),
            Kind::Burst => {
                targets.extend([Target::WalNone, Target::WalWebhookBatch]);
                if cfg!(feature = "kafka") {
                    targets.push(Target::WalKafka);
                }
            }
            _ => {}
        }
        cases.extend(targets.into_iter().map(|target| Case {
            target,
            load: load.clone(),
        }));
    }
    // A backlog 2.5 times the burst, all committed before skor starts.
    cases.push(Case {
        target: Target::WalBacklog,
        load: Load::burst(BACKLOG_ROWS, scale),
    });
    // A backlog of 50,000 events built while the receiver is down.
    let mut recoveries = vec![Target::Recovery, Target::DurableRecovery];
    if cfg!(feature = "amqp") {
        recoveries.push(Target::AmqpRecovery);
    }
    for target in recoveries {
        cases.push(Case {
            target,
            load: Load::burst(RECOVERY_ROWS, scale),
        });
    }
    cases.push(Case {
        target: Target::WebhookSlow,
        load: Load::burst(50_000.0, scale),
    });
    cases
}

/// What a case measured.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Events the load produced.
    pub produced: usize,
    /// Produced events that arrived at least once (durable-log: that are in
    /// the event log).
    pub delivered: usize,
    /// Arrivals of an event beyond its first.
    pub duplicates: usize,
    /// Arrivals of events the load did not produce.
    pub unexpected: usize,
    /// Payloads the receiver could not read.
    pub malformed: usize,
    /// Unique deliveries per second, from the load's start to the last one.
    pub events_per_second: f64,
    /// p50, p99 and max of arrival minus commit, in milliseconds.
    pub latency_ms: Option<[f64; 3]>,
    /// skor's CPU and memory; none for the ceiling and durable-log.
    pub usage: Option<Usage>,
    /// The load's own duration, in seconds.
    pub load_seconds: f64,
}

impl Measured {
    /// Produced events that never arrived.
    pub fn lost(&self) -> usize {
        self.produced - self.delivered
    }

    /// Produced events per second of the load's own duration.
    pub fn committed_per_second(&self) -> f64 {
        if self.load_seconds > 0.0 {
            self.produced as f64 / self.load_seconds
        } else {
            0.0
        }
    }
}

/// How a case went.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// It ran; numbers may still show losses.
    Measured(Measured),
    /// skor (or the bench) failed; the reason.
    Failed(String),
}

/// One row of the report, with what is worth saying below the table.
#[derive(Clone, Debug)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// How it went.
    pub outcome: Outcome,
    /// Log excerpts and remarks.
    pub notes: Vec<String>,
}

/// What receives the events during one case.
enum Side {
    Listen(#[allow(dead_code)] listen::Listening),
    Http(#[allow(dead_code)] receiver::Receiver),
    /// A receiver not started yet, and its port.
    Down(u16),
    /// A consumer, and the proxy skor reaches the broker through.
    #[cfg(feature = "amqp")]
    AmqpProxied(crate::amqp::Consumer, skor_testkit::proxy::Proxy),
    #[cfg(feature = "amqp")]
    Amqp(crate::amqp::Consumer),
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::Consumer),
    #[cfg(feature = "redis")]
    Redis(crate::redis::Consumer),
    #[cfg(feature = "mqtt")]
    Mqtt(#[allow(dead_code)] crate::mqtt::Consumer),
    #[cfg(feature = "pubsub")]
    Pubsub(crate::pubsub::Consumer),
    #[cfg(feature = "nats")]
    Nats(crate::nats::Consumer),
}

impl Side {
    async fn stop(self) -> Result<(), String> {
        match self {
            Self::Listen(_) | Self::Http(_) | Self::Down(_) => Ok(()),
            #[cfg(feature = "mqtt")]
            Self::Mqtt(_) => Ok(()),
            #[cfg(feature = "amqp")]
            Self::Amqp(consumer) | Self::AmqpProxied(consumer, _) => {
                consumer.stop().await.map_err(|e| format!("{e:#}"))
            }
            #[cfg(feature = "kafka")]
            Self::Kafka(consumer) => {
                consumer.stop().await;
                Ok(())
            }
            #[cfg(feature = "redis")]
            Self::Redis(consumer) => consumer.stop().await.map_err(|e| format!("{e:#}")),
            #[cfg(feature = "pubsub")]
            Self::Pubsub(consumer) => {
                consumer.stop().await;
                Ok(())
            }
            #[cfg(feature = "nats")]
            Self::Nats(consumer) => consumer.stop().await.map_err(|e| format!("{e:#}")),
        }
    }
}

/// Runs cases one after the other against one database.
pub struct Runner<'a> {
    /// The bench database.
    pub db: &'a Database,
    /// The bench database on the wal server (`wal_level = logical`), when
    /// a wal case is to run.
    pub wal_db: Option<&'a Database>,
    /// The binary under test.
    pub skor: &'a Skor,
    /// The RabbitMQ the AMQP cases use.
    #[cfg_attr(not(feature = "amqp"), allow(dead_code))]
    pub amqp_url: String,
    /// The Redis server the Redis case uses.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub redis_url: String,
    /// Where to keep each case's config and log, if anywhere.
    pub keep_logs: Option<PathBuf>,
    /// The run's broker, started by the first Kafka case.
    #[cfg(feature = "kafka")]
    pub tansu: Option<crate::kafka::Tansu>,
    /// Kafka cases run so far, to name each one's topic.
    #[cfg(feature = "kafka")]
    pub topics: usize,
    /// The run's Pub/Sub emulator, started by the first Pub/Sub case, and
    /// the cases run on it so far.
    #[cfg(feature = "pubsub")]
    pub pubsub: Option<(crate::pubsub::Emulator, usize)>,
}

/// How waiting for the events ended.
enum Ending {
    Complete,
    Stalled,
    Exited(String),
}

impl<'a> Runner<'a> {
    /// Runs `case`; a failure becomes a failed row, never an error.
    pub async fn run(&mut self, case: &Case) -> CaseResult {
        let mut notes = Vec::new();
        let outcome = match self.attempt(case, &mut notes).await {
            Ok(measured) => Outcome::Measured(measured),
            Err(reason) => Outcome::Failed(reason),
        };
        // The emulator's JVM keeps two cores busy long after its case:
        // stopped at once, it does not slow the cases after it.
        #[cfg(feature = "pubsub")]
        if case.target == Target::Pubsub {
            self.pubsub = None;
        }
        CaseResult {
            case: case.clone(),
            outcome,
            notes,
        }
    }

    fn case_dir(&self, case: &Case) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
        match &self.keep_logs {
            Some(root) => {
                let dir = root.join(case.name().replace('/', "_"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                Ok((dir, None))
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("skor-bench-")
                    .tempdir()
                    .map_err(|e| format!("temp dir: {e}"))?;
                Ok((temp.path().to_path_buf(), Some(temp)))
            }
        }
    }

    /// Starts what receives `target`'s events, and returns it with skor's
    /// `[sink.bench]` table. Every sink blocks when its queue is full: the
    /// default, dropping, would lose the part of a burst that a sink slower
    /// than PostgreSQL cannot take, and the bench measures delivery.
    async fn start_side(
        &mut self,
        target: Target,
        arrivals: Arc<Arrivals>,
    ) -> Result<(Side, String), String> {
        let (side, mut sink) = self.start_receiver(target, arrivals).await?;
        if !sink.is_empty() {
            sink.push_str("when_full = \"block\"\n");
        }
        Ok((side, sink))
    }

    async fn start_receiver(
        &mut self,
        target: Target,
        arrivals: Arc<Arrivals>,
    ) -> Result<(Side, String), String> {
        let webhook = |port: u16, options: &str| {
            format!(
                "[sink.bench]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/\"\n{options}"
            )
        };
        const BATCH: &str = "batch_size = 500\nbatch_timeout_ms = 5\n";
        let fail = |e: anyhow::Error| format!("{e:#}");
        Ok(match target {
            Target::Ceiling => {
                let listening = listen::start(&self.db.dsn, "skor", arrivals)
                    .await
                    .map_err(fail)?;
                (Side::Listen(listening), String::new())
            }
            Target::Recovery | Target::DurableRecovery => {
                let port = receiver::free_port().map_err(fail)?;
                (Side::Down(port), webhook(port, BATCH))
            }
            Target::Webhook
            | Target::WebhookBatch
            | Target::WebhookSlow
            | Target::WebhookCloudEvents
            | Target::WebhookDebezium
            | Target::DurableWebhook
            | Target::DurableWebhookBatch
            | Target::WalWebhook
            | Target::WalWebhookBatch
            | Target::WalBacklog => {
                let delay = if target == Target::WebhookSlow {
                    Duration::from_millis(5)
                } else {
                    Duration::ZERO
                };
                let http = receiver::start(arrivals, delay).await.map_err(fail)?;
                let options = match target {
                    Target::WebhookBatch
                    | Target::DurableWebhookBatch
                    | Target::WalWebhookBatch
                    | Target::WalBacklog => BATCH,
                    Target::WebhookCloudEvents => "format = \"cloudevents\"\n",
                    Target::WebhookDebezium => "format = \"debezium\"\n",
                    _ => "",
                };
                let sink = webhook(http.port, options);
                (Side::Http(http), sink)
            }
            #[cfg(feature = "amqp")]
            Target::Amqp => {
                let consumer = crate::amqp::Consumer::start(&self.amqp_url, arrivals)
                    .await
                    .map_err(fail)?;
                (Side::Amqp(consumer), crate::amqp::sink(&self.amqp_url))
            }
            #[cfg(feature = "amqp")]
            Target::AmqpRecovery => {
                let consumer = crate::amqp::Consumer::start(&self.amqp_url, arrivals)
                    .await
                    .map_err(fail)?;
                let (proxied, broker) = crate::amqp::through_proxy(&self.amqp_url).map_err(fail)?;
                let proxy = skor_testkit::proxy::Proxy::start(broker).await;
                let sink = crate::amqp::sink(&proxied(proxy.addr.port()));
                (Side::AmqpProxied(consumer, proxy), sink)
            }
            #[cfg(feature = "kafka")]
            Target::Kafka | Target::WalKafka => {
                if self.tansu.is_none() {
                    let log = self.keep_logs.as_ref().map(|dir| dir.join("tansu.log"));
                    let tansu = crate::kafka::Tansu::start(log.as_deref())
                        .await
                        .map_err(|e| format!("tansu: {e:#}"))?;
                    self.tansu = Some(tansu);
                }
                let tansu = self.tansu.as_ref().expect("started above");
                self.topics += 1;
                let topic = format!("bench-{}", self.topics);
                tansu.create_topic(&topic).await.map_err(fail)?;
                let consumer = crate::kafka::Consumer::start(&tansu.brokers(), &topic, arrivals)
                    .await
                    .map_err(fail)?;
                (Side::Kafka(consumer), tansu.sink(&topic))
            }
            #[cfg(feature = "redis")]
            Target::Redis => {
                let consumer = crate::redis::Consumer::start(&self.redis_url, arrivals)
                    .await
                    .map_err(fail)?;
                (Side::Redis(consumer), crate::redis::sink(&self.redis_url))
            }
            #[cfg(feature = "mqtt")]
            Target::Mqtt => {
                let consumer = crate::mqtt::Consumer::start(arrivals).await.map_err(fail)?;
                let sink = consumer.sink();
                (Side::Mqtt(consumer), sink)
            }
            #[cfg(feature = "pubsub")]
            Target::Pubsub => {
                if self.pubsub.is_none() {
                    let emulator = crate::pubsub::Emulator::start()
                        .await
                        .map_err(|e| format!("Pub/Sub emulator: {e:#}"))?;
                    self.pubsub = Some((emulator, 0));
                }
                let (emulator, cases) = self.pubsub.as_mut().expect("started above");
                *cases += 1;
                let topic = format!("bench-{cases}");
                emulator.create_topic(&topic).await.map_err(fail)?;
                let consumer = crate::pubsub::Consumer::start(emulator, &topic, arrivals);
                (Side::Pubsub(consumer), emulator.sink(&topic))
            }
            #[cfg(feature = "nats")]
            Target::Nats => {
                let url = crate::nats::url();
                let consumer = crate::nats::Consumer::start(&url, arrivals)
                    .await
                    .map_err(fail)?;
                (Side::Nats(consumer), crate::nats::sink(&url))
            }
            #[allow(unreachable_patterns)]
            other => {
                return Err(format!(
                    "the bench was built without the {} feature",
                    other.name()
                ))
            }
        })
    }

    /// The database `case` runs on.
    fn db_for(&self, case: &Case) -> Result<&'a Database, String> {
        if !case.target.wal() {
            return Ok(self.db);
        }
        self.wal_db
            .ok_or_else(|| "no wal server (wal_level = logical) for this run".to_string())
    }

    async fn attempt(&mut self, case: &Case, notes: &mut Vec<String>) -> Result<Measured, String> {
        let db = self.db_for(case)?;
        let (dir, _temp) = self.case_dir(case)?;
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let db_error = |e: anyhow::Error| format!("{e:#}");
        // A clean slate: no trigger, no event log, an empty table.
        let plain = write("install.toml", &skor::config(&db.dsn, TABLE, "notify", ""))?;
        self.skor
            .admin(&plain, &["uninstall", "--drop-events"])
            .await?;
        if case.target.wal() {
            // A slot left by a failed case would keep WAL and stream old changes.
            db.drop_replication().await.map_err(db_error)?;
        }
        db.reset().await.map_err(db_error)?;
        case.load.prepare(db).await.map_err(db_error)?;
        // So a checkpoint does not land in the middle of the timed part.
        db.client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| format!("CHECKPOINT: {e}"))?;

        if case.target == Target::Outbox {
            db.install_outbox().await.map_err(db_error)?;
            return count_outbox(db, case, notes).await;
        }
        if case.target == Target::DurableLog {
            let config = write("skor.toml", &skor::config(&db.dsn, TABLE, "durable", ""))?;
            self.skor.admin(&config, &["install"]).await?;
            return count_logged(db, case, notes).await;
        }
        if case.target == Target::WalNone {
            return count_committed(db, case).await;
        }

        let events = case.load.events();
        let arrivals = Arc::new(Arrivals::with_capacity(events + events / 8 + 1024));
        let (mut side, sink) = self.start_side(case.target, Arc::clone(&arrivals)).await?;
        let wal = case.target.wal_capture();
        let text = if wal {
            skor::wal_config(&db.dsn, TABLE, &sink)
        } else if case.target.durable() {
            skor::config(&db.dsn, TABLE, "durable", &sink)
        } else {
            skor::config(&db.dsn, TABLE, "notify", &sink)
        };
        let config = write("skor.toml", &text)?;
        let log_path = dir.join("skor.log");
        // The receiving side is stopped whatever happens, so an AMQP
        // exchange is not left behind by a failed start.
        let run = async {
            // In wal mode this creates the publication and the slot.
            self.skor.admin(&config, &["install"]).await?;
            if case.target == Target::WalBacklog {
                return self
                    .deliver_backlog(db, case, &arrivals, &config, &log_path, notes)
                    .await;
            }
            let running = match case.target {
                Target::Ceiling => None,
                _ => Some(self.skor.start(&config, &log_path).await?),
            };
            if case.target.outage() {
                return self
                    .deliver_after_outage(db, case, &arrivals, running, &mut side, notes)
                    .await;
            }
            let start_of_rate = None;
            self.deliver(db, case, &arrivals, running, notes)
                .await
                .map(|d| (d, start_of_rate))
        };
        let result = run.await;
        if let Err(e) = side.stop().await {
            notes.push(format!("stopping the consumer: {e}"));
        }
        if wal {
            // Whatever happened: no slot may keep WAL into the next case.
            if let Err(e) = self.skor.admin(&config, &["uninstall"]).await {
                notes.push(format!("skor uninstall after the case: {e}"));
            }
            if let Err(e) = db.drop_replication().await {
                notes.push(format!("dropping the slot after the case: {e:#}"));
            }
        }
        let ((produced, commits, ending, usage), start_of_rate) = result?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();

        let mut measured = measure(&produced, &commits, &arrivals.snapshot(), usage);
        measured.malformed = arrivals.malformed();
        if let (Some(up), true) = (start_of_rate, case.target.outage()) {
            // The drain runs from the first delivery: until then skor waits
            // out the retry delay it chose while the receiver was down.
            let snapshot = arrivals.snapshot();
            measured.latency_ms = None;
            let before: HashSet<Key> = snapshot
                .iter()
                .filter(|&&(_, at)| at < up)
                .map(|&(key, _)| key)
                .collect();
            let fresh: Vec<(Key, Instant)> = snapshot
                .iter()
                .copied()
                .filter(|&(key, at)| at >= up && !before.contains(&key))
                .collect();
            if let Some(first) = fresh.iter().map(|&(_, at)| at).min() {
                measured.events_per_second = delivery_rate(&commits, &fresh, first);
                notes.push(format!(
                    "the sink came back {:.1} s after the load ended, with {} events waiting; \
                     skor's next attempt reached it {:.2} s later; events/s counts the events \
                     first delivered after that, from that first arrival to the last ({} /s \
                     from the sink's return)",
                    OUTAGE_AFTER_LOAD.as_secs_f64(),
                    measured.produced - before.len(),
                    first.saturating_duration_since(up).as_secs_f64(),
                    int_rate(delivery_rate(&commits, &fresh, up))
                ));
            }
        } else if let Some(started) = start_of_rate {
            // The backlog: delivery from skor's start, not the load's; the
            // events waited in the slot, so commit-to-arrival says nothing.
            measured.events_per_second = delivery_rate(&commits, &arrivals.snapshot(), started);
            measured.latency_ms = None;
            notes.push(format!(
                "the whole load ({} events, {:.1} s) was committed before skor started; \
                 events/s is from skor's start (once listening) to the last arrival; \
                 compare its peak RSS with wal-webhook-batch/burst",
                measured.produced, measured.load_seconds
            ));
        }
        match ending {
            Ending::Complete => {}
            Ending::Stalled => notes.push(format!(
                "{} of {} events had not arrived {} s after the last arrival",
                measured.lost(),
                measured.produced,
                STALL.as_secs()
            )),
            Ending::Exited(reason) => return Err(format!("skor exited during the case: {reason}")),
        }
        // Warnings are worth a note even when nothing was lost (a log flood
        // costs too); the totals only when something was.
        let excerpt = skor::excerpt(&log, 5);
        let quote = |line: &String| format!("skor log: {line}");
        notes.extend(excerpt.problems.iter().map(quote));
        if measured.lost() > 0
            || measured.duplicates > 0
            || measured.unexpected > 0
            || measured.malformed > 0
        {
            notes.extend(excerpt.totals.iter().map(quote));
        }
        if measured.unexpected > 0 {
            notes.push(format!(
                "{} arrivals of events the load did not produce",
                measured.unexpected
            ));
        }
        if measured.malformed > 0 {
            notes.push(format!(
                "{} payloads without an op and a data.id, the first: {}",
                measured.malformed,
                arrivals.first_malformed().unwrap_or_default()
            ));
        }
        Ok(measured)
    }
}

/// Runs the load with only the durable triggers installed, no skor,
/// and counts the events they wrote to the event log.
async fn count_logged(
    db: &Database,
    case: &Case,
    notes: &mut Vec<String>,
) -> Result<Measured, String> {
    let produced = case
        .load
        .run(&db.dsn)
        .await
        .map_err(|e| format!("load failed: {e:#}"))?;
    let logged: i64 = db
        .client
        .query_one("SELECT count(*) FROM skor.event_log", &[])
        .await
        .map_err(|e| format!("counting skor.event_log: {e}"))?
        .get(0);
    let measured = measure_logged(&produced, logged.max(0) as usize);
    if measured.lost() > 0 {
        notes.push(format!(
            "{} of {} committed events are not in skor.event_log",
            measured.lost(),
            measured.produced
        ));
    }
    if measured.unexpected > 0 {
        notes.push(format!(
            "skor.event_log holds {} rows more than the load produced events",
            measured.unexpected
        ));
    }
    Ok(measured)
}

/// Runs the load with only the minimal outbox trigger, and counts its rows.
async fn count_outbox(
    db: &Database,
    case: &Case,
    notes: &mut Vec<String>,
) -> Result<Measured, String> {
    let produced = case.load.run(&db.dsn).await;
    let logged = db.drop_outbox().await.map_err(|e| format!("{e:#}"))?;
    let produced = produced.map_err(|e| format!("load failed: {e:#}"))?;
    let measured = measure_logged(&produced, logged.max(0) as usize);
    if measured.lost() > 0 {
        notes.push(format!(
            "{} of {} committed events are not in the outbox",
            measured.lost(),
            measured.produced
        ));
    }
    Ok(measured)
}

/// wal-none: runs the load with nothing capturing it (no trigger, no
/// publication, no slot) and takes its commit rate.
async fn count_committed(db: &Database, case: &Case) -> Result<Measured, String> {
    let produced = case
        .load
        .run(&db.dsn)
        .await
        .map_err(|e| format!("load failed: {e:#}"))?;
    let committed = produced.commits.len();
    Ok(measure_logged(&produced, committed))
}

/// What a delivering case waited for: the load's events, when they
/// committed, how the wait ended, and what skor used.
type Delivered = (Produced, HashMap<Key, Instant>, Ending, Option<Usage>);

impl Runner<'_> {
    /// Runs the load, waits for its events, then stops skor.
    async fn deliver(
        &self,
        db: &Database,
        case: &Case,
        arrivals: &Arrivals,
        running: Option<Running>,
        notes: &mut Vec<String>,
    ) -> Result<Delivered, String> {
        let produced = match case.load.run(&db.dsn).await {
            Ok(produced) => produced,
            Err(e) => {
                if let Some(running) = running {
                    let _ = running.stop().await;
                }
                return Err(format!("load failed: {e:#}"));
            }
        };
        Ok(settle(produced, arrivals, running, notes).await)
    }

    /// recovery: runs the load while the receiver is down (skor retries
    /// against a closed port), waits [`OUTAGE_AFTER_LOAD`], starts the
    /// receiver and waits for the backlog; also returns when the receiver
    /// came up, where the drain rate starts.
    async fn deliver_after_outage(
        &self,
        db: &Database,
        case: &Case,
        arrivals: &Arc<Arrivals>,
        running: Option<Running>,
        side: &mut Side,
        notes: &mut Vec<String>,
    ) -> Result<(Delivered, Option<Instant>), String> {
        let Some(running) = running else {
            return Err("no skor to recover".into());
        };
        let load = case.load.run(&db.dsn);
        let produced = match side {
            #[cfg(feature = "amqp")]
            Side::AmqpProxied(_, proxy) => {
                tokio::pin!(load);
                let cut = tokio::time::sleep(CUT_INTO_LOAD);
                tokio::select! {
                    produced = &mut load => {
                        notes.push("the load ended before the cut".into());
                        produced
                    }
                    () = cut => {
                        proxy.cut();
                        load.await
                    }
                }
            }
            _ => load.await,
        };
        let produced = match produced {
            Ok(produced) => produced,
            Err(e) => {
                let _ = running.stop().await;
                return Err(format!("load failed: {e:#}"));
            }
        };
        tokio::time::sleep(OUTAGE_AFTER_LOAD).await;
        let before = arrivals.count();
        let up = match side {
            Side::Down(port) => {
                if before > 0 {
                    notes.push(format!(
                        "{before} events arrived while the receiver was down"
                    ));
                }
                let http = receiver::start_on(*port, Arc::clone(arrivals), Duration::ZERO)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                *side = Side::Http(http);
                Instant::now()
            }
            #[cfg(feature = "amqp")]
            Side::AmqpProxied(_, proxy) => {
                notes.push(format!(
                    "{before} events arrived before the proxy cut skor off RabbitMQ {} ms into the load",
                    CUT_INTO_LOAD.as_millis()
                ));
                proxy.resume();
                Instant::now()
            }
            _ => return Err("the recovery case has no outage to end".into()),
        };
        Ok((
            settle(produced, arrivals, Some(running), notes).await,
            Some(up),
        ))
    }

    /// wal-backlog: runs the whole load into the slot, then starts skor,
    /// waits for its events and stops it; also returns when skor was
    /// ready, where its delivery rate starts.
    async fn deliver_backlog(
        &self,
        db: &Database,
        case: &Case,
        arrivals: &Arrivals,
        config: &std::path::Path,
        log: &std::path::Path,
        notes: &mut Vec<String>,
    ) -> Result<(Delivered, Option<Instant>), String> {
        let produced = case
            .load
            .run(&db.dsn)
            .await
            .map_err(|e| format!("load failed: {e:#}"))?;
        if let Ok(row) = db
            .client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                   FROM pg_replication_slots WHERE database = current_database()",
                &[],
            )
            .await
        {
            let retained: i64 = row.get(0);
            notes.push(format!(
                "the slot held {:.1} MB of WAL when skor started",
                retained as f64 / 1024.0 / 1024.0
            ));
        }
        let running = self.skor.start(config, log).await?;
        let started = Instant::now();
        Ok((
            settle(produced, arrivals, Some(running), notes).await,
            Some(started),
        ))
    }
}

/// Waits for `produced`'s events (see [`wait`]), then stops skor and
/// takes what it used.
async fn settle(
    produced: Produced,
    arrivals: &Arrivals,
    mut running: Option<Running>,
    notes: &mut Vec<String>,
) -> Delivered {
    let commits: HashMap<Key, Instant> = produced.commits.iter().copied().collect();
    let ending = wait(arrivals, &commits, running.as_mut()).await;
    let usage = running.as_ref().and_then(Running::usage);
    if let Some(running) = running {
        if let Err(e) = running.stop().await {
            notes.push(e);
        }
    }
    (produced, commits, ending, usage)
}

fn int_rate(rate: f64) -> String {
    crate::report::int(rate.round() as usize)
}

/// Unique deliveries of committed events per second from `from` to the
/// last one.
fn delivery_rate(
    commits: &HashMap<Key, Instant>,
    arrivals: &[(Key, Instant)],
    from: Instant,
) -> f64 {
    let mut seen = HashSet::with_capacity(commits.len());
    let mut last = None;
    for &(key, at) in arrivals {
        if commits.contains_key(&key) && seen.insert(key) {
            last = last.max(Some(at));
        }
    }
    match last {
        Some(last) if last > from => seen.len() as f64 / last.duration_since(from).as_secs_f64(),
        _ => 0.0,
    }
}

/// Waits until every produced event arrived, nothing new arrived for
/// [`STALL`], or skor exited.
async fn wait(
    arrivals: &Arrivals,
    commits: &HashMap<Key, Instant>,
    mut running: Option<&mut Running>,
) -> Ending {
    let mut last_count = arrivals.count();
    // Called when the load has ended: the stall clock starts now.
    let mut last_change = Instant::now();
    let mut checked = usize::MAX;
    loop {
        let count = arrivals.count();
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        }
        // Counting unique keys costs a copy; only when it could succeed.
        if count >= commits.len() && count != checked {
            checked = count;
            let seen: HashSet<Key> = arrivals.snapshot().into_iter().map(|(k, _)| k).collect();
            if commits.keys().all(|k| seen.contains(k)) {
                return Ending::Complete;
            }
        }
        if let Some(reason) = running.as_deref_mut().and_then(Running::exited) {
            return Ending::Exited(reason);
        }
        if last_change.elapsed() >= STALL {
            return Ending::Stalled;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn measure(
    produced: &Produced,
    commits: &HashMap<Key, Instant>,
    arrivals: &[(Key, Instant)],
    usage: Option<Usage>,
) -> Measured {
    let mut seen = HashSet::with_capacity(commits.len());
    let mut latencies = Vec::with_capacity(commits.len());
    let (mut duplicates, mut unexpected) = (0, 0);
    let mut last = None;
    for &(key, at) in arrivals {
        let Some(committed) = commits.get(&key) else {
            unexpected += 1;
            continue;
        };
        if !seen.insert(key) {
            duplicates += 1;
            continue;
        }
        // An event may be heard before its commit returns to the client.
        latencies.push(at.saturating_duration_since(*committed).as_secs_f64() * 1000.0);
        last = last.max(Some(at));
    }
    latencies.sort_by(f64::total_cmp);
    let delivered = seen.len();
    let events_per_second = match last {
        Some(last) if last > produced.start => {
            delivered as f64 / last.duration_since(produced.start).as_secs_f64()
        }
        _ => 0.0,
    };
    Measured {
        produced: commits.len(),
        delivered,
        duplicates,
        unexpected,
        malformed: 0,
        events_per_second,
        latency_ms: (!latencies.is_empty()).then(|| {
            [
                percentile(&latencies, 0.50),
                percentile(&latencies, 0.99),
                latencies[latencies.len() - 1],
            ]
        }),
        usage,
        load_seconds: produced.end.duration_since(produced.start).as_secs_f64(),
    }
}

/// What `durable-log` measured: `logged` rows in the event log after
/// `produced`, at the rate PostgreSQL committed them.
fn measure_logged(produced: &Produced, logged: usize) -> Measured {
    let events = produced.commits.len();
    let load_seconds = produced.end.duration_since(produced.start).as_secs_f64();
    Measured {
        produced: events,
        delivered: logged.min(events),
        duplicates: 0,
        unexpected: logged.saturating_sub(events),
        malformed: 0,
        events_per_second: if load_seconds > 0.0 {
            events as f64 / load_seconds
        } else {
            0.0
        },
        latency_ms: None,
        usage: None,
        load_seconds,
    }
}

/// The nearest-rank percentile of sorted `values`.
fn percentile(values: &[f64], q: f64) -> f64 {
    let rank = (q * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrivals::{key, Op};

    #[test]
    fn the_matrix_has_every_requested_case() {
        let names: Vec<String> = matrix(1.0).iter().map(Case::name).collect();
        for name in [
            "ceiling/single-1",
            "webhook/mix",
            "webhook-batch/single-4",
            "durable-webhook/single-4",
            "durable-webhook-batch/burst",
            "webhook-slow/burst",
        ] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
        }
        assert!(!names.contains(&"webhook-batch/single-1".to_string()));
        for load in ["burst", "single-4"] {
            let at = |target: &str| names.iter().position(|n| *n == format!("{target}/{load}"));
            let log =
                at("durable-log").unwrap_or_else(|| panic!("no durable-log/{load} in {names:?}"));
            assert_eq!(at("durable-webhook"), Some(log + 1), "{names:?}");
        }
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("durable-log/"))
                .count(),
            2
        );
        let slow = matrix(1.0).pop().unwrap();
        assert_eq!(slow.load.rows, 50_000);
    }

    #[test]
    fn the_wal_cases_follow_their_baseline() {
        let cases = matrix(1.0);
        let names: Vec<String> = cases.iter().map(Case::name).collect();
        let at = |name: &str| names.iter().position(|n| n == name);
        let none = at("wal-none/burst").unwrap_or_else(|| panic!("{names:?}"));
        assert_eq!(at("wal-webhook-batch/burst"), Some(none + 1), "{names:?}");
        let single = at("wal-none/single-4").unwrap_or_else(|| panic!("{names:?}"));
        assert_eq!(at("wal-webhook/single-4"), Some(single + 1), "{names:?}");
        assert_eq!(
            at("wal-kafka/burst").is_some(),
            cfg!(feature = "kafka"),
            "{names:?}"
        );
        let backlog = at("wal-backlog/burst").unwrap_or_else(|| panic!("{names:?}"));
        assert!(backlog > none);
        assert_eq!(cases[backlog].load.rows, 500_000);
        for case in &cases {
            assert_eq!(
                case.target.wal(),
                case.name().contains("wal"),
                "{}",
                case.name()
            );
        }
        assert!(!Target::WalNone.wal_capture() && Target::WalKafka.wal_capture());
    }

    #[test]
    fn measures_losses_duplicates_and_latency() {
        let start = Instant::now();
        let t = |ms| start + Duration::from_millis(ms);
        let produced = Produced {
            start,
            end: t(10),
            commits: vec![
                (key(Op::Insert, 1), t(10)),
                (key(Op::Insert, 2), t(10)),
                (key(Op::Insert, 3), t(10)),
            ],
        };
        let commits = produced.commits.iter().copied().collect();
        let arrivals = [
            (key(Op::Insert, 1), t(5)),
            (key(Op::Insert, 2), t(30)),
            (key(Op::Insert, 2), t(40)),
            (key(Op::Delete, 9), t(40)),
        ];
        let m = measure(&produced, &commits, &arrivals, None);
        assert_eq!(
            (
                m.produced,
                m.delivered,
                m.lost(),
                m.duplicates,
                m.unexpected
            ),
            (3, 2, 1, 1, 1)
        );
        assert_eq!(m.latency_ms, Some([0.0, 20.0, 20.0]));
        assert!((m.events_per_second - 2.0 / 0.030).abs() < 1.0);
    }

    #[test]
    fn durable_log_counts_the_log_at_the_commit_rate() {
        let start = Instant::now();
        let end = start + Duration::from_millis(500);
        let produced = Produced {
            start,
            end,
            commits: (1..=4).map(|id| (key(Op::Insert, id), end)).collect(),
        };
        let m = measure_logged(&produced, 3);
        assert_eq!(
            (m.produced, m.delivered, m.lost(), m.unexpected),
            (4, 3, 1, 0)
        );
        assert!((m.events_per_second - 8.0).abs() < 1e-9);
        assert!(m.latency_ms.is_none() && m.usage.is_none());
        let more = measure_logged(&produced, 6);
        assert_eq!((more.delivered, more.lost(), more.unexpected), (4, 0, 2));
    }
}
