//! The fan-out stage between the sources and the sinks. Every source hands
//! its events here: the stage numbers and counts them, asks the router which
//! sinks take each one, and queues it for those sinks' workers.
//!
//! The acknowledgement path: a source that must know when its events are
//! confirmed (durable mode deletes them from the log, a replication source
//! moves its slot) attaches its own [`Acks`] sender to the jobs it sends;
//! each sink's worker reports to it what became of the event at that sink
//! ([`Outcome`](crate::delivery::worker::Outcome): delivered, retrying, given up). The source keeps the set of
//! sinks each event was routed to and learns when all of them confirmed.
//! Notify mode attaches none: nothing is kept, nothing to confirm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use skor_sink_api::{Bytes, Event, Format, Op};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::delivery::format::{Commit, Renderer};
use crate::delivery::router::Router;
use crate::delivery::shedding::Shedding;
use crate::delivery::worker::{Job, SinkQueue};

pub use crate::delivery::worker::Acks;
use crate::observe::metrics::ReceivedCounter;
use crate::observe::stats::EventStats;

/// An event as a source read it, before the stage numbers and routes it.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The channel it was published on.
    pub channel: &'a str,
    /// Schema of the changed table.
    pub schema: String,
    /// Name of the changed table.
    pub table: String,
    /// The operation.
    pub op: Op,
    /// The payload, as sinks forward it.
    pub payload: Bytes,
    /// The row key, when known.
    pub key: Option<Bytes>,
    /// A stable id for consumers to deduplicate on, when the source has one.
    pub id: Option<i64>,
    /// The transaction's xid, commit time and LSN, when the source knows
    /// them without reading the payload (wal mode); only sinks with a
    /// `format` other than skor's use them.
    pub commit: Option<Commit>,
}

/// One source's handle on the fan-out stage: the router, the sink queues and
/// the numbering are shared; the scratch space and the counter cache are its
/// own, so sources never wait on each other.
#[derive(Clone)]
pub struct Fanout {
    router: Arc<Router>,
    queues: Vec<SinkQueue>,
    sink_names: Arc<[String]>,
    /// The configured channels, so events share their names.
    channels: Arc<[Arc<str>]>,
    numbering: Arc<AtomicU64>,
    stats: Arc<EventStats>,
    received: ReceivedCounter,
    targets: Vec<usize>,
    /// Whether a filter turned the last event away from a route.
    filtered: bool,
    /// Each sink's `format`, by index.
    formats: Arc<[Format]>,
    /// Whether any sink wants a format other than skor's; when none does,
    /// no event is ever read past its routing fields.
    renders: bool,
    renderer: Arc<Renderer>,
    /// The last routed event in each format its sinks use but skor's.
    rendered: Vec<Arc<Event>>,
}

impl Fanout {
    /// The stage in front of `queues`, the queues of the sinks `sink_names`,
    /// for events of `database`.
    pub fn new(
        config: &Config,
        database: &str,
        sink_names: Vec<String>,
        queues: Vec<SinkQueue>,
        stats: Arc<EventStats>,
        received: ReceivedCounter,
    ) -> Self {
        let formats: Arc<[Format]> = sink_names
            .iter()
            .map(|name| {
                config
                    .sinks
                    .get(name)
                    .map_or(Format::Skor, |sink| sink.delivery.format)
            })
            .collect();
        Self {
            router: Arc::new(
                Router::new(config, &sink_names).counting_filter_errors(&stats.filter_errors),
            ),
            queues,
            sink_names: sink_names.into(),
            channels: config
                .source
                .channels
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
            numbering: Arc::default(),
            stats,
            received,
            targets: Vec::new(),
            filtered: false,
            renders: formats.iter().any(|f| *f != Format::Skor),
            formats,
            renderer: Arc::new(Renderer::new(database)),
            rendered: Vec::new(),
        }
    }

    /// The sinks' names, by index.
    pub fn sink_names(&self) -> &[String] {
        &self.sink_names
    }

