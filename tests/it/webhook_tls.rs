//! Webhook HTTPS against a local receiver whose certificates come from a
//! CA made by the test: `ca_file` makes it trusted, and `client_cert` /
//! `client_key` satisfy a receiver that demands mutual TLS.

use crate::common::https::{pem_file, HttpsHook, TestCa};
use crate::common::{config, eventually, eventually_true, start_installed, Running, TestDb};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text);";

/// A durable table, so a failed delivery leaves its error in the event log.
async fn setup(hook: &HttpsHook, sink_options: &str) -> (TestDb, Running) {
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\nmode = \"durable\"\n\
             [sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\nretries = 1\nbackoff_ms = 10\n{sink_options}\n",
            hook.url()
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    (db, daemon)
}

/// The error skor recorded for the event it gave up on, once recorded.
async fn last_error(db: &TestDb) -> String {
    eventually("a dead event", || async {
        db.client
            .query_opt(
                "SELECT coalesce(last_error, '') FROM skor.event_log WHERE state = 'dead'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
    })
    .await
}

#[tokio::test]
async fn a_receiver_signed_by_the_ca_file_gets_the_event() {
    let ca = TestCa::new("skor test CA");
    let hook = HttpsHook::start(&ca.server(), None).await;
    let ca_file = pem_file(&ca.pem);
    let options = format!("ca_file = \"{}\"", ca_file.path().display());
    let (db, daemon) = setup(&hook, &options).await;
    db.exec("INSERT INTO items VALUES (1, 'over tls')").await;
    let requests = hook.wait_for(1).await;
    assert!(requests[0].body.contains(r#""over tls""#), "{requests:?}");
    assert!(requests[0].client_cert.is_none());
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("delivered", || sink.delivered.get() == 1).await;
    assert_eq!(sink.failed.get(), 0);
    daemon.stop().await;
}

#[tokio::test]
async fn without_the_ca_file_the_certificate_is_not_trusted() {
    let ca = TestCa::new("skor test CA");
    let hook = HttpsHook::start(&ca.server(), None).await;
    let (db, daemon) = setup(&hook, "").await;
    db.exec("INSERT INTO items VALUES (1, 'untrusted')").await;
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("retried, then failed", || sink.failed.get() == 1).await;
    assert_eq!((sink.retried.get(), sink.delivered.get()), (1, 0));
    let error = last_error(&db).await;
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "the error says why: {error}"
    );
    assert!(hook.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn a_client_certificate_satisfies_a_receiver_that_demands_one() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let client = client_ca.client("skor-client");
    let hook = HttpsHook::start(&server_ca.server(), Some(&client_ca)).await;
    let (ca_file, cert_file, key_file) = (
        pem_file(&server_ca.pem),
        pem_file(&client.cert_pem),
        pem_file(&client.key_pem),
    );
    let options = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        ca_file.path().display(),
        cert_file.path().display(),
        key_file.path().display()
    );
    let (db, daemon) = setup(&hook, &options).await;
    db.exec("INSERT INTO items VALUES (1, 'mutual')").await;
    let requests = hook.wait_for(1).await;
    assert!(requests[0].body.contains(r#""mutual""#));
    let expected: Vec<u8> =
        tokio_rustls::rustls::pki_types::pem::PemObject::from_pem_slice(client.cert_pem.as_bytes())
            .map(|c: tokio_rustls::rustls::pki_types::CertificateDer| c.to_vec())
            .unwrap();
    assert_eq!(
        requests[0].client_cert.as_deref(),
        Some(&expected[..]),
        "the server saw skor's client certificate"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn without_a_client_certificate_the_receiver_refuses() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let hook = HttpsHook::start(&server_ca.server(), Some(&client_ca)).await;
    let ca_file = pem_file(&server_ca.pem);
    let options = format!("ca_file = \"{}\"", ca_file.path().display());
    let (db, daemon) = setup(&hook, &options).await;
    db.exec("INSERT INTO items VALUES (1, 'anonymous')").await;
    let sink = daemon.stats.sink("hook").unwrap();
    eventually_true("retried, then failed", || sink.failed.get() == 1).await;
    assert_eq!(sink.delivered.get(), 0);
    assert!(hook.requests().is_empty());
    let refused = hook.handshake_errors();
    assert!(
        refused.iter().any(|e| e.contains("no certificates")),
        "{refused:?}"
    );
    let error = last_error(&db).await;
    assert!(error.contains("CertificateRequired"), "{error}");
    daemon.stop().await;
}
