//! Config parsing: the example file, defaults, and the error a user gets
//! for each kind of mistake.

use skor_sink_api::Op;

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    let env = |name: &str| match name {
        "TOKEN" => Some("s3cret".to_string()),
        _ => None,
    };
    Config::from_toml_with_env(text, "skor.toml", &env).map_err(|e| e.to_string())
}

const SOURCE: &str = "[source]\ndsn = \"host=127.0.0.1 user=postgres\"\n";

/// The options of the webhook sink called `name`.
fn webhook<'a>(config: &'a Config, name: &str) -> &'a WebhookConfig {
    let options: &dyn std::any::Any = &*config.sinks[name].options;
    options.downcast_ref().expect("a webhook sink")
}

fn error(rest: &str) -> String {
    parse(&format!("{SOURCE}{rest}")).unwrap_err()
}

#[test]
#[cfg_attr(
    not(all(feature = "amqp", feature = "kafka")),
    ignore = "the example shows every sink type: run with --all-features"
)]
fn the_example_config_parses() {
    let text = include_str!("../../config.example.toml");
    let config = Config::from_toml_with_env(text, "config.example.toml", &|_| None).unwrap();
    assert_eq!(config.tables.len(), 3);
    assert_eq!(
        config.tables[1].key.as_deref(),
        Some(&["id".to_string()][..])
    );
    assert_eq!(config.tables[1].mode, Some(Mode::Durable));
    assert_eq!(config.table_mode(&config.tables[2]), Mode::Wal);
    assert!(config.tables[2].old);
    assert_eq!(config.tables[2].when.for_op(Op::Delete), Some("amount > 0"));
    assert_eq!(
        config.tables[1].metadata,
        [Metadata::EventId, Metadata::Txid, Metadata::TxTime]
    );
    assert_eq!(
        (
            config.source.slot.as_str(),
            config.source.publication.as_str()
        ),
        ("skor", "skor")
    );
    assert_eq!(config.table_mode(&config.tables[0]), Mode::Notify);
    assert_eq!(config.durable.claim_window, 5_000);
    assert_eq!(config.sinks.len(), 5);
    assert_eq!(config.routes.len(), 3);
    assert_eq!(
        config.tables[1].columns.for_op(Op::Update),
        Some(&["id".to_string(), "status".to_string()][..])
    );
    let hook = webhook(&config, "orders_hook");
    assert_eq!(hook.headers["Authorization"].expose(), "Bearer change-me");
}

#[test]
fn durable_batch_size_is_the_old_name_of_claim_window() {
    let config = parse("[source]\ndsn = \"host=h\"\n[durable]\nbatch_size = 7\n").unwrap();
    assert_eq!(config.durable.claim_window, 7);
    let config = parse("[source]\ndsn = \"host=h\"\n[durable]\nclaim_window = 9\n").unwrap();
    assert_eq!(config.durable.claim_window, 9);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let config = parse(&format!(
        "{SOURCE}[[table]]\nname = \"orders\"\n[sink.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\n"
    ))
    .unwrap();
    assert_eq!(config.source.channels, vec!["skor"]);
    assert_eq!(config.tables[0].ops, Op::ALL.to_vec());
    assert_eq!(config.tables[0].columns, Columns::default());
    assert_eq!(config.table_channel(&config.tables[0]), "skor");
    let sink = &config.sinks["hook"];
    assert_eq!(sink.delivery.retries, 5);
    assert_eq!(sink.delivery.backoff_ms, 100);
    // The listener waits for a full queue (PostgreSQL's notification queue
    // holds the backlog) rather than drop a burst.
    assert_eq!(sink.delivery.when_full, WhenFull::Block);
    assert_eq!(config.source.heartbeat_interval_ms, 5_000);
    assert_eq!(config.source.query_timeout_ms, 5_000);
    assert_eq!(config.source.shed_notify_queue_usage, 0.5);
    assert_eq!(config.source.wal_heartbeat_interval_ms, 60_000);
    assert!(!config.source.slot_failover);
    let legacy = Config::legacy("host=db".into(), "http://h/".into());
    assert_eq!(
        legacy.sinks["webhook"].delivery.when_full,
        WhenFull::Block,
        "the original command line never drops a burst"
    );
    let hook = webhook(&config, "hook");
    assert_eq!(hook.timeout_ms, 5_000);
    assert_eq!(config.daemon.drain_timeout_ms, 10_000);
}

