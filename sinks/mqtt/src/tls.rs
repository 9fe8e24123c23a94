//! TLS for `mqtts://` (or `tls = true`): the system's roots plus any
//! `ca_file`, and a client identity (`client_cert`, `client_key`), read from
//! their PEM files when the sink is built so a wrong path fails at start-up.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use skor_sink_kit::{TlsFileError, TlsFileOptions};

use crate::config::MqttConfig;
use crate::sink::MqttError;

impl From<TlsFileError> for MqttError {
    fn from(error: TlsFileError) -> Self {
        MqttError::Tls {
            key: error.key,
            message: error.message,
        }
    }
}

/// ring, the provider the rest of skor uses; passed explicitly so no
/// process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client config for a TLS connection, or `None` without TLS;
/// TLS file options without TLS are refused, naming the first one set.
pub(crate) fn tls_config(
    config: &MqttConfig,
    tls: bool,
) -> Result<Option<Arc<ClientConfig>>, MqttError> {
    let options = TlsFileOptions {
        ca_file: config.ca_file.as_deref(),
        client_cert: config.client_cert.as_deref(),
        client_key: config.client_key.as_deref(),
    };
    options.require_tls(tls, || {
        format!(
            "applies with TLS only: use an mqtts:// url or set tls = true (the url is {})",
            config.redacted_url()
        )
    })?;
    if !tls {
        return Ok(None);
    }
    let files = options.read()?;
    let mut roots = RootCertStore::empty();
    // A private CA is added to the system's roots, not put in their place;
    // a machine without system roots still works with a ca_file.
    let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = &files.ca {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| MqttError::Tls {
                key: "ca_file",
                message: e.to_string(),
            })?;
            roots.add(certificate).map_err(|e| MqttError::Tls {
                key: "ca_file",
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(MqttError::Tls {
            key: "ca_file",
            message: "this system has no root certificates: set ca_file to the broker's CA".into(),
        });
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls {
            key: "tls",
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let client = match files.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(&identity.cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MqttError::Tls {
                    key: "client_cert",
                    message: e.to_string(),
                })?;
            let key = PrivateKeyDer::from_pem_slice(&identity.key).map_err(|_| MqttError::Tls {
                key: "client_key",
                message: "holds no unencrypted PEM private key".into(),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| MqttError::Tls {
                    key: "client_key",
                    message: format!("does not go with client_cert: {e}"),
                })?
        }
    };
    Ok(Some(Arc::new(client)))
}

#[cfg(test)]
mod tests {
    use crate::{MqttConfig, MqttSink};

    fn error(config: &MqttConfig) -> String {
        MqttSink::new(config).err().expect("refused").to_string()
    }

    #[test]
    fn tls_options_need_tls_existing_files_and_come_in_pairs() {
        let mut config = MqttConfig::new("mqtt://skor:s3cret@localhost");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let shown = error(&config);
        assert!(
            shown.starts_with("ca_file: applies with TLS only")
                && shown.contains("skor:<redacted>@")
                && !shown.contains("s3cret"),
            "{shown}"
        );
        config.tls = true;
        assert_eq!(
            error(&config),
            "ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        config.ca_file = None;
        config.client_key = Some("/nonexistent/key.pem".into());
        assert!(error(&config).starts_with("client_cert: client_key is set"));
        config.client_key = None;
        config.url = skor_sink_kit::Redacted::new("mqtts://localhost".into());
        config.tls = false;
        assert!(
            MqttSink::new(&config).is_ok(),
            "mqtts:// alone uses the system roots"
        );
    }
}
