//! A connection's read buffers, reused once the layer above has dropped their frames.
//!
//! Frames leave the read buffer without a copy: each is a [`bytes::Bytes`] that shares the
//! buffer's allocation. So the next read cannot reuse that allocation while any frame of it
//! is still queued upstream, and `BytesMut::reserve` allocates a new one. The old one is
//! freed when its last frame is dropped. With glibc's allocator that pattern grows and trims
//! the heap's top again and again: every fresh buffer is new pages, faulted in by the
//! kernel's copy of the read (a fifth of a sink's CPU time at 1 KiB messages,
//! docs/BENCHMARKS.md, issue 13's ninth stop).
//!
//! [`ReadBuffers`] keeps the last few buffers it handed on ([`SPARE_BUFFERS`]) and reads into
//! the first whose frames have all been dropped.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Most read buffers a connection keeps beside the one it reads into. Each is at most the
/// read buffer's size (`rx_buf_size`) and is kept only once replaced (its frames may still
/// be queued): an idle connection keeps at most this many more read buffers than it used to.
pub(crate) const SPARE_BUFFERS: usize = 16;

/// Read buffers handed on with frames in them, kept to be read into again (at most
/// [`SPARE_BUFFERS`]; the oldest is let go first).
#[derive(Default)]
pub(crate) struct ReadBuffers {
    spares: VecDeque<BytesMut>,
    /// Whether the buffer being read into is one this made (a read buffer's size): a buffer
    /// made for one large frame is let go, not kept.
    current_is_ours: bool,
}

impl ReadBuffers {
    /// Room for `additional` more bytes in `buf`, whose unread bytes (a partial frame) are
    /// kept. In order: the room it has; its own allocation, once no frame shares it; a spare
    /// no frame shares any more; a new buffer of `size` bytes (or more, if a partial frame
    /// and `additional` need it). A buffer replaced is kept as a spare.
    pub(crate) fn reserve(&mut self, buf: &mut BytesMut, additional: usize, size: usize) {
        if buf.capacity() - buf.len() >= additional || buf.try_reclaim(additional) {
            return;
        }
        let want = buf.len() + additional;
        let reused = self
            .spares
            .iter_mut()
            .position(|s| s.try_reclaim(want))
            .and_then(|i| self.spares.remove(i));
        let mut next = reused.unwrap_or_else(|| BytesMut::with_capacity(want.max(size)));
        next.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, next);
        if std::mem::replace(&mut self.current_is_ours, true) {
            old.clear();
            if self.spares.len() == SPARE_BUFFERS {
                self.spares.pop_front();
            }
            self.spares.push_back(old);
        }
    }

    /// `buf` was replaced by a buffer made for a large frame: it is not kept once done with.
    pub(crate) fn replaced_for_large(&mut self) {
        self.current_is_ours = false;
    }

    /// Spares kept (for tests and the connection's memory bound).
    #[cfg(test)]
    pub(crate) fn spares(&self) -> usize {
        self.spares.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 4096;

    /// Fills `buf` with `n` bytes as a read would.
    fn fill(buf: &mut BytesMut, n: usize) {
        buf.extend(std::iter::repeat_n(7u8, n));
    }

    #[test]
    fn a_buffer_is_read_into_again_once_its_frames_are_dropped() {
        let mut rb = ReadBuffers::default();
        let mut buf = BytesMut::new();
        rb.reserve(&mut buf, SIZE, SIZE);
        let first = buf.as_ptr();
        fill(&mut buf, SIZE);
        let frame = buf.split_to(SIZE).freeze();
        // The frame is still held upstream: a new buffer, the old one kept.
        rb.reserve(&mut buf, SIZE, SIZE);
        assert_ne!(buf.as_ptr(), first);
        assert_eq!(rb.spares(), 1);
        fill(&mut buf, SIZE);
        let second = buf.split_to(SIZE).freeze();
        drop(frame);
        // The first buffer's frame is gone: it is read into again, not a new allocation.
        rb.reserve(&mut buf, SIZE, SIZE);
        assert_eq!(buf.as_ptr(), first);
        drop(second);
    }

    #[test]
    fn a_partial_frame_moves_with_the_buffer() {
        let mut rb = ReadBuffers::default();
        let mut buf = BytesMut::new();
        rb.reserve(&mut buf, SIZE, SIZE);
        buf.extend_from_slice(&[1; 100]);
        buf.extend_from_slice(&[2; 10]);
        let frame = buf.split_to(100).freeze();
        rb.reserve(&mut buf, SIZE, SIZE);
        assert_eq!(&buf[..], &[2; 10]);
        assert!(buf.capacity() - buf.len() >= SIZE);
        assert_eq!(&frame[..], &[1; 100]);
    }

    #[test]
    fn spares_are_bounded_and_large_buffers_are_not_kept() {
        let mut rb = ReadBuffers::default();
        let mut buf = BytesMut::new();
        let mut held = Vec::new();
        for _ in 0..3 * SPARE_BUFFERS {
            rb.reserve(&mut buf, SIZE, SIZE);
            fill(&mut buf, SIZE);
            held.push(buf.split_to(SIZE).freeze());
        }
        assert_eq!(rb.spares(), SPARE_BUFFERS);
        // A buffer made for one large frame replaces the current one; once replaced in
        // turn, it is let go, not kept.
        let before = rb.spares();
        buf = BytesMut::with_capacity(16 * SIZE);
        rb.replaced_for_large();
        fill(&mut buf, 16 * SIZE);
        held.push(buf.split_to(16 * SIZE).freeze());
        rb.reserve(&mut buf, SIZE, SIZE);
        assert_eq!(rb.spares(), before);
        assert!(held.iter().all(|f| f.iter().all(|&b| b == 7)));
    }
}
