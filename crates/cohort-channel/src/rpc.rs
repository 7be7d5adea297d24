//! `RpcChannel`: request / response over a channel (Tribes' `RpcChannel`).
//!
//! A request goes to a set of members; each member's `RpcChannel` with the same RPC id answers
//! through its [`RpcHandler`]. The caller collects replies until its [`ReplyMode`] is
//! satisfied or the timeout passes; a timeout is not an error, it returns what came. A member
//! without a matching `RpcChannel` answers "no RPC channel" at once (the channel does this by
//! itself), which lowers the number of replies expected, so such members never stall a call.
//! Replies after completion go to [`RpcHandler::left_over`].
//!
//! Envelope (inside the data frame's payload): `"CRPC"`, version 1, kind (1 request, 2 reply,
//! 3 no RPC channel), RPC id length (1..=255), RPC id, request id (u64 big-endian), body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cohort_wire::{Member, MemberId, SendOptions};
use tokio::sync::oneshot;

use crate::channel::{ChannelError, ChannelHandle, Claimed};
use crate::listener::{ChannelListener, ChannelMessage, ListenerError};

const MAGIC: &[u8; 4] = b"CRPC";
const VERSION: u8 = 1;
const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const NO_CHANNEL: u8 = 3;

/// When a call is complete (Tribes' reply modes, same numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyMode {
    /// The first reply.
    First = 1,
    /// Replies from at least half of the destinations that can answer.
    Majority = 2,
    /// Every destination that can answer.
    All = 3,
    /// Fire and forget: returns once sent.
    None = 4,
}

/// Answers requests, and hears late replies.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles a request from `from`; `Some` is sent back as the reply.
    fn reply_request(&self, from: &Member, request: &Bytes) -> Option<Bytes>;

    /// A reply that came after its call completed or timed out. Default: ignored.
    fn left_over(&self, from: MemberId, reply: &Bytes) {
        let _ = (from, reply);
    }
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcResponse {
    /// Who answered.
    pub from: MemberId,
    /// The answer.
    pub payload: Bytes,
}

/// How a call sends and waits. `CallOptions::default()`: every reply ([`ReplyMode::All`]),
/// USE_ACK, 3 s.
///
/// ```
/// use std::time::Duration;
/// use cohort_channel::{CallOptions, ReplyMode};
/// let first = CallOptions::default().mode(ReplyMode::First).timeout(Duration::from_millis(500));
/// assert_eq!(first.mode, ReplyMode::First);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOptions {
    /// How many replies end the call.
    pub mode: ReplyMode,
    /// Options of the request (SYNCHRONIZED_ACK is removed: a synchronized ACK would wait on
    /// the reply it carries).
    pub send: SendOptions,
    /// The call returns what came by then (not an error).
    pub timeout: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            mode: ReplyMode::All,
            send: SendOptions::USE_ACK,
            timeout: Duration::from_secs(3),
        }
    }
}

impl CallOptions {
    /// With this reply mode.
    #[must_use]
    pub fn mode(mut self, mode: ReplyMode) -> Self {
        self.mode = mode;
        self
    }

    /// With this timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With these send options.
    #[must_use]
    pub fn send_options(mut self, send: SendOptions) -> Self {
        self.send = send;
        self
    }
}

/// What a call gathered: the replies, and for every other destination why it gave none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallResult {
    /// The replies, in arrival order.
    pub replies: Vec<RpcResponse>,
    /// Destinations the request did not reach (the send failed), with the reason.
    pub failed: Vec<(MemberId, String)>,
    /// Destinations that answered that they run no RPC channel of this id.
    pub no_channel: Vec<MemberId>,
    /// Destinations that had not answered when the call ended (the timeout, or the reply
    /// mode was satisfied first).
    pub no_reply: Vec<MemberId>,
}

struct Call {
    mode: ReplyMode,
    expected: usize,
    replies: Vec<RpcResponse>,
    no_channel: Vec<MemberId>,
    done: Option<oneshot::Sender<()>>,
}

