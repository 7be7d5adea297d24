//! Entry points shared by the cargo-fuzz targets in `fuzz/` and by the corpus-replay test,
//! so that the same code runs under libFuzzer and under `cargo test`.

use bytes::BytesMut;

use crate::{BeaconCodec, ClusterKey, CohortCodec, FrameCodec, KeyRing, WireLimits};

fn codecs() -> [CohortCodec; 2] {
    let limits = WireLimits {
        max_frame_payload: 1 << 20,
        ..WireLimits::default()
    };
    let key = ClusterKey::new(*b"fuzzing cluster key").expect("key is long enough");
    let keys = KeyRing::new(vec![key]).expect("one key");
    [
        CohortCodec::new(limits, None).expect("valid limits"),
        CohortCodec::new(limits, Some(keys)).expect("valid limits"),
    ]
}

/// Writes the CRC32 a record of `len` bytes at the front of `data` would need into its last four
/// bytes, so that mutated inputs get past the checksum and reach the header parsers.
fn fix_crc(data: &mut [u8], len: usize) {
    if len >= 4 && len <= data.len() {
        let crc = crc32fast::hash(&data[..len - 4]);
        data[len - 4..len].copy_from_slice(&crc.to_be_bytes());
    }
}

/// The length a frame prefix at the front of `data` announces, if it has one.
fn frame_len(data: &[u8]) -> Option<usize> {
    let prefix = data.get(..crate::FRAME_PREFIX_LEN)?;
    let h = u32::from_be_bytes(prefix[8..12].try_into().ok()?) as usize;
    let p = u32::from_be_bytes(prefix[12..16].try_into().ok()?) as usize;
    let tag = if prefix[6] & crate::FLAG_AUTHENTICATED != 0 {
        crate::TAG_LEN
    } else {
        0
    };
    Some(crate::FRAME_PREFIX_LEN + h + p + tag + crate::CRC_LEN)
}

/// Feeds `data` to the stream decoder in chunks whose sizes come from the first byte, decoding
/// every frame it yields and re-encoding it, which must round-trip. Then does the same with the
/// first frame's CRC repaired.
pub fn frame_stream(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    frame_stream_chunked(chunk, data);
    if let Some(len) = frame_len(data) {
        let mut fixed = data.to_vec();
        fix_crc(&mut fixed, len);
        frame_stream_chunked(chunk, &fixed);
    }
}

fn frame_stream_chunked(chunk: u8, data: &[u8]) {
    let chunk = usize::from(chunk.max(1));
    frame_stream_sealed(chunk, data);
    for codec in codecs() {
        let mut buf = BytesMut::new();
        'feed: for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode_frame(&mut buf) {
                    Ok(Some(frame)) => {
                        let mut out = BytesMut::new();
                        codec
                            .encode_frame(&frame, &mut out)
                            .expect("a decoded frame re-encodes");
                        let again = codec.decode_frame(&mut out).expect("re-encoded decodes");
                        assert_eq!(again, Some(frame));
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
}

/// The stream decoder of a keyed connection after its hello: nothing may panic.
fn frame_stream_sealed(chunk: usize, data: &[u8]) {
    let [_, codec] = codecs();
    let key = ClusterKey::new(*b"fuzzing cluster key").expect("key is long enough");
    let session = crate::Session::new(&key, crate::Role::Acceptor, &[1; 16], &[2; 16]);
    let (_, mut opener) = session.split();
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode_frame_opened(&mut buf, &mut opener) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Decodes `data` as one beacon datagram, as it is and with its CRC repaired; a decoded beacon
/// must round-trip.
pub fn beacon(data: &[u8]) {
    beacon_once(data);
    let mut fixed = data.to_vec();
    fix_crc(&mut fixed, data.len());
    beacon_once(&fixed);
}

fn beacon_once(data: &[u8]) {
    for codec in codecs() {
        if let Ok(beacon) = codec.decode_beacon(data) {
            let mut out = BytesMut::new();
            codec
                .encode_beacon(&beacon, &mut out)
                .expect("a decoded beacon re-encodes");
            assert_eq!(codec.decode_beacon(&out), Ok(beacon));
        }
    }
}
