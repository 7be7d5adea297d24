//! Replays the committed cargo-fuzz corpus (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzz targets call, so that every saved input, including any crash reproducer a
//! fuzzing run adds, is checked by plain `cargo test`.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        run(&data);
        count += 1;
    }
    assert!(count > 0, "no corpus inputs in {}", dir.display());
}

#[test]
fn frame_stream_corpus() {
    replay("frame_stream", cohort_wire::fuzz::frame_stream);
}

#[test]
fn beacon_corpus() {
    replay("beacon", cohort_wire::fuzz::beacon);
}
