//! How a sink type plugs into the daemon: its options check, describe and
//! build themselves, so the daemon knows no sink type by name except in
//! its one registry.

use std::any::Any;
use std::fmt;

use crate::Sink;

/// A problem with one option of a `[sink.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OptionError {
    /// The option's path inside the sink's table (`["url"]`,
    /// `["headers", "X-Token"]`); empty when the table as a whole is wrong.
    pub key: Vec<String>,
    /// What is wrong and what was expected; never quotes a secret.
    pub message: String,
}

impl OptionError {
    /// A problem with the option at `key`.
    pub fn new<K: AsRef<str>>(
        key: impl IntoIterator<Item = K>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into_iter().map(|k| k.as_ref().to_string()).collect(),
            message: message.into(),
        }
    }

    /// A problem with the sink's table as a whole.
    pub fn whole(message: impl Into<String>) -> Self {
        Self {
            key: Vec::new(),
            message: message.into(),
        }
    }
}

/// A sink type's own options, as deserialized from its `[sink.NAME]` table
/// (less `type` and the delivery keys every sink shares).
///
/// The daemon calls `check` when it loads the config (`skor check` too), so
/// every mistake is reported before anything connects; `outline` when it
/// logs what it will do; and `build` once, at start-up. `Any` lets code that
/// knows the type (tests, mostly) look at the options themselves.
pub trait SinkConfig: Any + fmt::Debug + Send + Sync {
    /// The value of `type` that selects this sink.
    fn type_name(&self) -> &'static str;

    /// Every problem with the options that can be found without connecting,
    /// each keyed by the option it concerns.
    fn check(&self) -> Vec<OptionError>;

    /// The sink, ready for the worker; called only when `check` found nothing.
    fn build(&self) -> Result<Box<dyn Sink>, OptionError>;

    /// Where the sink delivers, in a few words for a log line: passwords,
    /// tokens and signing secrets never appear.
    fn outline(&self) -> String;
}
