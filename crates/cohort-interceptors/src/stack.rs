//! A stack from configuration: [`InterceptorConfig`] entries in stack order (first = top, next
//! to the application), checked as a whole ([`validate_stack`]) and built into interceptors
//! plus the handles to their stats and controls ([`build_stack`]).

use crate::ConfigError;
use std::sync::Arc;

use cohort_channel::{ChannelConfig, Interceptor, SendOptions};
use rand_core::RngCore;

use crate::compression::{Compression, CompressionConfig, CompressionStats};
use crate::coordinator::{Coordinator, CoordinatorConfig, CoordinatorHandle};
use crate::dispatch::{DispatchStats, MessageDispatch, MessageDispatchConfig};
use crate::domain::{DomainFilter, DomainFilterConfig, DomainStats};
use crate::encryption::{Encryption, EncryptionConfig, EncryptionKeys, EncryptionStats};
use crate::failure_detector::{FailureDetectorStats, TcpFailureDetector, TcpFailureDetectorConfig};
use crate::fragmentation::{Fragmentation, FragmentationConfig, FragmentationStats};
use crate::order::{Order, OrderConfig, OrderStats};
use crate::ping::{PingStats, TcpPing, TcpPingConfig};
use crate::static_members::{StaticMembership, StaticMembershipConfig, StaticStats};
use crate::throttle::{Throttle, ThrottleConfig, ThrottleStats};
use crate::throughput::{Throughput, ThroughputConfig, ThroughputHandle};
use crate::two_phase::{TwoPhaseCommit, TwoPhaseCommitConfig, TwoPhaseStats};

/// One `[[interceptor]]` entry: its `type` and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(tag = "type", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum InterceptorConfig {
    /// [`crate::failure_detector`].
    TcpFailureDetector(TcpFailureDetectorConfig),
    /// [`crate::ping`].
    TcpPing(TcpPingConfig),
    /// [`crate::dispatch`].
    MessageDispatch(MessageDispatchConfig),
    /// [`crate::order`].
    Order(OrderConfig),
    /// [`crate::fragmentation`].
    Fragmentation(FragmentationConfig),
    /// [`crate::compression`].
    Compression(CompressionConfig),
    /// [`crate::encryption`].
    Encryption(EncryptionConfig),
    /// [`crate::domain`].
    DomainFilter(DomainFilterConfig),
    /// [`crate::static_members`].
    StaticMembership(StaticMembershipConfig),
    /// [`crate::throughput`].
    Throughput(ThroughputConfig),
    /// [`crate::coordinator`].
    Coordinator(CoordinatorConfig),
    /// [`crate::throttle`].
    Throttle(ThrottleConfig),
    /// [`crate::two_phase`].
    TwoPhaseCommit(TwoPhaseCommitConfig),
}

impl InterceptorConfig {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TcpFailureDetector(_) => "tcp_failure_detector",
            Self::TcpPing(_) => "tcp_ping",
            Self::MessageDispatch(_) => "message_dispatch",
            Self::Order(_) => "order",
            Self::Fragmentation(_) => "fragmentation",
            Self::Compression(_) => "compression",
            Self::Encryption(_) => "encryption",
            Self::DomainFilter(_) => "domain_filter",
            Self::StaticMembership(_) => "static_membership",
            Self::Throughput(_) => "throughput",
            Self::Coordinator(_) => "coordinator",
            Self::Throttle(_) => "throttle",
            Self::TwoPhaseCommit(_) => "two_phase_commit",
        }
    }

    /// This entry's own checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::TcpFailureDetector(c) => c.validate(),
            Self::TcpPing(c) => c.validate(),
            Self::MessageDispatch(c) => c.validate(),
            Self::Order(c) => c.validate(),
            Self::Fragmentation(c) => c.validate(),
            Self::Compression(c) => c.validate(),
            Self::Encryption(c) => c.validate(),
            Self::DomainFilter(c) => c.validate(),
            Self::StaticMembership(c) => c.validate(),
            Self::Throughput(c) => c.validate(),
            Self::Coordinator(c) => c.validate(),
            Self::Throttle(c) => c.validate(),
            Self::TwoPhaseCommit(c) => c.validate(),
        }
    }

    /// The option bit this entry claims, if any.
    fn flag(&self) -> Option<SendOptions> {
        match self {
            Self::Order(c) => Some(c.option_flag),
            Self::Compression(c) => Some(c.option_flag),
            Self::TwoPhaseCommit(c) => Some(c.option_flag),
            _ => None,
        }
    }
}

