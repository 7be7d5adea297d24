//! Throughput and latency between two processes: a sink (`cohort bench-sink`) and this
//! process. Measures Cohort's channel in each mode and plain TCP on the same loopback
//! (length-prefixed frames, written batched through a buffer or with one write per message;
//! a ping-pong for latency), so every figure has its physical limit beside it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use cohort_channel::{ChannelListener, ChannelMessage, GroupChannel, ListenerError};
use cohort_net::TokioNet;
use cohort_transport::TransportConfig;
use cohort_wire::{Member, MemberId, SendOptions, Services};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// ASYNCHRONOUS.
    Async,
    /// USE_ACK.
    Ack,
    /// USE_ACK | SYNCHRONIZED_ACK.
    SyncAck,
    /// ASYNCHRONOUS through `send_many`, batches of [`BATCH`].
    AsyncBatch,
    /// USE_ACK through `send_many`, batches of [`BATCH`].
    AckBatch,
    /// Plain TCP, no framing beyond a length prefix, written through a 256 KiB buffer.
    RawTcp,
    /// Plain TCP with one `write` per message (`TCP_NODELAY`).
    RawTcpWrite,
}

impl Mode {
    /// Parses `async`, `ack`, `syncack`, `raw-tcp`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "async" => Self::Async,
            "ack" => Self::Ack,
            "syncack" => Self::SyncAck,
            "async-batch" => Self::AsyncBatch,
            "ack-batch" => Self::AckBatch,
            "raw-tcp" => Self::RawTcp,
            "raw-tcp-write" => Self::RawTcpWrite,
            _ => bail!(
                "unknown mode {s:?} (async, ack, syncack, async-batch, ack-batch, raw-tcp, raw-tcp-write)"
            ),
        })
    }

    fn options(self) -> SendOptions {
        match self {
            Self::Async | Self::AsyncBatch => SendOptions::ASYNCHRONOUS,
            Self::Ack | Self::AckBatch => SendOptions::USE_ACK,
            Self::SyncAck => SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
            Self::RawTcp | Self::RawTcpWrite => SendOptions::NONE,
        }
    }

    /// The name in RESULT lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Async => "async",
            Self::Ack => "ack",
            Self::SyncAck => "syncack",
            Self::AsyncBatch => "async-batch",
            Self::AckBatch => "ack-batch",
            Self::RawTcp => "batched",
            Self::RawTcpWrite => "write",
        }
    }

    fn is_raw(self) -> bool {
        matches!(self, Self::RawTcp | Self::RawTcpWrite)
    }
}

/// Messages per `send_many` call in the batch modes.
pub const BATCH: u64 = 256;

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Mode.
    pub mode: Mode,
    /// Payload size.
    pub size: usize,
    /// Messages.
    pub count: u64,
    /// Seconds from the first send to the sink's last receipt.
    pub secs: f64,
    /// Messages the sink saw out of order.
    pub reordered: u64,
    /// Messages that failed, or arrived malformed.
    pub bad: u64,
    /// CPU time (user and system) the sending process spent from the first send to the
    /// last completion, when `/proc` tells it.
    pub cpu: Option<Duration>,
    /// CPU time the sink process spent from listening to its last message.
    pub sink_cpu: Option<Duration>,
}

/// CPU time (user and system, every thread, finished ones included) this process has spent:
/// `/proc/self/stat`'s `utime` and `stime`, in the kernel's `USER_HZ` ticks (100 per second on
/// Linux, whatever the kernel's own tick rate). `None` where there is no `/proc`. A figure that
/// moves less than throughput when the machine is shared: it counts the work a message costs,
/// not the time the process waited for a CPU.
pub fn process_cpu() -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / USER_HZ))
}

/// When a measurement started: the wall clock and this process's CPU time.
#[derive(Clone, Copy)]
struct Clocks {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clocks {
    fn start() -> Self {
        Self {
            cpu: process_cpu(),
            wall: Instant::now(),
        }
    }

