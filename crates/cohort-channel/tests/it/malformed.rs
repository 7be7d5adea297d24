//! Garbage, oversized and never-ending frames from a raw socket close that connection, are
//! counted, and the node keeps serving others.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use cohort_channel::Delivered;
use cohort_transport::TransportConfig;
use cohort_wire::{CohortCodec, Frame, FrameCodec, Member, MemberId, SendOptions, WireLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

async fn closed_by_peer(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the node closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let sink = collector();
    let b = start(
        builder()
            .transport(TransportConfig {
                frame_timeout: Duration::from_millis(300),
                hello_timeout: Duration::from_millis(300),
                ..transport()
            })
            .listener(sink.clone()),
    )
    .await;
    let a = start(builder()).await;
    let addr = SocketAddr::new(b.local().addr, b.local().port);
    let to = [b.local().clone()];
    let ok = |o: cohort_channel::SendOutcome| assert_eq!(o.results[0].result, Ok(Delivered::Acked));
    ok(
        a.send(&to, Bytes::from_static(b"before"), SendOptions::USE_ACK)
            .await
            .unwrap()
            .await,
    );

    // Garbage.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    closed_by_peer(&mut s).await;

    // A frame announcing a 4 GiB payload.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut prefix = b"COHF\x01\x01\x00\x00".to_vec();
    prefix.extend_from_slice(&16u32.to_be_bytes());
    prefix.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&prefix).await.unwrap();
    closed_by_peer(&mut s).await;

    // A data frame before any hello: refused on its prefix.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut prefix = b"COHF\x01\x01\x00\x00".to_vec();
    prefix.extend_from_slice(&16u32.to_be_bytes());
    prefix.extend_from_slice(&100u32.to_be_bytes());
    s.write_all(&prefix).await.unwrap();
    closed_by_peer(&mut s).await;

    // A hello that never ends (a valid prefix, then silence).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut prefix = b"COHF\x01\x03\x00\x00".to_vec();
    prefix.extend_from_slice(&100u32.to_be_bytes());
    prefix.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&prefix).await.unwrap();
    closed_by_peer(&mut s).await;

    // A connection that never says hello.
    let mut s = TcpStream::connect(addr).await.unwrap();
    closed_by_peer(&mut s).await;

    // Meanwhile, and after, the node serves its real peer.
    ok(
        a.send(&to, Bytes::from_static(b"after"), SendOptions::USE_ACK)
            .await
            .unwrap()
            .await,
    );
    let stats = b.stats().transport;
    assert_eq!(stats.malformed.get("bad_magic"), Some(&1), "{stats:?}");
    assert_eq!(stats.malformed.get("too_large"), Some(&1), "{stats:?}");
    assert_eq!(stats.protocol_violations, 1, "{stats:?}");
    assert_eq!(stats.hello_timeouts, 2, "{stats:?}");
    wait_for("both messages", Duration::from_secs(5), || sink.len() == 2).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_and_counted() {
    let b = start(builder().transport(TransportConfig {
        max_connections: 2,
        ..transport()
    }))
    .await;
    let addr = SocketAddr::new(b.local().addr, b.local().port);
    // Members' connections are counted at their hello.
    let hello = |id: u8| {
        let mut m = Member::new(MemberId::from_bytes([id; 16]), addr.ip(), 1);
        m.cluster.clone_from(&b.local().cluster);
        let mut out = BytesMut::new();
        CohortCodec::new(WireLimits::default(), None)
            .unwrap()
            .encode_frame(
                &Frame::Hello(Box::new(cohort_wire::Hello::new(m))),
                &mut out,
            )
            .unwrap();
        out
    };
    let mut s1 = TcpStream::connect(addr).await.unwrap();
    s1.write_all(&hello(1)).await.unwrap();
    let mut s2 = TcpStream::connect(addr).await.unwrap();
    s2.write_all(&hello(2)).await.unwrap();
    wait_for("two established", Duration::from_secs(5), || {
        b.stats().transport.connections_established == 2
    })
    .await;
    let mut s3 = TcpStream::connect(addr).await.unwrap();
    s3.write_all(&hello(3)).await.unwrap();
    closed_by_peer(&mut s3).await;
    assert_eq!(b.stats().transport.connections_rejected, 1);
    b.stop().await;
}
