//! skor-route-bench: what a route `filter` costs per event, in process.
//!
//! Routes the same events through skor's own `Router` under several route
//! sets and prints ns/event, each as a ratio against the unfiltered set
//! measured in the same run. Rounds interleave the sets, and the median
//! round counts, so a neighbour's burst on a shared machine hits every set
//! alike. No database, no sink: only the routing decision that
//! `Fanout::route` asks for per event.
//!
//! `before` is the routing loop of skor before filters existed (main at
//! 3f1509c), copied here verbatim over the same patterns, as the reference
//! an unfiltered route set must still match.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use skor_lib::Config;
use skor_lib::Router;
use skor_sink_api::Op;
use wildmatch::WildMatch;

/// Distinct events cycled through (statuses and ops vary).
const DISTINCT: usize = 1024;

struct Case {
    name: &'static str,
    what: &'static str,
    routes: String,
    /// Use the padded (about 4 KB) payloads instead of the 250-byte ones.
    large: bool,
}

fn cases() -> Vec<Case> {
    let route = |filter: Option<&str>, sink: &str| {
        let filter = filter.map_or(String::new(), |f| format!("filter = '{f}'\n"));
        format!(
            "[[route]]\ntables = [\"public.orders\"]\nops = [\"INSERT\", \"UPDATE\", \"DELETE\"]\n{filter}sinks = [\"{sink}\"]\n"
        )
    };
    let two = |a: Option<&str>, b: Option<&str>| route(a, "a") + &route(b, "b");
    vec![
        Case {
            name: "no-filter",
            what: "two routes on table and ops, no filter (the reference, 1.00)",
            routes: two(None, None),
            large: false,
        },
        Case {
            name: "no-filter-4k",
            what: "the same with 4 KB payloads: equal cost shows no payload is read",
            routes: two(None, None),
            large: true,
        },
        Case {
            name: "op",
            what: "route b: `op == \"UPDATE\"` (routing fields only, no payload parse)",
            routes: two(None, Some(r#"op == "UPDATE""#)),
            large: false,
        },
        Case {
            name: "status",
            what: "route b: `data.status == \"paid\"` (one payload parse per event)",
            routes: two(None, Some(r#"data.status == "paid""#)),
            large: false,
        },
        Case {
            name: "status-4k",
            what: "the same with 4 KB payloads",
            routes: two(None, Some(r#"data.status == "paid""#)),
            large: true,
        },
        Case {
            name: "status-both",
            what: "both routes filter on `data.status`: still one parse per event",
            routes: two(
                Some(r#"data.status == "paid""#),
                Some(r#"data.status != "paid""#),
            ),
            large: false,
        },
    ]
}

/// One event: routing fields and payload.
struct Event {
    schema: &'static str,
    table: &'static str,
    op: Op,
    payload: Vec<u8>,
}

fn events(large: bool) -> Vec<Event> {
    let statuses = ["new", "paid", "shipped", "refunded"];
    let ops = [Op::Insert, Op::Update, Op::Update, Op::Delete];
    (0..DISTINCT)
        .map(|i| {
            let op = ops[i % ops.len()];
            let status = statuses[(i / 4) % statuses.len()];
            let note = if large { "x".repeat(3800) } else { String::new() };
            let payload = format!(
                r#"{{"table" : "orders", "schema" : "public", "op" : "{op}", "data" : {{"id":{i},"customer_id":{},"status":"{status}","total":{}.50,"currency":"EUR","created_at":"2026-12-02T18:00:00.123456+00:00","note":"{note}"}}}}"#,
                i * 7 % 1000,
                i % 300,
            );
            Event {
                schema: "public",
                // One event in eight is another table, which no route takes.
                table: if i % 8 == 7 { "customers" } else { "orders" },
                op,
                payload: payload.into_bytes(),
            }
        })
        .collect()
}

fn config(routes: &str) -> Config {
    let text = format!(
        "[source]\ndsn = \"host=localhost\"\n\
         [sink.a]\ntype = \"stdout\"\n[sink.b]\ntype = \"stdout\"\n{routes}"
    );
    Config::from_toml(&text, "bench.toml").expect("the bench's routes parse")
}

/// Nanoseconds per event of `route` over `events`, `count` events.
fn measure(events: &[Event], count: usize, mut route: impl FnMut(&Event, &mut Vec<usize>)) -> f64 {
    let mut out = Vec::with_capacity(4);
    let mut taken = 0usize;
    let start = Instant::now();
    for i in 0..count {
        let event = &events[i % events.len()];
        route(black_box(event), &mut out);
        taken += out.len();
    }
    let elapsed = start.elapsed();
    black_box(taken);
    elapsed.as_nanos() as f64 / count as f64
}

/// One route as the router before filters held it: channel, table
/// patterns, ops, sinks.
type BeforeRoute = (
    Option<String>,
    Vec<(WildMatch, WildMatch)>,
    Vec<Op>,
    Vec<usize>,
);

/// The router before filters (main at 3f1509c), the same loop over the same
/// patterns.
struct Before {
    routes: Vec<BeforeRoute>,
}

impl Before {
    fn new() -> Self {
        let route = |sink| {
            (
                None,
                vec![(WildMatch::new("public"), WildMatch::new("orders"))],
                vec![Op::Insert, Op::Update, Op::Delete],
                vec![sink],
            )
        };
        Self {
            routes: vec![route(0), route(1)],
        }
    }

    fn targets(&self, channel: &str, schema: &str, table: &str, op: Op, out: &mut Vec<usize>) {
        out.clear();
        for (route_channel, tables, ops, sinks) in &self.routes {
            let matches = route_channel.as_deref().is_none_or(|c| c == channel)
                && ops.contains(&op)
                && tables
                    .iter()
                    .any(|(s, t)| s.matches(schema) && t.matches(table));
            if matches {
                for &sink in sinks {
                    if !out.contains(&sink) {
                        out.push(sink);
                    }
                }
            }
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut count = 200_000usize;
    let mut rounds = 11usize;
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--events", Some(v)) => count = v,
            ("--rounds", Some(v)) => rounds = v,
            _ => {
                eprintln!("usage: skor-route-bench [--events N (200000)] [--rounds N (11)]");
                return ExitCode::FAILURE;
            }
        }
    }
    let small = events(false);
    let large = events(true);
    let cases = cases();
    let routers: Vec<Router> = cases
        .iter()
        .map(|case| Router::new(&config(&case.routes), &["a".into(), "b".into()]))
        .collect();
    let before = Before::new();
    // Index 0: the pre-filter loop; then one per case.
    let mut samples = vec![Vec::with_capacity(rounds); cases.len() + 1];
    let mut taken = vec![0usize; cases.len() + 1];
    // Each round measures every set, starting from a different one, so a
    // neighbour's burst or a frequency change falls on every set alike.
    let sets = cases.len() + 1;
    for round in 0..=rounds {
        for k in 0..sets {
            let set = (round + k) % sets;
            let ns = if set == 0 {
                measure(&small, count, |e, out| {
                    before.targets("skor", e.schema, e.table, e.op, out)
                })
            } else {
                let (case, router) = (&cases[set - 1], &routers[set - 1]);
                let events = if case.large { &large } else { &small };
                measure(events, count, |e, out| {
                    router.targets("skor", e.schema, e.table, e.op, &e.payload, out);
                })
            };
            // Round 0 warms caches and the CEL environment up.
            if round > 0 {
                samples[set].push(ns);
            }
        }
    }
    // Which sinks each set picks over the distinct events, as a check that
    // the filters did what they say.
    for (i, (case, router)) in cases.iter().zip(&routers).enumerate() {
        let events = if case.large { &large } else { &small };
        let mut out = Vec::new();
        for e in events {
            let _ = router.targets("skor", e.schema, e.table, e.op, &e.payload, &mut out);
            taken[i + 1] += out.len();
        }
    }
    let mut out = Vec::new();
    for e in &small {
        before.targets("skor", e.schema, e.table, e.op, &mut out);
        taken[0] += out.len();
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    let minima: Vec<f64> = samples.iter().map(|s| s[0]).collect();
    let reference = medians[1];
    println!(
        "{count} events per set and round, {rounds} rounds (median), {DISTINCT} distinct events, 1 in 8 on a table no route takes\n"
    );
    println!(
        "| route set | what | ns/event (median) | ratio to no-filter | ns/event (best round) | deliveries per {DISTINCT} events |"
    );
    println!("|---|---|--:|--:|--:|--:|");
    let names = std::iter::once(("before", "the routing loop of main at 3f1509c, same routes"))
        .chain(cases.iter().map(|case| (case.name, case.what)));
    for (i, (name, what)) in names.enumerate() {
        println!(
            "| {name} | {what} | {:.1} | {:.2} | {:.1} | {} |",
            medians[i],
            medians[i] / reference,
            minima[i],
            taken[i]
        );
    }
    ExitCode::SUCCESS
}