/// A stack that cannot work, or an entry with a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("interceptor[{index}] ({kind}): {reason}")]
pub struct StackError {
    /// Position in the stack (0 = top).
    pub index: usize,
    /// The entry's `type`.
    pub kind: &'static str,
    /// What is wrong and why.
    pub reason: String,
}

/// Checks every entry and the stack as a whole: each type at most once, compression above
/// encryption, encryption above the failure detector, distinct option bits.
pub fn validate_stack(stack: &[InterceptorConfig]) -> Result<(), StackError> {
    let err = |index: usize, reason: String| StackError {
        index,
        kind: stack[index].kind(),
        reason,
    };
    let pos = |kind: &str| stack.iter().position(|c| c.kind() == kind);
    for (i, c) in stack.iter().enumerate() {
        c.validate().map_err(|r| err(i, r.to_string()))?;
        if let Some(j) = stack[..i].iter().position(|d| d.kind() == c.kind()) {
            let why = match c.kind() {
                "tcp_failure_detector" => "a second failure detector: one must decide (two would probe twice and could disagree)".to_owned(),
                k => format!("a second {k} (the first is interceptor[{j}]): each may appear once"),
            };
            return Err(err(i, why));
        }
        if let Some(flag) = c.flag() {
            if let Some(j) = stack[..i].iter().position(|d| d.flag() == Some(flag)) {
                return Err(err(
                    i,
                    format!(
                        "option_flag {:#x} is already used by interceptor[{j}] ({})",
                        flag.bits(),
                        stack[j].kind()
                    ),
                ));
            }
        }
    }
    if let (Some(c), Some(e)) = (pos("compression"), pos("encryption")) {
        if c > e {
            return Err(err(c, "compression must be listed before (above) encryption: encrypted bytes do not compress".into()));
        }
    }
    if let (Some(e), Some(f)) = (pos("encryption"), pos("tcp_failure_detector")) {
        if e > f {
            return Err(err(e, "encryption must be listed before (above) tcp_failure_detector, as in Tribes: the detector's probes travel outside the stack and must be consumed before decryption".into()));
        }
    }
    if let (Some(o), Some(f)) = (pos("order"), pos("fragmentation")) {
        if o > f {
            return Err(err(o, "order must be listed before (above) fragmentation: fragments share one sequence number's message, so ordering them one by one would hold the others".into()));
        }
    }
    Ok(())
}

/// Handles to the built interceptors' stats and controls (present when configured).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct StackHandles {
    /// Failure detector counters.
    pub failure_detector: Option<Arc<FailureDetectorStats>>,
    /// Ping counters.
    pub ping: Option<Arc<PingStats>>,
    /// Asynchronous traffic counters.
    pub dispatch: Option<Arc<DispatchStats>>,
    /// Order counters.
    pub order: Option<Arc<OrderStats>>,
    /// Fragmentation counters.
    pub fragmentation: Option<Arc<FragmentationStats>>,
    /// Compression counters.
    pub compression: Option<Arc<CompressionStats>>,
    /// Encryption counters.
    pub encryption: Option<Arc<EncryptionStats>>,
    /// The encryption key ring (rotation).
    pub keys: Option<EncryptionKeys>,
    /// Domain filter counters.
    pub domain: Option<Arc<DomainStats>>,
    /// Static membership counters.
    pub static_members: Option<Arc<StaticStats>>,
    /// Throughput figures.
    pub throughput: Option<ThroughputHandle>,
    /// The coordinator's views and singleton duties.
    pub coordinator: Option<CoordinatorHandle>,
    /// Throttle counters.
    pub throttle: Option<Arc<ThrottleStats>>,
    /// Two-phase commit counters.
    pub two_phase: Option<Arc<TwoPhaseStats>>,
}

/// A built stack: the interceptors (top first) for `ChannelBuilder::interceptor`, and handles.
pub struct BuiltStack {
    /// The interceptors, top first.
    pub interceptors: Vec<Box<dyn Interceptor>>,
    /// Stats and controls.
    pub handles: StackHandles,
}

