//! The alert rules and the Grafana dashboard shipped in monitoring/: the
//! rules pass `promtool check rules` and their own unit tests, the
//! dashboard's queries parse as PromQL, and every `skor_` series either
//! uses is one a running skor (notify, durable and wal tables at once)
//! exports; on a healthy skor's scrape, that one's or a durable daemon's
//! that opens no LISTEN connection, no alert fires.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::common::wal::WalDb;
use crate::common::{eventually, hook_config, start_installed, Hook, Running, TestDb};

const RULES: &str = "monitoring/prometheus/skor-alerts.yml";
const RULE_TESTS: &str = "monitoring/prometheus/skor-alerts.test.yml";
const DASHBOARD: &str = "monitoring/grafana/skor-dashboard.json";

fn shipped(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(shipped(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `promtool args`: its output, as `Err` when it failed.
fn promtool(args: &[&str]) -> Result<String, String> {
    let output = match Command::new("promtool").args(args).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, and the alert rules cannot be checked without it: \
             scripts/services installs it (Debian's prometheus package)"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn promtool_passes(args: &[&str]) {
    if let Err(output) = promtool(args) {
        panic!("promtool {} failed:\n{output}", args.join(" "));
    }
}

/// One alerting rule of the shipped file.
struct Alert {
    name: String,
    expr: String,
    rule: Yaml,
}

fn alerts() -> Vec<Alert> {
    let docs = YamlLoader::load_from_str(&read(RULES)).expect("the rules are YAML");
    let mut alerts = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("a list of groups") {
        for rule in group["rules"].as_vec().expect("a list of rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            alerts.push(Alert {
                name: name.to_string(),
                expr: rule["expr"].as_str().expect("an expr").to_string(),
                rule: rule.clone(),
            });
        }
    }
    alerts
}

/// The dashboard's panel queries, and its variables' queries.
fn dashboard_queries() -> (Vec<String>, Vec<String>) {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut panels = Vec::new();
    collect_exprs(&dashboard["panels"], &mut panels);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| match &v["query"] {
            Value::String(query) => query.clone(),
            query => query["query"].as_str().expect("a query").to_string(),
        })
        .collect();
    (panels, variables)
}

fn collect_exprs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => into.push(expr.clone()),
                    _ => collect_exprs(value, into),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|v| collect_exprs(v, into)),
        _ => {}
    }
}

/// The `skor_` metric names a PromQL expression uses: identifiers that
/// start with `skor_`, outside quoted strings (a label value such as
/// `job="skor_prod"` is no metric).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for inner in chars.by_ref() {
                match inner {
                    '\\' if !escaped => escaped = true,
                    q if q == c && !escaped => break,
                    _ => escaped = false,
                }
            }
        } else if is_ident(c) {
            let mut ident = String::from(c);
            while let Some(&next) = chars.peek().filter(|n| is_ident(**n)) {
                ident.push(next);
                chars.next();
            }
            if ident.starts_with("skor_") {
                names.insert(ident);
            }
        }
    }
    names
}

/// The series names a scrape can be queried by: its samples' names, and
/// for each `# TYPE` (a family with no sample yet, such as a labelled
/// counter nothing counted) the names its samples get.
fn exported_names(scrape: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in scrape.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split(' ');
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// Names `used` (by `what`) that `scrape` does not export.
fn unknown<'a>(
    used: impl IntoIterator<Item = (&'a str, &'a str)>,
    scrape: &str,
) -> BTreeSet<String> {
    let exported = exported_names(scrape);
    let mut unknown = BTreeSet::new();
    for (what, expr) in used {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.insert(format!("{name} (in {what})"));
            }
        }
    }
    unknown
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool_passes(&["check", "rules", shipped(RULES).to_str().unwrap()]);
    promtool_passes(&["test", "rules", shipped(RULE_TESTS).to_str().unwrap()]);
}

