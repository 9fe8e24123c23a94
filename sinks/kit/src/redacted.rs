//! A wrapper for secrets (passwords, auth headers) that cannot be printed,
//! and the password of a URL hidden for a log line.

use std::fmt;

/// A value whose `Debug` and `Display` never show it.
///
/// Config types that hold one do not implement `Serialize`, so a secret
/// read from the config reaches only the code that needs it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps a secret.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `scheme://user:secret@host/...` with the secret replaced; a URL without
/// `user:` before an `@` in its authority is returned as it is.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_userinfo, Redacted};

    #[test]
    fn a_url_shows_its_user_but_not_its_password() {
        assert_eq!(
            redact_userinfo("amqp://guest:s3cret@localhost:5672/%2f"),
            "amqp://guest:<redacted>@localhost:5672/%2f"
        );
        assert_eq!(
            redact_userinfo("mqtt://localhost/a@b"),
            "mqtt://localhost/a@b"
        );
        assert_eq!(redact_userinfo("mqtt://user@host"), "mqtt://user@host");
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Redacted::new("hunter2".to_string());
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }
}
