//! The node's TOML file: one table per component. Unknown keys and invalid values are errors
//! that name the key. Durations are integers in milliseconds; sizes are integers in bytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use cohort_channel::{ChannelConfig, MembershipSetup};
use cohort_interceptors::{InterceptorConfig, default_stack, validate_stack};
use cohort_membership::{MembershipConfig, MulticastConfig, StaticPeer};
use cohort_transport::TransportConfig;
use cohort_wire::{ClusterKey, KeyRing, Services};
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type (the message names the key).
    #[error("{0}")]
    Parse(String),
    /// A value out of range.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key, `table.key`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest `[node] runtime_threads`.
pub const MAX_RUNTIME_THREADS: usize = 256;

fn invalid(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[node]`
    #[serde(default)]
    pub node: NodeSection,
    /// `[membership]`
    #[serde(default)]
    pub membership: MembershipSection,
    /// `[transport]`
    #[serde(default)]
    pub transport: TransportSection,
    /// `[channel]`
    #[serde(default)]
    pub channel: ChannelSection,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminSection,
    /// `[[interceptor]]`, in stack order (first = top). Absent: the default stack.
    #[serde(default)]
    pub interceptor: Option<Vec<InterceptorConfig>>,
}

/// `[node]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name (default: the host name).
    pub name: Option<String>,
    /// Write a `message` event line for every message received.
    #[serde(default)]
    pub print_messages: bool,
    /// Cluster keys, each at least 16 characters; the first signs.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Test traffic: messages per second per mode to every member (0 or absent: none).
    pub traffic_rate: Option<u32>,
    /// Runtime threads: 1 (default) runs every task on one thread; more: a multi-thread
    /// runtime with that many workers.
    pub runtime_threads: Option<usize>,
}

/// `[membership]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipSection {
    cluster: Option<String>,
    frequency: Option<u64>,
    drop_time: Option<u64>,
    max_members: Option<usize>,
    max_clock_skew: Option<u64>,
    min_answer_interval: Option<u64>,
    max_pending_events: Option<usize>,
    /// `false` disables multicast; a table configures it (read by [`multicast_section`], so
    /// that an error inside the table names its key).
    multicast: Option<toml::Value>,
    static_bind: Option<String>,
    #[serde(default)]
    static_members: Vec<String>,
}

enum MulticastSection {
    Enabled(bool),
    Table(MulticastTable),
}

/// `multicast = true | false | { ... }`: a bool, or a table whose errors name their key.
fn multicast_section(value: toml::Value) -> Result<MulticastSection, ConfigError> {
    match value {
        toml::Value::Boolean(b) => Ok(MulticastSection::Enabled(b)),
        toml::Value::Table(_) => value
            .try_into()
            .map(MulticastSection::Table)
            .map_err(|e| invalid("membership.multicast", e.to_string().trim_end())),
        other => Err(invalid(
            "membership.multicast",
            format!(
                "expected true, false or a table, found {}",
                other.type_str()
            ),
        )),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MulticastTable {
    group: Option<String>,
    port: Option<u16>,
    interface: Option<String>,
    ttl: Option<u32>,
    loopback: Option<bool>,
    recovery: Option<RecoveryTable>,
}

/// `[membership.multicast.recovery]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryTable {
    enabled: Option<bool>,
    counter: Option<u32>,
    sleep: Option<u64>,
    slow_sleep: Option<u64>,
    error_pause: Option<u64>,
}

/// `[transport]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    bind: Option<String>,
    port: Option<u16>,
    auto_bind: Option<u16>,
    udp_port: Option<u16>,
    connect_timeout: Option<u64>,
    send_timeout: Option<u64>,
    max_retry_attempts: Option<u32>,
    reconnect_backoff: Option<u64>,
    max_reconnect_backoff: Option<u64>,
    connections_per_peer: Option<usize>,
    keep_alive_count: Option<u64>,
    keep_alive_time: Option<u64>,
    max_in_flight: Option<usize>,
    max_peer_queue_bytes: Option<usize>,
    write_batch_bytes: Option<usize>,
    rx_buf_size: Option<usize>,
    max_connections: Option<usize>,
    frame_timeout: Option<u64>,
    hello_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    max_unauthenticated: Option<usize>,
    max_unauthenticated_per_source: Option<usize>,
    max_inbound_bytes: Option<usize>,
    max_pending_acks: Option<usize>,
    inbound_queue: Option<usize>,
    max_frame_payload: Option<u32>,
    max_frame_header: Option<u32>,
}

