use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn id(n: u8) -> MemberId {
    MemberId::from_bytes([n; 16])
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

const T0: u64 = 1_700_000_000_000;

type Dump = Vec<(Bytes, Version, bool, Option<Bytes>)>;

/// Cores wired through explicit message queues: the test decides what arrives when.
struct Net {
    cores: BTreeMap<MemberId, MapCore>,
    /// (from, to, message, is a request)
    pending: Vec<(MemberId, MemberId, Msg, bool)>,
    now: u64,
}

impl Net {
    fn new(n: u8, kind: Kind, cfg: &MapConfig) -> Self {
        let mut cores = BTreeMap::new();
        for i in 1..=n {
            cores.insert(id(i), MapCore::new(cfg.clone(), kind, id(i), u64::from(i)));
        }
        let all: Vec<MemberId> = cores.keys().copied().collect();
        for (me, core) in &mut cores {
            for m in &all {
                if m != me {
                    core.handle_member_up(T0, *m);
                }
            }
        }
        Self {
            cores,
            pending: Vec::new(),
            now: T0,
        }
    }

    fn core(&mut self, n: u8) -> &mut MapCore {
        self.cores.get_mut(&id(n)).unwrap()
    }

    fn send_write(&mut self, from: MemberId, w: Write, sync: bool) {
        for to in w.full {
            self.pending.push((
                from,
                to,
                Msg::Update {
                    sync,
                    records: vec![w.record.clone()],
                },
                sync,
            ));
        }
        for to in w.proxies {
            self.pending.push((
                from,
                to,
                Msg::Update {
                    sync: false,
                    records: vec![w.record.without_value()],
                },
                false,
            ));
        }
    }

    fn drain(&mut self, from: MemberId) {
        let core = self.cores.get_mut(&from).unwrap();
        let mut out = Vec::new();
        while let Some(t) = core.poll_transmit() {
            out.push(t);
        }
        for t in out {
            for to in t.to {
                self.pending.push((from, to, t.msg.clone(), t.request));
            }
        }
    }

    fn put(&mut self, n: u8, key: &str, value: &str) {
        self.now += 1;
        let now = self.now;
        let w = self.core(n).put(now, b(key), b(value)).unwrap();
        self.send_write(id(n), w, false);
    }

    fn remove(&mut self, n: u8, key: &str) {
        self.now += 1;
        let now = self.now;
        if let Some(w) = self.core(n).remove(now, b(key)) {
            self.send_write(id(n), w, false);
        }
    }

    /// Delivers pending message `i` (modulo the queue length).
    fn deliver(&mut self, i: usize) {
        if self.pending.is_empty() {
            return;
        }
        let (from, to, msg, request) = self.pending.remove(i % self.pending.len());
        let now = self.now;
        let Some(core) = self.cores.get_mut(&to) else {
            return; // crashed
        };
        let reply = core.handle_message(now, from, msg);
        if let (true, Some(r)) = (request, reply) {
            self.pending.push((to, from, r, false));
        }
        self.drain(to);
    }

    fn quiesce(&mut self) {
        let mut guard = 0;
        while !self.pending.is_empty() {
            self.deliver(0);
            guard += 1;
            assert!(guard < 1_000_000, "no quiescence");
        }
    }

    /// Every pair compares digests until nothing is left to send.
    fn anti_entropy(&mut self) {
        let ids: Vec<MemberId> = self.cores.keys().copied().collect();
        for _ in 0..4 {
            for a in &ids {
                for b in &ids {
                    if a != b {
                        self.cores.get_mut(a).unwrap().start_anti_entropy(Some(*b));
                        self.drain(*a);
                        self.quiesce();
                    }
                }
            }
        }
    }

    fn dumps(&self) -> Vec<Dump> {
        self.cores.values().map(MapCore::dump).collect()
    }

    fn crash(&mut self, n: u8) {
        self.cores.remove(&id(n));
        self.pending
            .retain(|(f, t, _, _)| *f != id(n) && *t != id(n));
        let now = self.now;
        let ids: Vec<MemberId> = self.cores.keys().copied().collect();
        for m in ids {
            self.cores
                .get_mut(&m)
                .unwrap()
                .handle_member_down(now, id(n));
            self.drain(m);
        }
    }
}

#[test]
fn concurrent_writes_resolve_the_same_way_everywhere() {
    let mut net = Net::new(3, Kind::Replicated, &MapConfig::default());
    net.put(1, "k", "from-1");
    net.put(2, "k", "from-2");
    net.put(3, "k", "from-3");
    // Deliver in reverse order of sending.
    while !net.pending.is_empty() {
        let last = net.pending.len() - 1;
        net.deliver(last);
    }
    let dumps = net.dumps();
    assert!(dumps.windows(2).all(|w| w[0] == w[1]), "{dumps:?}");
    // The latest clock wins (each put ticked the shared test clock).
    assert_eq!(dumps[0][0].3.as_deref(), Some(&b"from-3"[..]));
    assert!(net.core(1).stats().conflicts + net.core(2).stats().conflicts > 0);
}

#[test]
fn a_removal_wins_over_an_older_write_arriving_late() {
    let mut net = Net::new(2, Kind::Replicated, &MapConfig::default());
    net.put(1, "k", "v");
    let write = net.pending.remove(0);
    net.remove(1, "k");
    net.quiesce();
    // The old write arrives after the tombstone: it loses.
    net.pending.push(write);
    net.quiesce();
    let (lookup, _) = net.core(2).get(T0 + 10, b"k");
    assert_eq!(lookup, Lookup::Absent);
    assert_eq!(net.core(2).stats().tombstones, 1);
}

#[test]
fn tombstones_expire_after_their_horizon_and_the_oldest_go_first_when_full() {
    let cfg = MapConfig {
        tombstone_ttl: Duration::from_secs(10),
        max_tombstones: 2,
        ..MapConfig::default()
    };
    let mut core = MapCore::new(cfg, Kind::Replicated, id(1), 1);
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        core.put(T0 + i as u64, b(k), b("v")).unwrap();
    }
    for (i, k) in ["a", "b", "c"].iter().enumerate() {
        core.remove(T0 + 10 + i as u64, b(k)).unwrap();
    }
    let s = core.stats();
    assert_eq!((s.tombstones, s.tombstones_dropped), (2, 1));
    assert!(
        core.dump().iter().all(|(k, ..)| &k[..] != b"a"),
        "oldest dropped"
    );
    core.handle_timeout(T0 + 5_000);
    assert_eq!(core.stats().tombstones, 2, "within the horizon");
    core.handle_timeout(T0 + 10_013);
    assert_eq!(core.stats().tombstones, 0);
    assert!(core.dump().is_empty());
    // A removal older than the horizon arriving late deletes without a tombstone.
    core.put(T0 + 20_000, b("d"), b("v")).unwrap();
    let stale = Record {
        key: b("d"),
        version: Version::new((T0 + 20_001) << LOGICAL_BITS, id(2)),
        placed: Version::new((T0 + 20_001) << LOGICAL_BITS, id(2)),
        removed: true,
        primary: [2; 16],
        backups: vec![],
        value: None,
    };
    assert!(core.apply(T0 + 40_000, vec![stale]).is_none());
    assert!(core.dump().is_empty());
}

