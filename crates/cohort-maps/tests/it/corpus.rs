//! The committed cargo-fuzz corpus of `map_message`, replayed by `cargo test`; and mutated
//! valid messages through the same entry point.

use std::path::PathBuf;

use bytes::Bytes;
use cohort_maps::Version;
use cohort_maps::msg::{BUCKETS, Msg, Record};
use proptest::prelude::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/map_message")
}

fn seeds() -> Vec<Msg> {
    let v = Version {
        hlc: 1_700_000_000_000 << 16,
        node: [2; 16],
    };
    let rec = |removed: bool, value: Option<&'static [u8]>| Record {
        key: Bytes::from_static(b"k"),
        version: v,
        placed: v,
        removed,
        primary: [2; 16],
        backups: vec![[1; 16], [3; 16]],
        value: value.map(Bytes::from_static),
    };
    vec![
        Msg::Hello,
        Msg::HelloAck,
        Msg::Bye,
        Msg::Update {
            sync: true,
            records: vec![rec(false, Some(b"v")), rec(true, None)],
        },
        Msg::Applied {
            error: Some("full".into()),
        },
        Msg::Fetch {
            key: Bytes::from_static(b"k"),
        },
        Msg::Fetched {
            record: Some(rec(false, None)),
        },
        Msg::StateReq {
            after: Some(Bytes::from_static(b"a")),
            max_bytes: 1024,
        },
        Msg::StateChunk {
            records: vec![rec(false, Some(b"v"))],
            next: None,
        },
        Msg::Digest {
            buckets: vec![7; BUCKETS],
        },
        Msg::DigestReply {
            records: vec![rec(false, Some(b"v"))],
            want: vec![0, 3, 255],
        },
    ]
}

#[test]
fn map_message_corpus() {
    let seeds: Vec<Vec<u8>> = seeds().iter().map(|m| m.encode().to_vec()).collect();
    cohort_test_support::replay_corpus(&dir(), &seeds, cohort_maps::fuzz::map_message);
}

proptest! {
    #[test]
    fn mutated_messages_never_panic_the_decoder_or_the_cores(
        which in 0usize..11,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut data = seeds()[which].encode().to_vec();
        for (at, byte) in flips {
            let n = data.len();
            data[at % n] ^= byte;
        }
        let keep = 3 + cut % data.len().max(1);
        data.truncate(keep);
        cohort_maps::fuzz::map_message(&data);
    }
}
