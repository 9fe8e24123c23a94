//! How skor connects to PostgreSQL: the DSN (libpq's key=value form or a
//! `postgres://` URL) with libpq's TLS settings `sslmode` and
//! `sslrootcert`, and a rustls connector that honours them.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and nothing
//! of certificates, so skor takes its TLS settings out of the DSN, hands the
//! rest to tokio-postgres, and verifies the server's certificate itself the
//! way libpq does:
//!
//! | sslmode       | encrypted          | chain checked | host name checked |
//! |---------------|--------------------|---------------|-------------------|
//! | `disable`     | no                 | no            | no                |
//! | `prefer`      | if the server can  | no            | no                |
//! | `require`     | yes                | only with `sslrootcert` | no      |
//! | `verify-ca`   | yes                | yes           | no                |
//! | `verify-full` | yes                | yes           | yes               |

pub mod catalog;
mod dsn;
mod error;
pub mod event_log;
pub mod locks;
mod quote;
mod replication;
mod tls;

use dsn::{strip_tls_settings, TlsSettings};
use tls::{provider, verifier};

pub use dsn::{DsnError, RootCerts, SslMode};
pub use error::{describe, ConnectError, ContextError, PgError};
pub use quote::{quote_ident, quote_literal, text_array};
pub use replication::{Replication, TlsBridge};

use std::fmt;
use std::path::PathBuf;

use rustls::ClientConfig;
use tokio_postgres::config::SslMode as WireSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection to PostgreSQL, TLS or not, driven by its owner.
pub type PgConnection = Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// Everything skor needs to open connections to its database.
#[derive(Clone)]
pub struct Postgres {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The same TLS settings, for the replication connection's bridge.
    tls_config: std::sync::Arc<ClientConfig>,
    mode: SslMode,
    /// Set when the server's certificate chain is checked.
    roots: Option<RootCerts>,
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio_postgres::Config's Debug redacts the password.
        f.debug_struct("Postgres")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Parses `dsn` and reads the CA certificates it names.
    pub fn from_dsn(dsn: &str) -> Result<Self, DsnError> {
        let mut tls = TlsSettings::default();
        let rest = strip_tls_settings(dsn, &mut tls)?;
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e: tokio_postgres::Error| {
                // The cause alone: tokio-postgres's own text only repeats "invalid".
                let cause = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string);
                DsnError(format!("not a valid connection string: {cause}"))
            })?;
        pin_search_path(&mut config);
        let roots = match tls.sslrootcert.as_deref() {
            None | Some("") => None,
            Some("system") => Some(RootCerts::System),
            Some(path) => Some(RootCerts::File(PathBuf::from(path))),
        };
        let mode = match tls.sslmode.as_deref() {
            Some(value) => SslMode::parse(value)?,
            // libpq: the system's roots are for verify-full only.
            None if roots == Some(RootCerts::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if roots == Some(RootCerts::System) && mode != SslMode::VerifyFull {
            return Err(DsnError(format!(
                "sslmode={mode} may not be used with sslrootcert=system: use sslmode=verify-full"
            )));
        }
        // libpq: with a root certificate, `require` checks the chain too.
        let checked_roots = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, roots) => {
                Some(roots.unwrap_or(RootCerts::System))
            }
            (SslMode::Require, Some(roots)) => Some(roots),
            _ => None,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => WireSslMode::Disable,
            SslMode::Prefer => WireSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
        });
        let verifier = verifier(mode, checked_roots.as_ref())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| DsnError(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let client = std::sync::Arc::new(client);
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new((*client).clone()),
            tls_config: client,
            mode,
            roots: checked_roots,
        })
    }

    /// The settings tokio-postgres connects with.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The settings tokio-postgres connects with, to adjust.
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// How this DSN asks for TLS.
    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The same settings, named `name` in pg_stat_activity.
    pub fn named(&self, name: &str) -> Self {
        let mut named = self.clone();
        named.config.application_name(name);
        named
    }

    /// Opens a connection; the caller drives (or spawns) the connection.
    pub async fn connect(&self) -> Result<(Client, PgConnection), ConnectError> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectError(self.describe(&e)))
    }

    /// Describes a connection error, TLS failures in plain words.
    pub fn describe(&self, error: &tokio_postgres::Error) -> String {
        match self.tls_problem(error) {
            Some(problem) => format!("TLS: {problem}"),
            None => describe(error),
        }
    }
}

/// The search_path of every session skor opens: PostgreSQL's own catalog,
/// then temporary objects. A function or operator another role creates in
/// `public` (or any schema on the connecting role's path) never resolves in
/// skor's statements, which would otherwise run it as skor's role, or as a
/// superuser when skor connects as one.
pub const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// The startup options that pin [`SEARCH_PATH`], and standard strings (no
/// backslash escapes outside `E'...'`, as config checks lex a `when`): a
/// startup setting wins over the role's and the database's defaults
/// (`ALTER ROLE ... SET`), and `RESET` returns to it.
pub const SEARCH_PATH_OPTION: &str =
    "-c search_path=pg_catalog,pg_temp -c standard_conforming_strings=on";

