//! `Throttle`: per-connection traffic limits in Tigase's form (seed 004): for messages or
//! bytes, a maximum per minute and a maximum over the connection's lifetime (0 = unlimited),
//! and an action when exceeded: `disc` closes the connection, `drop` drops the excess.
//!
//! A spec string: `msgs:25k:0:disc,bytes:200m:0:disc` (Tigase's `xmpp` and `bin` are accepted
//! for `msgs` and `bytes`; suffixes `k`, `m`, `g` are powers of 1000). Or structured rules.
//!
//! A connection is an inbound connection, identified by its remote address (a reconnect is a
//! new connection with fresh counters); UDP and multicast senders are counted per source
//! address, where `disc` acts as `drop`. Minutes are fixed windows from the connection's
//! first message. Dropped messages fail their ACK (`throttled`), so a SYNC sender sees it.

use crate::ConfigError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort_channel::{Cx, Inbound, Interceptor};

use crate::util::{Counter, bad};

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Unit {
    /// Messages (Tigase's `xmpp`: packets).
    #[cfg_attr(feature = "serde", serde(alias = "xmpp"))]
    Msgs,
    /// Payload bytes (Tigase's `bin`).
    #[cfg_attr(feature = "serde", serde(alias = "bin"))]
    Bytes,
}

/// What happens beyond a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum Action {
    /// Close the connection.
    #[cfg_attr(feature = "serde", serde(alias = "disconnect"))]
    Disc,
    /// Drop the message.
    Drop,
}

/// One limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct Rule {
    /// Messages or bytes.
    pub unit: Unit,
    /// Most per minute; 0 = unlimited.
    pub per_minute: u64,
    /// Most over the connection's life; 0 = unlimited.
    #[cfg_attr(feature = "serde", serde(default))]
    pub lifetime: u64,
    /// When exceeded.
    pub action: Action,
}

fn amount(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1_000),
        Some('m') => (&t[..t.len() - 1], 1_000_000),
        Some('g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (&t[..], 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not an amount (digits with k, m or g)"))
}

/// Parses a Tigase-style spec: `unit:per_minute:lifetime:action` entries joined by commas.
pub fn parse_spec(spec: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (i, entry) in spec
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let parts: Vec<&str> = entry.split(':').collect();
        let [unit, per_minute, lifetime, action] = parts[..] else {
            return Err(format!(
                "entry {i} {entry:?}: expected unit:per_minute:lifetime:action"
            ));
        };
        let unit = match unit.trim() {
            "msgs" | "xmpp" => Unit::Msgs,
            "bytes" | "bin" => Unit::Bytes,
            other => {
                return Err(format!(
                    "entry {i}: unit {other:?} is not msgs, bytes, xmpp or bin"
                ));
            }
        };
        let action = match action.trim() {
            "disc" | "disconnect" => Action::Disc,
            "drop" => Action::Drop,
            other => return Err(format!("entry {i}: action {other:?} is not disc or drop")),
        };
        rules.push(Rule {
            unit,
            per_minute: amount(per_minute).map_err(|e| format!("entry {i}: {e}"))?,
            lifetime: amount(lifetime).map_err(|e| format!("entry {i}: {e}"))?,
            action,
        });
    }
    Ok(rules)
}

/// Settings: a spec string, rules, or both (combined).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ThrottleConfig {
    /// Tigase's form, e.g. `msgs:25k:0:disc,bytes:200m:0:disc`.
    pub spec: Option<String>,
    /// Structured rules.
    pub rules: Vec<Rule>,
    /// Connections tracked; beyond, the idle longest is forgotten. Default 4096.
    pub max_connections: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            spec: None,
            rules: Vec::new(),
            max_connections: 4096,
        }
    }
}