    /// The CPU time this process spent since [`Clocks::start`], when `/proc` tells it.
    fn cpu_used(self) -> Option<Duration> {
        self.cpu
            .zip(process_cpu())
            .map(|(a, b)| b.saturating_sub(a))
    }
}

impl std::fmt::Display for BenchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let imp = if self.mode.is_raw() {
            "raw-tcp"
        } else {
            "cohort"
        };
        let mode = self.mode.name();
        let rate = self.count as f64 / self.secs;
        write!(
            f,
            "RESULT impl={imp} test=tput mode={mode} size={} count={} secs={:.3} msgs_per_s={:.0} mb_per_s={:.1} reordered={} bad={}",
            self.size,
            self.count,
            self.secs,
            rate,
            rate * self.size as f64 / 1e6,
            self.reordered,
            self.bad
        )?;
        let per_msg = |cpu: Duration| cpu.as_secs_f64() * 1e6 / self.count.max(1) as f64;
        if let Some(cpu) = self.cpu {
            write!(f, " cpu_us_per_msg={:.3}", per_msg(cpu))?;
        }
        if let Some(cpu) = self.sink_cpu {
            write!(f, " sink_cpu_us_per_msg={:.3}", per_msg(cpu))?;
        }
        Ok(())
    }
}

/// The sink process: counts messages and, once `count` arrived, prints
/// `done <reordered> <bad> <cpu_us>` (the last is the CPU time it spent from listening on, `-`
/// when unknown). Announces `listening <addr>` first.
pub async fn sink(raw: bool, count: u64, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let clocks = Clocks::start();
    let cpu_used = move || {
        clocks
            .cpu_used()
            .map_or_else(|| "-".to_owned(), |cpu| cpu.as_micros().to_string())
    };
    if raw {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pending = Vec::new();
        let (mut seen, mut reordered) = (0u64, 0u64);
        while seen < count {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut at = 0;
            while pending.len() - at >= 4 {
                let len = u32::from_be_bytes(pending[at..at + 4].try_into()?) as usize;
                if pending.len() - at < 4 + len {
                    break;
                }
                let seq = u64::from_be_bytes(pending[at + 4..at + 12].try_into()?);
                reordered += u64::from(seq != seen);
                seen += 1;
                at += 4 + len;
            }
            pending.drain(..at);
        }
        writeln!(out, "done {reordered} {} {}", count - seen, cpu_used())?;
        out.flush()?;
        return Ok(());
    }
    struct Count {
        seen: AtomicU64,
        reordered: AtomicU64,
        done: tokio::sync::Notify,
        count: u64,
    }
    impl ChannelListener for Count {
        fn message_received(&self, msg: &ChannelMessage) -> Result<(), ListenerError> {
            let seq = u64::from_be_bytes(msg.payload[..8].try_into()?);
            let seen = self.seen.fetch_add(1, Ordering::Relaxed);
            if seq != seen {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
            if seen + 1 == self.count {
                self.done.notify_one();
            }
            Ok(())
        }

        // Two atomic adds and a notify: it never waits.
        fn may_block(&self) -> bool {
            false
        }
    }
    let counter = Arc::new(Count {
        seen: AtomicU64::new(0),
        reordered: AtomicU64::new(0),
        done: tokio::sync::Notify::new(),
        count,
    });
    let ch = bare_channel(Some(counter.clone())).await?;
    let local = ch.local();
    writeln!(out, "listening {}", SocketAddr::new(local.addr, local.port))?;
    out.flush()?;
    counter.done.notified().await;
    writeln!(
        out,
        "done {} 0 {}",
        counter.reordered.load(Ordering::Relaxed),
        cpu_used()
    )?;
    out.flush()?;
    // Keep serving: the last SYNCHRONIZED_ACKs leave after the listener returned, and the
    // sender still awaits them. The sender kills this process when it is done.
    let _keep = ch;
    std::future::pending::<()>().await;
    Ok(())
}

/// A channel with transport only (no membership, no interceptors) on an ephemeral port.
async fn bare_channel(
    listener: Option<Arc<dyn ChannelListener>>,
) -> anyhow::Result<cohort_channel::ChannelHandle> {
    let mut builder = GroupChannel::builder()
        .transport(TransportConfig {
            port: 0,
            // `COHORT_BENCH_DELAYED_ACKS=0` measures without `transport.delayed_acks`.
            delayed_acks: std::env::var("COHORT_BENCH_DELAYED_ACKS").map_or(true, |v| v != "0"),
            // `COHORT_BENCH_INBOUND_QUEUE=N` measures with another `transport.inbound_queue`.
            inbound_queue: env_bytes("COHORT_BENCH_INBOUND_QUEUE")
                .unwrap_or(TransportConfig::default().inbound_queue),
            ..TransportConfig::default()
        })
        .services(Services::SND_RX | Services::SND_TX);
    if let Some(l) = listener {
        builder = builder.listener(l);
    }
    // `COHORT_BENCH_ASYNC_QUEUE_BYTES=N` measures with another `channel.async_queue_bytes`.
    if let Some(q) = env_bytes("COHORT_BENCH_ASYNC_QUEUE_BYTES") {
        builder.config_mut().async_queue_bytes = q;
    }
    Ok(builder.start_with(TokioNet, &mut rand::rngs::OsRng).await?)
}

/// A byte count from the environment variable `name`, when set and a number.
fn env_bytes(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The sink as a destination: its address, and an id the sender need not know.
fn sink_member(addr: SocketAddr) -> Member {
    Member::new(MemberId::from_bytes([0; 16]), addr.ip(), addr.port())
}

/// Bytes of messages a throughput run keeps outstanding: enough to keep loopback busy (an
/// ACK comes back within a few hundred 1 KiB messages), few enough that a message's state is
/// still in the CPU's caches when its ACK completes it. 32 MiB cost the ACKed modes 10–25 %
/// (docs/BENCHMARKS.md, issue 13's seventh stop). `COHORT_BENCH_WINDOW_BYTES=N` sets another.
const RECEIPT_WINDOW_BYTES: usize = 4 << 20;

/// Where the channel modes' payloads come from: each is the template with its sequence number
/// in front, written into a shared chunk of [`PAYLOAD_CHUNK`] bytes and split off it (up to
/// [`CHUNKED_MAX`] bytes; a larger one has a buffer of its own), as an application that
/// serializes its messages into one buffer would. A payload allocated and
/// copied on its own (`Bytes::copy_from_slice`) costs the sending process about 1,000
/// instructions per 1 KiB message (a glibc `malloc` that misses its thread cache, and the
/// `free` when the frame is written): the application's cost, which plain TCP's loop, writing
/// straight into its buffer, never pays (docs/BENCHMARKS.md, issue 13's eighth stop).
struct Payloads {
    template: Vec<u8>,
    chunk: BytesMut,
}

/// The size of the chunks [`Payloads`] carves messages from.
const PAYLOAD_CHUNK: usize = 1 << 20;

/// The largest payload carved from a shared chunk; a larger one gets a buffer of its own, as
/// an application would give it. 64 KiB payloads in 1 MiB chunks halved the 64 KiB figures:
/// chunks freed and allocated at that rate were unmapped and faulted in again, page by page
/// (docs/BENCHMARKS.md, issue 13's eighth stop).
const CHUNKED_MAX: usize = 16 * 1024;

impl Payloads {
    fn new(template: Vec<u8>) -> Self {
        Self {
            template,
            chunk: BytesMut::new(),
        }
    }

    /// The payload of message `seq`.
    fn next(&mut self, seq: u64) -> Bytes {
        let size = self.template.len();
        if self.chunk.capacity() < size {
            self.chunk = BytesMut::with_capacity(if size > CHUNKED_MAX {
                size
            } else {
                PAYLOAD_CHUNK
            });
        }
        self.chunk.extend_from_slice(&seq.to_be_bytes());
        self.chunk.extend_from_slice(&self.template[8..]);
        self.chunk.split().freeze()
    }
}

fn count_failures(o: &cohort_channel::SendOutcome, first: &mut Option<String>) -> u64 {
    if let Some(f) = o.failures().next() {
        first.get_or_insert_with(|| format!("{:?}", f.result));
        return 1;
    }
    0
}

struct Sink {
    child: KillOnDrop,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

/// Kills and reaps the sink process (by its handle) when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cohort bench-sink ARGS` and reads the address it announces.
fn spawn_sink(args: &[String]) -> anyhow::Result<(Sink, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bench-sink")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("sink stdout")?;
    let mut sink = Sink {
        child: KillOnDrop(child),
        lines: BufReader::new(stdout).lines(),
    };
    let line = sink.lines.next().context("sink exited")??;
    let addr = line
        .strip_prefix("listening ")
        .context("unexpected sink line")?
        .parse()?;
    Ok((sink, addr))
}

fn start_sink(mode: Mode, count: u64) -> anyhow::Result<(Sink, SocketAddr)> {
    let mut args = vec!["--count".to_owned(), count.to_string()];
    if mode.is_raw() {
        args.push("--raw".into());
    }
    spawn_sink(&args)
}

/// Runs one measurement against a fresh sink process.
pub async fn run(mode: Mode, size: usize, count: u64) -> anyhow::Result<BenchResult> {
    let size = size.max(8);
    let (sink, addr) = start_sink(mode, count)?;
    let mut payload = vec![0xA5u8; size];
    let mut bad = 0u64;
    let mut first_error: Option<String> = None;
    let started;
    if mode == Mode::RawTcpWrite {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut frame = Vec::with_capacity(4 + size);
        started = Clocks::start();
        for i in 0..count {
            payload[..8].copy_from_slice(&i.to_be_bytes());
            frame.clear();
            frame.extend_from_slice(&u32::try_from(size)?.to_be_bytes());
            frame.extend_from_slice(&payload);
            s.write_all(&frame).await?;
        }
        s.flush().await?;
    } else if mode == Mode::RawTcp {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let mut w = BufWriter::with_capacity(256 * 1024, s);
        started = Clocks::start();
        for i in 0..count {
            payload[..8].copy_from_slice(&i.to_be_bytes());
            w.write_all(&u32::try_from(size)?.to_be_bytes()).await?;
            w.write_all(&payload).await?;
        }
        w.flush().await?;
    } else {
        let ch = bare_channel(None).await?;
        let to = [sink_member(addr)];
        let options = mode.options();
        started = Clocks::start();
        let mut receipts = std::collections::VecDeque::new();
        // Receipts outstanding, in messages: `RECEIPT_WINDOW_BYTES`' worth, at least 16 (the
        // transport refuses more than `max_peer_queue_bytes` of unwritten frames per peer).
        let window = (env_bytes("COHORT_BENCH_WINDOW_BYTES").unwrap_or(RECEIPT_WINDOW_BYTES)
            / size)
            .clamp(16, 8192);
        let batched = matches!(mode, Mode::AsyncBatch | Mode::AckBatch);
        let mut payloads = Payloads::new(payload);
        let mut i = 0;
        while batched && i < count {
            let n = BATCH.min(count - i);
            let batch: Vec<Bytes> = (i..i + n).map(|k| payloads.next(k)).collect();
            i += n;
            receipts.push_back(ch.send_many(&to, batch, options).await?);
            let in_batches = (window / usize::try_from(BATCH).unwrap_or(1)).max(2);
            while receipts.len() > in_batches {
                let o = receipts.pop_front().context("receipt")?.await;
                bad += count_failures(&o, &mut first_error);
            }
        }
        for i in (0..count).filter(|_| !batched) {
            let r = ch.send(&to, payloads.next(i), options).await?;
            receipts.push_back(r);
            if receipts.len() >= window {
                while receipts.len() > window / 2 {
                    let o = receipts.pop_front().context("receipt")?.await;
                    bad += count_failures(&o, &mut first_error);
                }
            }
        }
        for r in receipts {
            bad += count_failures(&r.await, &mut first_error);
        }
        ch.stop().await;
        // ASYNCHRONOUS failures surface through the channel's counters (read after the
        // drain in `stop`, which is when the last ones happen).
        bad += ch.stats().transport.send_failures;
    }
    let cpu = started.cpu_used();
    if bad > 0 {
        bail!(
            "{bad} of {count} messages failed ({}, {size} bytes); first: {}",
            mode.name(),
            first_error
                .as_deref()
                .unwrap_or("a send failure counted by the transport")
        );
    }
    let Sink { child, mut lines } = sink;
    // The child is killed on every path out of here (the reader then sees EOF and ends).
    let _child = child;
    let line = tokio::task::spawn_blocking(move || lines.next());
    let line = tokio::time::timeout(Duration::from_secs(300), line)
        .await
        .context("the sink did not finish within 300 s")??;
    let secs = started.wall.elapsed().as_secs_f64();
    let line = line.context("sink exited")??;
    let mut parts = line.split_whitespace().skip(1);
    let reordered: u64 = parts.next().context("done line")?.parse()?;
    let missing: u64 = parts.next().context("done line")?.parse()?;
    let sink_cpu = parts
        .next()
        .and_then(|us| us.parse().ok())
        .map(Duration::from_micros);
    Ok(BenchResult {
        mode,
        size,
        count,
        secs,
        reordered,
        bad: bad + missing,
        cpu,
        sink_cpu,
    })
}

/// What a latency run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `RpcChannel::call` to one member, first reply (request and reply without ACK).
    Rpc,
    /// A plain TCP ping-pong of length-prefixed frames.
    RawTcp,
}

/// One latency measurement: round trips, sorted.
#[derive(Clone, Debug)]
pub struct LatencyResult {
    /// What was measured.
    pub api: Api,
    /// Payload size.
    pub size: usize,
    /// Round-trip times in microseconds, ascending.
    pub rtt_us: Vec<f64>,
}

impl LatencyResult {
    /// The nearest-rank quantile, `per_mille` of 1000 (500 = p50).
    fn quantile(&self, per_mille: usize) -> f64 {
        if self.rtt_us.is_empty() {
            return 0.0;
        }
        let last = self.rtt_us.len() - 1;
        self.rtt_us[(last * per_mille.min(1000) + 500) / 1000]
    }
}

impl std::fmt::Display for LatencyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (imp, api) = match self.api {
            Api::Rpc => ("cohort", "rpc"),
            Api::RawTcp => ("raw-tcp", "pingpong"),
        };
        write!(
            f,
            "RESULT impl={imp} test=latency api={api} size={} count={} p50_us={:.1} p99_us={:.1} max_us={:.1}",
            self.size,
            self.rtt_us.len(),
            self.quantile(500),
            self.quantile(990),
            self.rtt_us.last().copied().unwrap_or(0.0)
        )
    }
}

