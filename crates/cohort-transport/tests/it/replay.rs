//! Frame replay on a keyed cluster: everything a member sent, recorded off the wire, is refused
//! when played back on a new connection, whole or spliced after a fresh handshake.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cohort_transport::TransportConfig;
use cohort_wire::{Frame, FrameCodec, Hello, SendOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A loopback proxy to `to` that records every byte its client sends.
async fn recording_proxy(to: std::net::SocketAddr) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let rec = recorded.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(to).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        });
        let mut buf = [0u8; 4096];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    (port, recorded)
}

/// Reads until the peer closes (or 5 s pass); the bytes read.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

#[tokio::test]
async fn recorded_frames_are_refused_on_a_new_connection() {
    let mut b = node_with(2, config(), keyed_codec()).await;
    let a = node_with(1, config(), keyed_codec()).await;
    let (port, recorded) = recording_proxy(b.member.data_addr()).await;
    let mut via_proxy = b.member.clone();
    via_proxy.port = port;
    let sent = send(&a, &via_proxy, 1, SendOptions::USE_ACK, b"transfer 100");
    within(Duration::from_secs(10), sent)
        .await
        .unwrap()
        .unwrap();
    let got = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    assert_eq!(&got.frame.payload[..], b"transfer 100");
    drop(got);
    let capture = recorded.lock().unwrap().clone();
    assert!(capture.len() > 100, "hello and data recorded");

    // 1. The whole conversation played back: the hello verifies and gets a fresh challenge,
    //    and the recorded data frame, sealed for the old connection, fails here.
    let mut s = TcpStream::connect(b.member.data_addr()).await.unwrap();
    s.write_all(&capture).await.unwrap();
    let _ = read_to_close(&mut s).await;
    let stats = b.handle.stats();
    assert_eq!(stats.malformed.get("bad_auth"), Some(&1), "{stats:?}");

    // 2. A fresh, valid handshake (as a member with the key would make), answering the new
    //    challenge, then the recorded data frame spliced in: refused the same way.
    let codec = keyed_codec();
    let hello_len = codec
        .peek_frame_prefix(&capture)
        .unwrap()
        .unwrap()
        .total_len();
    let data = &capture[hello_len..];
    let mut s = TcpStream::connect(b.member.data_addr()).await.unwrap();
    let mut hello = Hello::new(a.member.clone());
    hello.nonce = Some([9; 16]);
    let mut out = BytesMut::new();
    codec
        .encode_frame(&Frame::Hello(Box::new(hello)), &mut out)
        .unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        s.read_buf(&mut buf).await.unwrap();
        if let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
            assert!(matches!(frame, Frame::Challenge(_)), "{frame:?}");
            break;
        }
    }
    s.write_all(data).await.unwrap();
    let _ = read_to_close(&mut s).await;
    let stats = b.handle.stats();
    assert_eq!(stats.malformed.get("bad_auth"), Some(&2), "{stats:?}");

    // 3. A recorded hello alone holds no slot: unanswered, it is closed at hello_timeout like
    //    a silent connection (counted in hello_timeouts).

    // Neither playback reached the layer above; the member's own connection still works.
    assert!(
        b.inbound.try_recv().is_err(),
        "a replayed message was delivered"
    );
    let sent = send(&a, &b.member, 2, SendOptions::USE_ACK, b"fresh");
    within(Duration::from_secs(10), sent)
        .await
        .unwrap()
        .unwrap();
    let got = within(Duration::from_secs(5), b.inbound.recv())
        .await
        .unwrap();
    assert_eq!(&got.frame.payload[..], b"fresh");
}

#[tokio::test]
async fn a_keyed_sender_gets_a_clear_error_from_an_unkeyed_receiver() {
    let b = node(2, config()).await;
    let a = node_with(
        1,
        TransportConfig {
            connect_timeout: Duration::from_millis(300),
            max_retry_attempts: 0,
            ..config()
        },
        keyed_codec(),
    )
    .await;
    let sent = send(&a, &b.member, 1, SendOptions::USE_ACK, b"x");
    let err = within(Duration::from_secs(10), sent)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("challenge"), "{err}");
}

/// Large frames go out from their own bytes (vectored writes), sealed per connection without
/// a copy: they arrive intact, mixed with small ones, on a keyed connection and an unkeyed one.
#[tokio::test]
async fn large_frames_arrive_intact_sealed_or_not() {
    for keyed in [true, false] {
        let codec = || if keyed { keyed_codec() } else { codec() };
        let mut b = node_with(2, config(), codec()).await;
        let a = node_with(1, config(), codec()).await;
        let sizes = [10usize, 100_000, 20, 1 << 20, 16 * 1024, 16 * 1024 - 1, 5];
        let mut done = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let payload = pattern(*size, i);
            done.push(send(
                &a,
                &b.member,
                1 + i as u64,
                SendOptions::USE_ACK,
                &payload,
            ));
        }
        for (i, size) in sizes.iter().enumerate() {
            let got = within(Duration::from_secs(10), b.inbound.recv())
                .await
                .unwrap();
            assert_eq!(got.frame.header.msg_id, 1 + i as u64);
            let want = pattern(*size, i);
            assert!(
                got.frame.payload[..] == want[..],
                "frame {i} ({size} bytes) intact"
            );
        }
        for d in done {
            within(Duration::from_secs(10), d).await.unwrap().unwrap();
        }
        let stats = b.handle.stats();
        assert!(stats.malformed.is_empty(), "keyed {keyed}: {stats:?}");
    }
}

/// Bytes that differ by position and by frame.
fn pattern(size: usize, frame: usize) -> Vec<u8> {
    (0..size)
        .map(|k| u8::try_from((k % 251) ^ (frame % 4)).unwrap_or(0))
        .collect()
}
