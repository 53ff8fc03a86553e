//! Durations as people write them: `500ms`, `5s`, `2m`, `1h`, or plain
//! seconds (`2`, `0.5`). Used by the CLI and the host manifest.

use std::time::Duration;

/// A duration that could not be read; says what was wrong, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// No number where one was expected.
    #[error("{0:?} is not a duration (e.g. 500ms, 5s, 2m)")]
    NotANumber(String),
    /// A unit other than ms, s, m, h.
    #[error("{text:?}: unknown unit {unit:?} (ms, s, m, h)")]
    UnknownUnit {
        /// What was given.
        text: String,
        /// The unit in it.
        unit: String,
    },
    /// Negative, or too large to be a duration.
    #[error("{0:?} is not a valid duration")]
    OutOfRange(String),
}

/// Parses a duration.
///
/// ```
/// use std::time::Duration;
/// use muster_core::duration::{DurationError, parse};
/// assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
/// assert!(matches!(parse("5y"), Err(DurationError::UnknownUnit { .. })));
/// ```
///
/// # Errors
/// [`DurationError`], saying which part is wrong.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: s.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::OutOfRange(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("1m").unwrap(), Duration::from_secs(60));
        assert!(parse("x").is_err());
        assert!(parse("5y").is_err());
        let huge = "9".repeat(400);
        assert_eq!(parse(&huge), Err(DurationError::OutOfRange(huge.clone())));
        assert!(matches!(parse("-1"), Err(DurationError::NotANumber(_))));
    }
}
