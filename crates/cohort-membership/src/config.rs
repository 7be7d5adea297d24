//! Membership configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use cohort_wire::{ClusterKey, KeyRing, MemberId, WireLimits};

/// Why a configuration was rejected. State is never changed by a rejected configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field violates its bound.
    #[error("`{field}` is invalid: {problem}")]
    Invalid {
        /// The field, as named in the TOML table.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A wire-level setting (limits, keys) is invalid.
    #[error(transparent)]
    Wire(#[from] cohort_wire::ConfigError),
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// The sans-IO core's settings: timing, identity of the cluster, limits and keys.
///
/// Defaults are Tribes' `McastService` defaults: beacon every 500 ms, drop after 3000 ms.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct MembershipConfig {
    /// Cluster name carried in every beacon; beacons of other clusters are ignored and counted.
    pub cluster: String,
    /// Beacon interval (Tribes' `frequency`). Default 500 ms.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub frequency: Duration,
    /// A member silent for this long is dropped (Tribes' `dropTime`). Default 3000 ms; must be
    /// at least twice `frequency`.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub drop_time: Duration,
    /// Most members in the table, the local one excluded. Beacons of new members beyond it are
    /// dropped and counted (`MembershipStats::table_full`). Default 1024.
    pub max_members: NonZeroUsize,
    /// Cluster keys: when set, beacons are signed with the first and must verify under one.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub keys: Option<KeyRing>,
    /// With keys: beacons whose send time differs from ours by more than this are dropped as
    /// stale (replays of old beacons), and a departed member's sequence refuses replays for
    /// this plus `drop_time`. Default 30 s. Ignored without keys: an unauthenticated sequence
    /// refuses lower ones for one `frequency` only, so that one forged beacon cannot keep a
    /// live member out.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub max_clock_skew: Duration,
    /// Shortest interval between the immediate beacons sent to answer joins or announce a
    /// payload change, so that a burst of joins cannot cause a storm. Default 20 ms.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub min_answer_interval: Duration,
    /// Most events held for the application before the oldest are dropped (and counted).
    /// Default 4096.
    pub max_pending_events: NonZeroUsize,
    /// Wire limits for beacons.
    pub limits: WireLimits,
    /// Which members may join: `compatible` (default) admits any member whose protocol
    /// version range overlaps ours; `same` also requires the same application version
    /// ([`LocalMemberConfig::app_version`]), as Tribes requires one application version
    /// cluster-wide. Refused members are reported (`MembershipEvent::MemberRefused`).
    pub version_policy: VersionPolicy,
}

/// Which members may join (see [`MembershipConfig::version_policy`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum VersionPolicy {
    /// Any member whose protocol versions overlap ours (a rolling upgrade mixes builds).
    #[default]
    Compatible,
    /// Only members with our application version; the others are refused and reported.
    Same,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            cluster: "cohort".into(),
            frequency: Duration::from_millis(500),
            drop_time: Duration::from_millis(3000),
            max_members: NonZeroUsize::new(1024).expect("non-zero"),
            keys: None,
            max_clock_skew: Duration::from_secs(30),
            min_answer_interval: Duration::from_millis(20),
            max_pending_events: NonZeroUsize::new(4096).expect("non-zero"),
            limits: WireLimits::default(),
            version_policy: VersionPolicy::Compatible,
        }
    }
}

impl MembershipConfig {
    /// Checks every bound; called by every constructor.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.len() > cohort_wire::MAX_CLUSTER_LEN {
            return Err(invalid("cluster", "longer than 255 bytes"));
        }
        if self.frequency < Duration::from_millis(10) {
            return Err(invalid("frequency", "must be at least 10 ms"));
        }
        if self.drop_time < 2 * self.frequency {
            return Err(invalid(
                "drop_time",
                format!(
                    "{:?} is less than twice the frequency ({:?})",
                    self.drop_time, self.frequency
                ),
            ));
        }
        if self.min_answer_interval > self.frequency {
            return Err(invalid("min_answer_interval", "must not exceed frequency"));
        }
        // Durations beyond a day are mistakes; u64::MAX ms would switch protections off
        // (`max_clock_skew`) or overflow instants.
        let day = Duration::from_secs(86_400);
        for (key, value) in [
            ("frequency", self.frequency),
            ("drop_time", self.drop_time),
            ("max_clock_skew", self.max_clock_skew),
            ("min_answer_interval", self.min_answer_interval),
        ] {
            if value > day {
                return Err(invalid(key, "must be at most 86400000 ms (a day)"));
            }
        }
        self.limits.validate()?;
        Ok(())
    }
}

