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

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as WireSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::source::describe;

/// A connection to PostgreSQL, TLS or not, driven by its owner.
pub type PgConnection = Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// libpq's `sslmode`, as far as skor supports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, the certificate unchecked (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked only against an
    /// explicit `sslrootcert`, as libpq does.
    Require,
    /// TLS, the certificate signed by a trusted CA, any host name.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, DsnError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // tokio-postgres cannot try plain first and TLS second.
            "allow" => {
                return Err(DsnError(
                    "sslmode=allow is not supported: use disable or prefer".into(),
                ))
            }
            other => {
                return Err(DsnError(format!(
                    "invalid sslmode \"{}\": expected disable, prefer, require, verify-ca or verify-full",
                    other.escape_debug()
                )))
            }
        })
    }

    /// The word a DSN spells it with.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA certificates that sign the server's certificate come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's trust store (`sslrootcert=system`, or no
    /// `sslrootcert` at all).
    System,
    /// A PEM file of CA certificates.
    File(PathBuf),
}

impl fmt::Display for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("sslrootcert=system"),
            Self::File(path) => write!(f, "sslrootcert={}", path.display()),
        }
    }
}

/// Why a DSN cannot be used; never quotes the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DsnError(String);

/// Why a connection could not be made, in words for the log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

/// skor's TLS settings taken out of a DSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl TlsSettings {
    /// Takes `key = value` if it is one of skor's; says whether it was.
    fn take(&mut self, key: &str, value: String) -> Result<bool, DsnError> {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            // Accepting them silently would connect without the client
            // certificate the server may require.
            "sslcert" | "sslkey" => {
                return Err(DsnError(format!(
                    "{key}: client certificates are not supported yet"
                )))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Everything skor needs to open connections to its database.
#[derive(Clone)]
pub struct Postgres {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
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
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client),
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

    fn tls_problem(&self, error: &tokio_postgres::Error) -> Option<String> {
        let mut cause = std::error::Error::source(error);
        while let Some(error) = cause {
            if let Some(tls) = rustls_error(error) {
                return Some(self.explain(tls));
            }
            // tokio-postgres's own words when the server answers "no TLS".
            if error.to_string() == "server does not support TLS" {
                return Some(format!(
                    "the server does not support TLS (sslmode={})",
                    self.mode
                ));
            }
            cause = error.source();
        }
        None
    }

    fn explain(&self, error: &rustls::Error) -> String {
        let rustls::Error::InvalidCertificate(problem) = error else {
            return error.to_string();
        };
        let roots = self
            .roots
            .as_ref()
            .map_or_else(|| "no sslrootcert".to_string(), ToString::to_string);
        match problem {
            CertificateError::NotValidForName => format!(
                "the server's certificate is not valid for host \"{}\" (sslmode={})",
                self.host(),
                self.mode
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => {
                let names = if presented.is_empty() {
                    "no names".to_string()
                } else {
                    let names: Vec<&str> = presented.iter().map(|n| presented_name(n)).collect();
                    names.join(", ")
                };
                format!(
                    "the server's certificate is not valid for host \"{}\": it is for {names} (sslmode={})",
                    server_name(expected),
                    self.mode
                )
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the server's certificate is not signed by a trusted CA ({roots})")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet".into()
            }
            other => format!("the server's certificate is not accepted: {other} ({roots})"),
        }
    }

    /// The first host name, for messages that have no other.
    fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".into(),
        }
    }
}

/// The rustls error inside an I/O error from the handshake, if it is one.
fn rustls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    // io::Error::source skips the error it wraps, so look inside it here.
    error
        .downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

/// A name rustls found in a certificate, without its Debug dress:
/// `DnsName("db")` is `db`, `IpAddress(10.0.0.1)` is `10.0.0.1`.
fn presented_name(name: &str) -> &str {
    name.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| name.strip_prefix("IpAddress(")?.strip_suffix(')'))
        .unwrap_or(name)
}

