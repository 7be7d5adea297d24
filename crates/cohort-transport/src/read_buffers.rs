//! Read buffers, read into again once the layer above has dropped their frames.
//!
//! Frames leave a connection's read buffer without a copy: each is a [`bytes::Bytes`] that
//! shares the buffer's allocation. So the next read cannot reuse that allocation while any
//! frame of it is still queued upstream, and `BytesMut::reserve` allocates a new one; the
//! old one is freed when its last frame is dropped. With glibc's allocator that pattern grows
//! and trims the heap's top again and again, and every new buffer is fresh pages, faulted in
//! by the kernel's copy of the read. Reusing buffers took a sink's CPU time per 1 KiB message
//! down by about a sixth (docs/BENCHMARKS.md, issue 13's ninth stop).
//!
//! [`SpareBuffers`] is the transport's pool of the buffers connections replaced (at most
//! [`SPARE_BUFFERS`], the oldest let go first); a connection reads into the first whose frames
//! have all been dropped.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use bytes::BytesMut;

/// Most read buffers the transport keeps beside the ones its connections read into, across
/// all connections. Each is a read buffer's size (`rx_buf_size`, 64 KiB by default), or up to
/// twice that: 1–2 MiB at most with the defaults, idle or not.
pub(crate) const SPARE_BUFFERS: usize = 16;

/// The transport's spare read buffers (see the module's docs).
#[derive(Default)]
pub(crate) struct SpareBuffers {
    /// Oldest first: the likeliest to have no frame left upstream.
    spares: Mutex<VecDeque<BytesMut>>,
}

/// What a connection knows of the buffer it reads into.
#[derive(Default)]
pub(crate) struct ReadBuffer {
    /// Whether the pool made it (at most twice a read buffer's size: the connection asks for
    /// no more): a buffer made for one larger frame, or the empty one a connection starts
    /// with, is not kept once replaced.
    pooled: bool,
}

impl ReadBuffer {
    /// `buf` was replaced by a buffer made for one frame larger than twice the read buffer.
    pub(crate) fn replaced_for_large(&mut self) {
        self.pooled = false;
    }
}

impl SpareBuffers {
    /// Room for `additional` more bytes in `buf`, whose unread bytes (a partial frame) are
    /// kept. In order: the room it has; its own allocation, once no frame shares it; a spare
    /// no frame shares any more; a new buffer of `size` bytes (or more, if the partial frame
    /// and `additional` need it). The buffer replaced becomes a spare.
    pub(crate) fn reserve(
        &self,
        state: &mut ReadBuffer,
        buf: &mut BytesMut,
        additional: usize,
        size: usize,
    ) {
        if buf.capacity() - buf.len() >= additional || buf.try_reclaim(additional) {
            return;
        }
        let want = buf.len() + additional;
        let reused = {
            let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
            spares
                .iter_mut()
                .position(|s| s.try_reclaim(want))
                .and_then(|i| spares.remove(i))
        };
        // Allocated and copied outside the lock.
        let mut next = reused.unwrap_or_else(|| BytesMut::with_capacity(want.max(size)));
        next.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, next);
        if std::mem::replace(&mut state.pooled, true) {
            old.clear();
            let mut spares = self.spares.lock().unwrap_or_else(PoisonError::into_inner);
            if spares.len() == SPARE_BUFFERS {
                spares.pop_front();
            }
            spares.push_back(old);
        }
    }

    /// Spares kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.spares.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 4096;

    /// Fills `buf` with `n` bytes, as a read would.
    fn fill(buf: &mut BytesMut, n: usize) {
        buf.extend(std::iter::repeat_n(7u8, n));
    }

    #[test]
    fn a_buffer_is_read_into_again_once_its_frames_are_dropped() {
        let pool = SpareBuffers::default();
        let mut rb = ReadBuffer::default();
        let mut buf = BytesMut::new();
        pool.reserve(&mut rb, &mut buf, SIZE, SIZE);
        let first = buf.as_ptr();
        fill(&mut buf, SIZE);
        let frame = buf.split_to(SIZE).freeze();
        // The frame is still held upstream: a new buffer, the old one kept.
        pool.reserve(&mut rb, &mut buf, SIZE, SIZE);
        assert_ne!(buf.as_ptr(), first);
        assert_eq!(pool.len(), 1);
        fill(&mut buf, SIZE);
        let second = buf.split_to(SIZE).freeze();
        drop(frame);
        // The first buffer's frame is gone: it is read into again, not a new allocation.
        pool.reserve(&mut rb, &mut buf, SIZE, SIZE);
        assert_eq!(buf.as_ptr(), first);
        drop(second);
    }

    #[test]
    fn a_partial_frame_moves_with_the_buffer() {
        let pool = SpareBuffers::default();
        let mut rb = ReadBuffer::default();
        let mut buf = BytesMut::new();
        pool.reserve(&mut rb, &mut buf, SIZE, SIZE);
        buf.extend_from_slice(&[1; 100]);
        buf.extend_from_slice(&[2; 10]);
        let frame = buf.split_to(100).freeze();
        pool.reserve(&mut rb, &mut buf, SIZE, SIZE);
        assert_eq!(&buf[..], &[2; 10]);
        assert!(buf.capacity() - buf.len() >= SIZE);
        assert_eq!(&frame[..], &[1; 100]);
    }

    #[test]
    fn spares_are_bounded_across_connections_and_large_buffers_are_not_kept() {
        let pool = SpareBuffers::default();
        let mut conns: Vec<(ReadBuffer, BytesMut)> = (0..3)
            .map(|_| (ReadBuffer::default(), BytesMut::new()))
            .collect();
        let mut held = Vec::new();
        for _ in 0..2 * SPARE_BUFFERS {
            for (rb, buf) in &mut conns {
                pool.reserve(rb, buf, SIZE, SIZE);
                fill(buf, SIZE);
                held.push(buf.split_to(SIZE).freeze());
            }
        }
        assert_eq!(pool.len(), SPARE_BUFFERS);
        // A buffer made for one large frame replaces a connection's; once replaced in turn,
        // it is let go, not kept.
        let (rb, buf) = &mut conns[0];
        *buf = BytesMut::with_capacity(16 * SIZE);
        rb.replaced_for_large();
        fill(buf, 16 * SIZE);
        held.push(buf.split_to(16 * SIZE).freeze());
        let before: Vec<*const u8> = pool
            .spares
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.as_ptr())
            .collect();
        pool.reserve(rb, buf, SIZE, SIZE);
        let after: Vec<*const u8> = pool
            .spares
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.as_ptr())
            .collect();
        assert_eq!(before, after, "the large buffer is not among the spares");
        assert!(held.iter().all(|f| f.iter().all(|&b| b == 7)));
    }
}
