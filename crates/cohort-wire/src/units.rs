//! Durations and sizes written with units, as the node's flags and TOML accept them:
//! `500ms`, `3s`, `2m`, `1h`, `1d`; `512`, `64KiB`, `10MB`, `1GiB`.

use std::time::Duration;

/// Splits `12abc` into (12, "abc"), trimming spaces around both.
fn split(text: &str) -> Result<(u64, &str), String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return Err(format!("{text:?}: expected a number followed by a unit"));
    }
    let n = text[..digits]
        .parse::<u64>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    Ok((n, text[digits..].trim()))
}

/// A duration: an integer and a unit (`ns`, `us`, `ms`, `s`, `m` or `min`, `h`, `d`).
///
/// ```
/// use std::time::Duration;
/// use cohort_wire::units::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
/// assert!(parse_duration("3").is_err(), "a unit is required");
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = split(text)?;
    let scale: u64 = match unit {
        "ns" => return Ok(Duration::from_nanos(n)),
        "us" | "µs" => return Ok(Duration::from_micros(n)),
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => {
            return Err(format!(
                "{text:?}: a duration needs a unit (ms, s, m, h, d)"
            ));
        }
        other => return Err(format!("{text:?}: unknown duration unit {other:?}")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A size in bytes: an integer, optionally with a unit (`B`, `KB` = 1000, `KiB` = 1024, `MB`,
/// `MiB`, `GB`, `GiB`).
///
/// ```
/// use cohort_wire::units::parse_size;
/// assert_eq!(parse_size("64KiB"), Ok(65_536));
/// assert_eq!(parse_size("10MB"), Ok(10_000_000));
/// assert_eq!(parse_size("512"), Ok(512));
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = split(text)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown size unit {other:?}")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}
