//! Matching events against `[[route]]`s to find the sinks they go to.

use skor_sink_api::Op;
use wildmatch::WildMatch;

use crate::config::{Config, TableName};

/// A `schema.table` pattern; `*` matches any run of characters.
#[derive(Debug)]
struct TablePattern {
    schema: WildMatch,
    table: WildMatch,
}

impl TablePattern {
    fn new(pattern: &str) -> Self {
        if pattern == "*" {
            return Self {
                schema: WildMatch::new("*"),
                table: WildMatch::new("*"),
            };
        }
        // Validation has already rejected patterns that do not parse.
        let name = TableName::parse(pattern).unwrap_or(TableName {
            schema: String::new(),
            name: String::new(),
        });
        Self {
            schema: WildMatch::new(&name.schema),
            table: WildMatch::new(&name.name),
        }
    }

    fn matches(&self, schema: &str, table: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table)
    }
}

#[derive(Debug)]
struct Route {
    channel: Option<String>,
    tables: Vec<TablePattern>,
    ops: Vec<Op>,
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
                sinks: route.sinks.iter().filter_map(index_of).collect(),
            })
            .collect();
        Self {
            routes,
            sink_count: sink_names.len(),
        }
    }

    /// Fills `out` with the indexes of the sinks this event goes to, each
    /// once; with no route configured, every sink.
    pub fn targets(&self, channel: &str, schema: &str, table: &str, op: Op, out: &mut Vec<usize>) {
        out.clear();
        if self.routes.is_empty() {
            out.extend(0..self.sink_count);
            return;
        }
        for route in &self.routes {
            let matches = route.channel.as_deref().is_none_or(|c| c == channel)
                && route.ops.contains(&op)
                && route.tables.iter().any(|p| p.matches(schema, table));
            if matches {
                for &sink in &route.sinks {
                    if !out.contains(&sink) {
                        out.push(sink);
                    }
                }
            }
        }
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
        router.targets(channel, schema, table, op, &mut out);
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
}
