//! One inbound connection's protocol state: what it may send next (hello, then data), who it
//! is once its hello is in, whether a keyed connection is bound yet, and which deadline runs
//! (hello, frame, idle). The reader task (`receiver.rs`) owns one, feeds it each frame prefix,
//! each decoded frame and the time, and carries out its verdicts; memory (the inbound budget)
//! and bytes (reads, the codec) stay in the driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_wire::{FrameKind, FramePrefix, Member, MemberId};

/// Why a connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A keyed cluster and an unauthenticated frame (`DecodeError::MissingAuth`).
    MissingAuth,
    /// The peer broke the protocol (the text says how).
    Violation(String),
}

fn violation(text: impl Into<String>) -> Refusal {
    Refusal::Violation(text.into())
}

/// Where the handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nothing but a hello is accepted.
    AwaitHello,
    /// Keyed: the hello verified, the challenge went out; the first frame opened under the
    /// connection key binds the connection.
    AwaitSealed,
    /// Authenticated: data frames flow.
    Bound,
}

/// Which deadline the connection is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Until bound: `hello_timeout` from the accept.
    Hello,
    /// A frame began arriving: `frame_timeout` from the last progress.
    Frame,
    /// Nothing buffered: `idle_timeout` from the last read.
    Idle,
}

impl Deadline {
    /// As the driver's close reasons and counters name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Frame => "frame",
            Self::Idle => "idle",
        }
    }
}

/// The timeouts an inbound connection is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) hello: Duration,
    pub(crate) frame: Duration,
    pub(crate) idle: Duration,
}

/// One inbound connection (see the module documentation).
#[derive(Debug)]
pub(crate) struct InboundConn {
    stage: Stage,
    keyed: bool,
    hello: Option<Arc<Member>>,
    accepted: Instant,
    /// When the frame at the front of the buffer began arriving (or last progressed).
    started: Option<Instant>,
    last_read: Instant,
    timeouts: Timeouts,
}

impl InboundConn {
    /// A connection accepted at `now`; `keyed` when the cluster has keys.
    pub(crate) fn new(now: Instant, keyed: bool, timeouts: Timeouts) -> Self {
        Self {
            stage: Stage::AwaitHello,
            keyed,
            hello: None,
            accepted: now,
            started: None,
            last_read: now,
            timeouts,
        }
    }

    pub(crate) fn stage(&self) -> Stage {
        self.stage
    }

    /// The member the hello named, once it is in.
    pub(crate) fn hello(&self) -> Option<&Arc<Member>> {
        self.hello.as_ref()
    }

    /// A frame's prefix, before its body is buffered: before the hello only a hello (no
    /// payload; authenticated when keyed), after it only data.
    pub(crate) fn check_prefix(&self, prefix: &FramePrefix) -> Result<(), Refusal> {
        let kind = prefix.frame_kind();
        if self.hello.is_none() {
            if kind != Some(FrameKind::Hello) {
                return Err(violation(format!(
                    "frame kind {} before the hello",
                    prefix.kind
                )));
            }
            if prefix.payload_len != 0 {
                return Err(violation("a hello with a payload"));
            }
            if self.keyed && !prefix.is_authenticated() {
                return Err(Refusal::MissingAuth);
            }
            return Ok(());
        }
        match kind {
            Some(FrameKind::Data) | None => Ok(()),
            Some(FrameKind::Hello) => Err(violation("a second hello")),
            Some(FrameKind::Ack) => Err(violation("an ACK frame on an inbound connection")),
            Some(FrameKind::Challenge) => {
                Err(violation("a challenge frame on an inbound connection"))
            }
        }
    }

    /// A data frame's sender must be the hello's member.
    pub(crate) fn check_sender(&self, sender: MemberId) -> Result<(), Refusal> {
        match &self.hello {
            Some(hello) if hello.id == sender => Ok(()),
            Some(hello) => Err(violation(format!(
                "data from {} on {}'s connection",
                sender.short(),
                hello.id.short()
            ))),
            None => Err(violation("data before hello")),
        }
    }

