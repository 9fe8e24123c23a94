//! A build without features carries neither broker client: `cargo tree`
//! of the default build names no lapin and no rdkafka.

use std::process::Command;

/// The crates in the normal (non-dev) dependency tree for `features`.
fn tree(features: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--package",
            "skor",
            "--edges",
            "normal",
        ])
        .args(["--prefix", "none", "--format", "{p}"]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let output = command.output().expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn has(tree: &str, krate: &str) -> bool {
    tree.lines()
        .any(|line| line.starts_with(&format!("{krate} v")))
}

#[test]
fn the_default_build_pulls_no_broker_client() {
    let default = tree(&[]);
    assert!(has(&default, "reqwest"), "the tree was read: {default}");
    for client in [
        "lapin",
        "rdkafka",
        "async-nats",
        "redis",
        "rumqttc",
        "gcp_auth",
    ] {
        assert!(!has(&default, client), "{client} in the default build");
    }
}

#[test]
fn each_feature_pulls_its_own_client_only() {
    let amqp = tree(&["amqp"]);
    assert!(has(&amqp, "lapin") && !has(&amqp, "rdkafka"));
    let kafka = tree(&["kafka"]);
    assert!(!has(&amqp, "rumqttc") && !has(&kafka, "rumqttc"));
    let mqtt = tree(&["mqtt"]);
    assert!(has(&mqtt, "rumqttc") && !has(&mqtt, "lapin") && !has(&mqtt, "rdkafka"));
    assert!(has(&kafka, "rdkafka") && !has(&kafka, "lapin"));
    let redis = tree(&["redis"]);
    assert!(has(&redis, "redis") && !has(&redis, "lapin") && !has(&redis, "rdkafka"));
    // redis-rs's rustls gets ring, the provider the rest of skor uses.
    assert!(has(&redis, "ring") && !has(&redis, "aws-lc-rs"));
    let nats = tree(&["nats"]);
    assert!(has(&nats, "async-nats") && !has(&nats, "lapin") && !has(&nats, "redis"));
    let pubsub = tree(&["pubsub"]);
    assert!(has(&pubsub, "gcp_auth") && !has(&pubsub, "async-nats"));
    assert!(has(&pubsub, "ring") && !has(&pubsub, "aws-lc-rs"));
}

#[test]
fn the_test_harness_stays_out_of_every_build_of_skor() {
    // skor's features turn on skor-testkit's broker helpers, but it is a
    // dev-dependency: no build of the library or binary links it.
    let all = tree(&["amqp", "kafka", "nats", "redis", "mqtt", "pubsub"]);
    assert!(has(&all, "lapin"), "the tree was read: {all}");
    assert!(!has(&all, "skor-testkit"), "{all}");
}
