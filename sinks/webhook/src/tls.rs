//! The webhook client's TLS settings: extra CA certificates (`ca_file`) and
//! a client identity for mutual TLS (`client_cert`, `client_key`), read
//! from their PEM files when the sink is built.

use std::path::Path;

use crate::sink::{describe, WebhookError};
use crate::WebhookConfig;

/// Adds the configured CA certificates and client identity to `builder`.
pub(crate) fn with_tls(
    builder: reqwest::ClientBuilder,
    config: &WebhookConfig,
) -> Result<reqwest::ClientBuilder, WebhookError> {
    let mut builder = builder;
    if let Some(path) = &config.ca_file {
        let pem = read_file("ca_file", path)?;
        let invalid = |reason: String| WebhookError::Tls {
            key: "ca_file",
            message: format!("{}: {reason}", path.display()),
        };
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| invalid(format!("not a PEM certificate bundle ({})", describe(&e))))?;
        if certificates.is_empty() {
            return Err(invalid("holds no PEM certificate".into()));
        }
        // Added to the built-in roots, not replacing them: a private CA
        // for one receiver should not break public ones behind redirects.
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    match (&config.client_cert, &config.client_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            // With rustls, reqwest reads the identity from one PEM holding
            // the certificate chain and the key.
            let mut pem = read_file("client_cert", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("client_key", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| WebhookError::Tls {
                key: "client_cert",
                message: format!(
                    "{} and {}: not a PEM certificate and unencrypted private key ({})",
                    cert.display(),
                    key.display(),
                    describe(&e)
                ),
            })?;
            builder = builder.identity(identity);
        }
        (Some(_), None) => {
            return Err(WebhookError::Tls {
                key: "client_key",
                message: "client_cert is set, so client_key must be too".into(),
            })
        }
        (None, Some(_)) => {
            return Err(WebhookError::Tls {
                key: "client_cert",
                message: "client_key is set, so client_cert must be too".into(),
            })
        }
    }
    Ok(builder)
}

/// The bytes of a file the config names, or an error naming the file.
fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|e| WebhookError::Tls {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WebhookSink;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn tls_files_must_exist_hold_pem_and_come_in_pairs() {
        let mut config = WebhookConfig::new("https://example.com/");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("ca_file: cannot read /nonexistent/ca.pem"),
            "{error}"
        );

        let not_pem = file("hello");
        config.ca_file = Some(not_pem.path().into());
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.contains(&not_pem.path().display().to_string())
                && error.contains("no PEM certificate"),
            "{error}"
        );

        let mut config = WebhookConfig::new("https://example.com/");
        config.client_cert = Some(not_pem.path().into());
        let error = WebhookSink::new(&config).err().unwrap();
        assert!(
            matches!(
                error,
                WebhookError::Tls {
                    key: "client_key",
                    ..
                }
            ),
            "{error}"
        );
        config.client_key = Some(not_pem.path().into());
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("client_cert: ") && error.contains("not a PEM certificate"),
            "{error}"
        );
        config.client_cert = None;
        let error = WebhookSink::new(&config).err().unwrap();
        assert!(
            matches!(
                error,
                WebhookError::Tls {
                    key: "client_cert",
                    ..
                }
            ),
            "{error}"
        );
    }
}
