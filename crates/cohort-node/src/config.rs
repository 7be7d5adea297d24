//! The node's TOML file: one table per component. Unknown keys and invalid values are errors
//! that name the key. Durations are integers in milliseconds; sizes are integers in bytes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cohort_channel::{ChannelConfig, MembershipSetup};
use cohort_interceptors::{InterceptorConfig, default_stack, validate_stack};
use cohort_membership::{DnsConfig, MembershipConfig, MulticastConfig, StaticPeer};
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

/// The whole file. `[transport]` deserializes straight into the library's
/// [`TransportConfig`], and `[membership]`, `[membership.multicast]` and `[channel]` into
/// [`MembershipConfig`], [`MulticastConfig`] and [`ChannelConfig`] (their `serde` features),
/// once the few node-level keys in those tables are taken out: one mapping, no mirrored
/// structs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[node]`
    #[serde(default)]
    pub node: NodeSection,
    /// `[membership]`: [`MembershipConfig`]'s fields plus `multicast`, `static_bind` and
    /// `static_members`.
    #[serde(default)]
    pub membership: toml::Table,
    /// `[transport]`: [`TransportConfig`].
    #[serde(default)]
    pub transport: toml::Table,
    /// `[channel]`: [`ChannelConfig`]'s fields plus `services`.
    #[serde(default)]
    pub channel: toml::Table,
    /// `[admin]`
    #[serde(default)]
    pub admin: AdminConfig,
    /// `[[interceptor]]`, in stack order (first = top). Absent: the default stack.
    #[serde(default)]
    pub interceptor: Option<Vec<InterceptorConfig>>,
    /// `[[job]]`: lead-only jobs.
    #[serde(default)]
    pub job: Vec<crate::jobs::JobConfig>,
    /// `[deployer]`: [`cohort_deployer::DeployerConfig`]'s fields plus `enabled` and
    /// `command`.
    #[serde(default)]
    pub deployer: toml::Table,
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
    /// The application version this node announces (default: the `cohort` binary's version).
    /// Compared under `[membership] version_policy = "same"`.
    pub app_version: Option<String>,
}

/// Deserializes `table` (the TOML table `name`) into a library config; errors name the key as
/// `table.key` (`membership.multicast.recovery.sleep`).
fn table_into<T: serde::de::DeserializeOwned>(
    name: &str,
    table: &toml::Table,
) -> Result<T, ConfigError> {
    // Through text, so that an error carries the span of the offending key.
    let text = toml::to_string(table).map_err(|e| invalid(name, e))?;
    toml::from_str(&text).map_err(|e| {
        let key = e
            .span()
            .and_then(|span| key_at(&text, span.start))
            .map_or_else(|| name.to_owned(), |key| format!("{name}.{key}"));
        invalid(&key, e.message().trim_end())
    })
}

/// The dotted key whose line holds byte `pos` of `text` (a TOML document as `toml` writes
/// it: `[a.b]` headers and `key = value` lines).
fn key_at(text: &str, pos: usize) -> Option<String> {
    let upto = text.get(..pos)?;
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let header = upto[..line_start]
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix('[')?.strip_suffix(']'));
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'));
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(h), None) => Some(h.to_owned()),
        (None, None) => None,
    }
}

/// The admin endpoint's settings (`[admin]`). `Debug` never prints the token.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve `status` at all. Default true.
    pub enabled: bool,
    /// Address. Default 127.0.0.1; anything but loopback needs a `token`.
    pub bind: IpAddr,
    /// First port tried. Default 4700 (`cohort status` asks there unless told otherwise).
    pub port: u16,
    /// Ports tried from `port` up. Default 100.
    pub auto_bind: u16,
    /// The bearer token every route but `/healthz` and `/readyz` then requires; needed to
    /// bind beyond loopback. Default none (`COHORT_ADMIN_TOKEN` is read when unset).
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("auto_bind", &self.auto_bind)
            .field("token", &self.token.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 4700,
            auto_bind: 100,
            token: None,
        }
    }
}

/// Everything a node needs, validated.
pub struct NodeConfig {
    /// Node name.
    pub name: Option<String>,
    /// The application version announced to the members.
    pub app_version: String,
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
    /// Lead-only jobs.
    pub jobs: Vec<crate::jobs::Job>,
    /// The farm deployer, when `[deployer] enabled = true`.
    pub deployer: Option<DeployerSetup>,
}

/// The deployer's settings and the command run after each deploy or undeploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployerSetup {
    /// The library settings.
    pub config: cohort_deployer::DeployerConfig,
    /// Program and arguments run after each deploy or undeploy, with the file's path added
    /// as the last argument (and `COHORT_DEPLOY_EVENT` set to `deployed` or `undeployed`).
    pub command: Vec<String>,
}

/// `[deployer]`: off unless `enabled = true`.
fn deployer_setup(mut t: toml::Table) -> Result<Option<DeployerSetup>, ConfigError> {
    let enabled = match t.remove("enabled") {
        None => false,
        Some(toml::Value::Boolean(b)) => b,
        Some(v) => {
            return Err(invalid(
                "deployer.enabled",
                format!("expected true or false, found {}", v.type_str()),
            ));
        }
    };
    let command = match t.remove("command") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                toml::Value::String(s) => Ok(s),
                other => Err(invalid(
                    &format!("deployer.command[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(invalid(
                "deployer.command",
                format!("expected an array of strings, found {}", v.type_str()),
            ));
        }
    };
    let config: cohort_deployer::DeployerConfig = table_into("deployer", &t)?;
    config
        .validate()
        .map_err(|e| invalid(&format!("deployer.{}", e.key), e.reason))?;
    Ok(enabled.then_some(DeployerSetup { config, command }))
}

