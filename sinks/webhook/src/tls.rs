//! The webhook client's TLS settings: extra CA certificates (`ca_file`) and
//! a client identity for mutual TLS (`client_cert`, `client_key`), read
//! from their PEM files when the sink is built.

use skor_sink_kit::{describe, TlsFileError, TlsFileOptions};

use crate::sink::WebhookError;
use crate::WebhookConfig;

impl From<TlsFileError> for WebhookError {
    fn from(error: TlsFileError) -> Self {
        WebhookError::Tls {
            key: error.key,
            message: error.message,
        }
    }
}

/// Adds the configured CA certificates and client identity to `builder`.
pub(crate) fn with_tls(
    mut builder: reqwest::ClientBuilder,
    config: &WebhookConfig,
) -> Result<reqwest::ClientBuilder, WebhookError> {
    let files = TlsFileOptions {
        ca_file: config.ca_file.as_deref(),
        client_cert: config.client_cert.as_deref(),
        client_key: config.client_key.as_deref(),
    }
    .read()?;
    if let Some(pem) = files.ca {
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| WebhookError::Tls {
                key: "ca_file",
                message: format!("not a PEM certificate bundle ({})", describe(&e)),
            })?;
        // Added to the built-in roots, not replacing them: a private CA
        // for one receiver should not break public ones behind redirects.
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = files.identity {
        // With rustls, reqwest reads the identity from one PEM holding the
        // certificate chain and the key.
        let mut pem = identity.cert;
        pem.push(b'\n');
        pem.extend(identity.key);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| WebhookError::Tls {
            key: "client_cert",
            message: format!(
                "not a usable certificate and private key ({})",
                describe(&e)
            ),
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use crate::{WebhookConfig, WebhookError, WebhookSink};

    #[test]
    fn a_tls_file_problem_names_its_key() {
        let mut config = WebhookConfig::new("https://example.com/");
        config.client_key = Some("/nonexistent/key.pem".into());
        let error = WebhookSink::new(&config).err().unwrap();
        assert!(
            matches!(
                &error,
                WebhookError::Tls {
                    key: "client_cert",
                    ..
                }
            ),
            "{error}"
        );
        config.client_key = None;
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let error = WebhookSink::new(&config).err().unwrap().to_string();
        assert!(
            error.starts_with("ca_file: cannot read /nonexistent/ca.pem"),
            "{error}"
        );
    }
}