    /// A decoded hello naming `member`, which carried a nonce (`keyed_nonce`) or not, checked
    /// against `local`: the same cluster, a common protocol version, the same application
    /// version when either side asks for it, and a nonce when keyed. On success the connection
    /// knows its member; unkeyed it is bound at once.
    #[cfg(test)]
    pub(crate) fn handle_hello(
        &mut self,
        local: &Member,
        member: Member,
        keyed_nonce: bool,
    ) -> Result<(), Refusal> {
        self.check_hello(local, &member, keyed_nonce)?;
        self.accept_hello(member);
        Ok(())
    }

    /// The checks of [`InboundConn::handle_hello`], changing nothing: the driver checks its
    /// own limits (open connections) between these and [`InboundConn::accept_hello`].
    pub(crate) fn check_hello(
        &self,
        local: &Member,
        member: &Member,
        keyed_nonce: bool,
    ) -> Result<(), Refusal> {
        if self.hello.is_some() {
            return Err(violation("a second hello"));
        }
        if self.keyed && !keyed_nonce {
            return Err(violation("a keyed hello without a nonce"));
        }
        if member.cluster != local.cluster {
            return Err(violation(format!(
                "hello from cluster {:?}, this is {:?}",
                member.cluster, local.cluster
            )));
        }
        // The membership checks again here, so that a member refused there cannot talk on a
        // connection either (no half-join).
        if cohort_wire::Features::negotiate(local.versions, member.versions).is_none() {
            return Err(violation(format!(
                "no common protocol version: this node speaks {}, the hello {}",
                local.versions, member.versions
            )));
        }
        if (local.same_app_version || member.same_app_version)
            && local.app_version != member.app_version
        {
            return Err(violation(format!(
                "application version {:?} differs from this node's {:?} under version_policy \"same\"",
                member.app_version, local.app_version
            )));
        }
        Ok(())
    }

    /// Takes a hello that passed [`InboundConn::check_hello`]: the connection knows its
    /// member; unkeyed it is bound at once, keyed it awaits its first sealed frame.
    pub(crate) fn accept_hello(&mut self, member: Member) {
        self.hello = Some(Arc::new(member));
        self.stage = if self.keyed {
            Stage::AwaitSealed
        } else {
            Stage::Bound
        };
    }

    /// A frame after the hello opened under the connection key. Returns true when this bound
    /// the connection (the first one, keyed).
    pub(crate) fn frame_opened(&mut self) -> bool {
        if self.stage == Stage::AwaitSealed {
            self.stage = Stage::Bound;
            return true;
        }
        false
    }

    /// Bytes arrived at `now`.
    pub(crate) fn on_read(&mut self, now: Instant) {
        self.last_read = now;
    }

    /// After decoding: `buffered` bytes are left, and `progressed` says whether a frame was
    /// decoded (or a large one's room reserved) since the last call. The frame timer restarts
    /// on progress and stops when the buffer is empty.
    pub(crate) fn on_decoded(&mut self, now: Instant, buffered: usize, progressed: bool) {
        if buffered == 0 {
            self.started = None;
        } else if progressed || self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// The deadline the connection is under now, and which one it is.
    pub(crate) fn poll_timeout(&self) -> (Instant, Deadline) {
        match (self.stage, self.started) {
            (Stage::AwaitHello | Stage::AwaitSealed, _) => {
                (self.accepted + self.timeouts.hello, Deadline::Hello)
            }
            (Stage::Bound, Some(t)) => (t + self.timeouts.frame, Deadline::Frame),
            (Stage::Bound, None) => (self.last_read + self.timeouts.idle, Deadline::Idle),
        }
    }

    /// How many more bytes may be buffered when `buffered` are: a hello's worth
    /// (`hello_room`) before the hello, `rx_buf_size` after it.
    pub(crate) fn room(&self, buffered: usize, hello_room: usize, rx_buf_size: usize) -> usize {
        let cap = if self.hello.is_none() {
            hello_room
        } else {
            rx_buf_size
        };
        cap.saturating_sub(buffered)
    }
}

#[cfg(test)]
mod tests;
