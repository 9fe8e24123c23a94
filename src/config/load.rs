//! Reading the config file: interpolation, deserialisation, validation, and
//! turning each failure into an error that names the file, line and key.

use std::path::Path;

use toml_edit::{ImDocument, Item};

use super::env::{interpolate, join_path};
use super::validate::Invalid;
use super::{Config, ConfigError};

impl Config {
    /// Reads, interpolates and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            position: None,
            key: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses config text; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with_env(text, file, &|name| std::env::var(name).ok())
    }

    /// Parses config text, reading `${VAR}` through `lookup`.
    pub fn from_toml_with_env(
        text: &str,
        file: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = interpolate(text, file, lookup)?;
        let deserializer = toml::Deserializer::new(&text);
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let key = (path != ".").then_some(path);
                let inner = error.into_inner();
                ConfigError::at(
                    file,
                    &text,
                    inner.span(),
                    key,
                    inner.message().trim().to_string(),
                )
            })?;
        if let Some(window) = config.durable.deprecated_batch_size.take() {
            tracing::warn!(
                file,
                "durable.batch_size is now durable.claim_window (a sink's batch_size is events \
                 per request); the old name still works, rename it"
            );
            config.durable.claim_window = window;
        }
        config
            .parse_sinks()
            .and_then(|()| config.validate())
            .map_err(|invalid| locate(invalid, &text, file))?;
        Ok(config)
    }
}

/// Finds where in the file the key of a validation error stands.
fn locate(invalid: Invalid, text: &str, file: &str) -> ConfigError {
    let span = ImDocument::parse(text)
        .ok()
        .and_then(|doc| span_of(doc.as_item(), &invalid.path));
    ConfigError::at(
        file,
        text,
        span,
        Some(join_path(&invalid.path)),
        invalid.message,
    )
}

/// The span of the deepest item along `path` that has one.
fn span_of(item: &Item, path: &[String]) -> Option<std::ops::Range<usize>> {
    let Some((first, rest)) = path.split_first() else {
        return item.span();
    };
    let index = first
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<usize>().ok());
    let child = match index {
        Some(i) => item.get(i),
        None => item.get(first.as_str()),
    };
    child
        .and_then(|child| span_of(child, rest))
        .or_else(|| item.span())
}
