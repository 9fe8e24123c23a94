//! The private server both users start: the tests' (fast, throwaway) and
//! the bench's (durable settings), each one that decodes its WAL.

use skor_testkit::connect;
use skor_testkit::pg_server::{Options, PgServer};

async fn show(dsn: &str, setting: &str) -> String {
    let client = connect(dsn).await;
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_tests_server_and_a_bench_server_run_side_by_side() {
    let tests = tokio::task::spawn_blocking(|| PgServer::start(None))
        .await
        .unwrap();
    let bench = tokio::task::spawn_blocking(|| PgServer::try_start(&Options::durable()))
        .await
        .unwrap()
        .expect("the bench's server starts");
    assert_ne!(tests.port(), bench.port());
    assert_eq!(show(&tests.dsn(), "wal_level").await, "logical");
    assert_eq!(show(&tests.dsn(), "fsync").await, "off");
    // The bench's DSN names no database, like skor's --dsn.
    let bench_dsn = format!("{} dbname=postgres", bench.server_dsn());
    assert_eq!(show(&bench_dsn, "wal_level").await, "logical");
    assert_eq!(show(&bench_dsn, "fsync").await, "on");
    assert_eq!(show(&bench_dsn, "autovacuum").await, "off");
}
