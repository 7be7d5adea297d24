//! `Compression`: gzip (RFC 1952, via flate2) or zstd payloads above `min_size`.
//!
//! A compressed message carries extension [`tags::COMPRESSION`] (algorithm byte, original
//! length as 8 bytes) and has `option_flag` (default 0x100, Tribes' gzip bit) set; the
//! receiver undoes both. A payload is sent compressed only when that makes it smaller.
//! Decompression is bounded: a message claiming more than `max_decompressed_bytes`, or
//! inflating past its claimed length (a zip bomb), is dropped and counted (FAIL_ACK if asked).

use crate::ConfigError;
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use cohort_channel::{Cx, Inbound, Interceptor, Outbound, SendOptions, TagKind, tags};
use cohort_wire::Extension;

use crate::util::{Counter, bad, be_u64, check_flag, take_ext};

/// The algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Algorithm {
    /// gzip, as Tribes' `GzipInterceptor`. The default.
    #[default]
    Gzip,
    /// Zstandard: faster, and smaller output at similar levels.
    Zstd,
}

impl Algorithm {
    fn code(self) -> u8 {
        match self {
            Self::Gzip => 1,
            Self::Zstd => 2,
        }
    }
}

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct CompressionConfig {
    /// Algorithm for sending (either is decoded on receipt). Default gzip.
    pub algorithm: Algorithm,
    /// Level: gzip 0-9 (default 6), zstd 1-19 (default 3). `None` = the algorithm's default.
    pub level: Option<i32>,
    /// Payloads of at most this many bytes are sent as they are. Default 0 (Tribes'
    /// `compressionMinSize`).
    pub min_size: usize,
    /// The option bit marking compressed messages. Default 0x100 (Tribes').
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::util::bits::deserialize")
    )]
    pub option_flag: SendOptions,
    /// Largest payload accepted after decompression. Default 32 MiB.
    pub max_decompressed_bytes: usize,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Gzip,
            level: None,
            min_size: 0,
            option_flag: SendOptions::from_bits(0x100),
            max_decompressed_bytes: 32 * 1024 * 1024,
        }
    }
}

impl CompressionConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_flag("option_flag", self.option_flag)?;
        match (self.algorithm, self.level) {
            (Algorithm::Gzip, Some(l)) if !(0..=9).contains(&l) => {
                return bad("level", "gzip levels are 0 to 9");
            }
            (Algorithm::Zstd, Some(l)) if !(1..=19).contains(&l) => {
                return bad("level", "zstd levels are 1 to 19");
            }
            _ => {}
        }
        if self.max_decompressed_bytes == 0 {
            return bad("max_decompressed_bytes", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct CompressionStats {
    compressed: Counter,
    skipped: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    decompressed: Counter,
    rejected: Counter,
}

impl CompressionStats {
    /// Messages sent compressed.
    pub fn compressed(&self) -> u64 {
        self.compressed.get()
    }
    /// Messages sent as they were (small, or not smaller compressed).
    pub fn skipped(&self) -> u64 {
        self.skipped.get()
    }
    /// Payload bytes before compression (compressed messages).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.get()
    }
    /// Payload bytes after compression.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.get()
    }
    /// Messages decompressed on receipt.
    pub fn decompressed(&self) -> u64 {
        self.decompressed.get()
    }
    /// Received messages that did not decompress within the bounds (dropped).
    pub fn rejected(&self) -> u64 {
        self.rejected.get()
    }
}

/// The interceptor. See the module docs.
pub struct Compression {
    cfg: CompressionConfig,
    stats: Arc<CompressionStats>,
}

impl Compression {
    /// A compressor with `cfg`.
    pub fn new(cfg: CompressionConfig) -> Self {
        Self {
            cfg,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<CompressionStats> {
        self.stats.clone()
    }

    fn compress(&self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self.cfg.algorithm {
            Algorithm::Gzip => {
                #[allow(clippy::cast_sign_loss)]
                let level = flate2::Compression::new(self.cfg.level.unwrap_or(6) as u32);
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), level);
                enc.write_all(data)?;
                enc.finish()
            }
            Algorithm::Zstd => zstd::bulk::compress(data, self.cfg.level.unwrap_or(3)),
        }
    }
}

