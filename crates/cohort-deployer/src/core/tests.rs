// Test sizes are small.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;

use super::*;

const T0: u64 = 1_700_000_000_000;

fn id(n: u8) -> MemberId {
    MemberId::from_bytes([n; 16])
}

fn cfg() -> DeployerConfig {
    DeployerConfig {
        chunk_size: 4096,
        chunks_in_flight: 2,
        ..DeployerConfig::default()
    }
}

/// Cores with in-memory "disks": what each has deployed, by name.
struct Net {
    cores: BTreeMap<MemberId, DeployCore>,
    disks: BTreeMap<MemberId, BTreeMap<String, Vec<u8>>>,
    parts: BTreeMap<(MemberId, String), Vec<u8>>,
    now: u64,
    /// Flip a byte of the next chunk sent.
    corrupt_next: bool,
}

fn sha(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

impl Net {
    fn new(n: u8) -> Self {
        let mut cores = BTreeMap::new();
        for i in 1..=n {
            cores.insert(
                id(i),
                DeployCore::new(cfg(), id(i), Vec::new(), u64::from(i)),
            );
        }
        let mut net = Self {
            cores,
            disks: (1..=n).map(|i| (id(i), BTreeMap::new())).collect(),
            parts: BTreeMap::new(),
            now: T0,
            corrupt_next: false,
        };
        for a in 1..=n {
            for b in 1..=n {
                if a != b {
                    net.cores.get_mut(&id(a)).unwrap().handle_member_up(id(b));
                }
            }
        }
        net
    }

    fn deploy(&mut self, n: u8, name: &str, data: &[u8]) {
        self.now += 1;
        self.disks
            .get_mut(&id(n))
            .unwrap()
            .insert(name.into(), data.to_vec());
        let now = self.now;
        self.cores
            .get_mut(&id(n))
            .unwrap()
            .handle_local(now, name, data.len() as u64, sha(data));
    }

    /// Runs every core's outputs until nothing is left.
    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut any = false;
            let ids: Vec<MemberId> = self.cores.keys().copied().collect();
            for me in ids {
                let now = self.now;
                let Some(out) = self.cores.get_mut(&me).unwrap().poll(now) else {
                    continue;
                };
                any = true;
                self.perform(me, out);
            }
            if !any {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn perform(&mut self, me: MemberId, out: Output) {
        let now = self.now;
        match out {
            Output::Send { to, msg } => {
                let Some(peer) = self.cores.get_mut(&to) else {
                    return;
                };
                match msg {
                    Msg::ChunkReq {
                        name,
                        version,
                        index,
                    } => {
                        let file = peer.file(&name).cloned();
                        let core = self.cores.get_mut(&me).unwrap();
                        let wanted = core.transfers.get(&name).map(|t| t.file.clone());
                        let (Some(file), Some(wanted)) = (file, wanted) else {
                            return;
                        };
                        if file.version != version {
                            core.handle_chunk_failed(&wanted, index);
                            return;
                        }
                        let (start, len) = file.range(index);
                        let bytes = &self.disks[&to][&name][start as usize..start as usize + len];
                        let crc = crc32fast::hash(bytes);
                        let mut data = bytes.to_vec();
                        if self.corrupt_next && !data.is_empty() {
                            self.corrupt_next = false;
                            data[0] ^= 1;
                        }
                        core.handle_chunk(to, &wanted, index, crc, Bytes::from(data));
                    }
                    other => {
                        if let Some(reply) = peer.handle_message(now, me, other) {
                            self.cores
                                .get_mut(&me)
                                .unwrap()
                                .handle_message(now, to, reply);
                        }
                    }
                }
            }
            Output::Prepare(f) => {
                self.parts
                    .insert((me, f.name.clone()), vec![0; f.size as usize]);
                self.cores.get_mut(&me).unwrap().handle_prepared(&f, &[]);
            }
            Output::Write { file, index, data } => {
                let (start, len) = file.range(index);
                let part = self.parts.get_mut(&(me, file.name.clone())).unwrap();
                part[start as usize..start as usize + len].copy_from_slice(&data);
                self.cores
                    .get_mut(&me)
                    .unwrap()
                    .handle_written(&file, index);
            }
            Output::Install(f) => {
                let part = self.parts.remove(&(me, f.name.clone())).unwrap();
                let ok = sha(&part) == f.sha256;
                if ok {
                    self.disks
                        .get_mut(&me)
                        .unwrap()
                        .insert(f.name.clone(), part);
                }
                let r = if ok {
                    Ok(())
                } else {
                    Err("sha mismatch".into())
                };
                self.cores.get_mut(&me).unwrap().handle_installed(&f, r);
            }
            Output::Remove(name) => {
                self.disks.get_mut(&me).unwrap().remove(&name);
            }
            Output::Discard(f) => {
                self.parts.remove(&(me, f.name));
            }
            Output::Event(_) => {}
        }
    }
}

#[test]
fn a_deploy_reaches_every_member_byte_identical_whatever_the_size() {
    for size in [0usize, 1, 4095, 4096, 10_240, 20_480, 100_001] {
        let mut net = Net::new(3);
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        net.deploy(1, "app.bin", &data);
        net.run();
        for n in 1..=3 {
            assert_eq!(
                net.disks[&id(n)].get("app.bin"),
                Some(&data),
                "size {size} on {n}"
            );
        }
    }
}

#[test]
fn an_undeploy_removes_everywhere_and_a_late_member_catches_up() {
    let mut net = Net::new(2);
    net.deploy(1, "a", b"one");
    net.deploy(1, "b", b"two");
    net.run();
    net.now += 1;
    let now = net.now;
    net.cores
        .get_mut(&id(1))
        .unwrap()
        .handle_local_removed(now, "a")
        .unwrap();
    net.run();
    assert!(!net.disks[&id(2)].contains_key("a"));
    // A third member that was down: one manifest exchange and it has what the others have.
    net.cores
        .insert(id(3), DeployCore::new(cfg(), id(3), Vec::new(), 3));
    net.disks.insert(id(3), BTreeMap::new());
    net.cores.get_mut(&id(3)).unwrap().handle_member_up(id(1));
    net.run();
    assert_eq!(
        net.disks[&id(3)].get("b").map(Vec::as_slice),
        Some(&b"two"[..])
    );
    assert!(!net.disks[&id(3)].contains_key("a"));
}

#[test]
fn concurrent_deploys_of_one_name_converge_on_the_highest_version() {
    let mut net = Net::new(3);
    net.deploy(1, "x", b"from one");
    net.deploy(2, "x", b"from two, later");
    net.run();
    for n in 1..=3 {
        assert_eq!(
            net.disks[&id(n)]["x"],
            b"from two, later".to_vec(),
            "member {n}"
        );
    }
}

#[test]
fn a_corrupt_chunk_is_asked_for_again_and_never_installed() {
    let mut net = Net::new(2);
    net.corrupt_next = true;
    let data = vec![7u8; 10_000];
    net.deploy(1, "f", &data);
    net.run();
    // The corrupt chunk was dropped; its request timed out and went out again.
    net.now += 20_000;
    let now = net.now;
    net.cores.get_mut(&id(2)).unwrap().handle_timeout(now);
    net.run();
    assert_eq!(net.disks[&id(2)]["f"], data);
    assert_eq!(net.cores[&id(2)].stats().corrupt_chunks, 1);
}

#[test]
fn a_file_above_the_limit_is_refused_with_the_reason() {
    let mut net = Net::new(2);
    let small = DeployerConfig {
        max_file_size: 10,
        ..cfg()
    };
    net.cores
        .insert(id(2), DeployCore::new(small, id(2), Vec::new(), 2));
    net.cores.get_mut(&id(2)).unwrap().handle_member_up(id(1));
    net.deploy(1, "big", &[0u8; 100]);
    net.run();
    assert!(!net.disks[&id(2)].contains_key("big"));
    assert_eq!(net.cores[&id(2)].stats().refused, 1);
}