#[test]
fn listener_timeouts_and_the_shedding_threshold_are_checked() {
    for (rest, expected) in [
        (
            "heartbeat_interval_ms = 0\n",
            "key `source.heartbeat_interval_ms`: expected a number of milliseconds above 0",
        ),
        (
            "query_timeout_ms = 0\n",
            "key `source.query_timeout_ms`: expected a number of milliseconds above 0",
        ),
        (
            "shed_notify_queue_usage = 1.5\n",
            "key `source.shed_notify_queue_usage`: expected a fraction above 0 and at most 1, got 1.5",
        ),
        (
            "wal_heartbeat_interval_ms = 50\n",
            "key `source.wal_heartbeat_interval_ms`: expected 0 (off) or 100 to 86400000 milliseconds, got 50",
        ),
        (
            "shed_notify_queue_usage = 0.0\n",
            "key `source.shed_notify_queue_usage`: expected a fraction above 0 and at most 1, got 0",
        ),
    ] {
        let error = error(rest);
        assert!(error.contains(expected), "{rest}: {error}");
    }
}

#[test]
fn environment_variables_fill_secrets_without_printing_them() {
    let config = parse(&format!(
        "{SOURCE}[sink.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\nheaders = {{ Authorization = \"Bearer ${{TOKEN}}\" }}\n"
    ))
    .unwrap();
    let hook = webhook(&config, "hook");
    assert_eq!(hook.headers["Authorization"].expose(), "Bearer s3cret");
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn errors_name_the_file_line_and_key() {
    let cases = [
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\nretires = 3\n",
            "skor.toml:6:11: key `sink.hook.retires`: unknown field `retires`, expected one of `url`",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\n",
            "skor.toml:3:1: key `sink.hook`: missing field `url`",
        ),
        (
            "[[route]]\nsinks = [\"nowhere\"]\n",
            "skor.toml:4:10: key `route[0].sinks[0]`: no sink is named \"nowhere\": no [sink.NAME] table is defined",
        ),
        (
            "[[table]]\nname = \"a.b.c\"\n[[table]]\nname = \"t\"\nops = [\"TRUNCATE\"]\n",
            "skor.toml:7:8: key `table[1].ops[0]`: unknown variant `TRUNCATE`, expected one of `INSERT`, `insert`, `UPDATE`, `update`, `DELETE`, `delete`",
        ),
        (
            "[[table]]\nname = \"t\"\nchannel = \"other\"\n",
            "skor.toml:5:11: key `table[0].channel`: channel \"other\" is not in source.channels [\"skor\"], so skor would not hear these events",
        ),
        (
            "[[table]]\nname = \"t\"\ncolumns = []\n",
            "skor.toml:5:11: key `table[0].columns`: the column list is empty; use \"*\" for every column",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"${HOOK_URL}\"\n",
            "skor.toml:5:7: key `sink.hook.url`: environment variable `HOOK_URL` is not set",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"ftp://h/\"\n",
            "skor.toml:5:7: key `sink.hook.url`: invalid webhook url: ftp://h/: the scheme must be http or https",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\nsecret = \"whsec_%%%\"\n",
            "skor.toml:6:10: key `sink.hook.secret`: invalid secret: the part after `whsec_` is not valid base64",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"https://h/\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "skor.toml:6:11: key `sink.hook.ca_file`: ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            "[sink.hook]\ntype = \"webhook\"\nurl = \"https://h/\"\nclient_cert = \"/c.pem\"\n",
            "skor.toml:3:1: key `sink.hook.client_key`: client_key: client_cert is set, so client_key must be too",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"outbox\"\n",
            "skor.toml:5:8: key `table[0].mode`: unknown variant `outbox`, expected one of `notify`, `durable`, `wal`",
        ),
        (
            "slot = \"Bad-Slot\"\n",
            "skor.toml:3:8: key `source.slot`: a replication slot name is 1 to 63 lower-case letters, digits and underscores, got \"Bad-Slot\"",
        ),
        (
            "[[table]]\nname = \"t\"\nmetadata = [\"txid\", \"event_id\"]\n",
            "skor.toml:5:12: key `table[0].metadata`: \"event_id\": notify mode stores no event, so an event has no id; use durable or wal mode, or txid to tell transactions apart",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"durable\"\nmetadata = [\"commit_time\"]\n",
            "skor.toml:6:12: key `table[0].metadata`: \"commit_time\": a trigger runs before its transaction commits, so notify and durable mode cannot know the commit time; use \"tx_time\" (the transaction's start, now()), or wal mode",
        ),
        (
            "[[table]]\nname = \"t\"\nmetadata = [\"lsn\"]\n",
            "skor.toml:5:12: key `table[0].metadata`: \"lsn\": a trigger runs before the commit has a WAL position; \"lsn\" is wal mode's",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"wal\"\nmetadata = [\"tx_time\"]\n",
            "skor.toml:6:12: key `table[0].metadata`: \"tx_time\": the WAL carries a transaction's commit time, not its start; use \"commit_time\"",
        ),
        (
            "[[table]]\nname = \"t\"\nmetadata = [\"txid\", \"txid\"]\n",
            "skor.toml:5:12: key `table[0].metadata`: a field is listed twice",
        ),
        (
            "[[table]]\nname = \"t\"\nmetadata = [\"xid\"]\n",
            "skor.toml:5:13: key `table[0].metadata[0]`: unknown variant `xid`, expected one of `event_id`, `txid`, `tx_time`, `commit_time`, `lsn`",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"wal\"\nwhen = { insert = \"a > 1\", update = \"a > 2\" }\n",
            "skor.toml:6:8: key `table[0].when`: wal mode filters with the publication's row filter, one per table for every operation: give `when` as one string",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"wal\"\nwhen = \"NEW.status = 'paid'\"\n",
            "skor.toml:6:8: key `table[0].when`: wal mode filters with the publication's row filter, which sees one version of the row and names its columns bare (status = 'paid'), found `NEW.`",
        ),
        (
            "[[table]]\nname = \"t\"\nops = [\"INSERT\"]\nwhen = { delete = \"OLD.id > 1\" }\n",
            "skor.toml:3:1: key `table[0].when.delete`: DELETE is not in this table's `ops`",
        ),
        (
            "[[table]]\nname = \"t\"\nwhen = \" \"\n",
            "skor.toml:5:8: key `table[0].when`: the condition is empty; remove `when` to capture every change",
        ),
        (
            "[[table]]\nname = \"t\"\nmode = \"wal\"\nunique_payloads = true\n",
            "skor.toml:6:19: key `table[0].unique_payloads`: wal mode delivers every change of a transaction and adds no \"skor_seq\"; remove the key",
        ),
        (
            "[durable]\nclaim_window = 0\n",
            "skor.toml:4:16: key `durable.claim_window`: expected at least 1",
        ),
        (
            "[daemon]\ndrain_timeout = 5\n",
            "skor.toml:4:1: key `daemon.drain_timeout`: unknown field `drain_timeout`, expected `drain_timeout_ms`",
        ),
    ];
    for (rest, expected) in cases {
        let got = error(rest);
        assert!(
            got.starts_with(expected),
            "config:\n{rest}\nexpected: {expected}\n     got: {got}"
        );
    }
}