impl Call {
    fn complete(&self) -> bool {
        let n = self.replies.len();
        match self.mode {
            ReplyMode::None => true,
            ReplyMode::First => n >= 1 || self.expected == 0,
            ReplyMode::Majority => 2 * n >= self.expected,
            ReplyMode::All => n >= self.expected,
        }
    }

    fn check(&mut self) {
        if self.complete() {
            if let Some(tx) = self.done.take() {
                let _ = tx.send(());
            }
        }
    }
}

struct Inner {
    channel: ChannelHandle,
    rpc_id: Bytes,
    handler: Handler,
    calls: Mutex<HashMap<u64, Call>>,
    next: AtomicU64,
    reply_options: SendOptions,
    rt: tokio::runtime::Handle,
    /// Limits the warning about panicking handlers.
    warn: cohort_net::WarnLimiter,
}

impl Inner {
    /// A reply (or "no RPC channel") to one of this channel's calls.
    fn on_reply(&self, msg: &ChannelMessage, env: &Envelope<'_>) {
        let body = msg.payload.slice(env.body_at..);
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        match calls.get_mut(&env.id) {
            Some(call) if call.done.is_some() => {
                if env.kind == REPLY {
                    call.replies.push(RpcResponse {
                        from: msg.from,
                        payload: body,
                    });
                } else {
                    call.expected = call.expected.saturating_sub(1);
                    call.no_channel.push(msg.from);
                }
                call.check();
            }
            _ => {
                drop(calls);
                if env.kind == REPLY {
                    if let Handler::Sync(h) = &self.handler {
                        h.left_over(msg.from, &body);
                    }
                }
            }
        }
    }
}

/// Request / response over a [`ChannelHandle`], keyed by an RPC id.
#[derive(Clone)]
pub struct RpcChannel {
    inner: Arc<Inner>,
}

/// Largest number of calls in flight per `RpcChannel`; more fail at once.
pub const MAX_CALLS: usize = 65_536;

/// Requests an asynchronous handler serves at once, per `RpcChannel`; the delivery thread
/// waits for room beyond it (backpressure to the senders).
pub const MAX_ASYNC_REQUESTS: usize = 1024;

/// An RPC handler that answers asynchronously (a database read, a call to another service):
/// each request runs as a task on the channel's runtime, at most [`MAX_ASYNC_REQUESTS`] at
/// once.
///
/// `reply_request` itself is called on the channel's own task while a slot is free (no hop
/// through the delivery thread), so it must return its future at once: do the work inside
/// the future, never before it. On a one-thread runtime (the node's default) the future's
/// first poll runs there too, since it would run on that thread anyway (an answer ready at
/// once is sent without a task of its own), and it becomes a task when it first waits; on a
/// multi-thread runtime it is a task from the start. A panic in a handler costs its request
/// its reply, never the channel. Like any future on a tokio runtime it must not block: put
/// blocking or long CPU work in `spawn_blocking`. Requests run concurrently, in no promised
/// order, and are not shown to the channel's ordinary listeners.
pub trait AsyncRpcHandler: Send + Sync + 'static {
    /// Handles a request from `from`; `Some` is sent back as the reply.
    fn reply_request(
        &self,
        from: Member,
        request: Bytes,
    ) -> crate::BoxFuture<'static, Option<Bytes>>;
}

enum Handler {
    Sync(Arc<dyn RpcHandler>),
    Async(Arc<dyn AsyncRpcHandler>, Arc<tokio::sync::Semaphore>),
}

impl RpcChannel {
    /// Registers an RPC endpoint named `rpc_id` (1 to 255 bytes) on `channel`, answered by a
    /// synchronous `handler` on the channel's delivery thread (it may block, as Tribes'
    /// handlers may). Replies are sent with `reply_options` (Tribes' default: 0, no ACK).
    ///
    /// Fails when `rpc_id` is not 1 to 255 bytes, or outside a tokio runtime (replies are
    /// sent from it).
    pub fn new(
        channel: &ChannelHandle,
        rpc_id: impl Into<Bytes>,
        handler: Arc<dyn RpcHandler>,
        reply_options: SendOptions,
    ) -> Result<Self, ChannelError> {
        Self::with_handler(
            channel,
            rpc_id.into(),
            Handler::Sync(handler),
            reply_options,
        )
    }

