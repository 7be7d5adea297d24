//! DNS discovery: one task resolves the configured name again and again (hickory-resolver)
//! and hands each outcome to the membership driver, which owns the core. The task holds no
//! protocol state: what the addresses mean is the core's business
//! ([`crate::core::MembershipCore::set_dns_peers`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::sync::mpsc;

use crate::config::{DnsConfig, DnsRecord};

/// One resolution's outcome, for the driver.
#[derive(Debug)]
pub(crate) enum DnsOutcome {
    /// The addresses (at most `max_addresses`, sorted, without duplicates).
    Resolved(Vec<SocketAddr>),
    /// It failed; the next attempt comes after `retry_in`.
    Failed {
        reason: String,
        attempt: u32,
        retry_in: Duration,
    },
}

/// Resolves until the driver drops its receiver.
pub(crate) async fn run(cfg: DnsConfig, out: mpsc::Sender<DnsOutcome>) {
    let mut resolver: Option<TokioResolver> = None;
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let result = match &resolver {
            Some(r) => resolve(r, &cfg).await,
            None => match build(&cfg) {
                Ok(r) => {
                    let result = resolve(&r, &cfg).await;
                    resolver = Some(r);
                    result
                }
                Err(reason) => Err(reason),
            },
        };
        let (outcome, pause) = match result {
            Ok((addrs, ttl)) => {
                failures = 0;
                // Cached for the records' TTL, within [min_refresh, refresh].
                let pause = ttl.clamp(cfg.min_refresh, cfg.refresh);
                (DnsOutcome::Resolved(addrs), pause)
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                let exp = failures.saturating_sub(1).min(16);
                let pause = cfg.retry.saturating_mul(1 << exp).min(cfg.refresh);
                (
                    DnsOutcome::Failed {
                        reason,
                        attempt: failures,
                        retry_in: pause,
                    },
                    pause,
                )
            }
        };
        if out.send(outcome).await.is_err() {
            return;
        }
        let wake = started + pause;
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            () = out.closed() => return,
        }
    }
}

fn build(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = match cfg.resolver {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout;
    opts.attempts = 1;
    // Never cache longer than the refresh interval, so a removed record is noticed in time.
    opts.positive_max_ttl = Some(cfg.refresh);
    opts.negative_max_ttl = Some(cfg.refresh);
    opts.cache_size = 64;
    builder
        .build()
        .map_err(|e| format!("cannot build the resolver: {e}"))
}

/// The addresses `cfg.name` resolves to now, and how long they may be cached.
async fn resolve(
    r: &TokioResolver,
    cfg: &DnsConfig,
) -> Result<(Vec<SocketAddr>, Duration), String> {
    let deadline = cfg.timeout.saturating_mul(2);
    match tokio::time::timeout(deadline, resolve_inner(r, cfg)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer for {} within {deadline:?}", cfg.name)),
    }
}

async fn resolve_inner(
    r: &TokioResolver,
    cfg: &DnsConfig,
) -> Result<(Vec<SocketAddr>, Duration), String> {
    let name = cfg.name.as_str();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let now = Instant::now();
    let ttl;
    match cfg.record {
        DnsRecord::A => {
            let port = cfg.port.unwrap_or_default();
            let lookup = r
                .lookup_ip(name)
                .await
                .map_err(|e| format!("A/AAAA {name}: {e}"))?;
            ttl = lookup.valid_until().saturating_duration_since(now);
            addrs.extend(lookup.iter().map(|ip| SocketAddr::new(ip, port)));
        }
        DnsRecord::Srv => {
            let lookup = r
                .lookup(name, RecordType::SRV)
                .await
                .map_err(|e| format!("SRV {name}: {e}"))?;
            let mut valid = lookup.valid_until().saturating_duration_since(now);
            let mut targets = Vec::new();
            for record in lookup.answers() {
                if let RData::SRV(srv) = &record.data
                    && targets.len() < cfg.max_addresses
                {
                    targets.push((srv.target.clone(), srv.port));
                }
            }
            // Addresses the server sent along, else a lookup of the target; the lookups run at
            // once, each within `timeout`, so that one dead target does not hide the others.
            let mut lookups = tokio::task::JoinSet::new();
            for (target, port) in targets {
                let mut found = false;
                for record in lookup.additionals() {
                    if record.name != target {
                        continue;
                    }
                    match &record.data {
                        RData::A(a) => addrs.push(SocketAddr::new(a.0.into(), port)),
                        RData::AAAA(a) => addrs.push(SocketAddr::new(a.0.into(), port)),
                        _ => continue,
                    }
                    found = true;
                }
                if !found {
                    let (r, timeout) = (r.clone(), cfg.timeout);
                    lookups.spawn(async move {
                        let ips = tokio::time::timeout(timeout, r.lookup_ip(target.clone())).await;
                        (target, port, ips)
                    });
                }
            }
            while let Some(done) = lookups.join_next().await {
                let Ok((target, port, ips)) = done else {
                    continue;
                };
                match ips {
                    Ok(Ok(ips)) => {
                        valid = valid.min(ips.valid_until().saturating_duration_since(now));
                        addrs.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%target, error = %e, "SRV target does not resolve");
                    }
                    Err(_) => tracing::debug!(%target, "SRV target lookup timed out"),
                }
            }
            ttl = valid;
        }
    }
    // Nothing that cannot be a member's static socket (a send there would fail every period).
    addrs.retain(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast());
    addrs.sort();
    addrs.dedup();
    if addrs.len() > cfg.max_addresses {
        tracing::warn!(
            name,
            resolved = addrs.len(),
            kept = cfg.max_addresses,
            "DNS discovery resolved more addresses than max_addresses"
        );
        addrs.truncate(cfg.max_addresses);
    }
    if addrs.is_empty() {
        return Err(format!("{name}: no usable address in the answer"));
    }
    Ok((addrs, ttl))
}
