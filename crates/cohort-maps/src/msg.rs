//! The messages maps exchange, and their encoding.
//!
//! Each message travels as the body of an RPC envelope of the map's RPC id (`map/` and the map
//! name), so maps of different names on one channel never see each other's traffic. Body:
//! `"CM"`, a format version (1), then the message in postcard. Every decoded message is checked
//! against the structural limits below before the core sees it; anything else is counted and
//! dropped by the driver.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::version::Version;

const MAGIC: &[u8; 2] = b"CM";
const FORMAT: u8 = 1;

/// Anti-entropy buckets: keys are spread over this many digests.
pub const BUCKETS: usize = 256;

/// Most backups an entry can name on the wire.
pub const MAX_BACKUPS: usize = 16;

/// One entry as it travels: its key, version, placement and (when the receiver should hold it)
/// its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The encoded key.
    pub key: Bytes,
    /// The version of the value (or of the removal).
    pub version: Version,
    /// The version of the placement (primary and backups); equal to `version` until the entry
    /// moves. Entries compare by `(version, placed)`.
    pub placed: Version,
    /// A tombstone.
    pub removed: bool,
    /// Where the entry lives (lazy maps); the writer in replicated maps.
    pub primary: [u8; 16],
    /// Members holding a backup copy (lazy maps).
    pub backups: Vec<[u8; 16]>,
    /// The encoded value, when the receiver should hold it.
    pub value: Option<Bytes>,
}

impl Record {
    /// The size this record counts for in chunks and limits.
    pub fn weight(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Bytes::len) + 64 + 16 * self.backups.len()
    }

    /// The same record without its value (a proxy's view).
    pub fn without_value(&self) -> Self {
        Self {
            value: None,
            ..self.clone()
        }
    }
}

/// What maps say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// "I run this map" (a request: the answer is [`Msg::HelloAck`]).
    Hello,
    /// The answer to [`Msg::Hello`].
    HelloAck,
    /// "I stopped this map."
    Bye,
    /// New versions. With `sync`, a request answered by [`Msg::Applied`] once applied.
    Update {
        /// Whether the sender waits for [`Msg::Applied`].
        sync: bool,
        /// The records.
        records: Vec<Record>,
    },
    /// The answer to a synchronous update: `error` when a record was refused (a limit).
    Applied {
        /// Why a record was refused.
        error: Option<String>,
    },
    /// Asks for an entry's value (a lazy map's proxy, or a holder missing its copy).
    Fetch {
        /// The key.
        key: Bytes,
    },
    /// The answer to [`Msg::Fetch`]: the entry as the answering member has it.
    Fetched {
        /// The entry, with its value when held.
        record: Option<Record>,
    },
    /// Asks for the next chunk of the whole map, after `after` in key order.
    StateReq {
        /// The last key already received.
        after: Option<Bytes>,
        /// Largest chunk wanted, in bytes.
        max_bytes: u32,
    },
    /// One chunk of a state transfer.
    StateChunk {
        /// The entries.
        records: Vec<Record>,
        /// The key to continue after, or `None` when this was the last chunk.
        next: Option<Bytes>,
    },
    /// Anti-entropy: the sender's digest of every bucket.
    Digest {
        /// [`BUCKETS`] digests.
        buckets: Vec<u64>,
    },
    /// The answer to [`Msg::Digest`]: the answering member's entries in the buckets that
    /// differ, and the buckets it wants the sender's entries of.
    DigestReply {
        /// Entries of differing buckets.
        records: Vec<Record>,
        /// Buckets whose entries the answering member wants.
        want: Vec<u16>,
    },
}

/// Why a body is not a map message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a map message, or of an unknown format version.
    #[error("not a map message (bad magic or format version)")]
    Magic,
    /// The postcard body did not decode.
    #[error("malformed map message: {0}")]
    Body(String),
    /// It decoded but breaks a structural limit.
    #[error("map message breaks a limit: {0}")]
    Limit(&'static str),
}

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        // Serialising owned, plain data into a Vec cannot fail.
        postcard::to_io(self, &mut out).expect("postcard into a Vec");
        Bytes::from(out)
    }

    /// Decodes and checks a message.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() < 3 || &body[..2] != MAGIC || body[2] != FORMAT {
            return Err(DecodeError::Magic);
        }
        let msg: Msg =
            postcard::from_bytes(&body[3..]).map_err(|e| DecodeError::Body(e.to_string()))?;
        msg.check()?;
        Ok(msg)
    }

    fn check(&self) -> Result<(), DecodeError> {
        let records: &[Record] = match self {
            Msg::Update { records, .. }
            | Msg::StateChunk { records, .. }
            | Msg::DigestReply { records, .. } => records,
            Msg::Fetched { record: Some(r) } => std::slice::from_ref(r),
            Msg::Digest { buckets } if buckets.len() != BUCKETS => {
                return Err(DecodeError::Limit("a digest has 256 buckets"));
            }
            _ => &[],
        };
        if let Msg::DigestReply { want, .. } = self {
            if want.len() > BUCKETS || want.iter().any(|b| usize::from(*b) >= BUCKETS) {
                return Err(DecodeError::Limit("wanted buckets are below 256"));
            }
        }
        for r in records {
            if r.backups.len() > MAX_BACKUPS {
                return Err(DecodeError::Limit("at most 16 backups"));
            }
            if r.removed && r.value.is_some() {
                return Err(DecodeError::Limit("a tombstone carries no value"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        (
            proptest::collection::vec(any::<u8>(), 0..20),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            0usize..3,
        )
            .prop_map(|(key, hlc, node, removed, value, nb)| Record {
                key: key.into(),
                version: Version { hlc, node },
                placed: Version { hlc, node },
                removed,
                primary: node,
                backups: vec![node; nb],
                value: if removed {
                    None
                } else {
                    value.map(Bytes::from)
                },
            })
    }

    proptest! {
        #[test]
        fn messages_round_trip(records in proptest::collection::vec(record(), 0..5), sync: bool) {
            for msg in [
                Msg::Update { sync, records: records.clone() },
                Msg::StateChunk { records: records.clone(), next: Some(Bytes::from_static(b"k")) },
                Msg::DigestReply { records, want: vec![0, 255] },
            ] {
                prop_assert_eq!(Msg::decode(&msg.encode()).unwrap(), msg);
            }
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut framed = b"CM\x01".to_vec();
            framed.extend_from_slice(&body);
            let _ = Msg::decode(&framed);
            let _ = Msg::decode(&body);
        }
    }

    #[test]
    fn limits_are_checked_after_decoding() {
        let short = Msg::Digest {
            buckets: vec![0; 3],
        }
        .encode();
        assert_eq!(
            Msg::decode(&short),
            Err(DecodeError::Limit("a digest has 256 buckets"))
        );
        let want = Msg::DigestReply {
            records: vec![],
            want: vec![256],
        }
        .encode();
        assert!(matches!(Msg::decode(&want), Err(DecodeError::Limit(_))));
        assert_eq!(Msg::decode(b"XX\x01"), Err(DecodeError::Magic));
        let huge_len = [b'C', b'M', 1, 3, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(Msg::decode(&huge_len), Err(DecodeError::Body(_))));
    }
}