    /// Numbers and counts an event and routes it: the event, and in
    /// [`Fanout::targets`] the indexes of its sinks; `None` when no route
    /// takes it (counted as unrouted).
    pub fn route(&mut self, incoming: Incoming<'_>) -> Option<Arc<Event>> {
        let Incoming {
            channel,
            schema,
            table,
            op,
            payload,
            key,
            id,
            commit,
        } = incoming;
        let channel = self
            .channels
            .iter()
            .find(|c| ***c == *channel)
            .cloned()
            .unwrap_or_else(|| Arc::from(channel));
        self.stats.received.incr();
        self.received.count(&channel, &schema, &table, op);
        self.filtered =
            self.router
                .targets(&channel, &schema, &table, op, &payload, &mut self.targets);
        if self.targets.is_empty() {
            self.stats.unrouted.incr();
            debug!(%channel, schema, table, %op, "no route matches this event");
            return None;
        }
        let event = Arc::new(Event {
            channel,
            schema,
            table,
            op,
            payload,
            format: Format::Skor,
            key,
            id,
            seq: self.numbering.fetch_add(1, Ordering::Relaxed) + 1,
        });
        self.rendered.clear();
        if self.renders {
            self.render(&event, commit.as_ref());
        }
        Some(event)
    }

    /// Renders `event` once in each format its sinks use but skor's.
    fn render(&mut self, event: &Arc<Event>, commit: Option<&Commit>) {
        for &index in &self.targets {
            let format = self.formats[index];
            if format == Format::Skor || self.rendered.iter().any(|e| e.format == format) {
                continue;
            }
            match self.renderer.render(format, event, commit) {
                Ok(payload) => self.rendered.push(Arc::new(Event {
                    payload,
                    format,
                    ..Event::clone(event)
                })),
                // Nothing is dropped: the sink gets skor's payload, labelled
                // as such, and the log says why.
                Err(error) => warn!(schema = %event.schema, table = %event.table,
                                    op = %event.op, %format, %error,
                                    "cannot render this event; its sinks get skor's payload"),
            }
        }
    }

    /// The last routed event as sink `index` takes it: in its format.
    pub fn event_for(&self, index: usize, event: &Arc<Event>) -> Arc<Event> {
        let format = self.formats[index];
        if format != Format::Skor {
            if let Some(rendered) = self.rendered.iter().find(|e| e.format == format) {
                return Arc::clone(rendered);
            }
        }
        Arc::clone(event)
    }

    /// The sinks the last routed event goes to, by index.
    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// Whether a route's filter turned the last event away: when it went to
    /// no sink, it was filtered out on purpose, not left without a route.
    pub fn filtered(&self) -> bool {
        self.filtered
    }

    /// Queues `event`, the last routed one, for every sink it was routed
    /// to, in each sink's format, applying each sink's `when_full` policy;
    /// nothing reports back.
    pub async fn push(&self, event: &Arc<Event>) {
        for &index in &self.targets {
            self.queues[index].push(&self.event_for(index, event)).await;
        }
    }

    /// Queues a job for sink `index`, waiting for room whatever `when_full`
    /// says (the source holds the backlog). False once the sink stopped.
    pub async fn send(&self, index: usize, job: Job) -> bool {
        self.queues[index].send(job).await
    }

    /// Lets every queue drop, instead of waiting for room, while `shedding`
    /// is on.
    pub fn shed_with(&mut self, shedding: &Arc<Shedding>) {
        for queue in &mut self.queues {
            queue.shed_with(Arc::clone(shedding));
        }
    }

    /// Stops waiting for room in a full queue once `shutdown` fires.
    pub fn stop_waiting_on(&mut self, shutdown: &CancellationToken) {
        for queue in &mut self.queues {
            queue.stop_waiting_on(shutdown.clone());
        }
    }

    /// Lets go of the sink queues: once every source did, each worker
    /// finishes what it holds and stops.
    pub fn close(&mut self) {
        self.queues.clear();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.queues.is_empty()
    }
}
