//! Bounds that options of several sink types share.

use skor_sink_api::OptionError;

/// The longest delay or timeout an option accepts: a day. More is a typo (a
/// value in microseconds, an extra zero) that would stall a sink silently.
pub const MAX_DELAY_MS: u64 = 86_400_000;

/// Checks a milliseconds option that must be positive and at most a day.
pub fn delay_ms(key: &str, value: u64) -> Result<(), OptionError> {
    if value == 0 || value > MAX_DELAY_MS {
        return Err(OptionError::new(
            [key],
            format!("expected 1 to {MAX_DELAY_MS} ms (a day), got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_more_than_a_day_are_refused_with_their_key() {
        assert!(delay_ms("timeout_ms", 1).is_ok());
        assert!(delay_ms("timeout_ms", MAX_DELAY_MS).is_ok());
        let error = delay_ms("timeout_ms", 0).unwrap_err();
        assert_eq!(error.key, ["timeout_ms"]);
        assert_eq!(error.message, "expected 1 to 86400000 ms (a day), got 0");
        assert!(delay_ms("timeout_ms", MAX_DELAY_MS + 1).is_err());
    }
}