fn server_name(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// ring, the provider reqwest and lapin use too; passed explicitly so no
/// process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verifier(
    mode: SslMode,
    roots: Option<&RootCerts>,
) -> Result<Arc<dyn ServerCertVerifier>, DsnError> {
    let Some(roots) = roots else {
        return Ok(Arc::new(Unverified(provider())));
    };
    let store = Arc::new(load_roots(roots)?);
    let webpki = WebPkiServerVerifier::builder_with_provider(store, provider())
        .build()
        .map_err(|e| DsnError(format!("TLS: {e}")))?;
    Ok(match mode {
        SslMode::VerifyFull => webpki,
        _ => Arc::new(AnyHostName(webpki)),
    })
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, DsnError> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(DsnError(format!(
                    "no usable root certificates on this system{why}: set sslrootcert to a CA file"
                )));
            }
        }
        RootCerts::File(path) => {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    let why = match e {
                        PemError::Io(e) => e.to_string(),
                        other => other.to_string(),
                    };
                    DsnError(format!("cannot read sslrootcert file {shown}: {why}"))
                })?;
            if certs.is_empty() {
                return Err(DsnError(format!(
                    "sslrootcert file {shown} holds no PEM certificate"
                )));
            }
            for cert in certs {
                store.add(cert).map_err(|e| {
                    DsnError(format!(
                        "sslrootcert file {shown}: a certificate is not usable: {e}"
                    ))
                })?;
            }
        }
    }
    Ok(store)
}

/// `prefer` and `require` without `sslrootcert`: encrypt, and check that
/// the server holds the key of the certificate it sent, but trust any
/// certificate, as libpq does.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA, the name may be any.
/// webpki checks the chain before the name, so a name error means the
/// chain passed.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Removes skor's TLS settings from `dsn` into `tls` and returns the rest,
/// in the same form (key=value or URL), for tokio-postgres.
fn strip_tls_settings(dsn: &str, tls: &mut TlsSettings) -> Result<String, DsnError> {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = dsn.strip_prefix(scheme) {
            return strip_from_url(scheme, rest, tls);
        }
    }
    strip_from_keywords(dsn, tls)
}

/// The query of a URL is whatever follows the first `?` after the
/// credentials and hosts; this splits where tokio-postgres does.
fn strip_from_url(scheme: &str, rest: &str, tls: &mut TlsSettings) -> Result<String, DsnError> {
    let after_credentials = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[after_credentials..]
        .find('?')
        .map(|q| q + after_credentials)
    else {
        return Ok(format!("{scheme}{rest}"));
    };
    let (head, query) = (&rest[..query_at], &rest[query_at + 1..]);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !tls.take(&percent_decode(key)?, percent_decode(value)?.into_owned())? {
            kept.push(pair);
        }
    }
    Ok(if kept.is_empty() {
        format!("{scheme}{head}")
    } else {
        format!("{scheme}{head}?{}", kept.join("&"))
    })
}

fn percent_decode(text: &str) -> Result<Cow<'_, str>, DsnError> {
    if !text.contains('%') {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DsnError("a URL parameter is not valid UTF-8 once decoded".into()))
}

/// libpq's `key = value` list: values bare (a backslash escapes the next
/// character) or in single quotes (with `\'` and `\\`). What is kept is
/// written back quoted, which tokio-postgres reads the same way.
fn strip_from_keywords(dsn: &str, tls: &mut TlsSettings) -> Result<String, DsnError> {
    let mut chars = dsn.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(DsnError(format!(
                "not a valid connection string: expected `=` after `{}`",
                key.escape_debug()
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    // The value may be a password: name the key only.
                    None => {
                        return Err(DsnError(format!(
                            "not a valid connection string: the quoted value of `{}` has no closing quote",
                            key.escape_debug()
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(DsnError(format!(
                    "not a valid connection string: `{}` has no value",
                    key.escape_debug()
                )));
            }
        }
        if !tls.take(&key, value.clone())? {
            kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
    }
    Ok(kept.join(" "))
}

#[cfg(test)]
mod tests {
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
