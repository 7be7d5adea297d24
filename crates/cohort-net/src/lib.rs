//! The network seam of Cohort's drivers.
//!
//! Drivers are generic over [`Net`], so the same driver code runs on real sockets
//! ([`TokioNet`], tokio + socket2) and under deterministic simulation (`TurmoilNet` in
//! `cohort-sim`). A cargo feature would be no substitute: features unify across a workspace
//! build and would leak simulated sockets into real-socket tests.
//!
//! The wall clock is part of the seam too ([`Net::wall_clock_ms`]), so that simulated runs
//! advertise simulated start times.
//!
//! ```
//! use std::net::{Ipv4Addr, SocketAddr};
//! use cohort_net::{Net, TokioNet, UdpSocket};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let net = TokioNet;
//! let a = net.bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
//! let b = net.bind_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
//! a.send_to(b"ping", b.local_addr()?).await?;
//! let mut buf = [0u8; 16];
//! let (n, from) = b.recv_from(&mut buf).await?;
//! assert_eq!((&buf[..n], from), (&b"ping"[..], a.local_addr()?));
//! # Ok(())
//! # }
//! ```

mod alarm;
mod warn;

pub use alarm::{Alarm, Ring};
pub use warn::{WARN_INTERVAL, WarnLimiter};

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};

/// How to open a multicast socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulticastOptions {
    /// Group to join and send to.
    pub group: Ipv4Addr,
    /// Group port, shared by every member on the host (SO_REUSEADDR / SO_REUSEPORT).
    pub port: u16,
    /// Interface to join on and send from.
    pub interface: Ipv4Addr,
    /// Multicast TTL (0 keeps datagrams on the host).
    pub ttl: u32,
    /// Deliver our own datagrams back to us (needed for several members on one host).
    pub loopback: bool,
}

/// A UDP socket as drivers use it.
pub trait UdpSocket: Send + Sync + 'static {
    /// Sends one datagram.
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;

    /// Receives one datagram.
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A byte stream (a TCP connection) as drivers use it.
pub trait TcpStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> TcpStream for T {}

/// A listening TCP socket.
pub trait TcpListener: Send + Sync + 'static {
    /// The connection type it accepts.
    type Stream: TcpStream;

    /// Accepts one connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send + '_;

    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// The sockets and clock a driver needs.
pub trait Net: Clone + Send + Sync + 'static {
    /// The UDP socket type.
    type UdpSocket: UdpSocket;
    /// The TCP listener type.
    type TcpListener: TcpListener<Stream = Self::TcpStream>;
    /// The TCP connection type.
    type TcpStream: TcpStream;

    /// Binds a TCP listener (SO_REUSEADDR on, as Tribes' `soReuseAddress`).
    fn bind_tcp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send;

    /// Opens a TCP connection with TCP_NODELAY set (Tribes' `tcpNoDelay`). No timeout of its
    /// own: callers wrap it in theirs.
    fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Binds a unicast UDP socket.
    fn bind_udp(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send;

    /// Opens a socket joined to a multicast group, bound to the group port.
    fn bind_multicast(
        &self,
        opts: &MulticastOptions,
    ) -> impl Future<Output = io::Result<Self::UdpSocket>> + Send;

    /// Wall-clock time in ms since the Unix epoch.
    fn wall_clock_ms(&self) -> u64;

    /// This host's name, for member records.
    fn host_name(&self) -> String;

    /// Asks the kernel to delay the TCP acknowledgements of `stream` (Linux: `TCP_QUICKACK`
    /// off), so that they ride on data going back or on the next delayed ACK instead of each
    /// going out alone. The kernel turns this off again by itself (when a delayed ACK timer
    /// fires), so callers repeat it after each read. Best effort: no error, and a no-op where
    /// there is no such control (other systems, simulated networks).
    fn delay_acks(_stream: &Self::TcpStream) {}
}

/// Real sockets: tokio, with socket options set through socket2.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioNet;

