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
    pub(crate) fn handle_hello(
        &mut self,
        local: &Member,
        member: Member,
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
        self.hello = Some(Arc::new(member));
        self.stage = if self.keyed {
            Stage::AwaitSealed
        } else {
            Stage::Bound
        };
        Ok(())
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
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use bytes::BytesMut;
    use cohort_wire::{
        CohortCodec, DataFrame, DataHeader, Frame, FrameCodec, Hello, VersionRange, WireLimits,
    };
    use proptest::prelude::*;

    use super::*;

    const T: Timeouts = Timeouts {
        hello: Duration::from_secs(5),
        frame: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn member(n: u8) -> Member {
        let mut m = Member::new(
            MemberId::from_bytes([n; 16]),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            4000 + u16::from(n),
        );
        m.cluster = "c".into();
        m
    }

    fn prefix(frame: &Frame) -> FramePrefix {
        let codec = CohortCodec::new(WireLimits::default(), None).unwrap();
        let mut out = BytesMut::new();
        codec.encode_frame(frame, &mut out).unwrap();
        codec.peek_frame_prefix(&out).unwrap().unwrap()
    }

    fn hello_frame(n: u8) -> Frame {
        Frame::Hello(Box::new(Hello {
            member: member(n),
            nonce: None,
        }))
    }

    fn data_frame(n: u8) -> Frame {
        Frame::Data(DataFrame {
            header: DataHeader {
                msg_id: 1,
                sender: MemberId::from_bytes([n; 16]),
                ..DataHeader::default()
            },
            payload: bytes::Bytes::from_static(b"x"),
        })
    }

    #[test]
    fn unkeyed_hello_then_data_from_its_member_only() {
        let t0 = Instant::now();
        let mut c = InboundConn::new(t0, false, T);
        assert!(
            c.check_prefix(&prefix(&data_frame(2))).is_err(),
            "data first"
        );
        assert!(c.check_sender(MemberId::from_bytes([2; 16])).is_err());
        c.check_prefix(&prefix(&hello_frame(2))).unwrap();
        c.handle_hello(&member(1), member(2), false).unwrap();
        assert_eq!(c.stage(), Stage::Bound);
        c.check_prefix(&prefix(&data_frame(2))).unwrap();
        c.check_sender(MemberId::from_bytes([2; 16])).unwrap();
        assert!(
            c.check_sender(MemberId::from_bytes([3; 16])).is_err(),
            "spoofed sender"
        );
        assert!(
            c.check_prefix(&prefix(&hello_frame(2))).is_err(),
            "second hello"
        );
        assert!(c.handle_hello(&member(1), member(2), false).is_err());
    }

    #[test]
    fn keyed_binds_on_the_first_sealed_frame_and_needs_a_nonce() {
        let t0 = Instant::now();
        let mut c = InboundConn::new(t0, true, T);
        assert_eq!(
            c.check_prefix(&prefix(&hello_frame(2))),
            Err(Refusal::MissingAuth),
            "an unsigned hello in a keyed cluster"
        );
        assert!(c.handle_hello(&member(1), member(2), false).is_err());
        let mut c = InboundConn::new(t0, true, T);
        c.handle_hello(&member(1), member(2), true).unwrap();
        assert_eq!(c.stage(), Stage::AwaitSealed);
        assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
        assert!(c.frame_opened());
        assert!(!c.frame_opened());
        assert_eq!(c.stage(), Stage::Bound);
    }

    #[test]
    fn hellos_of_other_clusters_and_versions_are_refused() {
        let t0 = Instant::now();
        let local = member(1);
        let mut other = member(2);
        other.cluster = "d".into();
        assert!(
            InboundConn::new(t0, false, T)
                .handle_hello(&local, other, false)
                .is_err()
        );
        let mut future = member(2);
        future.versions = VersionRange { min: 7, max: 9 };
        let r = InboundConn::new(t0, false, T).handle_hello(&local, future, false);
        assert!(matches!(r, Err(Refusal::Violation(t)) if t.contains("7..=9")));
        let mut strict = member(1);
        strict.same_app_version = true;
        strict.app_version = "2".into();
        let mut older = member(2);
        older.app_version = "1".into();
        assert!(
            InboundConn::new(t0, false, T)
                .handle_hello(&strict, older.clone(), false)
                .is_err()
        );
        older.app_version = "2".into();
        InboundConn::new(t0, false, T)
            .handle_hello(&strict, older, false)
            .unwrap();
    }

    #[test]
    fn deadlines_follow_the_stage_and_the_buffer() {
        let t0 = Instant::now();
        let mut c = InboundConn::new(t0, false, T);
        assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
        assert_eq!(
            c.room(10, 100, 1000),
            90,
            "a hello's worth before the hello"
        );
        c.handle_hello(&member(1), member(2), false).unwrap();
        assert_eq!(c.room(10, 100, 1000), 990);
        let t1 = t0 + Duration::from_secs(1);
        c.on_read(t1);
        assert_eq!(c.poll_timeout(), (t1 + T.idle, Deadline::Idle));
        // Half a frame buffered: the frame timer runs from then, and restarts on progress.
        c.on_decoded(t1, 7, false);
        assert_eq!(c.poll_timeout(), (t1 + T.frame, Deadline::Frame));
        let t2 = t1 + Duration::from_secs(3);
        c.on_decoded(t2, 7, false);
        assert_eq!(
            c.poll_timeout(),
            (t1 + T.frame, Deadline::Frame),
            "no progress"
        );
        c.on_decoded(t2, 3, true);
        assert_eq!(c.poll_timeout(), (t2 + T.frame, Deadline::Frame));
        c.on_decoded(t2, 0, true);
        assert_eq!(c.poll_timeout(), (t1 + T.idle, Deadline::Idle));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Prefix(u8),
        Hello(u8, bool),
        Data(u8),
        Opened,
        Decoded(usize, bool),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..6).prop_map(Step::Prefix),
            (1u8..4, any::<bool>()).prop_map(|(n, k)| Step::Hello(n, k)),
            (1u8..4).prop_map(Step::Data),
            Just(Step::Opened),
            (0usize..100, any::<bool>()).prop_map(|(b, p)| Step::Decoded(b, p)),
            (0u64..20_000).prop_map(Step::Advance),
        ]
    }

    proptest! {
        /// Whatever a peer sends in whatever order: no data frame is accepted before a hello
        /// (and, keyed, before the connection is bound), none from another sender than the
        /// hello's, at most one hello is ever accepted, and the deadline never lies beyond
        /// the hello timeout until the connection is bound.
        #[test]
        fn no_data_before_an_authenticated_hello(keyed in any::<bool>(), steps in proptest::collection::vec(step(), 0..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut c = InboundConn::new(t0, keyed, T);
            let local = member(9);
            let mut hellos = 0;
            for s in steps {
                match s {
                    Step::Prefix(kind) => {
                        let f = match kind { 0 => hello_frame(2), _ => data_frame(2) };
                        let ok = c.check_prefix(&prefix(&f)).is_ok();
                        if c.hello().is_none() && kind != 0 { prop_assert!(!ok); }
                    }
                    Step::Hello(n, nonce) => {
                        if c.handle_hello(&local, member(n), nonce).is_ok() {
                            hellos += 1;
                            prop_assert!(!keyed || nonce);
                        }
                    }
                    Step::Data(n) => {
                        let accepted = c.stage() == Stage::Bound
                            && c.check_sender(MemberId::from_bytes([n; 16])).is_ok();
                        if accepted {
                            prop_assert_eq!(c.hello().map(|h| h.id), Some(MemberId::from_bytes([n; 16])));
                        }
                        if c.hello().is_none() {
                            prop_assert!(c.check_sender(MemberId::from_bytes([n; 16])).is_err());
                        }
                    }
                    Step::Opened => { let _ = c.frame_opened(); }
                    Step::Decoded(b, p) => c.on_decoded(now, b, p),
                    Step::Advance(ms) => { now += Duration::from_millis(ms); c.on_read(now); }
                }
                prop_assert!(hellos <= 1);
                if c.stage() != Stage::Bound {
                    prop_assert_eq!(c.poll_timeout(), (t0 + T.hello, Deadline::Hello));
                }
                if keyed && c.stage() == Stage::Bound {
                    prop_assert!(c.hello().is_some());
                }
            }
        }
    }
}