#[test]
fn limits_refuse_local_writes_with_the_limit_named_and_count_remote_ones() {
    let cfg = MapConfig {
        max_entries: 2,
        max_value_bytes: 8,
        max_key_bytes: 4,
        max_bytes: 64,
        ..MapConfig::default()
    };
    let mut core = MapCore::new(cfg, Kind::Replicated, id(1), 1);
    core.put(T0, b("a"), b("1")).unwrap();
    core.put(T0, b("b"), b("1")).unwrap();
    assert_eq!(
        core.put(T0, b("c"), b("1")),
        Err(Refused::Full {
            limit: "max_entries",
            max: 2
        })
    );
    // Overwriting an existing key is still allowed.
    core.put(T0, b("a"), b("2")).unwrap();
    assert!(matches!(
        core.put(T0, b("a"), b("123456789")),
        Err(Refused::TooLarge { what: "value", .. })
    ));
    assert!(matches!(
        core.put(T0, b("abcde"), b("1")),
        Err(Refused::TooLarge { what: "key", .. })
    ));
    let remote = Record {
        key: b("z"),
        version: Version::new((T0 + 1) << LOGICAL_BITS, id(2)),
        placed: Version::new((T0 + 1) << LOGICAL_BITS, id(2)),
        removed: false,
        primary: [2; 16],
        backups: vec![],
        value: Some(b("1")),
    };
    assert!(matches!(
        core.apply(T0, vec![remote]),
        Some(Refused::Full { .. })
    ));
    assert_eq!(core.stats().rejected, 1);
    assert_eq!(core.stats().entries, 2);
}

