//! What a map call can fail with.

use cohort_channel::ChannelError;
use cohort_wire::MemberId;

use crate::config::ConfigError;
use crate::core::Refused;

/// A value or key that would not encode or decode.
#[derive(Debug, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(pub String);

/// Why a map call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// A setting that cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The channel refused a send (stopped, too large, ...).
    #[error("channel: {0}")]
    Channel(#[from] ChannelError),
    /// A limit of this member's map refused the write (it was not applied anywhere).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The key or value did not encode, or a received one did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The write is applied here but these members did not confirm it (SYNC_ACK: not applied
    /// or refused; USE_ACK: not acknowledged), with the reason each gave or the timeout.
    #[error("map `{map}`: write not applied by {}", describe(members))]
    NotApplied {
        /// The map.
        map: String,
        /// Who, and why.
        members: Vec<(MemberId, String)>,
    },
    /// A lazy map's SYNC_ACK write is applied, but on fewer members than `backup_count` + 1
    /// (fewer run the map): it would not survive `backup_count` failures yet. The map adds
    /// copies when members join.
    #[error(
        "map `{map}`: write held by {copies} members, {wanted} wanted (too few members run the map)"
    )]
    TooFewCopies {
        /// The map.
        map: String,
        /// Members holding it.
        copies: usize,
        /// `backup_count` + 1.
        wanted: usize,
    },
    /// The state transfer at start did not complete.
    #[error("map `{map}`: state transfer failed: {reason}")]
    StateTransfer {
        /// The map.
        map: String,
        /// Why.
        reason: String,
    },
    /// A lazy map's entry is known here only as a proxy, and no holder gave its value (some
    /// member did not answer; when all answer without it, the read is `None` and the entry
    /// counts as lost).
    #[error("map `{map}`: entry unavailable: {reason}")]
    Unavailable {
        /// The map.
        map: String,
        /// Why.
        reason: String,
    },
    /// The map was stopped.
    #[error("the map is stopped")]
    Stopped,
}

fn describe(members: &[(MemberId, String)]) -> String {
    members
        .iter()
        .map(|(m, why)| format!("{} ({why})", m.short()))
        .collect::<Vec<_>>()
        .join(", ")
}
