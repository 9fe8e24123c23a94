//! Wal mode through the binary, as a user types it: install, check
//! --connect reporting the slot, and uninstall.

use crate::common::bin::{config_file, run, stderr};
use crate::common::wal::WalDb;

#[tokio::test]
async fn install_check_and_uninstall_report_the_slot() {
    let db = WalDb::start().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, name text);")
        .await;
    let file = config_file(&db.config("[[table]]\nname = \"items\"\n"));
    let path = file.path().to_str().unwrap();

    let output = run(&["--config", path, "install"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("created the replication slot: PostgreSQL keeps every WAL segment"),
        "install warns what a slot costs: {}",
        stderr(&output)
    );

    db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 1000) g;")
        .await;
    let output = run(&["--config", path, "check", "--connect"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("wal:"))
        .unwrap_or_else(|| panic!("a wal line: {stdout}"));
    assert!(line.contains("slot skor idle (no reader)"), "{line}");
    let lag: i64 = line
        .split("lag ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a lag in bytes: {line}"));
    assert!(lag > 10_000, "1000 unread rows show as lag: {line}");
    assert!(line.contains("retained WAL "), "{line}");

    let output = run(&["--config", path, "uninstall"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let left: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let output = run(&["--config", path, "check", "--connect"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("replication slot \"skor\" does not exist: run `skor install`"),
        "{}",
        stderr(&output)
    );
}
