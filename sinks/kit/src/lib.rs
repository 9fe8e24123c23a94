//! Helpers that skor's sinks share but that are not part of the contract:
//! templates over an event's routing fields, TLS files read at start-up,
//! secrets that never print, and the bounds of common options.

mod bounds;
mod redacted;
mod template;
mod tls_files;

pub use bounds::{delay_ms, MAX_DELAY_MS};
pub use redacted::Redacted;
pub use template::{Template, TemplateError};
pub use tls_files::{ClientIdentity, TlsFileError, TlsFileOptions, TlsFiles};
