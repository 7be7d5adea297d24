//! RpcChannel: every reply mode, members without an RPC channel, timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort_channel::{CallOptions, ChannelHandle, ReplyMode, RpcChannel, RpcHandler};
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
    )
    .unwrap();
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
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    let (b, _rb) = server("b", 0, false).await;
    // Slow enough that "did not wait for them" holds on a loaded runner.
    let (c, _rc) = server("c", 2000, false).await;
    let (d, _rd) = server("d", 2500, false).await;
    let all = [b.local().clone(), c.local().clone(), d.local().clone()];
    // Each server answers one request at a time: Majority waits for c behind First's
    // request (about 4 s), All for d behind Majority's. The timeout leaves room for both.
    let t = Duration::from_secs(15);
    let ack = SendOptions::USE_ACK;

    let started = Instant::now();
    let r = rpc
        .call(
            &all,
            Bytes::from_static(b"q"),
            CallOptions {
                mode: ReplyMode::First,
                send: ack,
                timeout: t,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.replies.len(), 1);
    assert_eq!(&r.replies[0].payload[..], b"qb");
    assert_eq!(r.no_reply.len(), 2, "c and d had not answered: {r:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "first does not wait for c"
    );

    let r = rpc
        .call(
            &all,
            Bytes::from_static(b"q"),
            CallOptions {
                mode: ReplyMode::Majority,
                send: ack,
                timeout: t,
            },
        )
        .await
        .unwrap();
    assert!(r.replies.len() >= 2, "{r:?}");

    let started = Instant::now();
    let r = rpc
        .call(
            &all,
            Bytes::from_static(b"q"),
            CallOptions {
                mode: ReplyMode::All,
                send: ack,
                timeout: t,
            },
        )
        .await
        .unwrap();
    assert!(r.no_reply.is_empty() && r.failed.is_empty(), "{r:?}");
    let mut names: Vec<_> = r.replies.iter().map(|x| x.payload.clone()).collect();
    names.sort();
    assert_eq!(names, [&b"qb"[..], b"qc", b"qd"]);
    assert!(started.elapsed() < t, "all completes without the timeout");

    let started = Instant::now();
    let r = rpc
        .call(
            &all,
            Bytes::from_static(b"q"),
            CallOptions {
                mode: ReplyMode::None,
                send: ack,
                timeout: t,
            },
        )
        .await
        .unwrap();
    assert!(r.replies.is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "fire and forget"
    );

    // SYNCHRONIZED_ACK is stripped: no deadlock on a reply that waits for its own request.
    let sync = SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK;
    let r = rpc
        .call(
            &all[..1],
            Bytes::from_static(b"q"),
            CallOptions {
                mode: ReplyMode::All,
                send: sync,
                timeout: t,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.replies.len(), 1);
    for ch in [client, b, c, d] {
        ch.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_without_the_rpc_channel_do_not_stall_and_timeouts_return_what_came() {
    let client = start(builder()).await;
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    let (b, _rb) = server("b", 0, false).await;
    let plain = start(builder()).await; // no RpcChannel: answers "no RPC channel"
    let (silent, _rs) = server("s", 0, true).await;
    let t = Duration::from_secs(10);

    let started = Instant::now();
    let r = rpc
        .call(
            &[b.local().clone(), plain.local().clone()],
            Bytes::from_static(b"q"),
            CallOptions::default().timeout(t),
        )
        .await
        .unwrap();
    assert_eq!(r.replies.len(), 1);
    assert_eq!(r.no_channel, [plain.local().id], "{r:?}");
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
            CallOptions::default().timeout(timeout),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.replies.len(), 1, "the reply that came");
    assert_eq!(r.no_reply, [silent.local().id], "{r:?}");
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    for ch in [client, b, plain, silent] {
        ch.stop().await;
    }
}

/// RPC traffic goes to RPC channels only: an ordinary listener on either side sees none of it.
/// A destination the request cannot reach is named in `failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_traffic_never_reaches_ordinary_listeners_and_failures_are_named() {
    let client_sink = collector();
    let server_sink = collector();
    let client = start(builder().listener(client_sink.clone())).await;
    let server = start(builder().listener(server_sink.clone())).await;
    let _rs = RpcChannel::new(
        &server,
        "svc",
        Arc::new(Answer {
            name: "s",
            delay: Duration::ZERO,
            silent: false,
        }),
        SendOptions::NONE,
    )
    .unwrap();
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    // A member whose receiver is gone: the request cannot reach it.
    let gone = start(builder()).await;
    let gone_member = gone.local().clone();
    gone.stop().await;
    let r = rpc
        .call(
            &[server.local().clone(), gone_member.clone()],
            Bytes::from_static(b"q"),
            CallOptions::default().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(r.replies.len(), 1, "{r:?}");
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].0, gone_member.id);
    // Ordinary traffic still reaches the listener; RPC traffic never did.
    let outcome = client
        .send_wait(
            &[server.local().clone()],
            Bytes::from_static(b"plain"),
            SendOptions::USE_ACK,
        )
        .await
        .unwrap();
    assert!(outcome.is_ok());
    wait_for("the plain message", Duration::from_secs(5), || {
        server_sink.len() == 1
    })
    .await;
    assert_eq!(server_sink.payloads(), [b"plain".to_vec()]);
    assert!(client_sink.is_empty(), "the reply reached a listener");
    client.stop().await;
    server.stop().await;
}