/// Appends the pinned search_path to the DSN's own `options`, last, so it
/// wins over a search_path the DSN sets.
fn pin_search_path(config: &mut tokio_postgres::Config) {
    let options = match config.get_options() {
        Some(own) if !own.trim().is_empty() => format!("{own} {SEARCH_PATH_OPTION}"),
        _ => SEARCH_PATH_OPTION.to_string(),
    };
    config.options(&options);
}

/// Runs `statement` in a savepoint under the pinned search_path, then, if
/// PostgreSQL took it, `inspect` (a query and its one text parameter)
/// while the statement's object stands, and rolls both back: the query's
/// rows, or PostgreSQL's message refusing either. `statement` is sent as
/// one statement (the extended protocol takes no more), whatever a
/// condition in it holds.
pub async fn try_compile(
    client: &impl tokio_postgres::GenericClient,
    statement: &str,
    inspect: Option<(&str, &str)>,
) -> Result<Result<Vec<tokio_postgres::Row>, String>, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SAVEPOINT skor_when; SET LOCAL search_path = {SEARCH_PATH}"
        ))
        .await?;
    let result = match client.execute(statement, &[]).await {
        Ok(_) => match inspect {
            Some((query, parameter)) => client.query(query, &[&parameter]).await,
            None => Ok(Vec::new()),
        },
        Err(error) => Err(error),
    };
    client
        .batch_execute("ROLLBACK TO SAVEPOINT skor_when; RELEASE SAVEPOINT skor_when")
        .await?;
    Ok(result.map_err(|error| {
        error
            .as_db_error()
            .map_or_else(|| describe(&error), |db| db.message().to_string())
    }))
}

/// `user@host:port/dbname`, for logs: never the password.
pub fn target(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or("(default user)"),
        pg.get_dbname().unwrap_or("(default database)")
    )
}

#[cfg(test)]
mod tests {
    use super::tls::presented_name;
    use super::*;

    #[test]
    fn a_bad_dsn_never_echoes_its_password() {
        for dsn in [
            "host=db password='sekret",
            "host=db password=sekret port=nope",
            "host=db password=sekret nonsense",
            "host=db password=sekret sslmode=strict",
            "host=db password=sekret sslrootcert=/nonexistent/ca.pem sslmode=verify-full",
            "postgres://skor:sekret@db:nope/app",
            "postgres://skor:sekret@db/app?sslmode=strict",
            "postgres://skor:sekret@db/app?nonsense=1",
        ] {
            let Err(error) = Postgres::from_dsn(dsn) else {
                panic!("{dsn} parsed");
            };
            assert!(!error.to_string().contains("sek"), "{dsn}: {error}");
        }
    }

    fn settings(dsn: &str) -> (String, TlsSettings) {
        let mut tls = TlsSettings::default();
        let rest = strip_tls_settings(dsn, &mut tls).unwrap();
        (rest, tls)
    }

    fn error(dsn: &str) -> String {
        Postgres::from_dsn(dsn).unwrap_err().to_string()
    }

    #[test]
    fn every_session_pins_its_search_path_after_the_dsns_options() {
        let pg = Postgres::from_dsn("host=db").unwrap();
        assert_eq!(pg.config().get_options(), Some(SEARCH_PATH_OPTION));
        let pg =
            Postgres::from_dsn("host=db options='-c search_path=public -c work_mem=4MB'").unwrap();
        assert_eq!(
            pg.config().get_options(),
            Some(
                "-c search_path=public -c work_mem=4MB -c search_path=pg_catalog,pg_temp \
                 -c standard_conforming_strings=on"
            )
        );
    }

    #[test]
    fn keyword_form_loses_only_the_tls_settings() {
        let (rest, tls) = settings(
            "host=db port = 5433 sslmode=verify-full  sslrootcert='/etc/my ca.pem' user=app",
        );
        assert_eq!(rest, "host='db' port='5433' user='app'");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
    }

    #[test]
    fn quoted_and_escaped_values_survive_the_round_trip() {
        let dsn = r"host=db password='it\'s a \\secret' application_name=a\ b sslmode=require";
        let pg = Postgres::from_dsn(dsn).unwrap();
        assert_eq!(pg.config().get_password(), Some(&b"it's a \\secret"[..]));
        assert_eq!(pg.config().get_application_name(), Some("a b"));
        assert_eq!(pg.ssl_mode(), SslMode::Require);
        assert_eq!(pg.config().get_ssl_mode(), WireSslMode::Require);
    }

    #[test]
    fn url_form_loses_only_the_tls_settings() {
        let (rest, tls) = settings(
            "postgres://app:p%40ss@db:5433/orders?sslmode=verify-ca&application_name=x&sslrootcert=%2Fca.pem",
        );
        assert_eq!(
            rest,
            "postgres://app:p%40ss@db:5433/orders?application_name=x"
        );
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/ca.pem"));
        let (rest, _) = settings("postgresql://db/orders?sslmode=disable");
        assert_eq!(rest, "postgresql://db/orders");
        let (rest, tls) = settings("postgresql://u:a?b@db/orders");
        assert_eq!(rest, "postgresql://u:a?b@db/orders");
        assert_eq!(tls, TlsSettings::default());
    }

