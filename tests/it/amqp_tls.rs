//! `amqps://` end to end: skor publishes over TLS, checked against a CA of
//! the test's own (`ca_file`), and with a client certificate (mutual TLS),
//! to the real RabbitMQ behind a TLS front; a consumer reads the messages.
use std::net::SocketAddr;

use crate::common::amqp::Rabbit;
use crate::common::bin::config_file;
use crate::common::https::{acceptor, TestCa, TlsProxy};
use crate::common::{config, start_installed, TestDb};

const TABLE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text)";

/// The test broker's credentials and address, from its `amqp://` URL.
fn broker() -> (String, SocketAddr) {
    let url = crate::common::amqp::url();
    let rest = url.strip_prefix("amqp://").expect("an amqp:// URL");
    let (credentials, rest) = rest.split_once('@').expect("user:password@host");
    let addr = rest.split('/').next().unwrap();
    (
        credentials.to_string(),
        addr.parse().expect("an IP address and port"),
    )
}

/// The `[sink.bus]` table publishing to `rabbit` through `proxy`.
fn tls_sink(rabbit: &Rabbit, proxy: &TlsProxy, options: &str) -> String {
    let (credentials, _) = broker();
    format!(
        "[sink.bus]\ntype = \"amqp\"\nurl = \"amqps://{credentials}@{}/%2f\"\n\
         exchange = \"{}\"\n{options}\n",
        proxy.addr, rabbit.exchange
    )
}

#[tokio::test]
async fn amqps_with_a_private_ca_delivers_to_the_queue() {
    let ca = TestCa::new("skor test rabbit CA");
    let proxy = TlsProxy::start(acceptor(&ca.server(), None), broker().1).await;
    let ca_file = config_file(&ca.pem);
    let rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let options = format!("ca_file = \"{}\"", ca_file.path().display());
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n{}",
            tls_sink(&rabbit, &proxy, &options)
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (1, 'over tls')").await;
    let messages = rabbit.take(1).await;
    assert_eq!(
        messages[0].body,
        r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"over tls"}}"#
    );
    assert!(!proxy.client_certs().is_empty(), "skor went through TLS");
    assert_eq!(daemon.stop().await.undelivered, 0);
    rabbit.delete().await;
}

#[tokio::test]
async fn amqps_presents_the_client_certificate_a_broker_requires() {
    let ca = TestCa::new("skor test rabbit CA");
    let clients = TestCa::new("skor test client CA");
    let proxy = TlsProxy::start(acceptor(&ca.server(), Some(&clients)), broker().1).await;
    let client = clients.client("skor");
    let ca_file = config_file(&ca.pem);
    let cert_file = config_file(&client.cert_pem);
    let key_file = config_file(&client.key_pem);
    let rabbit = Rabbit::new().await;
    let db = TestDb::new().await;
    db.exec(TABLE).await;
    let options = format!(
        "ca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        ca_file.path().display(),
        cert_file.path().display(),
        key_file.path().display()
    );
    let cfg = config(
        &db,
        &format!(
            "[[table]]\nname = \"items\"\n{}",
            tls_sink(&rabbit, &proxy, &options)
        ),
    );
    let daemon = start_installed(&db, &cfg).await;
    db.exec("INSERT INTO items VALUES (2, 'mutual')").await;
    let messages = rabbit.take(1).await;
    assert!(
        messages[0].body.contains(r#""name":"mutual""#),
        "{}",
        messages[0].body
    );
    let presented = proxy.client_certs();
    assert!(
        presented.iter().all(Option::is_some) && !presented.is_empty(),
        "every connection presented skor's certificate"
    );
    assert_eq!(daemon.stop().await.undelivered, 0);
    rabbit.delete().await;
}
