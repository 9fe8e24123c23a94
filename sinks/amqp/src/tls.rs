//! TLS for `amqps://`: extra CA certificates (`ca_file`) and a client
//! identity (`client_cert`, `client_key`), read from their PEM files when
//! the sink is built so a wrong path fails at start-up.

use std::path::Path;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::AmqpConfig;
use crate::sink::AmqpError;

/// The TLS settings of `config`, its PEM files read and checked now so a
/// wrong path or file fails at start-up, naming the key and the file.
pub(crate) fn tls_config(config: &AmqpConfig) -> Result<OwnedTLSConfig, AmqpError> {
    let tls_wanted = config.url.expose().starts_with("amqps://");
    let mut tls = OwnedTLSConfig::default();
    for (key, set) in [
        ("ca_file", config.ca_file.is_some()),
        ("client_cert", config.client_cert.is_some()),
        ("client_key", config.client_key.is_some()),
    ] {
        if set && !tls_wanted {
            return Err(AmqpError::Tls {
                key,
                message: format!(
                    "applies to amqps:// URLs only, and the url is {}",
                    config.redacted_url()
                ),
            });
        }
    }
    if let Some(path) = &config.ca_file {
        let pem = read_pem("ca_file", path)?;
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("ca_file", path, &e.to_string()))?;
        if certificates.is_empty() {
            return Err(pem_error("ca_file", path, "holds no PEM certificate"));
        }
        tls.cert_chain = Some(pem);
    }
    match (&config.client_cert, &config.client_key) {
        (None, None) => {}
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem("client_cert", cert_path)?;
            let certificates = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error("client_cert", cert_path, &e.to_string()))?;
            if certificates.is_empty() {
                return Err(pem_error(
                    "client_cert",
                    cert_path,
                    "holds no PEM certificate",
                ));
            }
            let key = read_pem("client_key", key_path)?;
            // The error names the file, never its content.
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                pem_error(
                    "client_key",
                    key_path,
                    "holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                )
            })?;
            tls.identity = Some(OwnedIdentity::PKCS8 {
                pem: cert.into_bytes(),
                key: key.into_bytes(),
            });
        }
        (Some(_), None) => {
            return Err(AmqpError::Tls {
                key: "client_key",
                message: "client_cert is set, so client_key must be too".into(),
            })
        }
        (None, Some(_)) => {
            return Err(AmqpError::Tls {
                key: "client_cert",
                message: "client_key is set, so client_cert must be too".into(),
            })
        }
    }
    Ok(tls)
}

fn read_pem(key: &'static str, path: &Path) -> Result<String, AmqpError> {
    std::fs::read_to_string(path).map_err(|e| AmqpError::Tls {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

fn pem_error(key: &'static str, path: &Path, reason: &str) -> AmqpError {
    AmqpError::Tls {
        key,
        message: format!("{}: {reason}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AmqpSink;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    fn error(config: &AmqpConfig) -> String {
        AmqpSink::new(config).err().expect("refused").to_string()
    }

    #[test]
    fn tls_options_need_amqps_existing_files_and_come_in_pairs() {
        let mut config = AmqpConfig::new("amqp://guest:s3cret@localhost/%2f", "x");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let shown = error(&config);
        assert!(
            shown.starts_with("ca_file: applies to amqps:// URLs only")
                && shown.contains("guest:<redacted>@")
                && !shown.contains("s3cret"),
            "{shown}"
        );

        config.url = skor_sink_api::Redacted::new("amqps://guest:s3cret@localhost/%2f".into());
        assert_eq!(
            error(&config),
            "ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let not_pem = file("not a certificate");
        config.ca_file = Some(not_pem.path().into());
        let shown = error(&config);
        assert!(shown.ends_with(": holds no PEM certificate"), "{shown}");
        assert!(
            shown.contains(&not_pem.path().display().to_string()),
            "{shown}"
        );

        config.ca_file = None;
        config.client_cert = Some(not_pem.path().into());
        assert!(error(&config).starts_with("client_key: client_cert is set"));
        config.client_cert = None;
        config.client_key = Some(not_pem.path().into());
        assert!(error(&config).starts_with("client_cert: client_key is set"));

        config.ca_file = None;
        config.client_key = None;
        assert!(
            AmqpSink::new(&config).is_ok(),
            "amqps:// alone uses the system roots"
        );
    }
}