/// `static_bind` and `static_members` of `[membership]`.
fn static_setup(
    bind: Option<toml::Value>,
    members: Option<toml::Value>,
) -> Result<Option<(SocketAddr, Vec<StaticPeer>)>, ConfigError> {
    let members: Vec<String> = match members {
        None => Vec::new(),
        Some(v) => v
            .try_into()
            .map_err(|e: toml::de::Error| invalid("membership.static_members", e.message()))?,
    };
    let bind: Option<String> = match bind {
        None => None,
        Some(v) => Some(
            v.try_into()
                .map_err(|e: toml::de::Error| invalid("membership.static_bind", e.message()))?,
        ),
    };
    if members.is_empty() && bind.is_none() {
        return Ok(None);
    }
    let bind =
        bind.ok_or_else(|| invalid("membership.static_bind", "required with static_members"))?;
    let bind: SocketAddr = bind
        .parse()
        .map_err(|e| invalid("membership.static_bind", format!("{bind:?}: {e}")))?;
    let mut peers = Vec::new();
    for (i, p) in members.iter().enumerate() {
        peers.push(
            p.parse::<StaticPeer>()
                .map_err(|e| invalid(&format!("membership.static_members[{i}]"), e))?,
        );
    }
    Ok(Some((bind, peers)))
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

        let mut m = f.membership;
        let multicast = m.remove("multicast");
        let static_bind = m.remove("static_bind");
        let static_members = m.remove("static_members");
        let dns = match m.remove("dns") {
            None => None,
            Some(toml::Value::Table(t)) => {
                let d: DnsConfig = table_into("membership.dns", &t)?;
                d.validate().map_err(|e| invalid("membership.dns", e))?;
                Some(d)
            }
            Some(other) => {
                return Err(invalid(
                    "membership.dns",
                    format!("expected a table, found {}", other.type_str()),
                ));
            }
        };
        let mut mc: MembershipConfig = table_into("membership", &m)?;
        mc.keys.clone_from(&keys);
        mc.validate().map_err(|e| invalid("membership", e))?;
        let multicast = match multicast {
            Some(toml::Value::Boolean(false)) => None,
            None | Some(toml::Value::Boolean(true)) => Some(MulticastConfig::default()),
            Some(toml::Value::Table(t)) => {
                let c: MulticastConfig = table_into("membership.multicast", &t)?;
                c.validate()
                    .map_err(|e| invalid("membership.multicast", e))?;
                Some(c)
            }
            Some(other) => {
                return Err(invalid(
                    "membership.multicast",
                    format!(
                        "expected true, false or a table, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let static_members = static_setup(static_bind, static_members)?;
        if dns.is_some() && static_members.is_none() {
            return Err(invalid(
                "membership.static_bind",
                "required with [membership.dns]: resolved members are beaconed from it",
            ));
        }
        if multicast.is_none()
            && static_members.as_ref().is_none_or(|(_, p)| p.is_empty())
            && dns.is_none()
        {
            return Err(invalid(
                "membership",
                "no way to find members: enable multicast, list static_members, or configure [membership.dns]",
            ));
        }
        let app_version = f
            .node
            .app_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        if app_version.len() > 255 {
            return Err(invalid("node.app_version", "longer than 255 bytes"));
        }

        let tc: TransportConfig = table_into("transport", &f.transport)?;
        tc.validate().map_err(|e| ConfigError::Invalid {
            key: match &e {
                cohort_transport::ConfigError::Invalid { key, .. } => format!("transport.{key}"),
                _ => "transport.limits".into(),
            },
            reason: e.to_string(),
        })?;

        let mut c = f.channel;
        let services = c.remove("services");
        let cc: ChannelConfig = table_into("channel", &c)?;
        cc.validate().map_err(|e| match e {
            cohort_channel::ChannelError::Config { key, reason } => {
                invalid(&format!("channel.{key}"), reason)
            }
            other => invalid("channel", other),
        })?;
        let services = match services {
            None => Services::DEFAULT,
            Some(toml::Value::Integer(v)) if (1..=15).contains(&v) => {
                Services::from_bits_truncate(u8::try_from(v).unwrap_or(15))
            }
            Some(v) => {
                return Err(invalid(
                    "channel.services",
                    format!("{v} is not an integer in 1..=15"),
                ));
            }
        };

        let admin = f.admin;
        if admin.auto_bind == 0 {
            return Err(invalid("admin.auto_bind", "must be at least 1"));
        }
        if admin.token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin.token", "use at least 16 characters"));
        }
        let env_token = std::env::var("COHORT_ADMIN_TOKEN").is_ok_and(|t| !t.is_empty());
        if !admin.bind.is_loopback() && admin.token.is_none() && !env_token {
            return Err(invalid(
                "admin.bind",
                "not a loopback address; set admin.token (or COHORT_ADMIN_TOKEN) to expose the endpoint beyond this host",
            ));
        }

        let interceptors = f.interceptor.unwrap_or_else(default_stack);
        validate_stack(&interceptors)
            .map_err(|e| invalid(&format!("interceptor[{}] ({})", e.index, e.kind), e.reason))?;
        let jobs = crate::jobs::validate(f.job)?;
        let deployer = deployer_setup(f.deployer)?;
        Ok(Self {
            interceptors,
            jobs,
            deployer,
            name: f.node.name,
            app_version,
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
                dns,
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
