//! The DSN: libpq's key=value form or a `postgres://` URL, with libpq's
//! TLS settings `sslmode` and `sslrootcert` taken out of it, since
//! tokio-postgres knows only `sslmode=disable|prefer|require`.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

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
    pub(super) fn parse(value: &str) -> Result<Self, DsnError> {
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
pub struct DsnError(pub(super) String);

/// skor's TLS settings taken out of a DSN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
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

/// Removes skor's TLS settings from `dsn` into `tls` and returns the rest,
/// in the same form (key=value or URL), for tokio-postgres.
pub(super) fn strip_tls_settings(dsn: &str, tls: &mut TlsSettings) -> Result<String, DsnError> {
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
