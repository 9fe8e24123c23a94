//! TLS to PostgreSQL: a private server with certificates made by the test;
//! skor connects with each sslmode, delivers over the encrypted connection,
//! and refuses a certificate it must not trust with a message that says why.

use std::path::PathBuf;

use crate::common::pg_server::{PgServer, TlsFiles};
use crate::common::{bin, Hook};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use skor::{Config, Daemon};
use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// A test CA, a server certificate it signed for `localhost` and
/// 127.0.0.1, and an unrelated CA.
struct Pki {
    dir: TempDir,
    server: TlsFiles,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("skor test CA");
        let other = ca_pem("some other CA");
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        write("ca.pem", &ca.pem());
        write("other-ca.pem", &other);
        let server = TlsFiles {
            cert: write("server.crt", &cert.pem()),
            key: write("server.key", &key.serialize_pem()),
        };
        Self { dir, server }
    }

    /// The CA that signed the server's certificate.
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing the server has.
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn ca_pem(name: &str) -> String {
    ca(name).pem()
}

async fn connect(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A server with an `items` table, its triggers installed by skor.
async fn server_with_items(tls: Option<&TlsFiles>) -> (PgServer, Client) {
    let server = PgServer::start(tls);
    let client = connect(&server.dsn()).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let config = Config::from_toml(&skor_config(&server.dsn(), None), "test.toml").unwrap();
    let mut installer = connect(&server.dsn()).await;
    skor::install::install(&mut installer, &config)
        .await
        .unwrap();
    (server, client)
}

/// skor's config: `dsn`, the `items` table, and a webhook when given.
fn skor_config(dsn: &str, hook: Option<&Hook>) -> String {
    let sink = hook.map_or_else(String::new, |hook| {
        format!(
            "[sink.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
            hook.url()
        )
    });
    format!("[source]\ndsn = \"{dsn}\"\n[[table]]\nname = \"items\"\n{sink}")
}

/// Why skor does not start with `dsn`.
async fn start_error(dsn: &str) -> String {
    let config = Config::from_toml(&skor_config(dsn, None), "test.toml").expect("valid config");
    match Daemon::start(&config).await {
        Ok(_) => panic!("skor started with {dsn}"),
        Err(e) => e.to_string(),
    }
}

/// Runs skor on `dsn`, inserts a row and returns what the webhook got,
/// and whether skor's listening connection is encrypted.
async fn deliver_one(client: &Client, dsn: &str) -> (String, bool) {
    let hook = Hook::start().await;
    let daemon = crate::common::Running::start(&skor_config(dsn, Some(&hook))).await;
    let encrypted: bool = client
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'skor'",
            &[],
        )
        .await
        .expect("skor's connection is in pg_stat_activity")
        .get(0);
    client
        .batch_execute("INSERT INTO items VALUES (1, 'over TLS')")
        .await
        .unwrap();
    let body = hook.wait_for(1).await.remove(0).body;
    daemon.stop().await;
    client.batch_execute("DELETE FROM items").await.unwrap();
    (body, encrypted)
}

const INSERTED: &str = r#"{"table" : "items", "schema" : "public", "op" : "INSERT", "data" : {"id":1,"name":"over TLS"}}"#;

#[tokio::test]
async fn sslmode_require_encrypts_and_delivers() {
    let pki = Pki::new();
    let (server, client) = server_with_items(Some(&pki.server)).await;
    let (body, encrypted) =
        deliver_one(&client, &format!("{} sslmode=require", server.dsn())).await;
    assert_eq!(body, INSERTED);
    assert!(encrypted, "skor's connection uses TLS");
}

#[tokio::test]
async fn verify_full_with_the_right_ca_delivers() {
    let pki = Pki::new();
    let (server, client) = server_with_items(Some(&pki.server)).await;
    let dsn = format!(
        "{} sslmode=verify-full sslrootcert={}",
        server.dsn(),
        pki.ca().display()
    );
    let (body, encrypted) = deliver_one(&client, &dsn).await;
    assert_eq!(body, INSERTED);
    assert!(encrypted, "skor's connection uses TLS");
    // The URL form says the same.
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port(),
        pki.ca().display()
    );
    let (body, encrypted) = deliver_one(&client, &url).await;
    assert_eq!(body, INSERTED);
    assert!(encrypted);
}