    /// [`RpcChannel::new`] with an asynchronous handler: each request runs as a task.
    pub fn new_async(
        channel: &ChannelHandle,
        rpc_id: impl Into<Bytes>,
        handler: Arc<dyn AsyncRpcHandler>,
        reply_options: SendOptions,
    ) -> Result<Self, ChannelError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_ASYNC_REQUESTS));
        Self::with_handler(
            channel,
            rpc_id.into(),
            Handler::Async(handler, limit),
            reply_options,
        )
    }

    fn with_handler(
        channel: &ChannelHandle,
        rpc_id: Bytes,
        handler: Handler,
        reply_options: SendOptions,
    ) -> Result<Self, ChannelError> {
        if !(1..=255).contains(&rpc_id.len()) {
            return Err(ChannelError::Config {
                key: "rpc_id",
                reason: format!("{} bytes; an RPC id is 1 to 255 bytes", rpc_id.len()),
            });
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ChannelError::Config {
            key: "rpc",
            reason: "an RpcChannel is made within a tokio runtime (replies are sent from it)"
                .into(),
        })?;
        let inner = Arc::new(Inner {
            channel: channel.clone(),
            rpc_id,
            handler,
            calls: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            reply_options,
            rt,
            warn: cohort_net::WarnLimiter::new(cohort_net::WARN_INTERVAL),
        });
        channel.add_rpc_listener(Arc::new(Listener(Arc::downgrade(&inner))));
        // Replies complete waiting calls on the owner task, without the listener thread; an
        // asynchronous handler's requests start their task from there too while a slot is
        // free (otherwise they wait on the delivery thread: backpressure).
        let weak = Arc::downgrade(&inner);
        channel.add_claim(Arc::new(move |msg: &ChannelMessage| {
            let Some(inner) = weak.upgrade() else {
                return Claimed::Gone;
            };
            match parse(&msg.payload) {
                Some(env) if env.rpc_id == &inner.rpc_id[..] && env.kind != REQUEST => {
                    inner.on_reply(msg, &env);
                    Claimed::Yes
                }
                Some(env) if env.rpc_id == &inner.rpc_id[..] => {
                    let Handler::Async(h, limit) = &inner.handler else {
                        return Claimed::No;
                    };
                    let (Some(from), Ok(slot)) =
                        (msg.member.clone(), limit.clone().try_acquire_owned())
                    else {
                        return Claimed::No;
                    };
                    let body = msg.payload.slice(env.body_at..);
                    inner.answer_async(h, from, env.id, body, slot);
                    Claimed::Yes
                }
                _ => Claimed::No,
            }
        }));
        Ok(Self { inner })
    }

    /// Sends `request` to `destinations` and collects replies until the reply mode is
    /// satisfied or the timeout passes; returns what came, and for every other destination
    /// why it gave none ([`CallResult`]). An error only when the request could not be sent
    /// at all.
    pub async fn call(
        &self,
        destinations: &[Member],
        request: Bytes,
        how: CallOptions,
    ) -> Result<CallResult, ChannelError> {
        let CallOptions {
            mode,
            send: options,
            timeout,
        } = how;
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + timeout;
        let id = inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = inner.calls.lock().unwrap_or_else(PoisonError::into_inner);
            if calls.len() >= MAX_CALLS {
                return Err(ChannelError::Config {
                    key: "rpc",
                    reason: format!("{MAX_CALLS} calls already in flight"),
                });
            }
            calls.insert(
                id,
                Call {
                    mode,
                    expected: destinations.len(),
                    replies: Vec::new(),
                    no_channel: Vec::new(),
                    done: Some(tx),
                },
            );
        }
        let envelope = encode(REQUEST, &inner.rpc_id, id, &request);
        let options = options.difference(SendOptions::SYNCHRONIZED_ACK);
        let sent = inner.channel.send(destinations, envelope, options).await;
        let receipt = match sent {
            Ok(r) => r,
            Err(e) => {
                self.take(id);
                return Err(e);
            }
        };
        let mut failed: Vec<(MemberId, String)> = Vec::new();
        // One timer for both waits (a timer entry is registered and removed under a lock).
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        let sent = tokio::select! {
            biased;
            outcome = receipt => Some(outcome),
            () = &mut expiry => None,
        };
        if let Some(outcome) = sent {
            // Destinations that never got the request cannot answer.
            for f in outcome.failures() {
                if let Err(e) = &f.result {
                    if !failed.iter().any(|(m, _)| *m == f.member) {
                        failed.push((f.member, e.to_string()));
                    }
                }
            }
            let mut calls = inner.calls.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(call) = calls.get_mut(&id) {
                call.expected = call.expected.saturating_sub(failed.len());
                call.check();
            }
        }
        if mode != ReplyMode::None {
            tokio::select! {
                biased;
                _ = rx => {}
                () = &mut expiry => {}
            }
        }
        let (replies, no_channel) = self.take(id);
        let replies = if mode == ReplyMode::None {
            // Fire and forget: replies, if any, are left-overs.
            Vec::new()
        } else {
            replies
        };
        let answered = |m: &MemberId| {
            replies.iter().any(|r| r.from == *m)
                || no_channel.contains(m)
                || failed.iter().any(|(f, _)| f == m)
        };
        let no_reply = destinations
            .iter()
            .map(|d| d.id)
            .filter(|m| !answered(m))
            .collect();
        Ok(CallResult {
            replies,
            failed,
            no_channel,
            no_reply,
        })
    }

    fn take(&self, id: u64) -> (Vec<RpcResponse>, Vec<MemberId>) {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
            .map(|c| (c.replies, c.no_channel))
            .unwrap_or_default()
    }
}

