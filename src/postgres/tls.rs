//! Verifying the server's certificate the way libpq does, with rustls, and
//! telling TLS failures in plain words.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::Host;

use super::dsn::{DsnError, RootCerts, SslMode};
use super::Postgres;

impl Postgres {
    pub(super) fn tls_problem(&self, error: &tokio_postgres::Error) -> Option<String> {
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
pub(super) fn rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
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
pub(super) fn presented_name(name: &str) -> &str {
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
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn verifier(
    mode: SslMode,
    roots: Option<&RootCerts>,
) -> Result<Arc<dyn ServerCertVerifier>, DsnError> {
    let provider = provider();
    let Some(roots) = roots else {
        return Ok(Arc::new(Lenient {
            chain: None,
            provider,
        }));
    };
    let store = Arc::new(load_roots(roots)?);
    let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
        .build()
        .map_err(|e| DsnError(format!("TLS: {e}")))?;
    Ok(match mode {
        SslMode::VerifyFull => webpki,
        _ => Arc::new(Lenient {
            chain: Some(webpki),
            provider,
        }),
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

/// The two modes in which libpq is laxer than webpki, in one verifier.
/// Without a chain to check (`prefer` and `require` without `sslrootcert`)
/// any certificate is trusted, as libpq does. With one (`verify-ca`) the
/// chain must lead to a trusted CA and the name may be any: webpki checks
/// the chain before the name, so a name error means the chain passed.
/// Either way the server must prove it holds the key of the certificate it
/// sent: the handshake signature is checked with the provider's
/// algorithms, the ones webpki's own verifier checks it with.
#[derive(Debug)]
struct Lenient {
    /// The webpki verifier of `verify-ca`; `None` trusts any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The provider the chain's verifier was built with, or the one in use.
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
