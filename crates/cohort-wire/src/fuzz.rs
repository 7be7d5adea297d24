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

/// Feeds `data` to the stream decoder in chunks whose sizes come from the first byte, decoding
/// every frame it yields and re-encoding it, which must round-trip.
pub fn frame_stream(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk.max(1));
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

/// Decodes `data` as one beacon datagram; a decoded beacon must round-trip.
pub fn beacon(data: &[u8]) {
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