/// Validates and builds `stack`; `message_dispatch` entries configure `channel`'s ASYNCHRONOUS
/// queue. `rng` seeds the encryption nonces.
pub fn build_stack(
    stack: &[InterceptorConfig],
    channel: &mut ChannelConfig,
    rng: &mut dyn RngCore,
) -> Result<BuiltStack, StackError> {
    validate_stack(stack)?;
    let mut h = StackHandles::default();
    let mut out: Vec<Box<dyn Interceptor>> = Vec::with_capacity(stack.len());
    for (index, c) in stack.iter().enumerate() {
        let b: Box<dyn Interceptor> = match c {
            InterceptorConfig::TcpFailureDetector(c) => {
                let i = TcpFailureDetector::new(c.clone());
                h.failure_detector = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::TcpPing(c) => {
                let i = TcpPing::new(c.clone());
                h.ping = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::MessageDispatch(c) => {
                c.apply(channel);
                let i = MessageDispatch::new();
                h.dispatch = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::Order(c) => {
                let i = Order::new(c.clone());
                h.order = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::Fragmentation(c) => {
                let i = Fragmentation::new(c.clone());
                h.fragmentation = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::Compression(c) => {
                let i = Compression::new(c.clone());
                h.compression = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::Encryption(c) => {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                let nonces = Box::new(<rand::rngs::StdRng as rand::SeedableRng>::from_seed(seed));
                let i = Encryption::new(c.clone(), nonces).map_err(|e| StackError {
                    index,
                    kind: "encryption",
                    reason: e.to_string(),
                })?;
                h.encryption = Some(i.stats());
                h.keys = Some(i.keys());
                Box::new(i)
            }
            InterceptorConfig::DomainFilter(c) => {
                let i = DomainFilter::new(c);
                h.domain = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::StaticMembership(c) => {
                let i = StaticMembership::new(c);
                h.static_members = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::Throughput(c) => {
                let i = Throughput::new(c.clone());
                h.throughput = Some(i.handle());
                Box::new(i)
            }
            InterceptorConfig::Coordinator(c) => {
                let (i, handle) = Coordinator::new(c.clone());
                h.coordinator = Some(handle);
                Box::new(i)
            }
            InterceptorConfig::Throttle(c) => {
                let i = Throttle::new(c);
                h.throttle = Some(i.stats());
                Box::new(i)
            }
            InterceptorConfig::TwoPhaseCommit(c) => {
                let i = TwoPhaseCommit::new(c.clone());
                h.two_phase = Some(i.stats());
                Box::new(i)
            }
        };
        out.push(b);
    }
    Ok(BuiltStack {
        interceptors: out,
        handles: h,
    })
}

/// The default stack of a node: a ping every second to keep connections open, and the TCP
/// failure detector (Tribes' default stack is the detector plus the dispatch queue, which
/// Cohort's channel has built in).
pub fn default_stack() -> Vec<InterceptorConfig> {
    vec![
        InterceptorConfig::TcpPing(TcpPingConfig::default()),
        InterceptorConfig::TcpFailureDetector(TcpFailureDetectorConfig::default()),
    ]
}

/// `.stack(configs)` on a [`cohort_channel::ChannelBuilder`]: the configured interceptors,
/// checked as a whole ([`validate_stack`]) and added top first, as the node does it.
///
/// ```
/// use cohort_channel::GroupChannel;
/// use cohort_interceptors::{StackExt, default_stack};
/// let (builder, handles) = GroupChannel::builder().stack(&default_stack()).unwrap();
/// assert!(handles.failure_detector.is_some());
/// # drop(builder);
/// ```
pub trait StackExt: Sized {
    /// Adds `configs` (top first) to the builder; returns it with the stack's stats and
    /// controls. `message_dispatch` entries set the builder's ASYNCHRONOUS queue policy; the
    /// encryption nonces are seeded from the operating system.
    fn stack(self, configs: &[InterceptorConfig]) -> Result<(Self, StackHandles), StackError>;
}

impl StackExt for cohort_channel::ChannelBuilder {
    fn stack(mut self, configs: &[InterceptorConfig]) -> Result<(Self, StackHandles), StackError> {
        let built = build_stack(configs, self.config_mut(), &mut rand::rngs::OsRng)?;
        for i in built.interceptors {
            self = self.interceptor(i);
        }
        Ok((self, built.handles))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use cohort_channel::{ChannelConfig, tags};
    use cohort_wire::Extension;
    use proptest::prelude::*;

    use super::*;
    use crate::encryption::KeyConfig;
    use crate::testing::*;

    /// Every interceptor at once, in a valid order.
    fn everything() -> Vec<InterceptorConfig> {
        vec![
            InterceptorConfig::Throughput(Default::default()),
            InterceptorConfig::Coordinator(Default::default()),
            InterceptorConfig::TwoPhaseCommit(Default::default()),
            InterceptorConfig::Order(Default::default()),
            InterceptorConfig::Compression(Default::default()),
            InterceptorConfig::Encryption(crate::encryption::EncryptionConfig {
                keys: vec![KeyConfig {
                    id: 1,
                    key: "11".repeat(32),
                }],
                require: false,
                ..Default::default()
            }),
            InterceptorConfig::Fragmentation(crate::fragmentation::FragmentationConfig {
                max_size: 64,
                ..Default::default()
            }),
            InterceptorConfig::DomainFilter(Default::default()),
            InterceptorConfig::Throttle(crate::throttle::ThrottleConfig {
                spec: Some("msgs:1m:0:drop".into()),
                ..Default::default()
            }),
            InterceptorConfig::TcpPing(Default::default()),
            InterceptorConfig::TcpFailureDetector(Default::default()),
            InterceptorConfig::MessageDispatch(Default::default()),
            InterceptorConfig::StaticMembership(crate::static_members::StaticMembershipConfig {
                members: vec![crate::static_members::StaticMemberConfig {
                    address: "127.0.0.1:4009".into(),
                    id: None,
                }],
                ..Default::default()
            }),
        ]
    }

    #[test]
    fn every_interceptor_builds_and_bad_stacks_say_why() {
        let built = build_stack(
            &everything(),
            &mut ChannelConfig::default(),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert_eq!(built.interceptors.len(), 13);
        let comp = InterceptorConfig::Compression(Default::default());
        let enc = everything()[5].clone();
        let e = validate_stack(&[enc, comp]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(
            e.to_string().contains("compression must be listed before"),
            "{e}"
        );
        let e = validate_stack(&[
            InterceptorConfig::Order(Default::default()),
            InterceptorConfig::TwoPhaseCommit(crate::two_phase::TwoPhaseCommitConfig {
                option_flag: cohort_channel::SendOptions::from_bits(0x200),
                ..Default::default()
            }),
        ])
        .unwrap_err();
        assert!(
            e.reason.contains("already used by interceptor[0] (order)"),
            "{e}"
        );
    }

    fn ext_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            // Plausible lengths for the fixed-size values.
            proptest::collection::vec(any::<u8>(), 9..=9),
            proptest::collection::vec(any::<u8>(), 17..=17),
            proptest::collection::vec(any::<u8>(), 24..=24),
        ]
    }

    proptest! {
        /// Whatever a peer sends (any tags, values, options, payload), the full stack neither
        /// panics nor delivers an untransformed frame, and its tables stay bounded.
        #[test]
        fn arbitrary_inbound_never_panics(
            msgs in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec((1u32..12, ext_value()), 0..4), proptest::collection::vec(any::<u8>(), 0..200), any::<u8>()),
                1..30,
            )
        ) {
            let built = build_stack(&everything(), &mut ChannelConfig::default(), &mut rand::rngs::OsRng).unwrap();
            let mut p = pipeline(built.interceptors, 1);
            let t0 = Instant::now();
            p.start(t0);
            drain(&mut p);
            for (i, (opts, exts, payload, from)) in msgs.into_iter().enumerate() {
                let mut out = outbound(i as u64 + 1, &[member(1)], cohort_channel::SendOptions::from_bits(opts), &payload);
                out.extensions = exts.into_iter().map(|(tag, v)| Extension { tag, value: Bytes::from(v) }).collect();
                p.receive(t0, arrive(&out, &member(2 + from % 3)));
                for d in drain(&mut p).delivered {
                    prop_assert!(!d.extensions.iter().any(|e| matches!(e.tag, tags::FRAGMENT | tags::COMPRESSION | tags::ENCRYPTION)));
                }
            }
            p.handle_timeout(t0 + Duration::from_secs(120));
            p.heartbeat(t0 + Duration::from_secs(120));
            drain(&mut p);
        }
    }
}