struct Listener(Weak<Inner>);

struct Envelope<'a> {
    kind: u8,
    rpc_id: &'a [u8],
    id: u64,
    body_at: usize,
}

fn parse(payload: &[u8]) -> Option<Envelope<'_>> {
    if payload.len() < 7 || &payload[..4] != MAGIC || payload[4] != VERSION {
        return None;
    }
    let kind = payload[5];
    let len = usize::from(payload[6]);
    let rpc_id = payload.get(7..7 + len)?;
    let id_bytes: [u8; 8] = payload.get(7 + len..15 + len)?.try_into().ok()?;
    Some(Envelope {
        kind,
        rpc_id,
        id: u64::from_be_bytes(id_bytes),
        body_at: 15 + len,
    })
}

fn encode(kind: u8, rpc_id: &[u8], id: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(15 + rpc_id.len() + body.len());
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u8(u8::try_from(rpc_id.len()).unwrap_or(u8::MAX));
    out.put_slice(&rpc_id[..rpc_id.len().min(255)]);
    out.put_u64(id);
    out.put_slice(body);
    out.freeze()
}

/// The "no RPC channel" answer to `payload` when it is an RPC request (the channel sends it
/// when no listener accepted a request).
/// True when `payload` is an RPC envelope: it goes to RPC channels, never to ordinary
/// listeners.
pub(crate) fn is_envelope(payload: &[u8]) -> bool {
    parse(payload).is_some()
}

pub(crate) fn no_channel_reply(payload: &Bytes) -> Option<Bytes> {
    let env = parse(payload)?;
    (env.kind == REQUEST).then(|| encode(NO_CHANNEL, env.rpc_id, env.id, &[]))
}