/// Decompresses `data` of algorithm `code`, expecting exactly `len` bytes.
fn decompress(code: u8, data: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let out = match code {
        1 => {
            let mut out = Vec::with_capacity(len);
            let dec = flate2::read::GzDecoder::new(data);
            // One byte more than promised reveals a lie without inflating it all.
            dec.take(len as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip: {e}"))?;
            out
        }
        2 => zstd::bulk::decompress(data, len).map_err(|e| format!("zstd: {e}"))?,
        other => return Err(format!("unknown algorithm {other}")),
    };
    if out.len() != len {
        return Err(format!("inflated to {} bytes, promised {len}", out.len()));
    }
    Ok(out)
}

impl Interceptor for Compression {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::COMPRESSION, TagKind::Transform)]
    }

    fn must_be_above(&self) -> &'static [(&'static str, &'static str)] {
        &[("encryption", "encrypted bytes do not compress")]
    }

    fn on_send(&mut self, mut msg: Outbound, cx: &mut Cx<'_>) {
        let len = msg.payload.len();
        if len <= self.cfg.min_size || len == 0 {
            self.stats.skipped.inc();
            cx.send_down(msg);
            return;
        }
        match self.compress(&msg.payload) {
            Ok(small) if small.len() < len => {
                self.stats.compressed.inc();
                self.stats.bytes_in.add(len as u64);
                self.stats.bytes_out.add(small.len() as u64);
                let mut v = BytesMut::with_capacity(9);
                v.put_u8(self.cfg.algorithm.code());
                v.put_u64(len as u64);
                msg.extensions.push(Extension {
                    tag: tags::COMPRESSION,
                    value: v.freeze(),
                });
                msg.options = msg.options.union(self.cfg.option_flag);
                msg.payload = Bytes::from(small);
            }
            Ok(_) => self.stats.skipped.inc(),
            Err(e) => {
                self.stats.skipped.inc();
                tracing::warn!(error = %e, "compression failed; sent uncompressed");
            }
        }
        cx.send_down(msg);
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let Some(v) = take_ext(&mut msg.extensions, tags::COMPRESSION) else {
            cx.deliver_up(msg);
            return;
        };
        let result = match (v.first(), be_u64(&v, 1), v.len()) {
            (Some(&code), Some(len), 9) if len <= self.cfg.max_decompressed_bytes as u64 =>
            {
                #[allow(clippy::cast_possible_truncation)]
                decompress(code, &msg.payload, len as usize)
            }
            (_, Some(len), 9) => Err(format!("claims {len} bytes, above max_decompressed_bytes")),
            _ => Err("malformed compression extension".into()),
        };
        match result {
            Ok(data) => {
                self.stats.decompressed.inc();
                msg.payload = Bytes::from(data);
                msg.options = msg.options.difference(self.cfg.option_flag);
                cx.deliver_up(msg);
            }
            Err(why) => {
                self.stats.rejected.inc();
                tracing::warn!(msg_id = msg.msg_id, error = %why, "message does not decompress; dropped");
                if let Some(a) = msg.ack.take() {
                    a.fail(format!("decompression failed: {why}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::time::Instant;

    #[test]
    fn both_algorithms_round_trip_and_mark_the_option() {
        for algorithm in [Algorithm::Gzip, Algorithm::Zstd] {
            let cfg = CompressionConfig {
                algorithm,
                min_size: 16,
                ..Default::default()
            };
            let c = Compression::new(cfg.clone());
            let stats = c.stats();
            let mut tx = pipeline(vec![Box::new(c)], 1);
            let mut rx = pipeline(vec![Box::new(Compression::new(cfg))], 2);
            let now = Instant::now();
            let text = b"cohort cohort cohort cohort cohort cohort cohort cohort".repeat(20);
            tx.send(now, outbound(1, &[member(2)], SendOptions::USE_ACK, &text));
            let sent = drain(&mut tx).sent;
            assert!(sent[0].payload.len() < text.len() / 4);
            assert!(sent[0].options.contains(SendOptions::from_bits(0x100)));
            rx.receive(now, arrive(&sent[0], &member(1)));
            let got = drain(&mut rx).delivered;
            assert_eq!(&got[0].payload[..], &text[..]);
            assert_eq!(got[0].options, SendOptions::USE_ACK);
            // Small: untouched.
            let got = through(
                &mut tx,
                &mut rx,
                &member(1),
                now,
                outbound(2, &[member(2)], SendOptions::NONE, b"tiny"),
            );
            assert_eq!(&got[0].payload[..], b"tiny");
            assert_eq!((stats.compressed(), stats.skipped()), (1, 1));
        }
    }

    #[test]
    fn bombs_and_lies_are_rejected() {
        let c = Compression::new(CompressionConfig {
            max_decompressed_bytes: 1000,
            ..Default::default()
        });
        let stats = c.stats();
        let mut rx = pipeline(vec![Box::new(c)], 2);
        let now = Instant::now();
        let bomb = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(&vec![0u8; 1 << 20]).unwrap();
            e.finish().unwrap()
        };
        for (claimed, payload) in [
            (100u64, bomb.clone()),
            (1 << 20, bomb),
            (10, b"not gzip".to_vec()),
        ] {
            let mut m = outbound(1, &[member(2)], SendOptions::NONE, &payload);
            let mut v = BytesMut::new();
            v.put_u8(1);
            v.put_u64(claimed);
            m.extensions.push(Extension {
                tag: tags::COMPRESSION,
                value: v.freeze(),
            });
            rx.receive(now, arrive(&m, &member(1)));
        }
        assert!(drain(&mut rx).delivered.is_empty());
        assert_eq!(stats.rejected(), 3);
    }
}