    #[test]
    fn url_form_parses_into_the_same_settings() {
        let pg =
            Postgres::from_dsn("postgres://app:secret@db:5433/orders?sslmode=require").unwrap();
        assert_eq!(pg.config().get_dbname(), Some("orders"));
        assert_eq!(pg.config().get_ports(), [5433]);
        assert_eq!(pg.config().get_password(), Some(&b"secret"[..]));
        assert_eq!(pg.ssl_mode(), SslMode::Require);
    }

    #[test]
    fn sslmode_maps_like_libpq() {
        let mode = |dsn: &str| {
            let pg = Postgres::from_dsn(dsn).unwrap();
            (pg.ssl_mode(), pg.config().get_ssl_mode(), pg.roots.clone())
        };
        assert_eq!(
            mode("host=db"),
            (SslMode::Prefer, WireSslMode::Prefer, None)
        );
        assert_eq!(
            mode("host=db sslmode=disable"),
            (SslMode::Disable, WireSslMode::Disable, None)
        );
        assert_eq!(
            mode("host=db sslmode=require"),
            (SslMode::Require, WireSslMode::Require, None)
        );
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), test_ca_pem()).unwrap();
        let file = RootCerts::File(ca.path().to_path_buf());
        let path = ca.path().display();
        assert_eq!(
            mode(&format!("host=db sslmode=require sslrootcert={path}")),
            (SslMode::Require, WireSslMode::Require, Some(file.clone()))
        );
        assert_eq!(
            mode(&format!("host=db sslmode=verify-ca sslrootcert={path}")),
            (SslMode::VerifyCa, WireSslMode::Require, Some(file.clone()))
        );
        assert_eq!(
            mode(&format!("host=db sslmode=verify-full sslrootcert={path}")),
            (SslMode::VerifyFull, WireSslMode::Require, Some(file))
        );
    }

    #[test]
    fn verify_full_without_sslrootcert_uses_the_system_roots() {
        match Postgres::from_dsn("host=db sslmode=verify-full") {
            Ok(pg) => assert_eq!(pg.roots, Some(RootCerts::System)),
            // A system without a trust store says what to do.
            Err(e) => assert!(
                e.to_string().ends_with("set sslrootcert to a CA file"),
                "{e}"
            ),
        }
        if let Ok(pg) = Postgres::from_dsn("host=db sslrootcert=system") {
            assert_eq!(pg.ssl_mode(), SslMode::VerifyFull);
        }
    }

    #[test]
    fn unknown_sslmode_is_rejected_by_name() {
        assert_eq!(
            error("host=db sslmode=verify_full"),
            "invalid sslmode \"verify_full\": expected disable, prefer, require, verify-ca or verify-full"
        );
        assert_eq!(
            error("postgres://db/x?sslmode=allow"),
            "sslmode=allow is not supported: use disable or prefer"
        );
    }

    #[test]
    fn system_roots_need_verify_full() {
        assert_eq!(
            error("host=db sslmode=require sslrootcert=system"),
            "sslmode=require may not be used with sslrootcert=system: use sslmode=verify-full"
        );
    }

    #[test]
    fn a_missing_sslrootcert_file_is_named() {
        let message = error("host=db sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        assert_eq!(
            message,
            "cannot read sslrootcert file /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        let message = error(&format!(
            "host=db sslmode=verify-ca sslrootcert={}",
            empty.path().display()
        ));
        assert_eq!(
            message,
            format!(
                "sslrootcert file {} holds no PEM certificate",
                empty.path().display()
            )
        );
    }

    #[test]
    fn presented_names_lose_their_debug_dress() {
        assert_eq!(
            presented_name(r#"DnsName("db.example.com")"#),
            "db.example.com"
        );
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("URI(x)"), "URI(x)");
    }

    #[test]
    fn client_certificates_are_refused_not_ignored() {
        assert_eq!(
            error("host=db sslcert=/c.pem"),
            "sslcert: client certificates are not supported yet"
        );
    }

    #[test]
    fn the_password_is_never_in_an_error() {
        for dsn in [
            "host=db password='s3cr3t",
            "host=db password=s3cr3t sslmode=bogus",
            "host=db password=s3cr3t port=notaport",
            "host=db password=s3cr3t nonsense=1",
            "host=db password=s3cr3t sslrootcert=/nonexistent sslmode=verify-ca",
            "postgres://u:s3cr3t@db/x?sslmode=bogus",
            "postgres://u:s3cr3t@db:notaport/x",
            "host=db password",
        ] {
            let message = error(dsn);
            assert!(!message.contains("s3cr3t"), "{dsn}: {message}");
            assert!(!message.is_empty());
        }
        assert_eq!(
            error("host=db password='s3cr3t"),
            "not a valid connection string: the quoted value of `password` has no closing quote"
        );
        assert!(error("host=db nonsense=1").contains("unknown option `nonsense`"));
    }

    /// A self-signed CA, enough for the root store to accept.
    fn test_ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }
}