impl Inner {
    /// Runs an asynchronous handler's answer to request `id` from `from` as a task holding
    /// `slot`, and sends its reply.
    fn answer_async(
        &self,
        h: &Arc<dyn AsyncRpcHandler>,
        from: Arc<Member>,
        id: u64,
        body: Bytes,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let answer = h.reply_request((*from).clone(), body);
        let (channel, rpc_id, options) = (
            self.channel.clone(),
            self.rpc_id.clone(),
            self.reply_options,
        );
        // On a one-thread runtime (the node's default) the answer would run on this thread
        // anyway: its first poll runs here, and an answer ready at once goes out with no task
        // of its own. On a multi-thread runtime it is a task, free to run on another worker
        // while this one carries on with the channel.
        let inline = self.rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread;
        let task = async move {
            if let Some(reply) = answer.await {
                let envelope = encode(REPLY, &rpc_id, id, &reply);
                let _ = channel.send(&[(*from).clone()], envelope, options).await;
            }
            drop(slot);
        };
        let ran = run_now_or_spawn(&self.rt, inline, task, |t| {
            self.channel.spawn_task(&self.rt, t);
        });
        if ran.is_err() {
            self.handler_panicked();
        }
    }

    /// A handler panicked in its first poll: the request gets no reply (its caller sees
    /// none), as when its task panics.
    fn handler_panicked(&self) {
        if let Some(suppressed) = self
            .warn
            .allow("rpc_handler_panicked", std::time::Instant::now())
        {
            tracing::warn!(
                rpc_id = %String::from_utf8_lossy(&self.rpc_id),
                suppressed,
                "an RPC handler panicked; its request gets no reply"
            );
        }
    }
}

/// The task of [`run_now_or_spawn`] panicked in its first poll (and was dropped).
#[derive(Debug)]
struct Panicked;

/// With `inline`, polls `task` once here and spawns it on `rt` only if it must wait: an
/// answer that is ready at once is then handed to the channel without a task of its own
/// (from the channel's task, its send command is taken in the owner's next pass, with no
/// hop). A task that waits is polled again by the runtime with a real waker, which replaces
/// the no-op one of the first poll. A panic in that first poll is caught (the channel's task
/// must survive a handler's bug) and the task dropped. Without `inline`, spawns it. `spawn`
/// starts it as one of the channel's tasks (bounded, aborted by the channel's stop).
fn run_now_or_spawn<F: std::future::Future<Output = ()> + Send + 'static>(
    rt: &tokio::runtime::Handle,
    inline: bool,
    task: F,
    spawn: impl FnOnce(std::pin::Pin<Box<F>>),
) -> Result<(), Panicked> {
    let mut task = Box::pin(task);
    if !inline {
        spawn(task);
        return Ok(());
    }
    // The delivery thread is outside the runtime: in it for the poll (timers, spawns).
    let _in_runtime = rt.enter();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.as_mut().poll(&mut cx))) {
        Ok(std::task::Poll::Ready(())) => Ok(()),
        Ok(std::task::Poll::Pending) => {
            spawn(task);
            Ok(())
        }
        Err(_) => Err(Panicked),
    }
}

impl ChannelListener for Listener {
    fn accept(&self, msg: &ChannelMessage) -> bool {
        let Some(inner) = self.0.upgrade() else {
            return false;
        };
        parse(&msg.payload).is_some_and(|e| e.rpc_id == &inner.rpc_id[..])
    }

    fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
        let Some(inner) = self.0.upgrade() else {
            return Ok(());
        };
        let Some(env) = parse(&msg.payload) else {
            return Ok(());
        };
        let body = msg.payload.slice(env.body_at..);
        match env.kind {
            REQUEST => {
                let Some(from) = msg.member.clone() else {
                    return Err("RPC request from a sender with no member record".into());
                };
                let (rpc_id, id) = (inner.rpc_id.clone(), env.id);
                let channel = inner.channel.clone();
                let options = inner.reply_options;
                match &inner.handler {
                    Handler::Sync(h) => {
                        if let Some(reply) = h.reply_request(&from, &body) {
                            let envelope = encode(REPLY, &rpc_id, id, &reply);
                            // The channel's own send, no handler code: polled here.
                            let task = async move {
                                let _ = channel.send(&[(*from).clone()], envelope, options).await;
                            };
                            let _ = run_now_or_spawn(&inner.rt, true, task, |t| {
                                inner.channel.spawn_task(&inner.rt, t);
                            });
                        }
                    }
                    Handler::Async(h, limit) => {
                        // Backpressure: the delivery thread waits for a free slot.
                        let Ok(slot) = inner.rt.block_on(limit.clone().acquire_owned()) else {
                            return Ok(());
                        };
                        inner.answer_async(h, from, id, body, slot);
                    }
                }
            }
            REPLY | NO_CHANNEL => inner.on_reply(msg, &env),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_work_runs_in_the_call_and_waiting_work_becomes_a_task() {
        use std::sync::atomic::AtomicBool;
        let rt = tokio::runtime::Handle::current();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let spawn = |t| drop(tokio::runtime::Handle::current().spawn(t));
        run_now_or_spawn(
            &rt,
            true,
            async move { r.store(true, Ordering::SeqCst) },
            spawn,
        )
        .unwrap();
        assert!(ran.load(Ordering::SeqCst), "ran before the call returned");

        // Waits on a full bounded queue (as a reply's send waits on a full command queue):
        // the first poll registers the no-op waker, the spawned task must still finish once
        // room is made after it was first polled by the runtime.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u8>(1);
        tx.send(0).await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let spawn = |t| drop(tokio::runtime::Handle::current().spawn(t));
        run_now_or_spawn(
            &rt,
            true,
            async move {
                tx.send(1).await.unwrap();
                r.store(true, Ordering::SeqCst);
            },
            spawn,
        )
        .unwrap();
        // Let the spawned task run and park on the full queue before room is made.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!ran.load(Ordering::SeqCst), "the queue is still full");
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await,
            Ok(Some(1)),
            "the waiting rest ran once woken"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while !ran.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("and finished");
    }

    #[tokio::test]
    async fn a_panic_in_the_first_poll_is_caught_and_spawned_work_is_not_polled_here() {
        let rt = tokio::runtime::Handle::current();
        let r = run_now_or_spawn(&rt, true, async { panic!("a handler's bug") }, |t| {
            drop(tokio::runtime::Handle::current().spawn(t));
        });
        assert!(r.is_err(), "caught, reported");
        let (tx, rx) = oneshot::channel();
        let spawn = |t| drop(tokio::runtime::Handle::current().spawn(t));
        run_now_or_spawn(
            &rt,
            false,
            async move {
                let _ = tx.send(std::thread::current().id());
            },
            spawn,
        )
        .unwrap();
        let mut rx = rx;
        assert!(rx.try_recv().is_err(), "not inline: not run in the call");
        let id = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("spawned and run")
            .unwrap();
        assert_eq!(id, std::thread::current().id(), "one-thread test runtime");
    }

    #[test]
    fn envelopes_round_trip_and_garbage_is_not_rpc() {
        let e = encode(REQUEST, b"map", 7, b"body");
        let p = parse(&e).unwrap();
        assert_eq!(
            (p.kind, p.rpc_id, p.id, &e[p.body_at..]),
            (REQUEST, &b"map"[..], 7, &b"body"[..])
        );
        let nc = no_channel_reply(&e).unwrap();
        assert_eq!(parse(&nc).unwrap().kind, NO_CHANNEL);
        assert!(no_channel_reply(&nc).is_none(), "only requests get one");
        for garbage in [
            &b""[..],
            b"CRPC",
            b"CRPC\x01\x01\xff",
            b"hello world, not rpc",
        ] {
            assert!(parse(garbage).is_none());
        }
    }

    #[test]
    fn reply_modes_complete_as_tribes_counts() {
        let call = |mode, expected, n| Call {
            mode,
            expected,
            replies: vec![
                RpcResponse {
                    from: MemberId::from_bytes([0; 16]),
                    payload: Bytes::new()
                };
                n
            ],
            no_channel: Vec::new(),
            done: None,
        };
        assert!(!call(ReplyMode::First, 3, 0).complete());
        assert!(call(ReplyMode::First, 3, 1).complete());
        assert!(!call(ReplyMode::Majority, 4, 1).complete());
        assert!(call(ReplyMode::Majority, 4, 2).complete());
        assert!(!call(ReplyMode::All, 3, 2).complete());
        assert!(call(ReplyMode::All, 3, 3).complete());
        assert!(
            call(ReplyMode::All, 0, 0).complete(),
            "nobody left to answer"
        );
    }
}
