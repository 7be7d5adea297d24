//! Deployers on real channels over loopback sockets, with real directories.

// Test data is made of truncated arithmetic.
#![allow(clippy::cast_possible_truncation)]

mod corpus;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::{ChannelHandle, GroupChannel, MembershipSetup};
use cohort_deployer::{DeployEvent, DeployerConfig, DeployerHandle};
use cohort_membership::{MembershipConfig, StaticPeer};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::Services;

use cohort_test_support::{free_udp_port, wait_for};

async fn cluster(n: usize) -> Vec<ChannelHandle> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let mut out = Vec::new();
    for port in &ports {
        out.push(node(ports[0], *port, &ports).await);
    }
    wait_for(
        "every channel sees every other",
        Duration::from_secs(10),
        || out.iter().all(|c| c.members().len() == n - 1),
    )
    .await;
    out
}

async fn node(cluster: u16, port: u16, ports: &[u16]) -> ChannelHandle {
    node_with(cluster, port, ports, None).await
}

/// Flips one byte of the first `left` large messages it sends (chunks on their way).
struct Corrupt {
    left: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl cohort_channel::Interceptor for Corrupt {
    fn name(&self) -> &'static str {
        "corrupt"
    }

    fn on_send(&mut self, mut msg: cohort_channel::Outbound, cx: &mut cohort_channel::Cx<'_>) {
        use std::sync::atomic::Ordering;
        if msg.payload.len() > 32 * 1024
            && self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            let mut p = msg.payload.to_vec();
            let at = p.len() - 100;
            p[at] ^= 0x5a;
            msg.payload = Bytes::from(p);
        }
        cx.send_down(msg);
    }
}

async fn node_with(
    cluster: u16,
    port: u16,
    ports: &[u16],
    corrupt: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
) -> ChannelHandle {
    let setup = MembershipSetup {
        config: MembershipConfig {
            cluster: format!("deploy-{cluster}"),
            frequency: Duration::from_millis(100),
            drop_time: Duration::from_millis(1500),
            ..MembershipConfig::default()
        },
        multicast: None,
        static_members: Some((
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            ports
                .iter()
                .filter(|p| **p != port)
                .map(|p| format!("127.0.0.1:{p}").parse::<StaticPeer>().unwrap())
                .collect(),
        )),
        dns: None,
    };
    let mut b = GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            ..TransportConfig::default()
        })
        .services(Services::DEFAULT)
        .membership(setup);
    if let Some(left) = corrupt {
        b = b.interceptor(Box::new(Corrupt { left }));
    }
    b.start_with(TokioNet, &mut rand::thread_rng())
        .await
        .unwrap()
}

