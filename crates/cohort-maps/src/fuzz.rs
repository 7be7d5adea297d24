//! The entry point shared by the cargo-fuzz target `map_message` in `fuzz/` and by the
//! corpus-replay test: the same code runs under libFuzzer and under `cargo test`.

use cohort_wire::MemberId;

use crate::config::MapConfig;
use crate::core::{Kind, MapCore};
use crate::msg::Msg;

/// Decodes `data` as a map message; a message that decodes must encode back to itself, and
/// both kinds of core must take it from a member (known or not) without panicking.
pub fn map_message(data: &[u8]) {
    let Ok(msg) = Msg::decode(data) else {
        return;
    };
    assert_eq!(Msg::decode(&msg.encode()).as_ref(), Ok(&msg), "round trip");
    let now = 1_700_000_000_000;
    for kind in [Kind::Replicated, Kind::Lazy] {
        let local = MemberId::from_bytes([1; 16]);
        let peer = MemberId::from_bytes([2; 16]);
        let mut core = MapCore::new(MapConfig::default(), kind, local, 7);
        core.handle_member_up(now, peer);
        let _ = core.put(
            now,
            bytes::Bytes::from_static(b"k"),
            bytes::Bytes::from_static(b"v"),
        );
        let _ = core.handle_message(now, peer, msg.clone());
        let _ = core.handle_message(now, MemberId::from_bytes([3; 16]), msg.clone());
        core.handle_member_down(now, peer);
        core.handle_timeout(now + 3_600_000);
        while core.poll_transmit().is_some() {}
    }
}
