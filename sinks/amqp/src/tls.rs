//! TLS for `amqps://`: extra CA certificates (`ca_file`) and a client
//! identity (`client_cert`, `client_key`), read from their PEM files when
//! the sink is built so a wrong path fails at start-up.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use skor_sink_kit::{TlsFileError, TlsFileOptions};

use crate::config::AmqpConfig;
use crate::sink::AmqpError;

impl From<TlsFileError> for AmqpError {
    fn from(error: TlsFileError) -> Self {
        AmqpError::Tls {
            key: error.key,
            message: error.message,
        }
    }
}

/// The TLS settings of `config`, its PEM files read and checked now so a
/// wrong path or file fails at start-up, naming the key and the file.
pub(crate) fn tls_config(config: &AmqpConfig) -> Result<OwnedTLSConfig, AmqpError> {
    let options = TlsFileOptions {
        ca_file: config.ca_file.as_deref(),
        client_cert: config.client_cert.as_deref(),
        client_key: config.client_key.as_deref(),
    };
    options.require_tls(config.url.expose().starts_with("amqps://"), || {
        format!(
            "applies to amqps:// URLs only, and the url is {}",
            config.redacted_url()
        )
    })?;
    let files = options.read()?;
    // lapin takes PEM text; the files were checked to hold PEM, which is ASCII.
    let text = |pem: Vec<u8>| String::from_utf8_lossy(&pem).into_owned();
    Ok(OwnedTLSConfig {
        cert_chain: files.ca.map(text),
        identity: files.identity.map(|identity| OwnedIdentity::PKCS8 {
            pem: identity.cert,
            key: identity.key,
        }),
    })
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

        config.url = skor_sink_kit::Redacted::new("amqps://guest:s3cret@localhost/%2f".into());
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
