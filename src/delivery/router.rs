//! Matching events against `[[route]]`s to find the sinks they go to.
//!
//! A route's channel, tables and ops are checked first, from the routing
//! fields alone; only a route that passes them and has a `filter` evaluates
//! it, and the payload is parsed at most once per event for all of them (and
//! not at all when no such filter reads it).

use skor_sink_api::Op;

use crate::config::filter::{Filter, Scope};
use crate::config::{Config, TablePattern};
use crate::counter::Counter;

#[derive(Debug)]
struct Route {
    channel: Option<String>,
    tables: Vec<TablePattern>,
    ops: Vec<Op>,
    filter: Option<Filter>,
    /// Events whose filter could not be evaluated.
    filter_errors: Counter,
    sinks: Vec<usize>,
}

/// Decides which sinks, by index, each event goes to.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    sink_count: usize,
}

impl Router {
    /// Compiles the routes of `config`; `sink_names` gives each sink's index.
    pub fn new(config: &Config, sink_names: &[String]) -> Self {
        let index_of = |name: &String| sink_names.iter().position(|n| n == name);
        let routes = config
            .routes
            .iter()
            .map(|route| Route {
                channel: route.channel.clone(),
                tables: route.tables.iter().map(|t| TablePattern::new(t)).collect(),
                ops: route.ops.clone(),
                filter: route.filter.clone(),
                filter_errors: Counter::default(),
                sinks: route.sinks.iter().filter_map(index_of).collect(),
            })
            .collect();
        Self {
            routes,
            sink_count: sink_names.len(),
        }
    }

    /// Counts each route's failed filter evaluations in `counters`, by
    /// route index (as `EventStats::filter_errors`).
    #[must_use]
    pub fn counting_filter_errors(mut self, counters: &[Counter]) -> Self {
        for (route, counter) in self.routes.iter_mut().zip(counters) {
            route.filter_errors = counter.clone();
        }
        self
    }

    /// Fills `out` with the indexes of the sinks this event goes to, each
    /// once; with no route configured, every sink. `payload` is read only by
    /// the filters of routes whose channel, tables and ops match. True when
    /// a filter turned the event away from a route it otherwise matched.
    pub fn targets(
        &self,
        channel: &str,
        schema: &str,
        table: &str,
        op: Op,
        payload: &[u8],
        out: &mut Vec<usize>,
    ) -> bool {
        out.clear();
        if self.routes.is_empty() {
            out.extend(0..self.sink_count);
            return false;
        }
        let mut filtered = false;
        // Made on the first filter to evaluate; holds the payload's parse.
        let mut scope: Option<Scope<'_>> = None;
        for route in &self.routes {
            let mut matches = route.channel.as_deref().is_none_or(|c| c == channel)
                && route.ops.contains(&op)
                && route.tables.iter().any(|p| p.matches(schema, table));
            if let (true, Some(filter)) = (matches, &route.filter) {
                // Nothing to add: spare the evaluation.
                if route.sinks.iter().all(|sink| out.contains(sink)) {
                    continue;
                }
                let scope =
                    scope.get_or_insert_with(|| Scope::new(channel, schema, table, op, payload));
                matches = filter.matches_in(scope, Some(&route.filter_errors));
                filtered |= !matches;
            }
            if matches {
                for &sink in &route.sinks {
                    if !out.contains(&sink) {
                        out.push(sink);
                    }
                }
            }
        }
        filtered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &str) -> Router {
        let text = format!(
            "[source]\ndsn = \"host=localhost\"\nchannels = [\"skor\", \"audit\"]\n\
             [sink.a]\ntype = \"stdout\"\n[sink.b]\ntype = \"stdout\"\n[sink.c]\ntype = \"stdout\"\n{routes}"
        );
        let config = Config::from_toml(&text, "test.toml").unwrap();
        let names: Vec<String> = config.sinks.keys().cloned().collect();
        Router::new(&config, &names)
    }

    fn targets(router: &Router, channel: &str, table: &str, op: Op) -> Vec<usize> {
        let (schema, table) = table.split_once('.').unwrap();
        let mut out = Vec::new();
        router.targets(channel, schema, table, op, b"{}", &mut out);
        out
    }

    fn filtered(router: &Router, table: &str, op: Op, payload: &str) -> Vec<usize> {
        let (schema, table) = table.split_once('.').unwrap();
        let mut out = Vec::new();
        router.targets("skor", schema, table, op, payload.as_bytes(), &mut out);
        out
    }

