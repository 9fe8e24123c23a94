//! Log output: tracing to stderr (stdout carries events), as text or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `level` (a level or a full filter such
/// as `skor=debug`) wins over `RUST_LOG`; the default is `info`.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    let filter = match level {
        Some(level) => {
            EnvFilter::try_new(level).map_err(|e| format!("invalid log level `{level}`: {e}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// The level the original skor's numeric `log_level` (0 trace to 5 fatal)
/// stands for.
pub fn legacy_level(level: &str) -> Result<&'static str, String> {
    match level {
        "0" => Ok("trace"),
        "1" => Ok("debug"),
        "2" => Ok("info"),
        "3" => Ok("warn"),
        "4" | "5" => Ok("error"),
        other => Err(format!("log_level must be 0 to 5, got `{other}`")),
    }
}

/// At most `max` bytes of `text`, cut on a character boundary, for logs.
pub fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}... ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod truncate_tests {
    use super::truncate;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é... (6 bytes)");
    }
}