/// `[channel]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    services: Option<u8>,
    heartbeat_interval: Option<u64>,
    async_queue_bytes: Option<usize>,
    async_queue_messages: Option<usize>,
    delivery_queue: Option<usize>,
    drain_timeout: Option<u64>,
    option_check: Option<bool>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    enabled: Option<bool>,
    bind: Option<String>,
    port: Option<u16>,
    auto_bind: Option<u16>,
    allow_remote: Option<bool>,
}

/// The admin endpoint's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Serve `status` at all. Default true.
    pub enabled: bool,
    /// Address. Default 127.0.0.1; anything but loopback needs `allow_remote`.
    pub bind: IpAddr,
    /// First port tried. Default 4700 (`cohort status` asks there unless told otherwise).
    pub port: u16,
    /// Ports tried from `port` up. Default 100.
    pub auto_bind: u16,
}

/// Everything a node needs, validated.
pub struct NodeConfig {
    /// Node name.
    pub name: Option<String>,
    /// Print `message` events.
    pub print_messages: bool,
    /// Test traffic (see [`crate::traffic`]): messages per second per mode, 0 = none.
    pub traffic_rate: u32,
    /// Runtime threads (1 = a current-thread runtime).
    pub runtime_threads: usize,
    /// Cluster keys.
    pub keys: Option<KeyRing>,
    /// Membership.
    pub membership: MembershipSetup,
    /// Transport.
    pub transport: TransportConfig,
    /// Channel.
    pub channel: ChannelConfig,
    /// Services to start.
    pub services: Services,
    /// Admin endpoint.
    pub admin: AdminConfig,
    /// The interceptor stack, top first (validated as a whole).
    pub interceptors: Vec<InterceptorConfig>,
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn ip(key: &str, v: &str) -> Result<IpAddr, ConfigError> {
    v.parse().map_err(|e| invalid(key, format!("{v:?}: {e}")))
}

fn ipv4(key: &str, v: &str) -> Result<Ipv4Addr, ConfigError> {
    v.parse().map_err(|e| invalid(key, format!("{v:?}: {e}")))
}

impl NodeConfig {
    /// Reads and validates a file.
    pub fn from_file(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::from_parsed(file)
    }

    /// The defaults (no file).
    pub fn defaults() -> Self {
        Self::from_parsed(FileConfig::default()).expect("defaults are valid")
    }

