//! Helpers that skor's sinks share but that are not part of the contract:
//! templates over an event's routing fields, TLS files read at start-up,
//! secrets that never print, the bounds of common options, and reading an
//! error's causes (with the `http` feature, hyper's too).

mod bounds;
mod error_chain;
#[cfg(feature = "http")]
mod http_error;
mod redacted;
mod template;
mod tls_files;

pub use bounds::{delay_ms, MAX_DELAY_MS};
pub use error_chain::{describe, has_io_error};
#[cfg(feature = "http")]
pub use http_error::closed_before_answer;
pub use redacted::{redact_userinfo, Redacted};
pub use template::{Template, TemplateError};
pub use tls_files::{ClientIdentity, TlsFileError, TlsFileOptions, TlsFiles};
