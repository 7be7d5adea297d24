//! `serde` helpers for durations written as integer milliseconds, as the node's TOML writes
//! them (`frequency = 500`). Used with `#[serde(with = ...)]` by the config structs of every
//! crate (feature `serde`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A `Duration` from an integer number of milliseconds.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// An `Option<Duration>` from an integer number of milliseconds (absent: `None`).
pub fn option_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
}