/// An asynchronous handler answers from a task (here after an await); a bad RPC id is an
/// error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_answer_and_bad_ids_are_errors() {
    struct Later;
    impl cohort_channel::AsyncRpcHandler for Later {
        fn reply_request(
            &self,
            _from: Member,
            request: Bytes,
        ) -> cohort_channel::BoxFuture<'static, Option<Bytes>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut r = request.to_vec();
                r.extend_from_slice(b"-later");
                Some(r.into())
            })
        }
    }
    let client = start(builder()).await;
    let server = start(builder()).await;
    let _rs = RpcChannel::new_async(&server, "svc", Arc::new(Later), SendOptions::NONE).unwrap();
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    let r = rpc
        .call(
            &[server.local().clone()],
            Bytes::from_static(b"q"),
            CallOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.replies.len(), 1, "{r:?}");
    assert_eq!(&r.replies[0].payload[..], b"q-later");
    for bad in [Bytes::new(), Bytes::from(vec![b'x'; 256])] {
        let err = RpcChannel::new(&client, bad, Arc::new(Nothing), SendOptions::NONE)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("rpc_id"), "{err}");
    }
    client.stop().await;
    server.stop().await;
}

/// An asynchronous handler's answer that never ends is one of the channel's tasks: the
/// channel's stop ends it (its future is dropped), it does not outlive the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_an_async_handlers_answer_that_never_ends() {
    /// Dropped with the answer's future: says so.
    struct Guard(std::sync::mpsc::Sender<&'static str>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    struct Never(std::sync::Mutex<std::sync::mpsc::Sender<&'static str>>);
    impl cohort_channel::AsyncRpcHandler for Never {
        fn reply_request(
            &self,
            _from: Member,
            _request: Bytes,
        ) -> cohort_channel::BoxFuture<'static, Option<Bytes>> {
            let tx = self.0.lock().unwrap().clone();
            let _ = tx.send("started");
            let guard = Guard(tx);
            Box::pin(async move {
                let _guard = guard;
                std::future::pending::<Option<Bytes>>().await
            })
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let client = start(builder()).await;
    let server = start(builder()).await;
    let _rs = RpcChannel::new_async(
        &server,
        "svc",
        Arc::new(Never(std::sync::Mutex::new(tx))),
        SendOptions::NONE,
    )
    .unwrap();
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    let r = rpc
        .call(
            &[server.local().clone()],
            Bytes::from_static(b"q"),
            CallOptions {
                timeout: Duration::from_millis(200),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(r.replies.is_empty(), "{r:?}");
    let wait = |what| {
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(got, Ok(what));
    };
    wait("started");
    assert!(
        rx.recv_timeout(Duration::from_millis(50)).is_err(),
        "still running before the stop"
    );
    server.stop().await;
    wait("dropped");
    client.stop().await;
}

/// An asynchronous handler's requests start on the channel's task, not on the delivery
/// thread: they are answered while a listener blocks that thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_answer_while_the_delivery_thread_is_busy() {
    struct Blocker(std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>);
    impl cohort_channel::ChannelListener for Blocker {
        fn message_received(
            &self,
            _msg: &cohort_channel::ChannelMessage,
        ) -> Result<(), cohort_channel::ListenerError> {
            if let Some(rx) = self.0.lock().unwrap().take() {
                let _ = rx.recv_timeout(Duration::from_secs(10));
            }
            Ok(())
        }
    }
    struct Echo;
    impl cohort_channel::AsyncRpcHandler for Echo {
        fn reply_request(
            &self,
            _from: Member,
            request: Bytes,
        ) -> cohort_channel::BoxFuture<'static, Option<Bytes>> {
            Box::pin(async move { Some(request) })
        }
    }
    let (release, wait) = std::sync::mpsc::channel();
    let client = start(builder()).await;
    let server =
        start(builder().listener(Arc::new(Blocker(std::sync::Mutex::new(Some(wait)))))).await;
    let _rs = RpcChannel::new_async(&server, "svc", Arc::new(Echo), SendOptions::NONE).unwrap();
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    // An ordinary message parks the server's delivery thread in the listener.
    let o = client
        .send(
            &[server.local().clone()],
            Bytes::from_static(b"block"),
            SendOptions::USE_ACK,
        )
        .await
        .unwrap()
        .await;
    assert!(o.is_ok(), "{o:?}");
    let r = rpc
        .call(
            &[server.local().clone()],
            Bytes::from_static(b"q"),
            CallOptions {
                timeout: Duration::from_secs(3),
                ..CallOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.replies.len(),
        1,
        "answered while the delivery thread is busy: {r:?}"
    );
    let _ = release.send(());
    client.stop().await;
    server.stop().await;
}

/// On a one-thread runtime an asynchronous handler's first poll runs on the channel's own
/// task: a handler that panics there costs its request its reply, never the channel, and a
/// handler that registers another RPC channel there does not deadlock on the hook list.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_or_registering_async_handler_leaves_the_channel_working() {
    struct Moody {
        channel: ChannelHandle,
        extra: std::sync::Mutex<Vec<RpcChannel>>,
    }
    impl cohort_channel::AsyncRpcHandler for Moody {
        fn reply_request(
            &self,
            _from: Member,
            request: Bytes,
        ) -> cohort_channel::BoxFuture<'static, Option<Bytes>> {
            match &request[..] {
                b"panic" => Box::pin(async { panic!("a handler's bug") }),
                b"register" => {
                    // Registered inside the future's first poll, as a handler might lazily.
                    let channel = self.channel.clone();
                    let n = self.extra.lock().unwrap().len();
                    let made = RpcChannel::new(
                        &channel,
                        format!("extra-{n}"),
                        Arc::new(Nothing),
                        SendOptions::NONE,
                    )
                    .unwrap();
                    self.extra.lock().unwrap().push(made);
                    Box::pin(async move { Some(request) })
                }
                _ => Box::pin(async move { Some(request) }),
            }
        }
    }
    let client = start(builder()).await;
    let server = start(builder()).await;
    let handler = Arc::new(Moody {
        channel: server.clone(),
        extra: std::sync::Mutex::new(Vec::new()),
    });
    let _rs = RpcChannel::new_async(&server, "svc", handler.clone(), SendOptions::NONE).unwrap();
    let rpc = RpcChannel::new(&client, "svc", Arc::new(Nothing), SendOptions::NONE).unwrap();
    let call = |body: &'static [u8], timeout_ms: u64| {
        let (rpc, to) = (rpc.clone(), server.local().clone());
        async move {
            rpc.call(
                &[to],
                Bytes::from_static(body),
                CallOptions {
                    timeout: Duration::from_millis(timeout_ms),
                    ..CallOptions::default()
                },
            )
            .await
            .unwrap()
        }
    };
    let r = call(b"panic", 500).await;
    assert!(
        r.replies.is_empty(),
        "no reply from a panicked handler: {r:?}"
    );
    assert_eq!(r.no_reply.len(), 1, "{r:?}");
    let r = tokio::time::timeout(Duration::from_secs(10), call(b"register", 5_000))
        .await
        .expect("no deadlock on the hook list");
    assert_eq!(r.replies.len(), 1, "{r:?}");
    assert_eq!(handler.extra.lock().unwrap().len(), 1);
    let r = call(b"still here", 5_000).await;
    assert_eq!(&r.replies[0].payload[..], b"still here");
    client.stop().await;
    server.stop().await;
}
