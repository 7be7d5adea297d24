//! RpcChannel: every reply mode, members without an RPC channel, timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{ChannelHandle, ReplyMode, RpcChannel, RpcHandler};
use cohort_wire::{Member, SendOptions};

use crate::support::*;

/// Answers with its name after `delay` (or not at all).
struct Answer {
    name: &'static str,
    delay: Duration,
    silent: bool,
}

impl RpcHandler for Answer {
    fn reply_request(&self, _from: &Member, request: &Bytes) -> Option<Bytes> {
        std::thread::sleep(self.delay);
        if self.silent {
            return None;
        }
        let mut r = request.to_vec();
        r.extend_from_slice(self.name.as_bytes());
        Some(r.into())
    }
}

async fn server(name: &'static str, delay_ms: u64, silent: bool) -> (ChannelHandle, RpcChannel) {
    let ch = start(builder()).await;
    let rpc = RpcChannel::new(
        &ch,
        "svc",
        Arc::new(Answer {
            name,
            delay: Duration::from_millis(delay_ms),
            silent,
        }),
        SendOptions::NONE,
    );
    (ch, rpc)
}

struct Nothing;
impl RpcHandler for Nothing {
    fn reply_request(&self, _: &Member, _: &Bytes) -> Option<Bytes> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_modes() {
    let client = start(builder()).await;
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE);
    let (b, _rb) = server("b", 0, false).await;
    let (c, _rc) = server("c", 600, false).await;
    let (d, _rd) = server("d", 900, false).await;
    let all = [b.local().clone(), c.local().clone(), d.local().clone()];
    let t = Duration::from_secs(5);
    let ack = SendOptions::USE_ACK;

    let started = Instant::now();
    let r = rpc
        .call(&all, Bytes::from_static(b"q"), ReplyMode::First, ack, t)
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].payload[..], b"qb");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "first does not wait for c"
    );

    let r = rpc
        .call(&all, Bytes::from_static(b"q"), ReplyMode::Majority, ack, t)
        .await
        .unwrap();
    assert!(r.len() >= 2, "{r:?}");

    let started = Instant::now();
    let r = rpc
        .call(&all, Bytes::from_static(b"q"), ReplyMode::All, ack, t)
        .await
        .unwrap();
    let mut names: Vec<_> = r.iter().map(|x| x.payload.clone()).collect();
    names.sort();
    assert_eq!(names, [&b"qb"[..], b"qc", b"qd"]);
    assert!(started.elapsed() < t, "all completes without the timeout");

    let started = Instant::now();
    let r = rpc
        .call(&all, Bytes::from_static(b"q"), ReplyMode::None, ack, t)
        .await
        .unwrap();
    assert!(r.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fire and forget"
    );

    // SYNCHRONIZED_ACK is stripped: no deadlock on a reply that waits for its own request.
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let r = rpc
        .call(&all[..1], Bytes::from_static(b"q"), ReplyMode::All, sync, t)
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    for ch in [client, b, c, d] {
        ch.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_rpc_channel_do_not_stall_and_timeouts_return_what_came() {
    let client = start(builder()).await;
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE);
    let (b, _rb) = server("b", 0, false).await;
    let plain = start(builder()).await; // no RpcChannel: answers "no RPC channel"
    let (silent, _rs) = server("s", 0, true).await;
    let t = Duration::from_secs(10);

    let started = Instant::now();
    let r = rpc
        .call(
            &[b.local().clone(), plain.local().clone()],
            Bytes::from_static(b"q"),
            ReplyMode::All,
            SendOptions::USE_ACK,
            t,
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let r = rpc
        .call(
            &[b.local().clone(), silent.local().clone()],
            Bytes::from_static(b"q"),
            ReplyMode::All,
            SendOptions::USE_ACK,
            timeout,
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.len(), 1, "the reply that came");
    assert!(took >= timeout && took < timeout * 3, "{took:?}");
    for ch in [client, b, plain, silent] {
        ch.stop().await;
    }
}
