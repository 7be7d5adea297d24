use std::time::Duration;

use cohort_maps::{LazyReplicatedMap, WriteMode};
use cohort_wire::MemberId;

use crate::support::*;

type Map = LazyReplicatedMap<String, String>;

async fn maps(channels: &[cohort_channel::ChannelHandle], name: &str) -> Vec<Map> {
    let mut out = Vec::new();
    for c in channels {
        out.push(Map::builder(c, name).start().await.unwrap());
    }
    out
}

/// How many of `maps` hold `key`'s value (not a proxy).
async fn holders(maps: &[Map], key: &str) -> usize {
    let mut n = 0;
    for m in maps {
        if m.entries().await.unwrap().iter().any(|(k, _)| k == key) {
            n += 1;
        }
    }
    n
}

async fn wait_holders(maps: &[Map], key: &str, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = holders(maps, key).await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: {n} holders, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_lives_on_two_members_and_a_proxy_read_moves_it() {
    let ch = cluster(4).await;
    let m = maps(&ch, "sessions").await;
    m[0].put_with("s1".into(), "cart".into(), WriteMode::SyncAck)
        .await
        .unwrap();
    // Primary and one backup hold it (SYNC_ACK: applied when the put returns); the other
    // two hold proxies (told after the holders applied it, without an ACK).
    assert_eq!(holders(&m, "s1").await, 2);
    for map in &m {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while map.len().await.unwrap() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a proxy counts as a known entry"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Find a proxy and read there: it fetches, and becomes the primary.
    let mut proxy = None;
    for (i, map) in m.iter().enumerate() {
        if map.entries().await.unwrap().is_empty() {
            proxy = Some(i);
        }
    }
    let p = proxy.expect("some member holds only a proxy");
    assert_eq!(
        m[p].get(&"s1".into()).await.unwrap().as_deref(),
        Some("cart")
    );
    assert!(m[p].entries().await.unwrap().iter().any(|(k, _)| k == "s1"));
    assert_eq!(m[p].stats().await.unwrap().core.promotions, 1);
    wait_holders(&m, "s1", 2).await;
    for c in &ch {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_restored_when_a_holder_leaves_and_sync_writes_survive_it() {
    let ch = cluster(4).await;
    let m = maps(&ch, "backup").await;
    for i in 0..200 {
        m[i % 4]
            .put_with(format!("k{i}"), format!("v{i}"), WriteMode::SyncAck)
            .await
            .unwrap();
    }
    // Member 0 leaves: every entry it held is restored to two copies among the three left.
    let gone: MemberId = ch[0].local().id;
    ch[0].stop().await;
    let rest = &m[1..];
    for i in (0..200).step_by(7) {
        wait_holders(rest, &format!("k{i}"), 2).await;
    }
    for i in 0..200 {
        let v = rest[i % 3].get(&format!("k{i}")).await.unwrap();
        assert_eq!(v, Some(format!("v{i}")), "k{i} lost after {gone} left");
    }
    for c in &ch[1..] {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_with_too_few_members_says_so_and_gains_a_copy_when_one_joins() {
    let ch = cluster(2).await;
    let alone = Map::builder(&ch[0], "grow").start().await.unwrap();
    let err = alone
        .put_with("k".into(), "v".into(), WriteMode::SyncAck)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            cohort_maps::MapError::TooFewCopies {
                copies: 1,
                wanted: 2,
                ..
            }
        ),
        "{err}"
    );
    // Applied here all the same, and copied once a second member runs the map.
    assert_eq!(alone.get(&"k".into()).await.unwrap().as_deref(), Some("v"));
    let second = Map::builder(&ch[1], "grow").start().await.unwrap();
    wait_holders(&[alone.clone(), second.clone()], "k", 2).await;
    alone
        .put_with("k2".into(), "v".into(), WriteMode::SyncAck)
        .await
        .unwrap();
    for c in &ch {
        c.stop().await;
    }
}

/// A proxy whose placement names a live member that lacks the value (the value went with
/// failures beyond `backup_count`, or its holder never got it): every read used to fail with
/// "unavailable" for ever. After its rounds, the read asks every member; when all answer and
/// none holds the value, the entry reads as absent and counts as `lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_no_member_holds_reads_as_absent_and_counts_as_lost_not_unavailable_for_ever() {
    use cohort_channel::{CallOptions, ReplyMode, RpcChannel, RpcHandler};
    use cohort_maps::msg::{Msg, Record};
    use cohort_maps::{Codec, Postcard, Version};

    struct Silent;
    impl RpcHandler for Silent {
        fn reply_request(&self, _: &cohort_wire::Member, _: &bytes::Bytes) -> Option<bytes::Bytes> {
            None
        }
    }
    let ch = cluster(3).await;
    // The map runs on the first two members; the third speaks its protocol by hand.
    let m = maps(&ch[..2], "lost").await;
    let forger = RpcChannel::new(
        &ch[2],
        "map/lost",
        std::sync::Arc::new(Silent),
        cohort_wire::SendOptions::default(),
    )
    .unwrap();
    let key = Postcard.encode(&"s1".to_string()).unwrap();
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let version = Version::new(now_ms << 16, ch[2].local().id);
    // "s1 lives on the second member, no backups": which it never got.
    let record = Record {
        key,
        version,
        placed: version,
        removed: false,
        primary: *ch[1].local().id.as_bytes(),
        backups: Vec::new(),
        value: None,
    };
    forger
        .call(
            &[ch[0].local().clone()],
            Msg::Update {
                sync: true,
                records: vec![record],
            }
            .encode(),
            CallOptions::default().mode(ReplyMode::All),
        )
        .await
        .unwrap();
    assert_eq!(m[0].len().await.unwrap(), 1, "a proxy for s1");
    assert_eq!(m[0].get(&"s1".into()).await.unwrap(), None);
    let stats = m[0].stats().await.unwrap();
    assert_eq!(stats.core.lost, 1);
    assert_eq!(m[0].len().await.unwrap(), 0, "the proxy is gone");
    // Writing it again works as for any new key.
    m[0].put_with("s1".into(), "fresh".into(), WriteMode::SyncAck)
        .await
        .unwrap();
    assert_eq!(
        m[1].get(&"s1".into()).await.unwrap().as_deref(),
        Some("fresh")
    );
    for c in &ch {
        c.stop().await;
    }
}
