//! An inbound connection's stream that asks the kernel, after each read, to delay its TCP
//! acknowledgements ([`cohort_net::Net::delay_acks`]).
//!
//! An inbound connection carries data one way. Back on it go only Cohort's ACK frames, and
//! only for messages that asked for one. Linux acknowledges such a one-way stream at once,
//! every read: each acknowledgement is a segment of its own through the loopback or network
//! stack at both ends, and on an RPC (a request on one connection, its reply on another) it
//! costs about a tenth of a round trip. Delayed, the acknowledgement rides on the next ACK
//! frame, or goes with the kernel's delayed-ACK timer or after two full segments (bulk
//! transfers are acknowledged as often as before). Nothing above TCP waits for it: TCP_NODELAY
//! is set, so no write waits for an acknowledgement.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cohort_net::Net;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often at most the kernel is asked again. Linux leaves the delayed mode only when its
/// delayed-ACK timer fires (40 ms or more after unacknowledged data); asked again at most
/// this often after a read, a connection acknowledges at once for at most this long after
/// that, and a connection read 10,000 times a second makes one system call per 10 reads, not
/// one per read.
const REARM_EVERY: Duration = Duration::from_millis(1);

/// `N`'s stream, delaying acknowledgements after reads that returned bytes when `on`.
pub(crate) struct DelayAcks<N: Net> {
    stream: N::TcpStream,
    /// When the kernel was last asked; `None` when off.
    asked: Option<Instant>,
}

impl<N: Net> DelayAcks<N> {
    pub(crate) fn new(stream: N::TcpStream, on: bool) -> Self {
        let asked = on.then(|| {
            N::delay_acks(&stream);
            Instant::now()
        });
        Self { stream, asked }
    }
}

impl<N: Net> AsyncRead for DelayAcks<N> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(asked) = &mut this.asked {
            if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                let now = Instant::now();
                if now.duration_since(*asked) >= REARM_EVERY {
                    N::delay_acks(&this.stream);
                    *asked = now;
                }
            }
        }
        read
    }
}

impl<N: Net> AsyncWrite for DelayAcks<N> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use cohort_net::TokioNet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Linux reports `TCP_QUICKACK` as on unless the connection is in its delayed mode.
    async fn accepted(on: bool) -> (DelayAcks<TokioNet>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (DelayAcks::new(server, on), client)
    }

    fn quickack(s: &DelayAcks<TokioNet>) -> bool {
        socket2::SockRef::from(&s.stream).quickack().unwrap()
    }

    #[tokio::test]
    async fn reads_leave_the_connection_in_delayed_mode_when_on() {
        let (mut server, mut client) = accepted(true).await;
        assert!(!quickack(&server), "asked at once");
        let mut buf = [0u8; 16];
        for round in 0..2u8 {
            client.write_all(&[round; 4]).await.unwrap();
            // Linux's delayed-ACK timer (40 ms or more) fires and takes the connection out
            // of its delayed mode: the read must ask again.
            let deadline = Instant::now() + Duration::from_secs(3);
            while !quickack(&server) {
                if Instant::now() > deadline {
                    // A kernel that stays in the delayed mode needs no asking again: nothing
                    // to check here (libraries never print, tests in them included; Linux
                    // 6.x leaves the mode within about 40 ms).
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            server.read_exact(&mut buf[..4]).await.unwrap();
            assert_eq!(buf[..4], [round; 4]);
            assert!(
                !quickack(&server),
                "round {round}: delayed again after the read"
            );
        }
        // Writes go through untouched.
        server.write_all(b"back").await.unwrap();
        client.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"back");
    }

    #[tokio::test]
    async fn off_leaves_the_kernel_alone() {
        let (mut server, mut client) = accepted(false).await;
        client.write_all(b"data").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert!(quickack(&server));
    }
}
