use std::collections::BTreeMap;
use std::time::Duration;

use cohort_maps::{Change, MapConfig, MapError, Origin, ReplicatedMap, WriteMode};

use crate::support::*;

type Map = ReplicatedMap<String, u64>;

async fn maps(channels: &[cohort_channel::ChannelHandle], name: &str) -> Vec<Map> {
    let mut out = Vec::new();
    for c in channels {
        out.push(Map::builder(c, name).start().await.unwrap());
    }
    out
}

async fn snapshot(m: &Map) -> BTreeMap<String, u64> {
    m.entries().await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_removals_and_events_reach_every_member() {
    let ch = cluster(3).await;
    let m = maps(&ch, "basic").await;
    for map in &m {
        let n = map.members().await.unwrap().len();
        assert_eq!(n, 2, "every map sees the two others");
    }
    let mut events = m[2].events();
    m[0].put_with("a".into(), 1, WriteMode::SyncAck)
        .await
        .unwrap();
    // SYNC_ACK: applied on every member when put returns.
    for map in &m {
        assert_eq!(map.get(&"a".into()).await.unwrap(), Some(1));
    }
    let e = events.recv().await.unwrap();
    assert_eq!(
        (e.key.as_str(), e.change, e.origin, e.value),
        ("a", Change::Added, Origin::Remote, Some(1))
    );
    m[1].put_with("a".into(), 2, WriteMode::Ack).await.unwrap();
    assert!(
        m[1].remove_with(&"a".into(), WriteMode::SyncAck)
            .await
            .unwrap()
    );
    for map in &m {
        assert_eq!(map.get(&"a".into()).await.unwrap(), None);
    }
    assert!(!m[0].remove(&"never".into()).await.unwrap());
    // ASYNC writes arrive too.
    for i in 0..100u64 {
        m[i as usize % 3].put(format!("k{i}"), i).await.unwrap();
    }
    wait_until_equal(&m, 100).await;
    for c in &ch {
        c.stop().await;
    }
}

async fn wait_until_equal(m: &[Map], len: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let first = snapshot(&m[0]).await;
        let mut same = first.len() == len;
        for map in &m[1..] {
            same &= snapshot(map).await == first;
        }
        if same {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "maps never converged: {} entries on the first",
            first.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_converge_to_one_value() {
    let ch = cluster(3).await;
    let m = maps(&ch, "race").await;
    let mut tasks = Vec::new();
    for (i, map) in m.iter().enumerate() {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..200u64 {
                map.put("hot".into(), round * 10 + i as u64).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_until_equal(&m, 1).await;
    for c in &ch {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_receives_100_000_entries_while_writes_continue() {
    let ch = cluster(3).await;
    let config = MapConfig::default();
    let a = Map::builder(&ch[0], "big")
        .config(config.clone())
        .start()
        .await
        .unwrap();
    let b = Map::builder(&ch[1], "big")
        .config(config.clone())
        .start()
        .await
        .unwrap();
    const N: u64 = 100_000;
    for i in 0..N {
        a.put(format!("key-{i:06}"), i).await.unwrap();
    }
    wait_until_equal(&[a.clone(), b.clone()], N as usize).await;
    // Writers keep going on both old members while the third joins.
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, map)| {
            tokio::spawn(async move {
                for i in 0..2_000u64 {
                    // Overwrites across the whole key range, and new keys.
                    let key = if i % 2 == 0 {
                        format!("key-{:06}", (i * 37 + w as u64) % N)
                    } else {
                        format!("new-{w}-{i}")
                    };
                    map.put_with(key, 1_000_000 + i, WriteMode::Async)
                        .await
                        .unwrap();
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let c = Map::builder(&ch[2], "big")
        .config(config)
        .start()
        .await
        .unwrap();
    let took = started.elapsed();
    for w in writers {
        w.await.unwrap();
    }
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.transfers, 1);
    assert!(stats.transferred_entries >= N, "{stats:?}");
    eprintln!("state transfer of {N} entries took {took:?} (debug build)");
    wait_until_equal(&[a, b, c], N as usize + 2_000).await;
    for c in &ch {
        c.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_the_caller_and_a_full_member_is_named_to_a_sync_writer() {
    let ch = cluster(2).await;
    let small = MapConfig {
        max_entries: 2,
        ..MapConfig::default()
    };
    let a = Map::builder(&ch[0], "limits").start().await.unwrap();
    let b = Map::builder(&ch[1], "limits")
        .config(small)
        .start()
        .await
        .unwrap();
    b.put("b1".into(), 1).await.unwrap();
    b.put("b2".into(), 2).await.unwrap();
    let err = b.put("b3".into(), 3).await.unwrap_err();
    assert!(matches!(err, MapError::Refused(_)), "{err}");
    assert!(err.to_string().contains("max_entries"), "{err}");
    wait_for_len(&a, 2).await;
    let err = a
        .put_with("a1".into(), 1, WriteMode::SyncAck)
        .await
        .unwrap_err();
    let MapError::NotApplied { members, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(members[0].0, ch[1].local().id);
    assert!(members[0].1.contains("max_entries"), "{err}");
    assert_eq!(b.stats().await.unwrap().core.rejected, 1);
    // A value above max_value_bytes never leaves.
    let big: ReplicatedMap<String, Vec<u8>> = ReplicatedMap::builder(&ch[0], "big-values")
        .config(MapConfig {
            max_value_bytes: 100,
            ..MapConfig::default()
        })
        .start()
        .await
        .unwrap();
    let err = big.put("x".into(), vec![0; 200]).await.unwrap_err();
    assert!(err.to_string().contains("max_value_bytes"), "{err}");
    for c in &ch {
        c.stop().await;
    }
}

async fn wait_for_len(m: &Map, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.len().await.unwrap() != n {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maps_are_separate_by_name_and_a_member_without_the_map_is_not_a_member() {
    let ch = cluster(3).await;
    let a = Map::builder(&ch[0], "one").start().await.unwrap();
    let b = Map::builder(&ch[1], "one").start().await.unwrap();
    let other = Map::builder(&ch[2], "two").start().await.unwrap();
    assert_eq!(
        a.members().await.unwrap().len(),
        1,
        "ch[2] does not run `one`"
    );
    assert!(other.members().await.unwrap().is_empty());
    a.put_with("k".into(), 1, WriteMode::SyncAck).await.unwrap();
    assert_eq!(b.get(&"k".into()).await.unwrap(), Some(1));
    assert_eq!(other.get(&"k".into()).await.unwrap(), None);
    // A map stopped on one member leaves it at once for the others.
    b.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !a.members().await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "b never left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(b.get(&"k".into()).await, Err(MapError::Stopped)));
    for c in &ch {
        c.stop().await;
    }
}

struct Nothing;

impl cohort_channel::RpcHandler for Nothing {
    fn reply_request(&self, _: &cohort_wire::Member, _: &bytes::Bytes) -> Option<bytes::Bytes> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_a_maps_rpc_id_is_counted_and_dropped() {
    let ch = cluster(2).await;
    let a = Map::builder(&ch[0], "target").start().await.unwrap();
    // Another member speaks under the map's RPC id without running a map.
    let rogue = cohort_channel::RpcChannel::new(
        &ch[1],
        "map/target",
        std::sync::Arc::new(Nothing),
        cohort_wire::SendOptions::NONE,
    )
    .unwrap();
    let to = [ch[0].local().clone()];
    let bodies: [&[u8]; 5] = [
        b"",
        b"CM",
        b"CM\x01\xff\xff\xff\xff\xff",
        b"CM\x01\x03\x00\xff\xff\xff\xff\x0f",
        b"not a map message at all",
    ];
    for _ in 0..200 {
        for body in bodies {
            let call = rogue
                .call(
                    &to,
                    bytes::Bytes::from_static(body),
                    cohort_channel::CallOptions::default()
                        .mode(cohort_channel::ReplyMode::None)
                        .send_options(cohort_wire::SendOptions::ASYNCHRONOUS),
                )
                .await;
            call.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.stats().await.unwrap().malformed < 1000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            a.stats().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The map still works, and took nothing from the garbage.
    a.put_with("k".into(), 1, WriteMode::SyncAck).await.unwrap();
    assert_eq!(a.len().await.unwrap(), 1);
    for c in &ch {
        c.stop().await;
    }
}

/// Says it runs the map, then never serves its state.
struct Mute;

impl cohort_channel::RpcHandler for Mute {
    fn reply_request(
        &self,
        _: &cohort_wire::Member,
        request: &bytes::Bytes,
    ) -> Option<bytes::Bytes> {
        match cohort_maps::msg::Msg::decode(request) {
            Ok(cohort_maps::msg::Msg::Hello) => Some(cohort_maps::msg::Msg::HelloAck.encode()),
            _ => None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_transfer_that_never_completes_fails_start_with_a_clear_error() {
    let ch = cluster(2).await;
    let _mute = cohort_channel::RpcChannel::new(
        &ch[1],
        "map/stuck",
        std::sync::Arc::new(Mute),
        cohort_wire::SendOptions::NONE,
    )
    .unwrap();
    let config = MapConfig {
        rpc_timeout: Duration::from_millis(200),
        state_transfer_timeout: Duration::from_millis(1000),
        ..MapConfig::default()
    };
    let started = std::time::Instant::now();
    let Err(err) = Map::builder(&ch[0], "stuck").config(config).start().await else {
        panic!("started without the state")
    };
    assert!(matches!(err, MapError::StateTransfer { .. }), "{err}");
    assert!(err.to_string().contains("gave no chunk"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for c in &ch {
        c.stop().await;
    }
}
