//! `serde` helpers for the config structs of every crate (feature `serde`), as the node's TOML
//! writes values: a duration is an integer of milliseconds (`frequency = 500`) or a string with
//! a unit (`frequency = "500ms"`, `idle_timeout = "2m"`); a size is an integer of bytes or a
//! string with a unit (`rx_buf_size = "64KiB"`). See [`crate::units`].

use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// A `Duration` from integer milliseconds or a string with a unit.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::deserialize(d).map_err(|_| {
        D::Error::custom("expected milliseconds (an integer) or a duration such as \"500ms\"")
    })? {
        NumberOrText::Number(ms) => Ok(Duration::from_millis(ms)),
        NumberOrText::Text(t) => crate::units::parse_duration(&t).map_err(D::Error::custom),
    }
}

/// An `Option<Duration>` the same way (absent: `None`).
pub fn option_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// A size in bytes from an integer or a string with a unit, into any integer type.
pub fn size<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let n = match NumberOrText::deserialize(d)
        .map_err(|_| D::Error::custom("expected bytes (an integer) or a size such as \"64KiB\""))?
    {
        NumberOrText::Number(n) => n,
        NumberOrText::Text(t) => crate::units::parse_size(&t).map_err(D::Error::custom)?,
    };
    T::try_from(n).map_err(|_| D::Error::custom(format!("{n} bytes is out of range")))
}