impl UdpSocket for tokio::net::UdpSocket {
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        tokio::net::UdpSocket::send_to(self, buf, to)
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// Binds a TCP listener on `ip`, trying `port`, `port + 1`, ... up to `tries` ports (Tribes'
/// `autoBind`); port 0 means one try on a port the OS picks. Returns the last error when no
/// port could be bound.
pub async fn bind_tcp_auto<N: Net>(
    net: &N,
    ip: std::net::IpAddr,
    port: u16,
    tries: u16,
) -> io::Result<N::TcpListener> {
    let tries = if port == 0 { 1 } else { tries.max(1) };
    let mut last = None;
    for i in 0..tries {
        let Some(p) = port.checked_add(i) else {
            break;
        };
        match net.bind_tcp(SocketAddr::new(ip, p)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port in range")))
}

/// Creates a multicast socket with socket2 (blocking calls only; no IO happens here).
pub fn multicast_socket(opts: &MulticastOptions) -> io::Result<std::net::UdpSocket> {
    if !opts.group.is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a multicast address", opts.group),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    // Binding to the group address filters out unicast traffic to the port; fall back to the
    // wildcard address where the platform refuses (as Tribes does).
    let group_addr = SocketAddrV4::new(opts.group, opts.port);
    if socket.bind(&group_addr.into()).is_err() {
        socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, opts.port).into())?;
    }
    socket.join_multicast_v4(&opts.group, &opts.interface)?;
    socket.set_multicast_if_v4(&opts.interface)?;
    socket.set_multicast_ttl_v4(opts.ttl)?;
    socket.set_multicast_loop_v4(opts.loopback)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// True when a datagram sent to the group comes back within `timeout`: the host routes
/// multicast over the configured interface. Sends one 5-byte datagram with TTL 0, so nothing
/// leaves the host whatever the routes. Any datagram received proves the route (another
/// cluster may be beaconing on the group).
pub fn multicast_loops_back(opts: &MulticastOptions, timeout: std::time::Duration) -> bool {
    multicast_probe(opts, timeout).is_ok()
}

/// [`multicast_loops_back`] with the reason when it does not: the socket could not be opened
/// or joined, the probe could not be sent, or it did not come back within `timeout`.
pub fn multicast_probe(
    opts: &MulticastOptions,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let probe = MulticastOptions {
        ttl: 0,
        loopback: true,
        ..opts.clone()
    };
    let group = SocketAddr::from((opts.group, opts.port));
    let socket = multicast_socket(&probe).map_err(|e| {
        format!(
            "cannot open or join {group} on interface {}: {e}",
            opts.interface
        )
    })?;
    socket
        .set_nonblocking(false)
        .and_then(|()| socket.set_read_timeout(Some(timeout)))
        .map_err(|e| format!("cannot configure the probe socket: {e}"))?;
    socket
        .send_to(b"probe", group)
        .map_err(|e| format!("cannot send to {group}: {e}"))?;
    let mut buf = [0u8; 64];
    socket.recv_from(&mut buf).map(drop).map_err(|e| {
        format!(
            "a probe sent to {group} on interface {} did not come back within {timeout:?} ({e})",
            opts.interface
        )
    })
}

impl TcpListener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, from) = tokio::net::TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((stream, from))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Net for TokioNet {
    type UdpSocket = tokio::net::UdpSocket;
    type TcpListener = tokio::net::TcpListener;
    type TcpStream = tokio::net::TcpStream;

    async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn bind_udp(&self, addr: SocketAddr) -> io::Result<Self::UdpSocket> {
        tokio::net::UdpSocket::bind(addr).await
    }

    async fn bind_multicast(&self, opts: &MulticastOptions) -> io::Result<Self::UdpSocket> {
        tokio::net::UdpSocket::from_std(multicast_socket(opts)?)
    }

    fn wall_clock_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn delay_acks(stream: &Self::TcpStream) {
        #[cfg(target_os = "linux")]
        {
            let _ = socket2::SockRef::from(stream).set_quickack(false);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = stream;
    }

    fn host_name(&self) -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into())
    }
}