/// A statically configured peer (Tribes' `StaticMember`, Tigase's `host:password:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPeer {
    /// Where its membership socket listens for beacons.
    pub addr: SocketAddr,
    /// Its member id, if known: beacons from `addr` claiming another id are dropped.
    pub id: Option<MemberId>,
    /// A secret shared with this peer alone: beacons to and from it are signed with it instead
    /// of the cluster keys. A beacon that names this peer (by `id`, by `addr` as its data
    /// address, or by the id or data address the secret last vouched for), whatever address it
    /// came from, counts only when the secret verified it, that is when it came from `addr`
    /// signed with the secret; otherwise it is dropped and counted as unauthenticated.
    pub secret: Option<ClusterKey>,
}

impl StaticPeer {
    /// A peer at `addr` with no pinned id and no own secret.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            id: None,
            secret: None,
        }
    }
}

impl std::str::FromStr for StaticPeer {
    type Err = ConfigError;

    /// `host:port`, `host:secret:port` (Tigase's form), with an optional `@id` suffix of 32 hex
    /// digits: `127.0.0.1:45601`, `10.0.0.2:s3cr3t-at-least-16b:45601@00112233...`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (rest, id) = match text.rsplit_once('@') {
            Some((rest, id)) => {
                let id = id
                    .parse::<MemberId>()
                    .map_err(|e| invalid("static_members", format!("`{text}`: {e}")))?;
                (rest, Some(id))
            }
            None => (text, None),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (host, secret, port) = match parts.as_slice() {
            [host, port] => (*host, None, *port),
            [host, secret, port] => (*host, Some(*secret), *port),
            _ => {
                return Err(invalid(
                    "static_members",
                    format!("`{text}`: expected host:port or host:secret:port"),
                ));
            }
        };
        let ip: IpAddr = host
            .parse()
            .map_err(|_| invalid("static_members", format!("`{host}` is not an IP address")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid("static_members", format!("`{port}` is not a port")))?;
        let secret = secret
            .map(|s| ClusterKey::new(s.as_bytes().to_vec()))
            .transpose()?;
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            id,
            secret,
        })
    }
}

/// Multicast settings (Tribes' `McastService` attributes).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct MulticastConfig {
    /// Group address. Default 228.0.0.4.
    pub group: Ipv4Addr,
    /// Group port. Default 45564. Address and port together define the cluster's channel.
    pub port: u16,
    /// Interface to send and receive multicast on (Tribes' `bind`). Default 127.0.0.1:
    /// unlike Tribes, nothing leaves the host unless an interface is configured on purpose.
    pub interface: Ipv4Addr,
    /// Multicast TTL. Default 1 (the JVM default Tribes inherits).
    pub ttl: u32,
    /// Receive our own beacons back (Tribes' `!localLoopbackDisabled`). Default true; needed
    /// for several nodes on one host.
    pub loopback: bool,
    /// Recovery from socket errors.
    pub recovery: RecoveryConfig,
    /// Port of the group's data path: the channel's transport sends and receives MULTICAST
    /// messages on the same group at this port, on a socket of its own. Default: the beacon
    /// port, which every Cohort build reads data from (each socket skips the other's
    /// datagrams by their magic), so that a rolling upgrade from a build that sent data
    /// through the membership socket keeps MULTICAST working both ways. A port of its own
    /// keeps data datagrams off the beacon socket once every member runs this build.
    pub data_port: Option<u16>,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            group: Ipv4Addr::new(228, 0, 0, 4),
            port: 45564,
            interface: Ipv4Addr::LOCALHOST,
            ttl: 1,
            loopback: true,
            recovery: RecoveryConfig::default(),
            data_port: None,
        }
    }
}

impl MulticastConfig {
    /// The socket options the driver opens its multicast socket with.
    pub fn socket_options(&self) -> cohort_net::MulticastOptions {
        cohort_net::MulticastOptions {
            group: self.group,
            port: self.port,
            interface: self.interface,
            ttl: self.ttl,
            loopback: self.loopback,
        }
    }