    fn from_parsed(f: FileConfig) -> Result<Self, ConfigError> {
        let keys = if f.node.keys.is_empty() {
            None
        } else {
            let mut ring = Vec::new();
            for (i, k) in f.node.keys.iter().enumerate() {
                ring.push(
                    ClusterKey::new(k.as_bytes().to_vec())
                        .map_err(|e| invalid(&format!("node.keys[{i}]"), e))?,
                );
            }
            Some(KeyRing::new(ring).map_err(|e| invalid("node.keys", e))?)
        };

        let m = f.membership;
        let mut mc = MembershipConfig::default();
        if let Some(v) = m.cluster {
            mc.cluster = v;
        }
        if let Some(v) = m.frequency {
            mc.frequency = ms(v);
        }
        if let Some(v) = m.drop_time {
            mc.drop_time = ms(v);
        }
        if let Some(v) = m.max_members {
            mc.max_members = NonZeroUsize::new(v)
                .ok_or_else(|| invalid("membership.max_members", "must be at least 1"))?;
        }
        if let Some(v) = m.max_clock_skew {
            mc.max_clock_skew = ms(v);
        }
        if let Some(v) = m.min_answer_interval {
            mc.min_answer_interval = ms(v);
        }
        if let Some(v) = m.max_pending_events {
            mc.max_pending_events = NonZeroUsize::new(v)
                .ok_or_else(|| invalid("membership.max_pending_events", "must be at least 1"))?;
        }
        mc.keys.clone_from(&keys);
        mc.validate().map_err(|e| invalid("membership", e))?;
        let multicast = match m.multicast.map(multicast_section).transpose()? {
            Some(MulticastSection::Enabled(false)) => None,
            None | Some(MulticastSection::Enabled(true)) => Some(MulticastConfig::default()),
            Some(MulticastSection::Table(t)) => {
                let mut c = MulticastConfig::default();
                if let Some(v) = t.group {
                    c.group = ipv4("membership.multicast.group", &v)?;
                }
                if let Some(v) = t.port {
                    c.port = v;
                }
                if let Some(v) = t.interface {
                    c.interface = ipv4("membership.multicast.interface", &v)?;
                }
                if let Some(v) = t.ttl {
                    c.ttl = v;
                }
                if let Some(v) = t.loopback {
                    c.loopback = v;
                }
                if let Some(r) = t.recovery {
                    let rc = &mut c.recovery;
                    rc.enabled = r.enabled.unwrap_or(rc.enabled);
                    rc.counter = r.counter.unwrap_or(rc.counter);
                    rc.sleep = r.sleep.map_or(rc.sleep, ms);
                    rc.slow_sleep = r.slow_sleep.map_or(rc.slow_sleep, ms);
                    rc.error_pause = r.error_pause.map_or(rc.error_pause, ms);
                }
                c.validate()
                    .map_err(|e| invalid("membership.multicast", e))?;
                Some(c)
            }
        };
        let static_members = if m.static_members.is_empty() && m.static_bind.is_none() {
            None
        } else {
            let bind = m
                .static_bind
                .as_deref()
                .ok_or_else(|| invalid("membership.static_bind", "required with static_members"))?;
            let bind: SocketAddr = bind
                .parse()
                .map_err(|e| invalid("membership.static_bind", format!("{bind:?}: {e}")))?;
            let mut peers = Vec::new();
            for (i, p) in m.static_members.iter().enumerate() {
                peers.push(
                    p.parse::<StaticPeer>()
                        .map_err(|e| invalid(&format!("membership.static_members[{i}]"), e))?,
                );
            }
            Some((bind, peers))
        };

        let t = f.transport;
        let mut tc = TransportConfig::default();
        if let Some(v) = t.bind {
            tc.bind = ip("transport.bind", &v)?;
        }
        macro_rules! set {
            ($($field:ident $(=> $conv:expr)?),* $(,)?) => {
                $(if let Some(v) = t.$field { tc.$field = set!(@conv v $(, $conv)?); })*
            };
            (@conv $v:ident) => { $v };
            (@conv $v:ident, $conv:expr) => { $conv($v) };
        }
        set!(
            port,
            auto_bind,
            connect_timeout => ms,
            send_timeout => ms,
            max_retry_attempts,
            reconnect_backoff => ms,
            max_reconnect_backoff => ms,
            max_in_flight,
            max_peer_queue_bytes,
            write_batch_bytes,
            rx_buf_size,
            max_connections,
            frame_timeout => ms,
            hello_timeout => ms,
            idle_timeout => ms,
            max_unauthenticated,
            max_unauthenticated_per_source,
            max_inbound_bytes,
            max_pending_acks,
            inbound_queue,
        );
        tc.udp_port = t.udp_port;
        tc.keep_alive_count = t.keep_alive_count;
        tc.keep_alive_time = t.keep_alive_time.map(ms);
        if let Some(v) = t.connections_per_peer {
            tc.connections_per_peer = NonZeroUsize::new(v)
                .ok_or_else(|| invalid("transport.connections_per_peer", "must be at least 1"))?;
        }
        if let Some(v) = t.max_frame_payload {
            tc.limits.max_frame_payload = v;
        }
        if let Some(v) = t.max_frame_header {
            tc.limits.max_frame_header = v;
        }
        tc.validate().map_err(|e| ConfigError::Invalid {
            key: match &e {
                cohort_transport::ConfigError::Invalid { key, .. } => format!("transport.{key}"),
                _ => "transport.limits".into(),
            },
            reason: e.to_string(),
        })?;

        let c = f.channel;
        let mut cc = ChannelConfig::default();
        if let Some(v) = c.heartbeat_interval {
            cc.heartbeat_interval = ms(v);
        }
        if let Some(v) = c.async_queue_bytes {
            cc.async_queue_bytes = v;
        }
        if let Some(v) = c.async_queue_messages {
            cc.async_queue_messages = v;
        }
        if let Some(v) = c.delivery_queue {
            cc.delivery_queue = v;
        }
        if let Some(v) = c.drain_timeout {
            cc.drain_timeout = ms(v);
        }
        if let Some(v) = c.option_check {
            cc.option_check = v;
        }
        cc.validate().map_err(|e| match e {
            cohort_channel::ChannelError::Config { key, reason } => {
                invalid(&format!("channel.{key}"), reason)
            }
            other => invalid("channel", other),
        })?;
        let services = match c.services {
            None => Services::DEFAULT,
            Some(v) if (1..=15).contains(&v) => Services::from_bits_truncate(v),
            Some(v) => return Err(invalid("channel.services", format!("{v} is not in 1..=15"))),
        };

        let a = f.admin;
        let admin = AdminConfig {
            enabled: a.enabled.unwrap_or(true),
            bind: match a.bind {
                Some(v) => ip("admin.bind", &v)?,
                None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            },
            port: a.port.unwrap_or(4700),
            auto_bind: a.auto_bind.unwrap_or(100).max(1),
        };
        if !admin.bind.is_loopback() && !a.allow_remote.unwrap_or(false) {
            return Err(invalid(
                "admin.bind",
                "not a loopback address; set admin.allow_remote = true to expose status beyond this host",
            ));
        }

        let interceptors = f.interceptor.unwrap_or_else(default_stack);
        validate_stack(&interceptors)
            .map_err(|e| invalid(&format!("interceptor[{}] ({})", e.index, e.kind), e.reason))?;
        Ok(Self {
            interceptors,
            name: f.node.name,
            print_messages: f.node.print_messages,
            traffic_rate: match f.node.traffic_rate {
                Some(r) if r > crate::traffic::MAX_RATE => {
                    return Err(invalid(
                        "node.traffic_rate",
                        format!("{r} is above {}", crate::traffic::MAX_RATE),
                    ));
                }
                r => r.unwrap_or(0),
            },
            runtime_threads: match f.node.runtime_threads {
                None => 1,
                Some(n @ 1..=MAX_RUNTIME_THREADS) => n,
                Some(n) => {
                    return Err(invalid(
                        "node.runtime_threads",
                        format!("{n} is not in 1..={MAX_RUNTIME_THREADS}"),
                    ));
                }
            },
            keys,
            membership: MembershipSetup {
                config: mc,
                multicast,
                static_members,
            },
            transport: tc,
            channel: cc,
            services,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example stack, and one entry of every type with its options, parse and
    /// validate; no entries at all means the default stack.
    #[test]
    fn every_interceptor_type_parses_from_toml() {
        let text = r#"
[[interceptor]]
type = "throughput"
interval_ms = 10000
log = false
[[interceptor]]
type = "coordinator"
settle_ms = 500
[[interceptor]]
type = "two_phase_commit"
expire_ms = 1000
max_pending = 10
[[interceptor]]
type = "order"
option_flag = 512
expire_ms = 3000
forward_expired = false
max_queue = 10
max_senders = 10
[[interceptor]]
type = "compression"
algorithm = "zstd"
level = 5
min_size = 256
option_flag = 256
max_decompressed_bytes = 1000000
[[interceptor]]
type = "encryption"
algorithm = "chacha20-poly1305"
keys = [{ id = 2, key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" }]
active = 2
require = true
secure_only = false
replay_window_ms = 60000
replay_window_messages = 8192
max_senders = 100
[[interceptor]]
type = "fragmentation"
max_size = 102400
expire_ms = 60000
max_partials = 10
max_partial_bytes = 1048576
[[interceptor]]
type = "domain_filter"
domain = "{1,2,3}"
[[interceptor]]
type = "throttle"
spec = "xmpp:25k:0:disc,bin:200m:0:disc"
rules = [{ unit = "bytes", per_minute = 1000000, lifetime = 0, action = "drop" }]
[[interceptor]]
type = "tcp_ping"
interval_ms = 1000
ping_on_join = true
[[interceptor]]
type = "tcp_failure_detector"
connect_timeout_ms = 1000
perform_send_test = true
perform_read_test = false
read_test_timeout_ms = 5000
remove_suspects_timeout_ms = -1
recheck_interval_ms = 1000
max_probes = 10
max_members = 10
[[interceptor]]
type = "message_dispatch"
max_queue_bytes = 1048576
max_queue_messages = 100
policy = "reject"
[[interceptor]]
type = "static_membership"
members = [{ address = "127.0.0.1:4001" }, { address = "127.0.0.1:4002", id = "000102030405060708090a0b0c0d0e0f" }]
announce_interval_ms = 500
"#;
        let c = NodeConfig::from_toml(text).unwrap();
        assert_eq!(c.interceptors.len(), 13);
        assert_eq!(NodeConfig::defaults().interceptors, default_stack());
        let Err(e) = NodeConfig::from_toml("[[interceptor]]\ntype = \"order\"\nexpire_ms = 0\n")
        else {
            panic!("accepted")
        };
        let e = e.to_string();
        assert!(e.contains("interceptor[0] (order): expire_ms"), "{e}");
    }
}