/// Round trips made before measuring (connections, allocations, caches).
const WARM_UP: u64 = 1000;
/// The RPC id of the echo endpoint.
const RPC_ID: &[u8] = b"bench-echo";

/// The echo sink: answers every raw frame, or every RPC, with the same bytes, until killed.
/// Announces `listening <addr>` first.
pub async fn echo_sink(raw: bool, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    if raw {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        writeln!(out, "listening {}", listener.local_addr()?)?;
        out.flush()?;
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut frame = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).await.is_err() {
                return Ok(());
            }
            let n = u32::from_be_bytes(len) as usize;
            if n > 64 << 20 {
                bail!("echo sink: frame of {n} bytes");
            }
            frame.resize(4 + n, 0);
            frame[..4].copy_from_slice(&len);
            s.read_exact(&mut frame[4..]).await?;
            s.write_all(&frame).await?;
        }
    }
    // An asynchronous handler, as a tokio server would write it: its requests start on the
    // channel's task, without the delivery thread's two hops (a synchronous `RpcHandler`
    // runs on that thread, as Tribes' handlers do, and pays them).
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
    let ch = bare_channel(None).await?;
    let _rpc =
        cohort_channel::RpcChannel::new_async(&ch, RPC_ID, Arc::new(Echo), SendOptions::NONE)?;
    let local = ch.local();
    writeln!(out, "listening {}", SocketAddr::new(local.addr, local.port))?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}