    /// The socket options of the data path (the group at [`MulticastConfig::data_port`]).
    pub fn data_options(&self) -> cohort_net::MulticastOptions {
        cohort_net::MulticastOptions {
            port: self.data_port.unwrap_or(self.port),
            ..self.socket_options()
        }
    }

    /// True when this host routes this group over the configured interface (a TTL-0 probe;
    /// see [`cohort_net::multicast_loops_back`]).
    pub fn loops_back(&self, timeout: Duration) -> bool {
        cohort_net::multicast_loops_back(&self.socket_options(), timeout)
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.group.is_multicast() {
            return Err(invalid(
                "address",
                format!("{} is not multicast", self.group),
            ));
        }
        if self.ttl > 255 {
            return Err(invalid("ttl", "must be 0..=255"));
        }
        if self.data_port == Some(0) {
            return Err(invalid("data_port", "must not be 0"));
        }
        self.recovery.validate()
    }
}

/// What the driver does when its socket keeps failing (Tribes' recovery settings).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RecoveryConfig {
    /// Close and reopen the socket after `counter` consecutive errors. Default true.
    pub enabled: bool,
    /// Consecutive errors before a reopen, and reopen attempts at `sleep` intervals before the
    /// driver reports the failure and falls back to retrying every `slow_sleep`. Default 10.
    pub counter: u32,
    /// Pause between reopen attempts. Default 5000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub sleep: Duration,
    /// Pause between attempts once `counter` attempts failed. Default 60 s. The driver never
    /// gives up silently and never spins.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub slow_sleep: Duration,
    /// Pause of a socket's receives after an error, so that a socket that keeps failing is
    /// not polled in a busy loop (Tribes sleeps 500 ms). Default 500 ms.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "cohort_wire::serde_ms::duration")
    )]
    pub error_pause: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            counter: 10,
            sleep: Duration::from_millis(5000),
            slow_sleep: Duration::from_secs(60),
            error_pause: Duration::from_millis(500),
        }
    }
}

impl RecoveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.counter == 0 {
            return Err(invalid("recovery_counter", "must be at least 1"));
        }
        let day = Duration::from_secs(86_400);
        for (key, value) in [
            ("recovery_sleep", self.sleep),
            ("recovery_slow_sleep", self.slow_sleep),
            ("recovery_error_pause", self.error_pause),
        ] {
            if value.is_zero() || value > day {
                return Err(invalid(key, "must be between 1 ms and a day"));
            }
        }
        Ok(())
    }
}

/// The local member's description, from which the driver builds its [`cohort_wire::Member`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalMemberConfig {
    /// Member id; default: drawn from the rng given to `start` (a channel draws it earlier,
    /// so that its transport and membership agree).
    pub id: Option<cohort_wire::MemberId>,
    /// Start time advertised (ms since the epoch); default: the wall clock at start.
    pub start_time_ms: Option<u64>,
    /// Node name shown in views; default: the host name, as the driver finds it.
    pub name: Option<String>,
    /// Data receiver address advertised to peers.
    pub data_addr: Option<SocketAddr>,
    /// UDP data port, if any.
    pub udp_port: Option<u16>,
    /// Domain bytes (Tribes' `domain`).
    pub domain: Bytes,
    /// Initial payload.
    pub payload: Bytes,
    /// The application's version, announced to every member (at most 255 bytes; empty: none).
    /// Compared only under `version_policy = "same"`.
    pub app_version: String,
}

/// Which DNS records name the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DnsRecord {
    /// A and AAAA records: every address, each with [`DnsConfig::port`] (a Kubernetes headless
    /// service).
    #[default]
    A,
    /// SRV records: each names a target host and its port (Consul, Kubernetes named ports).
    Srv,
}

