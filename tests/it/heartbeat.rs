//! The listener never waits forever on PostgreSQL: through a proxy that
//! stops forwarding without closing anything, the heartbeat goes
//! unanswered, `/readyz` says so, and once the path works again skor
//! reconnects; an oversized-payload fetch that gets no answer gives up.

use std::net::SocketAddr;

use crate::common::proxy::Proxy;
use crate::common::{
    eventually, eventually_true, hook_config, install, start_installed, Hook, Running, TestDb,
};
use tokio::time::Instant;

async fn readyz(addr: SocketAddr) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `/readyz` until it answers `status`; returns its body.
async fn wait_for_readyz(addr: SocketAddr, status: u16) -> String {
    eventually(&format!("/readyz to answer {status}"), || async {
        match readyz(addr).await {
            (now, body) if now == status => Ok(body),
            other => Err(other),
        }
    })
    .await
}

/// The shared server's address, for the proxy to forward to.
fn server_addr() -> SocketAddr {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    format!("{host}:{port}")
        .parse()
        .expect("PGHOST is an IP address")
}

#[tokio::test]
async fn a_silent_connection_is_noticed_and_replaced() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let hook = Hook::start().await;
    let proxy = Proxy::start(server_addr()).await;
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let config = format!(
        "[source]\n\
         dsn = \"host=127.0.0.1 port={} user={user} dbname={} connect_timeout=2\"\n\
         heartbeat_interval_ms = 500\nquery_timeout_ms = 1000\n\
         [[table]]\nname = \"items\"\n\
         [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        proxy.addr.port(),
        db.name,
        hook.url()
    );
    // Installed directly: only the daemon goes through the proxy.
    install(
        &db,
        &crate::common::config(&db, "[[table]]\nname = \"items\"\n"),
    )
    .await;
    let daemon = Running::start(&config).await;
    let admin = daemon.admin.expect("admin endpoint");
    db.exec("INSERT INTO items VALUES (1)").await;
    hook.wait_for(1).await;
    assert_eq!(readyz(admin).await.0, 200);

    proxy.black_hole();
    let lost_at = Instant::now();
    let body = wait_for_readyz(admin, 503).await;
    assert!(
        body.contains("not listening: the connection to PostgreSQL is down"),
        "{body}"
    );
    // Heartbeat every 500 ms, answer within 1 s: noticed in seconds.
    assert!(lost_at.elapsed().as_secs() < 5, "{:?}", lost_at.elapsed());

    proxy.resume();
    wait_for_readyz(admin, 200).await;
    let link = &daemon.stats.source.link;
    eventually_true("one reconnection", || link.reconnects.get() == 1).await;

    db.exec("INSERT INTO items VALUES (2)").await;
    let requests = hook.wait_for(2).await;
    assert!(
        requests.iter().any(|r| r.body.contains(r#""id":2"#)),
        "{requests:#?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_unanswered_oversized_fetch_gives_up_and_later_events_arrive() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let hook = Hook::start().await;
    let config = hook_config(&db, "name = \"items\"", &hook, "")
        .replace("[[table]]", "query_timeout_ms = 1000\n[[table]]");
    let daemon = start_installed(&db, &config).await;
    // A server that takes a minute to take the stored payload out.
    db.exec(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(60); RETURN OLD; END $$;
         CREATE TRIGGER stall BEFORE DELETE OR UPDATE ON skor.oversized_payload \
         FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .await;
    let big = "x".repeat(9_000);
    db.exec(&format!("INSERT INTO items VALUES (1, '{big}')"))
        .await;
    db.exec("INSERT INTO items VALUES (2, 'small')").await;
    let requests = hook.wait_for(1).await;
    assert!(
        requests[0].body.contains(r#""id":2"#),
        "{}",
        requests[0].body
    );
    assert_eq!(daemon.stats.source.lost.get(), 1, "counted as lost");
    daemon.stop().await;
}