#[test]
fn every_alert_waits_has_a_severity_and_says_what_to_do() {
    let alerts = alerts();
    let tests = read(RULE_TESTS);
    for alert in &alerts {
        let rule = &alert.rule;
        let name = &alert.name;
        assert!(rule["for"].as_str().is_some(), "{name} has no `for:`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or("");
            assert!(!text.trim().is_empty(), "{name} has no {annotation}");
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{RULE_TESTS} does not test {name}"
        );
    }
    for wanted in [
        "skor_wal_retained_bytes",
        "skor_wal_confirmed_age_seconds",
        "skor_wal_slot_invalidated",
        "skor_sink_queue_depth",
        "skor_sink_failed_total",
        "skor_sink_disconnected",
        "skor_durable_dead_letters",
        "skor_postgres_connected",
        "skor_listener_shedding",
        "skor_notification_queue_usage",
        "skor_durable_oldest_pending_seconds",
    ] {
        assert!(
            alerts
                .iter()
                .any(|a| metric_names(&a.expr).contains(wanted)),
            "no alert on {wanted}"
        );
    }
}

#[test]
fn the_dashboard_is_importable_and_its_queries_parse() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    assert_eq!(
        variable("datasource").map(|v| &v["type"]),
        Some(&Value::from("datasource"))
    );
    for name in ["job", "instance", "sink"] {
        assert!(variable(name).is_some(), "no ${name} variable");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} does not use the chosen data source",
            panel["title"]
        );
    }
    // Each query, its variables given values, as a recording rule:
    // promtool parses its PromQL.
    let (panels, _) = dashboard_queries();
    assert!(panels.len() >= 20, "{} queries", panels.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in panels.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", "skor")
            .replace("$instance", ".*")
            .replace("$sink", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    promtool_passes(&["check", "rules", file.path().to_str().unwrap()]);
}

#[test]
fn a_name_the_scrape_lacks_is_reported() {
    let expr = r#"sum(rate(skor_sink_delivered_total{job="skor_prod", sink=~'skor_x'}[5m]))
        / skor_sink_queue_capacity and skor_bogus_total and skor_sink_delivery_seconds_bucket
        and skor_sink_delivered"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "skor_bogus_total",
            "skor_sink_delivered",
            "skor_sink_delivered_total",
            "skor_sink_delivery_seconds_bucket",
            "skor_sink_queue_capacity",
        ]
    );
    let scrape = "# HELP skor_sink_delivered_total Events the sink confirmed.\n\
                  # TYPE skor_sink_delivered_total counter\n\
                  # TYPE skor_sink_delivery_seconds histogram\n\
                  # TYPE skor_sink_queue_capacity gauge\n\
                  skor_sink_queue_capacity{sink=\"hook\"} 10000\n";
    assert_eq!(
        unknown([("a test", expr)], scrape)
            .into_iter()
            .collect::<Vec<_>>(),
        [
            "skor_bogus_total (in a test)",
            "skor_sink_delivered (in a test)"
        ]
    );
}

/// One scrape of a running skor, as Prometheus's text.
async fn scrape(admin: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    response.text().await.unwrap()
}