fn dirs(root: &Path, i: usize) -> DeployerConfig {
    let base = root.join(format!("m{i}"));
    DeployerConfig {
        watch_dir: base.join("watch"),
        deploy_dir: base.join("live"),
        temp_dir: base.join("tmp"),
        watch_enabled: true,
        process_deploy_frequency: Duration::from_millis(100),
        chunk_size: 64 * 1024,
        min_free_space: 0,
        ..DeployerConfig::default()
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cohort-deployer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn wait_file(path: &Path, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read(path).is_ok_and(|b| b == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never matched",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(path: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never removed",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn data(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_size_arrive_identical_and_undeploys_follow() {
    let root = scratch("sizes");
    let ch = cluster(3).await;
    let mut d = Vec::new();
    for (i, c) in ch.iter().enumerate() {
        d.push(DeployerHandle::start(c, dirs(&root, i)).await.unwrap());
    }
    let sizes = [0usize, 1, 10_240, 20_480, (1 << 20) + 1];
    for size in sizes {
        let name = format!("f{size}.bin");
        std::fs::write(dirs(&root, 0).watch_dir.join(&name), data(size)).unwrap();
    }
    for size in sizes {
        for i in 0..3 {
            wait_file(
                &dirs(&root, i).deploy_dir.join(format!("f{size}.bin")),
                &data(size),
            )
            .await;
        }
    }
    // Each member announces a file once it is in place: the others agree when they heard it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = d[1].status().await.unwrap();
        if status.agree {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Removed from the watch directory: undeployed everywhere.
    std::fs::remove_file(dirs(&root, 0).watch_dir.join("f1.bin")).unwrap();
    for i in 0..3 {
        wait_gone(&dirs(&root, i).deploy_dir.join("f1.bin")).await;
    }
    // Nothing partial ever sat in a deploy directory: only whole files.
    for i in 0..3 {
        for e in std::fs::read_dir(dirs(&root, i).deploy_dir).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert!(n.starts_with('f') && n.ends_with(".bin"), "{n}");
        }
    }
    for c in &ch {
        c.stop().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_was_away_catches_up_and_names_that_escape_are_refused() {
    let root = scratch("catchup");
    let ports: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let a = node(ports[0], ports[0], &ports).await;
    let da = DeployerHandle::start(&a, dirs(&root, 0)).await.unwrap();
    da.deploy("kept.txt", Bytes::from_static(b"kept"))
        .await
        .unwrap();
    da.deploy("gone.txt", Bytes::from_static(b"gone"))
        .await
        .unwrap();
    da.undeploy("gone.txt").await.unwrap();
    for bad in ["../escape", "/etc/passwd", ".hidden", "a/b", ""] {
        assert!(
            da.deploy(bad, Bytes::from_static(b"x")).await.is_err(),
            "{bad:?}"
        );
    }
    // The second member starts only now, with a stale file of the undeployed name.
    let cfg_b = dirs(&root, 1);
    std::fs::create_dir_all(&cfg_b.deploy_dir).unwrap();
    let b = node(ports[0], ports[1], &ports).await;
    wait_for("a and b see each other", Duration::from_secs(10), || {
        a.members().len() == 1 && b.members().len() == 1
    })
    .await;
    let db = DeployerHandle::start(&b, cfg_b.clone()).await.unwrap();
    let mut events = db.events();
    wait_file(&cfg_b.deploy_dir.join("kept.txt"), b"kept").await;
    assert!(!cfg_b.deploy_dir.join("gone.txt").exists());
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert!(
        matches!(e, Ok(Ok(DeployEvent::Deployed { .. })))
            || cfg_b.deploy_dir.join("kept.txt").exists()
    );
    let _ = db;
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_name_converge_on_one_file() {
    let root = scratch("race");
    let ch = cluster(3).await;
    let mut d = Vec::new();
    for (i, c) in ch.iter().enumerate() {
        d.push(DeployerHandle::start(c, dirs(&root, i)).await.unwrap());
    }
    let (x, y) = (d[0].clone(), d[1].clone());
    let (rx, ry) = tokio::join!(
        x.deploy("same.txt", Bytes::from_static(b"from zero")),
        y.deploy("same.txt", Bytes::from_static(b"from one!"))
    );
    let (mx, my) = (rx.unwrap(), ry.unwrap());
    let winner: &[u8] = if mx.version > my.version {
        b"from zero"
    } else {
        b"from one!"
    };
    for i in 0..3 {
        wait_file(&dirs(&root, i).deploy_dir.join("same.txt"), winner).await;
    }
    for c in &ch {
        c.stop().await;
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_corrupted_on_the_way_are_fetched_again_and_never_deployed_corrupt() {
    let root = scratch("corrupt");
    let ports: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(3));
    // The sender's channel corrupts its first three large messages: chunks.
    let a = node_with(ports[0], ports[0], &ports, Some(left.clone())).await;
    let b = node(ports[0], ports[1], &ports).await;
    wait_for("a and b see each other", Duration::from_secs(10), || {
        a.members().len() == 1 && b.members().len() == 1
    })
    .await;
    let da = DeployerHandle::start(&a, dirs(&root, 0)).await.unwrap();
    let db = DeployerHandle::start(&b, dirs(&root, 1)).await.unwrap();
    let body = data(1 << 20);
    da.deploy("c.bin", Bytes::from(body.clone())).await.unwrap();
    wait_file(&dirs(&root, 1).deploy_dir.join("c.bin"), &body).await;
    assert_eq!(
        left.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "three chunks were corrupted"
    );
    let stats = db.status().await.unwrap().stats;
    assert_eq!(stats.corrupt_chunks, 3, "{stats:?}");
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_redeploys_watched_files_nor_forgets_one_removed_while_down() {
    let root = scratch("restart");
    // A static peer that never starts: this member runs alone.
    let ports = [free_udp_port(), free_udp_port()];
    let a = node(ports[0], ports[0], &ports).await;
    let cfg = dirs(&root, 0);
    let d = DeployerHandle::start(&a, cfg.clone()).await.unwrap();
    std::fs::create_dir_all(&cfg.watch_dir).unwrap();
    std::fs::write(cfg.watch_dir.join("keep.txt"), b"keep").unwrap();
    std::fs::write(cfg.watch_dir.join("drop.txt"), b"drop").unwrap();
    wait_file(&cfg.deploy_dir.join("keep.txt"), b"keep").await;
    wait_file(&cfg.deploy_dir.join("drop.txt"), b"drop").await;
    let version = |s: &cohort_deployer::DeployStatus, n: &str| {
        s.local
            .iter()
            .find(|f| f.name == n && !f.removed)
            .map(|f| f.version)
    };
    let before = version(&d.status().await.unwrap(), "keep.txt").unwrap();
    d.stop().await;
    // Down: one watched file is removed.
    std::fs::remove_file(cfg.watch_dir.join("drop.txt")).unwrap();
    let d = DeployerHandle::start(&a, cfg.clone()).await.unwrap();
    wait_gone(&cfg.deploy_dir.join("drop.txt")).await;
    // Several scan periods later, the kept file is still the same version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        version(&d.status().await.unwrap(), "keep.txt"),
        Some(before)
    );
    a.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}