fn start_echo_sink(api: Api) -> anyhow::Result<(Sink, SocketAddr)> {
    let mut args = vec!["--echo".to_owned()];
    if api == Api::RawTcp {
        args.push("--raw".into());
    }
    spawn_sink(&args)
}

/// Measures `count` round trips of `size` bytes against a fresh echo sink process.
pub async fn latency(api: Api, size: usize, count: u64) -> anyhow::Result<LatencyResult> {
    let (_sink, addr) = start_echo_sink(api)?;
    let payload = vec![0x5Au8; size];
    let mut rtt_us = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    match api {
        Api::RawTcp => {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut frame = u32::try_from(size)?.to_be_bytes().to_vec();
            frame.extend_from_slice(&payload);
            let mut back = vec![0u8; frame.len()];
            for i in 0..WARM_UP + count {
                let t = Instant::now();
                s.write_all(&frame).await?;
                s.read_exact(&mut back).await?;
                if i >= WARM_UP {
                    rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
                }
                if back != frame {
                    bail!("raw echo returned other bytes");
                }
            }
        }
        Api::Rpc => {
            struct Ignore;
            impl cohort_channel::RpcHandler for Ignore {
                fn reply_request(&self, _from: &Member, _request: &Bytes) -> Option<Bytes> {
                    None
                }
            }
            let ch = bare_channel(None).await?;
            let rpc =
                cohort_channel::RpcChannel::new(&ch, RPC_ID, Arc::new(Ignore), SendOptions::NONE)?;
            let to = [sink_member(addr)];
            let request = Bytes::from(payload);
            for i in 0..WARM_UP + count {
                let t = Instant::now();
                let replies = rpc
                    .call(
                        &to,
                        request.clone(),
                        cohort_channel::CallOptions {
                            mode: cohort_channel::ReplyMode::First,
                            send: SendOptions::NONE,
                            timeout: Duration::from_secs(5),
                        },
                    )
                    .await?
                    .replies;
                if i >= WARM_UP {
                    rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
                }
                match replies.first() {
                    Some(r) if r.payload.len() == size => {}
                    other => bail!("RPC {i}: no echo within 5 s ({other:?})"),
                }
            }
            ch.stop().await;
        }
    }
    rtt_us.sort_by(f64::total_cmp);
    Ok(LatencyResult { api, size, rtt_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_counts_the_work_this_process_does() {
        let start = process_cpu().expect("/proc/self/stat on Linux");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while process_cpu().expect("still readable") < start + Duration::from_millis(50) {
            for i in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert!(Instant::now() < deadline, "no CPU time counted");
        }
        std::hint::black_box(x);
    }

    #[test]
    fn a_result_line_gives_cpu_per_message_when_known() {
        let mut r = BenchResult {
            mode: Mode::Async,
            size: 1024,
            count: 1000,
            secs: 0.5,
            reordered: 0,
            bad: 0,
            cpu: Some(Duration::from_millis(2)),
            sink_cpu: None,
        };
        let line = r.to_string();
        assert!(line.ends_with("bad=0 cpu_us_per_msg=2.000"), "{line}");
        r.cpu = None;
        assert!(r.to_string().ends_with("bad=0"));
    }
}
