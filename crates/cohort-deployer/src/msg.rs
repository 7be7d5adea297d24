//! What deployers say to each other (the body of RPC envelopes of the id `deploy`), in
//! postcard after `"CD"` and a format version. Decoded messages are checked before use.

use bytes::Bytes;
use cohort_maps::Version;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 2] = b"CD";
const FORMAT: u8 = 1;

/// One file as manifests list it: a deployed file, or an undeployed one (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The file's name in the deploy directory (validated: one plain path component).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
    /// Which deploy of this name it is: the highest version wins on every member.
    pub version: Version,
    /// Undeployed.
    pub removed: bool,
    /// Bytes per chunk of its transfer.
    pub chunk_size: u32,
}

impl FileMeta {
    /// Chunks of the file (one, empty, for an empty file).
    pub fn chunks(&self) -> u32 {
        let cs = u64::from(self.chunk_size.max(1));
        u32::try_from(self.size.div_ceil(cs).max(1)).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `index`.
    pub fn range(&self, index: u32) -> (u64, usize) {
        let start = u64::from(index) * u64::from(self.chunk_size);
        let len = self
            .size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size));
        (start, usize::try_from(len).unwrap_or(0))
    }
}

/// A deployer message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Everything the sender has and has undeployed (a request: the answer is its own).
    Manifest {
        /// The files.
        files: Vec<FileMeta>,
        /// Whether the receiver should answer with its own.
        ask: bool,
    },
    /// One file was deployed or undeployed.
    Announce {
        /// It.
        file: FileMeta,
    },
    /// Asks for one chunk of one version of a file.
    ChunkReq {
        /// The file.
        name: String,
        /// Its version.
        version: Version,
        /// The chunk.
        index: u32,
    },
    /// A chunk, with the CRC32 of its bytes.
    Chunk {
        /// The file.
        name: String,
        /// Its version.
        version: Version,
        /// The chunk.
        index: u32,
        /// CRC32 of `data`.
        crc: u32,
        /// The bytes.
        data: Bytes,
    },
    /// The chunk is not available here (another version, or a read error).
    NoChunk {
        /// Why.
        reason: String,
    },
}

/// Why a body is not a deployer message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not one, or of another format version.
    #[error("not a deployer message")]
    Magic,
    /// Did not decode.
    #[error("malformed deployer message: {0}")]
    Body(String),
    /// Decoded but breaks a limit (a name, a chunk size).
    #[error("deployer message breaks a limit: {0}")]
    Limit(&'static str),
}

impl Msg {
    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
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
        let files: &[FileMeta] = match &msg {
            Msg::Manifest { files, .. } => files,
            Msg::Announce { file } => std::slice::from_ref(file),
            _ => &[],
        };
        for f in files {
            if crate::fsio::check_name(&f.name).is_err() {
                return Err(DecodeError::Limit(
                    "a file name is one plain path component",
                ));
            }
            if !(4096..=(16 << 20)).contains(&f.chunk_size) {
                return Err(DecodeError::Limit("chunk size is 4 KiB to 16 MiB"));
            }
        }
        Ok(msg)
    }
}