impl ThrottleConfig {
    /// Every rule, the spec's first.
    pub fn all_rules(&self) -> Result<Vec<Rule>, ConfigError> {
        let mut rules = match &self.spec {
            Some(s) => parse_spec(s).map_err(|reason| ConfigError {
                key: "spec".into(),
                reason,
            })?,
            None => Vec::new(),
        };
        rules.extend(self.rules.iter().copied());
        Ok(rules)
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rules = self.all_rules()?;
        if rules.is_empty() {
            return bad("rules", "no limits given (set spec or rules)");
        }
        if let Some(i) = rules
            .iter()
            .position(|r| r.per_minute == 0 && r.lifetime == 0)
        {
            return bad(
                &format!("rules[{i}]"),
                "both limits are 0 (unlimited): remove it",
            );
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters.
#[derive(Debug, Default)]
pub struct ThrottleStats {
    dropped: Counter,
    disconnects: Counter,
}

impl ThrottleStats {
    /// Messages dropped by a limit (including the one that caused a disconnect).
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
    /// Connections closed by a limit.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.get()
    }
}

#[derive(Default)]
struct Usage {
    window_start: Option<Instant>,
    window: [u64; 2],
    life: [u64; 2],
    last: Option<Instant>,
}

/// The interceptor. See the module docs.
pub struct Throttle {
    rules: Vec<Rule>,
    max_connections: usize,
    usage: HashMap<SocketAddr, Usage>,
    stats: Arc<ThrottleStats>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Throttle {
    /// A throttle with `cfg` (validate first; a bad spec gives no rules).
    pub fn new(cfg: &ThrottleConfig) -> Self {
        Self {
            rules: cfg.all_rules().unwrap_or_default(),
            max_connections: cfg.max_connections.max(1),
            usage: HashMap::new(),
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ThrottleStats> {
        self.stats.clone()
    }
}

impl Interceptor for Throttle {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        let now = cx.now();
        if !self.usage.contains_key(&msg.peer) && self.usage.len() >= self.max_connections {
            if let Some(k) = self
                .usage
                .iter()
                .min_by_key(|(_, u)| u.last)
                .map(|(k, _)| *k)
            {
                self.usage.remove(&k);
            }
        }
        let u = self.usage.entry(msg.peer).or_default();
        u.last = Some(now);
        if u.window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= MINUTE)
        {
            u.window_start = Some(now);
            u.window = [0, 0];
        }
        let amounts = [1, msg.payload.len() as u64];
        let mut verdict = None;
        for r in &self.rules {
            let i = usize::from(r.unit == Unit::Bytes);
            let over_minute = r.per_minute > 0 && u.window[i] + amounts[i] > r.per_minute;
            let over_life = r.lifetime > 0 && u.life[i] + amounts[i] > r.lifetime;
            if over_minute || over_life {
                // disc wins over drop.
                if verdict != Some(Action::Disc) {
                    verdict = Some(r.action);
                }
            }
        }
        match verdict {
            None => {
                for (i, n) in amounts.iter().enumerate() {
                    u.window[i] += n;
                    u.life[i] += n;
                }
                cx.deliver_up(msg);
            }
            Some(action) => {
                self.stats.dropped.inc();
                if action == Action::Disc {
                    self.stats.disconnects.inc();
                    tracing::warn!(peer = %msg.peer, "traffic limit exceeded; connection closed");
                    self.usage.remove(&msg.peer);
                    cx.disconnect(msg.peer);
                }
                if let Some(a) = msg.ack {
                    a.fail("throttled".into());
                }
            }
        }
    }

    fn on_heartbeat(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        // Forget connections idle for longer than a minute with no lifetime limit to keep.
        let keep_life = self.rules.iter().any(|r| r.lifetime > 0);
        if !keep_life {
            self.usage.retain(|_, u| {
                u.last
                    .is_some_and(|l| now.saturating_duration_since(l) < MINUTE)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_channel::SendOptions;

    #[test]
    fn specs_parse_in_tigase_form() {
        let r = parse_spec("xmpp:25k:0:disc, bin:200m:1g:drop").unwrap();
        assert_eq!(
            r,
            vec![
                Rule {
                    unit: Unit::Msgs,
                    per_minute: 25_000,
                    lifetime: 0,
                    action: Action::Disc
                },
                Rule {
                    unit: Unit::Bytes,
                    per_minute: 200_000_000,
                    lifetime: 1_000_000_000,
                    action: Action::Drop
                },
            ]
        );
        for bad in [
            "msgs:1:0",
            "pkts:1:0:disc",
            "msgs:x:0:disc",
            "msgs:1:0:kill",
            "msgs:99999999999999999999:0:drop",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        assert!(
            ThrottleConfig {
                spec: Some("msgs:0:0:drop".into()),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn limits_per_minute_and_lifetime_drop_or_disconnect() {
        let cfg = ThrottleConfig {
            spec: Some("msgs:3:0:drop,bytes:0:10:disc".into()),
            ..Default::default()
        };
        let t = Throttle::new(&cfg);
        let stats = t.stats();
        let mut p = pipeline(vec![Box::new(t)], 1);
        let t0 = Instant::now();
        let m = outbound(1, &[member(1)], SendOptions::NONE, b"ab");
        for _ in 0..4 {
            p.receive(t0, arrive(&m, &member(2)));
        }
        let d = drain(&mut p);
        assert_eq!(d.delivered.len(), 3);
        assert_eq!(stats.dropped(), 1);
        // A new minute: 2 more (bytes 6, 8), then the lifetime byte limit closes the connection.
        let t1 = t0 + MINUTE;
        for _ in 0..3 {
            p.receive(t1, arrive(&m, &member(2)));
        }
        let d = drain(&mut p);
        assert_eq!(d.delivered.len(), 2);
        assert_eq!(d.disconnects.len(), 1);
        assert_eq!(stats.disconnects(), 1);
    }
}