/// DNS discovery (`[membership.dns]`): a name resolved again and again; every address it
/// yields is beaconed by unicast like a static peer, from the static socket (`static_bind`).
///
/// Resolution failures (NXDOMAIN, a dead resolver) are reported as
/// [`crate::MembershipEvent::DnsFailed`] and retried with a doubling backoff; they are never
/// fatal, and the addresses last resolved stay in use. An address that is also a configured
/// static peer is that peer (its pinned id and own secret apply).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct DnsConfig {
    /// The name to resolve, e.g. `cohort.default.svc.cluster.local` or
    /// `_cohort._udp.service.consul`. A name without a final dot goes through the resolver's
    /// search list.
    pub name: String,
    /// `a` (A and AAAA, default) or `srv`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub record: DnsRecord,
    /// The membership port of the members, for `a` records (required there; SRV records
    /// carry their own ports, so it must be absent with `srv`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub port: Option<u16>,
    /// The DNS server to ask (`ip:port`); default: the system's (`/etc/resolv.conf`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub resolver: Option<SocketAddr>,
    /// Longest time between two resolutions. Records are cached for their TTL, but never
    /// longer than this. Default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(
            default = "dns_refresh",
            deserialize_with = "cohort_wire::serde_ms::duration"
        )
    )]
    pub refresh: Duration,
    /// Shortest time between two resolutions, however short the TTLs. Default 1 s.
    #[cfg_attr(
        feature = "serde",
        serde(
            default = "dns_min_refresh",
            deserialize_with = "cohort_wire::serde_ms::duration"
        )
    )]
    pub min_refresh: Duration,
    /// How long one resolution may take. Default 2 s.
    #[cfg_attr(
        feature = "serde",
        serde(
            default = "dns_timeout",
            deserialize_with = "cohort_wire::serde_ms::duration"
        )
    )]
    pub timeout: Duration,
    /// First pause after a failure; it doubles with each failure in a row, up to `refresh`.
    /// Default 500 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            default = "dns_retry",
            deserialize_with = "cohort_wire::serde_ms::duration"
        )
    )]
    pub retry: Duration,
    /// Most addresses taken from one resolution (the rest are dropped and logged). Default 64.
    #[cfg_attr(feature = "serde", serde(default = "dns_max_addresses"))]
    pub max_addresses: usize,
}

#[cfg(feature = "serde")]
fn dns_refresh() -> Duration {
    DnsConfig::new("").refresh
}
#[cfg(feature = "serde")]
fn dns_min_refresh() -> Duration {
    DnsConfig::new("").min_refresh
}
#[cfg(feature = "serde")]
fn dns_timeout() -> Duration {
    DnsConfig::new("").timeout
}
#[cfg(feature = "serde")]
fn dns_retry() -> Duration {
    DnsConfig::new("").retry
}
#[cfg(feature = "serde")]
fn dns_max_addresses() -> usize {
    DnsConfig::new("").max_addresses
}

/// Most addresses one resolution may yield, whatever `max_addresses` says.
pub const MAX_DNS_ADDRESSES: usize = 1024;

impl DnsConfig {
    /// Discovery of `name` by A/AAAA records on the defaults (set `port` before use).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            record: DnsRecord::A,
            port: None,
            resolver: None,
            refresh: Duration::from_secs(5),
            min_refresh: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            retry: Duration::from_millis(500),
            max_addresses: 64,
        }
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.name.trim_end_matches('.');
        if name.is_empty() || self.name.len() > 254 {
            return Err(invalid(
                "dns.name",
                "must be a DNS name of 1 to 253 characters",
            ));
        }
        match (self.record, self.port) {
            (DnsRecord::A, None | Some(0)) => {
                return Err(invalid(
                    "dns.port",
                    "required (1..=65535) with record = \"a\"",
                ));
            }
            (DnsRecord::Srv, Some(_)) => {
                return Err(invalid(
                    "dns.port",
                    "must be absent with record = \"srv\": SRV records carry the ports",
                ));
            }
            _ => {}
        }
        let day = Duration::from_secs(86_400);
        for (key, value) in [
            ("dns.refresh", self.refresh),
            ("dns.min_refresh", self.min_refresh),
            ("dns.timeout", self.timeout),
            ("dns.retry", self.retry),
        ] {
            if value < Duration::from_millis(10) || value > day {
                return Err(invalid(key, "must be between 10 ms and a day"));
            }
        }
        if self.min_refresh > self.refresh {
            return Err(invalid("dns.min_refresh", "must not exceed refresh"));
        }
        if self.max_addresses == 0 || self.max_addresses > MAX_DNS_ADDRESSES {
            return Err(invalid(
                "dns.max_addresses",
                format!("must be in 1..={MAX_DNS_ADDRESSES}"),
            ));
        }
        Ok(())
    }
}