#[test]
fn durable_channels_are_not_listened_to_for_payloads() {
    let config = parse(
        "[source]\ndsn = \"host=h\"\nchannels = [\"skor\", \"audit\", \"other\"]\n\
         [[table]]\nname = \"a\"\nmode = \"durable\"\n\
         [[table]]\nname = \"b\"\nchannel = \"audit\"\nmode = \"durable\"\n\
         [[table]]\nname = \"c\"\nchannel = \"audit\"\n",
    )
    .unwrap();
    // `skor` carries only durable events; `audit` has a notify table too;
    // `other` is no table's, so something else may notify on it.
    assert_eq!(config.notify_channels(), ["audit", "other"]);
    assert!(config.reads_event_log());
    assert_eq!(config.durable.claim_window, 5_000);

    let all_durable = parse("[source]\ndsn = \"host=h\"\nmode = \"durable\"\n").unwrap();
    assert!(all_durable.notify_channels().is_empty());
    assert!(all_durable.reads_event_log());
    let notify = parse(SOURCE).unwrap();
    assert_eq!(notify.notify_channels(), ["skor"]);
    assert!(!notify.reads_event_log());
}

#[test]
fn a_syntax_error_has_a_position() {
    let got = parse("[source\ndsn = 1\n").unwrap_err();
    assert!(got.starts_with("skor.toml:1:8: "), "{got}");
}