    #[test]
    fn no_routes_means_every_sink() {
        let r = router("");
        assert_eq!(targets(&r, "skor", "public.x", Op::Insert), vec![0, 1, 2]);
    }

    #[test]
    fn matches_channel_table_and_op() {
        let r = router(
            "[[route]]\nchannel = \"skor\"\ntables = [\"orders\"]\nops = [\"INSERT\", \"update\"]\nsinks = [\"a\", \"b\"]\n\
             [[route]]\ntables = [\"billing.*\"]\nsinks = [\"b\", \"c\"]\n",
        );
        assert_eq!(targets(&r, "skor", "public.orders", Op::Insert), vec![0, 1]);
        assert_eq!(
            targets(&r, "skor", "public.orders", Op::Delete),
            Vec::<usize>::new()
        );
        assert_eq!(
            targets(&r, "audit", "public.orders", Op::Insert),
            Vec::<usize>::new()
        );
        assert_eq!(
            targets(&r, "skor", "other.orders", Op::Insert),
            Vec::<usize>::new()
        );
        assert_eq!(
            targets(&r, "audit", "billing.invoices", Op::Delete),
            vec![1, 2]
        );
    }

    #[test]
    fn a_sink_named_by_two_matching_routes_gets_the_event_once() {
        let r = router(
            "[[route]]\ntables = [\"*\"]\nsinks = [\"c\", \"a\"]\n[[route]]\ntables = [\"*.t*\"]\nsinks = [\"a\"]\n",
        );
        assert_eq!(targets(&r, "skor", "s.table", Op::Update), vec![2, 0]);
    }

    #[test]
    fn filters_choose_by_value() {
        let r = router(
            "[[route]]\ntables = [\"orders\"]\nfilter = 'op == \"UPDATE\" && data.status == \"paid\"'\nsinks = [\"a\"]\n\
             [[route]]\ntables = [\"orders\"]\nfilter = 'has(data.status) && data.status != \"paid\"'\nsinks = [\"b\"]\n\
             [[route]]\ntables = [\"orders\"]\nops = [\"DELETE\"]\nsinks = [\"c\"]\n",
        );
        let paid = r#"{"data":{"id":1,"status":"paid"}}"#;
        let new = r#"{"data":{"id":1,"status":"new"}}"#;
        let bare = r#"{"data":{"id":1}}"#;
        assert_eq!(filtered(&r, "public.orders", Op::Update, paid), vec![0]);
        assert_eq!(
            filtered(&r, "public.orders", Op::Insert, paid),
            Vec::<usize>::new()
        );
        assert_eq!(filtered(&r, "public.orders", Op::Update, new), vec![1]);
        assert_eq!(filtered(&r, "public.orders", Op::Delete, new), vec![1, 2]);
        // A missing field is no match for the first filter, and has() keeps
        // the second from erring.
        assert_eq!(
            filtered(&r, "public.orders", Op::Update, bare),
            Vec::<usize>::new()
        );
        assert_eq!(
            filtered(&r, "public.other", Op::Update, paid),
            Vec::<usize>::new()
        );
        // A payload that is not JSON matches no filter that reads it.
        assert_eq!(filtered(&r, "public.orders", Op::Delete, "nope"), vec![2]);
    }

    #[test]
    fn backfilled_rows_are_read_events_to_filters() {
        let r = router(
            "[[route]]\nfilter = 'op == \"READ\"'\nsinks = [\"a\"]\n\
             [[route]]\nfilter = 'op != \"READ\" && data.id > 1'\nsinks = [\"b\"]\n",
        );
        let row = r#"{"table":"t","schema":"public","op":"READ","data":{"id":2}}"#;
        assert_eq!(filtered(&r, "public.t", Op::Read, row), vec![0]);
        assert_eq!(filtered(&r, "public.t", Op::Insert, row), vec![1]);
    }

    #[test]
    fn a_filter_is_not_evaluated_for_sinks_already_chosen() {
        let r = router(
            "[[route]]\ntables = [\"*\"]\nsinks = [\"a\"]\n\
             [[route]]\ntables = [\"*\"]\nfilter = 'data.missing == 1'\nsinks = [\"a\"]\n",
        );
        assert_eq!(
            filtered(&r, "public.t", Op::Insert, r#"{"data":{}}"#),
            vec![0]
        );
        let filter = r.routes[1].filter.as_ref().unwrap();
        assert_eq!(filter.errors(), 0);
    }
}