#[test]
fn versions_from_the_far_future_are_refused() {
    let mut core = MapCore::new(MapConfig::default(), Kind::Replicated, id(1), 1);
    let future = Version::new((T0 + 3_600_000) << LOGICAL_BITS, id(2));
    let rec = Record {
        key: b("k"),
        version: future,
        placed: future,
        removed: false,
        primary: [2; 16],
        backups: vec![],
        value: Some(b("v")),
    };
    assert!(matches!(
        core.apply(T0, vec![rec]),
        Some(Refused::Future { .. })
    ));
    // Our clock was not dragged forward: a local write stays near now.
    let w = core.put(T0, b("k"), b("mine")).unwrap();
    assert_eq!(w.record.version.millis(), T0);
}

#[test]
fn a_joiner_gets_the_map_in_bounded_chunks() {
    let cfg = MapConfig {
        max_chunk_bytes: 1000,
        ..MapConfig::default()
    };
    let mut old = MapCore::new(cfg.clone(), Kind::Replicated, id(1), 1);
    for i in 0..500 {
        old.put(
            T0,
            Bytes::from(format!("key-{i:04}")),
            Bytes::from(vec![7u8; 50]),
        )
        .unwrap();
    }
    let mut new = MapCore::new(cfg, Kind::Replicated, id(2), 2);
    let mut after: Option<Bytes> = None;
    let mut chunks = 0;
    loop {
        let (records, next) = old.chunk(after.as_deref(), 1000, id(2));
        let size: usize = records.iter().map(Record::weight).sum();
        assert!(size < 1000 + 200, "chunk of {size} bytes");
        assert!(new.apply(T0, records).is_none());
        chunks += 1;
        match next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert!(chunks > 30);
    assert_eq!(new.dump(), old.dump());
    assert_eq!(new.digests(), old.digests());
}

#[test]
fn anti_entropy_repairs_a_missed_message() {
    let mut net = Net::new(3, Kind::Replicated, &MapConfig::default());
    net.put(1, "a", "1");
    net.put(2, "b", "2");
    // Lose every message.
    net.pending.clear();
    net.anti_entropy();
    let dumps = net.dumps();
    assert!(dumps.windows(2).all(|w| w[0] == w[1]), "{dumps:?}");
    assert_eq!(dumps[0].len(), 2);
    assert!(net.cores.values().map(|c| c.stats().repairs).sum::<u64>() >= 4);
}

#[test]
fn lazy_put_places_one_backup_and_proxies_elsewhere() {
    let mut net = Net::new(4, Kind::Lazy, &MapConfig::default());
    net.put(1, "k", "v");
    net.quiesce();
    let (primary, backups) = net.core(1).placement(b"k").unwrap();
    assert_eq!(primary, id(1));
    assert_eq!(backups.len(), 1);
    let mut holders = 0;
    for n in 1..=4 {
        let s = net.core(n).stats();
        holders += s.entries;
        assert_eq!(s.entries + s.proxies, 1);
    }
    assert_eq!(holders, 2, "primary and one backup hold the value");
    // Every member computes the same placement.
    for n in 2..=4 {
        assert_eq!(
            net.core(n).placement(b"k").unwrap(),
            (primary, backups.clone())
        );
    }
}

#[test]
fn a_proxy_read_fetches_and_takes_the_entry_over() {
    let mut net = Net::new(3, Kind::Lazy, &MapConfig::default());
    net.put(1, "k", "v");
    net.quiesce();
    let (_, backups) = net.core(1).placement(b"k").unwrap();
    let proxy = (1..=3)
        .find(|n| id(*n) != id(1) && !backups.contains(&id(*n)))
        .unwrap();
    let (lookup, _) = net.core(proxy).get(T0 + 5, b"k");
    let Lookup::Remote(from) = lookup else {
        panic!("a proxy has no value: {lookup:?}")
    };
    assert_eq!(from[0], id(1), "primary first");
    let record = net.core(1).fetch_answer(b"k").unwrap();
    let (value, write) = net.core(proxy).adopt(T0 + 6, record).unwrap();
    assert_eq!(value.as_deref(), Some(&b"v"[..]));
    net.send_write(id(proxy), write.unwrap(), false);
    net.quiesce();
    for n in 1..=3 {
        assert_eq!(net.core(n).placement(b"k").unwrap().0, id(proxy));
    }
    let holders: usize = (1..=3).map(|n| net.core(n).stats().entries).sum();
    assert_eq!(
        holders, 2,
        "the old primary dropped or kept a copy as backup"
    );
}

#[test]
fn when_the_primary_dies_its_backup_takes_over_and_restores_a_copy() {
    let mut net = Net::new(4, Kind::Lazy, &MapConfig::default());
    for i in 0..50 {
        net.put(1, &format!("k{i}"), "v");
    }
    net.quiesce();
    net.crash(1);
    net.quiesce();
    for i in 0..50 {
        let key = format!("k{i}");
        let mut copies = 0;
        let mut placements = Vec::new();
        for n in 2..=4 {
            placements.push(net.core(n).placement(key.as_bytes()).unwrap());
            if let Some((_, _, _, Some(_))) = net
                .core(n)
                .dump()
                .into_iter()
                .find(|(k, ..)| &k[..] == key.as_bytes())
            {
                copies += 1;
            }
        }
        assert_eq!(copies, 2, "{key}: primary and backup restored");
        assert!(
            placements.windows(2).all(|w| w[0] == w[1]),
            "{key}: {placements:?}"
        );
        assert_ne!(placements[0].0, id(1));
    }
}

/// Who holds a live value of `key` among the cores, and which values.
fn copies(net: &Net, key: &str) -> Vec<Bytes> {
    net.cores
        .values()
        .filter_map(|c| {
            c.dump()
                .into_iter()
                .find(|(k, _, r, _)| &k[..] == key.as_bytes() && !r)
                .and_then(|(.., v)| v)
        })
        .collect()
}

/// `n` reads `key` as a session layer does (a proxy fetches from the first holder that
/// has the value and takes the entry over; a backup read becomes the primary): the write
/// that move makes, if any.
fn take_over(net: &mut Net, n: u8, key: &str) -> Option<Write> {
    net.now += 1;
    let now = net.now;
    let (lookup, write) = net.core(n).get(now, key.as_bytes());
    match lookup {
        Lookup::Value(_) => write,
        Lookup::Remote(from) => {
            let record = from
                .iter()
                .filter_map(|m| net.cores[m].fetch_answer(key.as_bytes()))
                .find(|r| r.value.is_some())
                .expect("a holder with the value");
            net.core(n).adopt(now, record).unwrap().1
        }
        other => panic!("{key} on {n}: {other:?}"),
    }
}

/// A session moving on reads, round-robin over four members (each request takes the entry
/// over, then writes it), with the member serving a request crashing part-way through
/// sending either write: whatever subset of the write's messages arrived, a survivor still
/// holds the last value whose write reached all its holders (what a SYNC_ACK caller was
/// answered for), or the newer one. Before the fix, a write re-chose its backup by rendezvous
/// alone, not keeping the holders the take-over had kept: the old backup got a proxy message
/// (drop your copy) and, the crash coming before the new backup got the value, no member
/// held either version (the session scenario's endless "entry unavailable").
#[test]
fn a_primary_crashing_part_way_through_a_write_leaves_a_copy_of_the_answered_value() {
    let cfg = MapConfig::default();
    const STEPS: u8 = 6;
    let mut moves_checked = 0;
    for k in 0..12 {
        let key = format!("k{k}");
        // Runs requests 1..=step fully, then request `step + 1` up to the write to cut: the
        // take-over's (`put` false) or the increment's. The net, the member and the write.
        let setup = |step: u8, put: bool| -> (Net, u8, Option<Write>) {
            let mut net = Net::new(4, Kind::Lazy, &cfg);
            net.put(1, &key, "v0");
            net.quiesce();
            for s in 1..=step {
                let n = s % 4 + 1;
                let moved = take_over(&mut net, n, &key);
                if s == step && !put {
                    return (net, n, moved);
                }
                if let Some(w) = moved {
                    net.send_write(id(n), w, true);
                    net.quiesce();
                }
                net.now += 1;
                let now = net.now;
                let w = net.core(n).put(now, b(&key), b(&format!("v{s}"))).unwrap();
                if s == step {
                    return (net, n, Some(w));
                }
                net.send_write(id(n), w, true);
                net.quiesce();
            }
            unreachable!("step >= 1")
        };
        for step in 1..=STEPS {
            for put in [false, true] {
                let (_, _, w) = setup(step, put);
                let Some(w) = w else { continue };
                let messages = w.full.len() + w.proxies.len();
                for subset in 0u32..(1 << messages) {
                    let (mut net, n, w) = setup(step, put);
                    let w = w.unwrap();
                    let full = w.full.len();
                    net.send_write(id(n), w, true);
                    // `send_write` queues the holders' messages first, then the proxies'.
                    let mut i = 0;
                    let mut reached_holders = true;
                    for bit in 0..messages {
                        if subset & (1 << bit) != 0 {
                            net.deliver(i);
                        } else {
                            reached_holders &= bit >= full;
                            i += 1;
                        }
                    }
                    net.crash(n);
                    net.quiesce();
                    let held = copies(&net, &key);
                    let newest = format!("v{step}");
                    let answered = if put && reached_holders {
                        newest.clone()
                    } else {
                        format!("v{}", step - 1)
                    };
                    assert!(
                        held.iter()
                            .any(|v| v[..] == *answered.as_bytes() || v[..] == *newest.as_bytes()),
                        "{key} step={step} put={put} subset={subset:b}: survivors hold \
                         {held:?}, {answered} was answered"
                    );
                    moves_checked += 1;
                }
            }
        }
    }
    assert!(moves_checked > 100, "{moves_checked} cuts checked");
}

/// `forget_lost` drops only a proxy (no value here, not a removal), and counts it.
#[test]
fn forget_lost_drops_a_proxy_and_nothing_else() {
    let mut net = Net::new(3, Kind::Lazy, &MapConfig::default());
    net.put(1, "held", "v");
    net.put(1, "gone", "v");
    net.quiesce();
    net.remove(1, "gone");
    net.quiesce();
    let (_, backups) = net.core(1).placement(b"held").unwrap();
    let proxy = (2..=3u8).find(|n| !backups.contains(&id(*n))).unwrap();
    assert!(
        !net.core(1).forget_lost(b"held"),
        "the primary holds the value"
    );
    assert!(!net.core(proxy).forget_lost(b"gone"), "a removal stays");
    assert!(!net.core(proxy).forget_lost(b"never"), "unknown key");
    assert!(net.core(proxy).forget_lost(b"held"));
    assert_eq!(net.core(proxy).stats().lost, 1);
    assert_eq!(net.core(proxy).placement(b"held"), None);
    assert!(net.core(1).placement(b"held").is_some(), "only here");
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8, u8),
    Remove(u8, u8),
    Deliver(usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..=3, 0u8..6, any::<u8>()).prop_map(|(n, k, v)| Op::Put(n, k, v)),
        1 => (1u8..=3, 0u8..6).prop_map(|(n, k)| Op::Remove(n, k)),
        4 => any::<usize>().prop_map(Op::Deliver),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any interleaving of puts, removes, deliveries (in any order) and losses converges to
    /// one state on every member once the messages left are delivered and digests compared;
    /// without losses it converges without anti-entropy at all.
    #[test]
    fn replicated_maps_converge_whatever_the_interleaving(ops in proptest::collection::vec(op(), 1..80)) {
        for lossy in [false, true] {
            let mut net = Net::new(3, Kind::Replicated, &MapConfig::default());
            for op in &ops {
                match op {
                    Op::Put(n, k, v) => net.put(*n, &format!("k{k}"), &format!("v{v}")),
                    Op::Remove(n, k) => net.remove(*n, &format!("k{k}")),
                    Op::Deliver(i) => net.deliver(*i),
                    Op::Drop(i) if lossy && !net.pending.is_empty() => {
                        let i = i % net.pending.len();
                        net.pending.remove(i);
                    }
                    Op::Drop(_) => {}
                }
            }
            net.quiesce();
            if lossy {
                net.anti_entropy();
            }
            let dumps = net.dumps();
            prop_assert!(dumps.windows(2).all(|w| w[0] == w[1]), "lossy={} {:?}", lossy, dumps);
            let digests: Vec<Vec<u64>> = net.cores.values().map(|c| c.digests().to_vec()).collect();
            prop_assert!(digests.windows(2).all(|w| w[0] == w[1]));
        }
    }

    /// Lazy maps: after any interleaving, once quiet, every member agrees where each entry
    /// lives, and every live entry has its value on its primary and backup; a crash of one
    /// member then loses no entry.
    #[test]
    fn lazy_maps_agree_on_placement_and_survive_one_crash(
        ops in proptest::collection::vec(op(), 1..60),
        victim in 1u8..=3,
    ) {
        let mut net = Net::new(3, Kind::Lazy, &MapConfig::default());
        for op in &ops {
            match op {
                Op::Put(n, k, v) => net.put(*n, &format!("k{k}"), &format!("v{v}")),
                Op::Remove(n, k) => net.remove(*n, &format!("k{k}")),
                Op::Deliver(i) | Op::Drop(i) => net.deliver(*i),
            }
        }
        net.quiesce();
        net.anti_entropy();
        let live: Vec<Bytes> = net.core(1).dump().into_iter().filter(|(_, _, r, _)| !r).map(|(k, ..)| k).collect();
        for key in &live {
            let placements: Vec<_> = (1..=3).map(|n| net.core(n).placement(key).unwrap()).collect();
            prop_assert!(placements.windows(2).all(|w| w[0] == w[1]), "{:?}", placements);
            let (p, bs) = placements[0].clone();
            for holder in std::iter::once(p).chain(bs) {
                let n = holder.as_bytes()[0];
                let has = net.core(n).dump().into_iter().any(|(k, _, _, v)| k == *key && v.is_some());
                prop_assert!(has, "holder {} lacks {:?}", n, key);
            }
        }
        net.crash(victim);
        net.quiesce();
        let survivors: Vec<u8> = (1..=3).filter(|n| *n != victim).collect();
        for key in &live {
            let held = survivors.iter().any(|n| {
                net.core(*n).dump().into_iter().any(|(k, _, r, v)| k == *key && !r && v.is_some())
            });
            prop_assert!(held, "{:?} lost with one crash", key);
        }
    }
}

#[test]
fn a_fetched_record_from_the_far_future_is_not_adopted_and_does_not_move_the_clock() {
    let mut net = Net::new(2, Kind::Lazy, &MapConfig::default());
    let future = Version::new((T0 + 3_600_000) << LOGICAL_BITS, id(2));
    let rec = Record {
        key: b("k"),
        version: future,
        placed: future,
        removed: false,
        primary: [2; 16],
        backups: vec![],
        value: Some(b("v")),
    };
    let (value, write) = net.core(1).adopt(T0, rec).unwrap();
    assert_eq!((value, write), (None, None));
    assert_eq!(net.core(1).stats().rejected, 1);
    let w = net.core(1).put(T0, b("k2"), b("mine")).unwrap();
    assert_eq!(w.record.version.millis(), T0, "the clock stayed");
}