#[test]
fn a_missing_source_is_reported() {
    let got = parse("").unwrap_err();
    assert!(got.contains("missing field `source`"), "{got}");
}

/// The error for `[sink.NAME]` text appended to a minimal config.
#[test]
fn a_sink_left_out_of_the_build_names_its_feature() {
    let left_out = crate::sinks::SINK_TYPES
        .iter()
        .filter(|t| t.parse.is_none());
    for sink_type in left_out {
        let name = sink_type.name;
        let feature = sink_type.feature.expect("only optional sinks are left out");
        assert_eq!(
            sink_error(&format!("[sink.s]\ntype = \"{name}\"\n")),
            format!("skor.toml:4:8: key `sink.s.type`: this skor was built without the `{feature}` sink; build it with `cargo build --release --features {feature}`")
        );
    }
}

fn sink_error(sink: &str) -> String {
    let text = format!("[source]\ndsn = \"host=h\"\n{sink}");
    Config::from_toml(&text, "skor.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn the_dsn_takes_libpq_sslmodes_and_rejects_others() {
    // verify-ca and verify-full read certificates: src/postgres.rs tests them.
    for mode in ["disable", "prefer", "require"] {
        let text = format!("[source]\ndsn = \"host=h password=${{TOKEN}} sslmode={mode}\"\n");
        assert!(parse(&text).is_ok(), "sslmode={mode}");
    }
    let url = "[source]\ndsn = \"postgres://u@h/db?sslmode=require\"\n";
    assert!(parse(url).is_ok());
    let got = parse("[source]\ndsn = \"host=h password=${TOKEN} sslmode=strict\"\n").unwrap_err();
    assert_eq!(
        got,
        "skor.toml:2:7: key `source.dsn`: invalid sslmode \"strict\": expected disable, \
         prefer, require, verify-ca or verify-full"
    );
    let got = parse("[source]\ndsn = \"host=h sslmode=verify-full sslrootcert=/no/ca.pem\"\n")
        .unwrap_err();
    assert!(
        got.starts_with(
            "skor.toml:2:7: key `source.dsn`: cannot read sslrootcert file /no/ca.pem: "
        ),
        "{got}"
    );
}

#[test]
fn zero_or_absurd_delivery_values_name_their_key() {
    let hook = "[sink.hook]\ntype = \"webhook\"\nurl = \"http://h/\"\n";
    let cases = [
        (
            "timeout_ms = 0",
            "key `sink.hook.timeout_ms`: expected 1 to 86400000 ms (a day), got 0",
        ),
        (
            "connect_timeout_ms = 0",
            "key `sink.hook.connect_timeout_ms`: expected 1 to 86400000 ms (a day), got 0",
        ),
        (
            "timeout_ms = 86400001",
            "key `sink.hook.timeout_ms`: expected 1 to 86400000 ms (a day), got 86400001",
        ),
        (
            "backoff_ms = 0",
            "key `sink.hook.backoff_ms`: expected 1 to 86400000 ms (a day), got 0",
        ),
        (
            "backoff_ms = 500\nmax_backoff_ms = 100",
            "key `sink.hook.max_backoff_ms`: expected at least backoff_ms (500), got 100",
        ),
        (
            "max_in_flight = 0",
            "key `sink.hook.max_in_flight`: expected 1 to 100000, got 0",
        ),
        (
            "max_in_flight = 100001",
            "key `sink.hook.max_in_flight`: expected 1 to 100000, got 100001",
        ),
        (
            "queue_capacity = 0",
            "key `sink.hook.queue_capacity`: expected 1 to 10000000 events, got 0",
        ),
        (
            "max_outage_ms = 0",
            "key `sink.hook.max_outage_ms`: expected at least 1, or remove the key",
        ),
        (
            "batch_timeout_ms = 86400001",
            "key `sink.hook.batch_timeout_ms`: expected at most 86400000 ms (a day)",
        ),
    ];
    for (option, expected) in cases {
        let got = sink_error(&format!("{hook}{option}\n"));
        assert!(
            got.contains(expected),
            "{option}\nexpected: {expected}\n     got: {got}"
        );
    }
    let fine = format!(
        "[source]\ndsn = \"host=h\"\n{hook}max_outage_ms = 60000\nmax_in_flight = 100000\n"
    );
    let config = Config::from_toml(&fine, "skor.toml").unwrap();
    assert_eq!(config.sinks["hook"].delivery.max_outage_ms, Some(60_000));
    assert_eq!(
        parse(&format!("{SOURCE}{hook}")).unwrap().sinks["hook"]
            .delivery
            .max_outage_ms,
        None
    );
}

#[test]
fn changed_needs_the_old_row_of_every_table_its_route_sees() {
    let config = |old: &str, mode: &str, tables: &str| {
        format!(
            "{SOURCE}[[table]]\nname = \"public.orders\"\nmode = \"{mode}\"\n{old}\
             [[table]]\nname = \"public.items\"\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\
             [[route]]\ntables = {tables}\nfilter = 'changed(\"status\")'\nsinks = [\"hook\"]\n"
        )
    };
    let orders = r#"["public.orders"]"#;
    parse(&config("old = true\n", "notify", orders)).unwrap();
    parse(&config("old = true\n", "durable", orders)).unwrap();
    let error = parse(&config("", "notify", orders)).unwrap_err();
    assert!(
        error.contains("route[0].filter")
            && error.contains("table public.orders does not send its old row: set `old = true`"),
        "{error}"
    );
    let error = parse(&config("", "wal", orders)).unwrap_err();
    assert!(error.contains("replica_identity = \"full\""), "{error}");
    // A pattern that also takes public.items, which sends no old row.
    let error = parse(&config("old = true\n", "notify", r#"["public.*"]"#)).unwrap_err();
    assert!(error.contains("table public.items"), "{error}");
}

#[test]
fn a_sinks_format_is_skor_unless_set_and_an_unknown_one_names_the_choices() {
    let hook = "[sink.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1/\"\n";
    let config = parse(&format!("{SOURCE}{hook}")).unwrap();
    assert_eq!(
        config.sinks["hook"].delivery.format,
        skor_sink_api::Format::Skor
    );
    let config = parse(&format!("{SOURCE}{hook}format = \"cloudevents\"\n")).unwrap();
    assert_eq!(
        config.sinks["hook"].delivery.format,
        skor_sink_api::Format::CloudEvents
    );
    assert_eq!(
        config.outline("db").sinks,
        "hook: webhook http://127.0.0.1/ (format cloudevents)"
    );
    assert_eq!(
        error(&format!("{hook}format = \"xml\"\n")),
        "skor.toml:6:10: key `sink.hook.format`: unknown variant `xml`, expected one of \
         `skor`, `cloudevents`, `debezium`"
    );
}
