//! The committed cargo-fuzz corpus of `deploy_message`, replayed by `cargo test`, and mutated
//! valid messages through the same entry point.

use std::path::PathBuf;

use bytes::Bytes;
use cohort_deployer::FileMeta;
use cohort_deployer::msg::Msg;
use cohort_maps::Version;
use proptest::prelude::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/deploy_message")
}

fn seeds() -> Vec<Msg> {
    let version = Version {
        hlc: 1_700_000_000_000 << 16,
        node: [2; 16],
    };
    let file = FileMeta {
        name: "app.bin".into(),
        size: 10_000,
        sha256: [9; 32],
        version,
        removed: false,
        chunk_size: 4096,
    };
    vec![
        Msg::Manifest {
            files: vec![file.clone()],
            ask: true,
        },
        Msg::Announce {
            file: FileMeta {
                removed: true,
                ..file.clone()
            },
        },
        Msg::Announce { file },
        Msg::ChunkReq {
            name: "app.bin".into(),
            version,
            index: 1,
        },
        Msg::Chunk {
            name: "app.bin".into(),
            version,
            index: 1,
            crc: 0,
            data: Bytes::from_static(b"data"),
        },
        Msg::NoChunk {
            reason: "gone".into(),
        },
    ]
}

#[test]
fn deploy_message_corpus() {
    let seeds: Vec<Vec<u8>> = seeds().iter().map(|m| m.encode().to_vec()).collect();
    cohort_test_support::replay_corpus(&dir(), &seeds, cohort_deployer::fuzz::deploy_message);
}

proptest! {
    #[test]
    fn mutated_messages_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut data = seeds()[which].encode().to_vec();
        for (at, byte) in flips {
            let n = data.len();
            data[at % n] ^= byte;
        }
        cohort_deployer::fuzz::deploy_message(&data);
    }
}