#[tokio::test]
async fn prefer_is_the_default_and_encrypts_when_it_can() {
    let pki = Pki::new();
    let (server, client) = server_with_items(Some(&pki.server)).await;
    let (body, encrypted) = deliver_one(&client, &server.dsn()).await;
    assert_eq!(body, INSERTED);
    assert!(encrypted, "prefer uses TLS when the server offers it");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (server, _client) = server_with_items(Some(&pki.server)).await;
    let other = pki.other_ca().display().to_string();
    for mode in ["verify-full", "verify-ca", "require"] {
        // require with an sslrootcert checks the chain, as libpq does.
        let dsn = format!("{} sslmode={mode} sslrootcert={other}", server.dsn());
        assert_eq!(
            start_error(&dsn).await,
            format!(
                "cannot listen to PostgreSQL: TLS: the server's certificate is not signed by \
                 a trusted CA (sslrootcert={other})"
            ),
            "sslmode={mode}"
        );
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_by_verify_full_only() {
    let pki = Pki::new();
    let (server, client) = server_with_items(Some(&pki.server)).await;
    // The name the certificate does not cover reaches the same server.
    let dsn = format!(
        "host=db.example.com hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslrootcert={}",
        server.port(),
        pki.ca().display()
    );
    assert_eq!(
        start_error(&format!("{dsn} sslmode=verify-full")).await,
        "cannot listen to PostgreSQL: TLS: the server's certificate is not valid for host \
         \"db.example.com\": it is for localhost, 127.0.0.1 (sslmode=verify-full)"
    );
    // verify-ca checks the chain only.
    let (body, encrypted) = deliver_one(&client, &format!("{dsn} sslmode=verify-ca")).await;
    assert_eq!(body, INSERTED);
    assert!(encrypted);
}

#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    let (server, client) = server_with_items(None).await;
    assert_eq!(
        start_error(&format!("{} sslmode=require", server.dsn())).await,
        "cannot listen to PostgreSQL: TLS: the server does not support TLS (sslmode=require)"
    );
    // prefer, the default, falls back to a plain connection.
    let (body, encrypted) = deliver_one(&client, &server.dsn()).await;
    assert_eq!(body, INSERTED);
    assert!(!encrypted);
}

#[tokio::test]
async fn skor_check_connect_reports_the_certificate_problem() {
    let pki = Pki::new();
    let server = PgServer::start(Some(&pki.server));
    let check = |root: PathBuf| {
        let dsn = format!(
            "{} sslmode=verify-full sslrootcert={}",
            server.dsn(),
            root.display()
        );
        async move {
            let file = bin::config_file(&format!("[source]\ndsn = \"{dsn}\"\n"));
            bin::run(&[
                "--config",
                file.path().to_str().unwrap(),
                "check",
                "--connect",
            ])
            .await
        }
    };
    let good = check(pki.ca()).await;
    assert!(good.status.success(), "{}", bin::stderr(&good));
    assert!(String::from_utf8_lossy(&good.stdout).contains("database reachable"));
    let bad = check(pki.other_ca()).await;
    assert!(!bad.status.success());
    assert!(
        bin::stderr(&bad).contains(&format!(
            "cannot connect to PostgreSQL: TLS: the server's certificate is not signed by a \
             trusted CA (sslrootcert={})",
            pki.other_ca().display()
        )),
        "{}",
        bin::stderr(&bad)
    );
    let missing = check(pki.dir.path().join("missing.pem")).await;
    assert!(!missing.status.success());
    assert!(
        bin::stderr(&missing).contains(&format!(
            "cannot read sslrootcert file {}",
            pki.dir.path().join("missing.pem").display()
        )),
        "{}",
        bin::stderr(&missing)
    );
}

#[tokio::test]
async fn skor_reconnects_over_tls_after_postgres_restarts() {
    let pki = Pki::new();
    let (server, client) = server_with_items(Some(&pki.server)).await;
    drop(client);
    let dsn = format!(
        "{} sslmode=verify-full sslrootcert={}",
        server.dsn(),
        pki.ca().display()
    );
    let hook = Hook::start().await;
    let daemon = crate::common::Running::start(&skor_config(&dsn, Some(&hook))).await;
    server.stop();
    server.start_again();
    let client = connect(&server.dsn()).await;
    crate::common::eventually_true("skor reconnected", || {
        daemon.stats.source.link.reconnects.get() > 0
    })
    .await;
    let encrypted: bool = client
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'skor'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the new connection uses TLS too");
    client
        .batch_execute("INSERT INTO items VALUES (1, 'over TLS')")
        .await
        .unwrap();
    assert_eq!(hook.wait_for(1).await[0].body, INSERTED);
    daemon.stop().await;
}

#[tokio::test]
async fn wal_mode_streams_over_tls_verified_like_the_other_connections() {
    let pki = Pki::new();
    let server = PgServer::start(Some(&pki.server));
    let client = connect(&server.dsn()).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let dsn = format!(
        "{} sslmode=verify-full sslrootcert={}",
        server.dsn(),
        pki.ca().display()
    );
    let hook = Hook::start().await;
    let config =
        skor_config(&dsn, Some(&hook)).replacen("[[table]]", "mode = \"wal\"\n[[table]]", 1);
    let parsed = Config::from_toml(&config, "test.toml").unwrap();
    let mut installer = connect(&server.dsn()).await;
    skor::install::install(&mut installer, &parsed)
        .await
        .unwrap();
    let daemon = crate::common::Running::start(&config).await;
    client
        .batch_execute("INSERT INTO items VALUES (1, 'over TLS')")
        .await
        .unwrap();
    assert_eq!(hook.wait_for(1).await.remove(0).body, INSERTED);
    let encrypted: bool = client
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) \
             WHERE r.application_name = 'skor wal'",
            &[],
        )
        .await
        .expect("skor's replication connection is in pg_stat_replication")
        .get(0);
    assert!(encrypted, "the replication stream uses TLS");
    // The bridge's socket directory is gone once the stream is up, so a
    // skor killed now leaves nothing in the temporary directory.
    let bridge = format!("skor-wal-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&bridge))
        .map(|entry| entry.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    daemon.stop().await;
}
