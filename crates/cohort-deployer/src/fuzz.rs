//! The entry point shared by the cargo-fuzz target `deploy_message` in `fuzz/` and by the
//! corpus-replay test.

use cohort_wire::MemberId;

use crate::config::DeployerConfig;
use crate::core::{DeployCore, Output};
use crate::msg::{FileMeta, Msg};

/// Decodes `data` as a deployer message; a message that decodes must encode back to itself,
/// and the core must take it (and a chunk of it, if it is one) without panicking.
pub fn deploy_message(data: &[u8]) {
    let Ok(msg) = Msg::decode(data) else {
        return;
    };
    assert_eq!(Msg::decode(&msg.encode()).as_ref(), Ok(&msg), "round trip");
    let now = 1_700_000_000_000;
    let peer = MemberId::from_bytes([2; 16]);
    let mut core = DeployCore::new(
        DeployerConfig::default(),
        MemberId::from_bytes([1; 16]),
        Vec::new(),
        3,
    );
    core.handle_member_up(peer);
    let _ = core.handle_message(now, peer, msg.clone());
    // Every transfer the message started: prepared, then fed the chunk if it is one.
    let mut files: Vec<FileMeta> = Vec::new();
    while let Some(out) = core.poll(now) {
        if let Output::Prepare(f) = out {
            files.push(f);
        }
    }
    for f in &files {
        core.handle_prepared(f, &[0, 1, u32::MAX]);
        if let Msg::Chunk {
            index, crc, data, ..
        } = &msg
        {
            core.handle_chunk(peer, f, *index, *crc, data.clone());
            core.handle_written(f, *index);
        }
        core.handle_chunk_failed(f, 0);
        core.handle_installed(f, Err("fuzz".into()));
    }
    core.handle_member_down(peer);
    core.handle_timeout(now + 3_600_000);
    while core.poll(now).is_some() {}
}