#[tokio::test]
async fn every_series_the_rules_and_the_dashboard_use_is_exported() {
    let db = WalDb::start().await;
    db.exec(
        "CREATE TABLE listened (id int PRIMARY KEY);\
         CREATE TABLE logged (id int PRIMARY KEY);\
         CREATE TABLE streamed (id int PRIMARY KEY);",
    )
    .await;
    let hook = Hook::start().await;
    // A route with a filter, so that its error counter is exported too.
    let config = db.config(&format!(
        "[[table]]\nname = \"listened\"\nmode = \"notify\"\n\
         [[table]]\nname = \"logged\"\nmode = \"durable\"\n\
         [[table]]\nname = \"streamed\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
         [[route]]\ntables = [\"listened\", \"logged\"]\nfilter = 'data.id > 0'\nsinks = [\"hook\"]\n\
         [[route]]\ntables = [\"streamed\"]\nsinks = [\"hook\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        hook.url()
    ));
    db.install(&config).await;
    let skor = Running::start(&config).await;
    let admin = skor.admin.expect("admin endpoint");
    db.exec(
        "INSERT INTO listened VALUES (1); INSERT INTO logged VALUES (2);\
         INSERT INTO streamed VALUES (3);",
    )
    .await;
    hook.wait_for(3).await;
    // Every mode's labelled series, and the slot's gauges read as numbers.
    let text = eventually("each mode's series in the scrape", || async {
        let text = scrape(admin).await;
        let has = |series: &str| text.lines().any(|l| l.starts_with(series));
        let complete = ["listened", "logged", "streamed"].iter().all(|table| {
            has(&format!(
                r#"skor_events_received_total{{channel="skor",table="public.{table}",op="INSERT"}}"#
            ))
        }) && has("skor_wal_retained_bytes ")
            && !text.contains("skor_wal_retained_bytes NaN");
        if complete {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;

    let alerts = alerts();
    let (panels, variables) = dashboard_queries();
    let used = alerts
        .iter()
        .map(|a| (a.name.as_str(), a.expr.as_str()))
        .chain(panels.iter().map(|e| ("the dashboard", e.as_str())))
        .chain(
            variables
                .iter()
                .map(|e| ("a dashboard variable", e.as_str())),
        );
    let unknown = unknown(used, &text);
    assert!(
        unknown.is_empty(),
        "used but not exported by skor:\n  {}\nskor's scrape:\n{text}",
        unknown.into_iter().collect::<Vec<_>>().join("\n  ")
    );
    no_alert_fires_on(&text, &alerts);
    skor.stop().await;
}

#[tokio::test]
async fn a_durable_daemon_which_does_not_listen_fires_no_alert() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE logged (id int PRIMARY KEY)").await;
    let hook = Hook::start().await;
    let config = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        hook_config(&db, "name = \"logged\"\nmode = \"durable\"", &hook, "")
    );
    let skor = start_installed(&db, &config).await;
    db.exec("INSERT INTO logged VALUES (1)").await;
    hook.wait_for(1).await;
    let text = scrape(skor.admin.expect("admin endpoint")).await;
    no_alert_fires_on(&text, &alerts());
    skor.stop().await;
}

/// Feeds `scrape`, held for half an hour, to promtool with every alert
/// expected silent: a healthy skor's real series (their labels included)
/// fire nothing.
fn no_alert_fires_on(scrape: &str, alerts: &[Alert]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(shipped(RULES), dir.path().join("skor-alerts.yml")).unwrap();
    let mut test = String::from(
        "rule_files: [skor-alerts.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
    );
    let instance = r#"job="skor",instance="skor:9187""#;
    let mut series = vec![(format!("up{{{instance}}}"), "1".to_string())];
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = match name.strip_suffix('}') {
            Some(labelled) => format!("{labelled},{instance}}}"),
            None => format!("{name}{{{instance}}}"),
        };
        series.push((name, value.to_string()));
    }
    for (name, value) in series {
        let values = vec![value; 31].join(" ");
        test.push_str(&format!(
            "      - series: {}\n        values: \"{values}\"\n",
            serde_json::to_string(&name).unwrap()
        ));
    }
    test.push_str("    alert_rule_test:\n");
    for alert in alerts {
        test.push_str(&format!(
            "      - eval_time: 30m\n        alertname: {}\n        exp_alerts: []\n",
            alert.name
        ));
    }
    let path = dir.path().join("healthy.test.yml");
    std::fs::write(&path, &test).unwrap();
    if let Err(output) = promtool(&["test", "rules", path.to_str().unwrap()]) {
        panic!("an alert fires on a healthy skor:\n{output}\nits series:\n{scrape}");
    }
}
