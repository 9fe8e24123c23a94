//! Reading an error through its chain of causes: one line for a log or a
//! `SinkError`, and whether an I/O error of some kind lies underneath.

use std::error::Error;
use std::io;

/// An error with its causes, on one line.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether the causes of `error` (not `error` itself) hold an I/O error of
/// one of `kinds`.
pub fn has_io_error(error: &(dyn Error + 'static), kinds: &[io::ErrorKind]) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        // An I/O error may wrap another (reqwest's connector wraps the TLS
        // stream's InvalidData in Other), and `source` skips the wrapped one.
        let mut io = cause.downcast_ref::<io::Error>();
        while let Some(inner) = io {
            if kinds.contains(&inner.kind()) {
                return true;
            }
            io = inner.get_ref().and_then(|e| e.downcast_ref::<io::Error>());
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose one cause is `cause`.
    #[derive(Debug)]
    struct Outer(io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("request failed")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_joined_and_wrapped_io_kinds_found() {
        let tls = io::Error::new(io::ErrorKind::InvalidData, "bad certificate");
        let error = Outer(io::Error::other(tls));
        assert_eq!(describe(&error), "request failed: bad certificate");
        assert!(has_io_error(&error, &[io::ErrorKind::InvalidData]));
        assert!(!has_io_error(&error, &[io::ErrorKind::ConnectionReset]));
        // The error itself is not one of its causes.
        let bare = io::Error::from(io::ErrorKind::InvalidData);
        assert!(!has_io_error(&bare, &[io::ErrorKind::InvalidData]));
    }
}
