//! The PEM files a sink's TLS options name (`ca_file`, `client_cert`,
//! `client_key`), read and checked when the sink is built, so a wrong path
//! or file stops skor at start-up with the key and the file named.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS file option cannot be used; never quotes a file's content.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsFileError {
    /// The config key at fault.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

/// A sink's TLS file options, as configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFileOptions<'a> {
    /// PEM CA certificates to trust besides the default roots.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate (chain), for mutual TLS.
    pub client_cert: Option<&'a Path>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<&'a Path>,
}

/// The checked PEM contents of the options that were set.
#[derive(Debug, Default)]
pub struct TlsFiles {
    /// The CA certificates, one or more.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and its key.
    pub identity: Option<ClientIdentity>,
}

/// A client certificate chain and its private key, both PEM.
pub struct ClientIdentity {
    /// The certificate, then any intermediates.
    pub cert: Vec<u8>,
    /// The unencrypted private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<redacted>)")
    }
}

impl TlsFileOptions<'_> {
    /// Whether any option is set.
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The key of the first option set, in the order the options are
    /// documented.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            ("ca_file", self.ca_file),
            ("client_cert", self.client_cert),
            ("client_key", self.client_key),
        ]
        .into_iter()
        .find_map(|(key, path)| path.map(|_| key))
    }

    /// Refuses the options when the connection will not use TLS, naming
    /// the first one set; `why` is the sink's own wording (which URL
    /// schemes or option turn TLS on), called only to refuse.
    pub fn require_tls(&self, tls: bool, why: impl FnOnce() -> String) -> Result<(), TlsFileError> {
        match self.first_set() {
            Some(key) if !tls => Err(error(key, why())),
            _ => Ok(()),
        }
    }

    /// Reads every file that is set and checks that it holds what it
    /// should: certificates, or a private key, in PEM.
    pub fn read(&self) -> Result<TlsFiles, TlsFileError> {
        let ca = self
            .ca_file
            .map(|path| read_certificates("ca_file", path))
            .transpose()?;
        let identity = match (self.client_cert, self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: read_certificates("client_cert", cert)?,
                key: read_key("client_key", key)?,
            }),
            (Some(_), None) => {
                return Err(error(
                    "client_key",
                    "client_cert is set, so client_key must be too",
                ))
            }
            (None, Some(_)) => {
                return Err(error(
                    "client_cert",
                    "client_key is set, so client_cert must be too",
                ))
            }
        };
        Ok(TlsFiles { ca, identity })
    }
}

fn error(key: &'static str, message: impl Into<String>) -> TlsFileError {
    TlsFileError {
        key,
        message: message.into(),
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| error(key, format!("cannot read {}: {e}", path.display())))
}

fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, format!("{}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(error(
            key,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

fn read_key(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(key, path)?;
    // The error names the file, never its content.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        error(
            key,
            format!(
                "{}: holds no unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1)",
                path.display()
            ),
        )
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn files_must_exist_hold_pem_and_come_in_pairs() {
        let missing = TlsFileOptions {
            ca_file: Some(Path::new("/nonexistent/ca.pem")),
            ..TlsFileOptions::default()
        };
        assert_eq!(
            missing.read().unwrap_err().to_string(),
            "ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let not_pem = file("not a certificate, and not a key");
        let shown = not_pem.path().display().to_string();
        let wrong = TlsFileOptions {
            ca_file: Some(not_pem.path()),
            ..TlsFileOptions::default()
        };
        assert_eq!(
            wrong.read().unwrap_err().to_string(),
            format!("ca_file: {shown}: holds no PEM certificate")
        );
        let half = TlsFileOptions {
            client_cert: Some(not_pem.path()),
            ..TlsFileOptions::default()
        };
        assert_eq!(half.read().unwrap_err().key, "client_key");
        let half = TlsFileOptions {
            client_key: Some(not_pem.path()),
            ..TlsFileOptions::default()
        };
        assert_eq!(half.read().unwrap_err().key, "client_cert");
        assert!(TlsFileOptions::default().read().unwrap().ca.is_none());
        assert_eq!(half.first_set(), Some("client_key"));
        assert_eq!(
            half.require_tls(false, || "needs TLS".into())
                .unwrap_err()
                .to_string(),
            "client_key: needs TLS"
        );
        assert!(half.require_tls(true, || unreachable!()).is_ok());
        assert!(TlsFileOptions::default()
            .require_tls(false, || unreachable!())
            .is_ok());
        assert!(!TlsFileOptions::default().any());
    }
}
