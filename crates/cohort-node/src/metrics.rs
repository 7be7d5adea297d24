//! `GET /metrics`: the node's counters in Prometheus text format, through `prometheus-client`.
//!
//! Counters the node keeps itself (lead changes, members lost by reason, job runs) are
//! `prometheus-client` metrics updated as events happen; the channel's, transport's and
//! membership's counters are read from their snapshots at each scrape by a [`Collector`], so a
//! scrape costs a few atomic loads and nothing is counted twice. Every name is documented in
//! docs/OPERATIONS.md.

use std::fmt::Write as _;
use std::sync::Arc;

use cohort_channel::{ChannelHandle, Mode};
use cohort_transport::ACK_LATENCY_BOUNDS_US;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Event-driven counters, shared with the event listener and the job runner.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Lead changes seen.
    pub lead_changes: Counter,
    /// Members that disappeared, by reason (`shutdown`, `expired`, `failed`).
    pub members_lost: Family<Vec<(String, String)>, Counter>,
    /// Job runs started, by job.
    pub job_runs: Family<Vec<(String, String)>, Counter>,
    /// Job runs that failed (non-zero exit, timeout, spawn error), by job.
    pub job_failures: Family<Vec<(String, String)>, Counter>,
}

impl NodeMetrics {
    /// Counts a member lost for `reason`.
    pub fn member_lost(&self, reason: &str) {
        self.members_lost
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }

    /// Counts a run of `job`, and whether it failed.
    pub fn job_run(&self, job: &str, failed: bool) {
        let labels = vec![("job".to_owned(), job.to_owned())];
        self.job_runs.get_or_create(&labels).inc();
        if failed {
            self.job_failures.get_or_create(&labels).inc();
        }
    }
}

/// The registry the endpoint encodes: the node's own counters and the channel's snapshots.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Registers everything for `channel`, with the event counters in `node`.
    pub fn new(channel: ChannelHandle, node: &Arc<NodeMetrics>) -> Self {
        let mut registry = Registry::with_prefix("cohort");
        registry.register(
            "lead_changes",
            "Lead changes this node saw",
            node.lead_changes.clone(),
        );
        registry.register(
            "members_lost",
            "Members that left the view, by reason (shutdown, expired, failed)",
            node.members_lost.clone(),
        );
        registry.register(
            "job_runs",
            "Lead-only job runs started on this node",
            node.job_runs.clone(),
        );
        registry.register(
            "job_failures",
            "Lead-only job runs that failed (exit code, timeout, spawn error)",
            node.job_failures.clone(),
        );
        registry.register_collector(Box::new(Snapshots { channel }));
        Self { registry }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// Reads the channel's, transport's and membership's counters at scrape time.
struct Snapshots {
    channel: ChannelHandle,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshots")
    }
}

type Labels<'a> = [(&'a str, &'a str)];

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&Labels<'_>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(labels, v)] = values {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(metric);
        }
    }
    for (labels, v) in values {
        let fam = metric.encode_family(labels)?;
        ConstCounter::new(*v).encode(fam)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: &[(&Labels<'_>, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    if let [(labels, v)] = values {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(metric);
        }
    }
    for (labels, v) in values {
        let fam = metric.encode_family(labels)?;
        ConstGauge::new(*v).encode(fam)?;
    }
    Ok(())
}

fn int(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Snapshots {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.channel.stats();
        let t = &s.transport;
        let view = self.channel.view();
        let members = view.as_ref().map_or(1, |v| v.members.len());
        gauge(
            &mut enc,
            "members",
            "Members in this node's view, itself included",
            &[(&[], int(members))],
        )?;
        let lead = view
            .as_ref()
            .is_none_or(|v| v.lead.as_ref() == Some(&v.local));
        gauge(
            &mut enc,
            "is_lead",
            "1 when this node is the lead",
            &[(&[], i64::from(lead))],
        )?;

        let modes: Vec<(Mode, cohort_channel::ModeStats)> =
            Mode::ALL.iter().copied().zip(s.by_mode).collect();
        let by_mode = |f: fn(&cohort_channel::ModeStats) -> u64| -> Vec<([(&str, &str); 1], u64)> {
            modes
                .iter()
                .map(|(m, st)| ([("mode", m.label())], f(st)))
                .collect()
        };
        for (name, help, f) in [
            (
                "messages_sent",
                "Application messages sent, by mode",
                (|m: &cohort_channel::ModeStats| m.sent) as fn(&_) -> u64,
            ),
            ("message_bytes_sent", "Payload bytes sent, by mode", |m| {
                m.sent_bytes
            }),
            ("messages_received", "Messages received, by mode", |m| {
                m.received
            }),
            (
                "message_bytes_received",
                "Payload bytes received, by mode",
                |m| m.received_bytes,
            ),
        ] {
            let rows = by_mode(f);
            let values: Vec<(&Labels<'_>, u64)> = rows.iter().map(|(l, v)| (&l[..], *v)).collect();
            counter(&mut enc, name, help, &values)?;
        }
        counter(
            &mut enc,
            "messages_delivered",
            "Messages handed to listeners",
            &[(&[], s.delivered)],
        )?;
        counter(
            &mut enc,
            "listener_errors",
            "Listener calls that failed",
            &[(&[], s.listener_errors)],
        )?;
        gauge(
            &mut enc,
            "queue_depth",
            "Items waiting, by queue",
            &[
                (&[("queue", "async_messages")], int(s.async_queued)),
                (&[("queue", "async_bytes")], int(s.async_queued_bytes)),
            ],
        )?;
        gauge(
            &mut enc,
            "inbound_memory_bytes",
            "Bytes of received frames held against max_inbound_bytes",
            &[(&[], signed(t.inbound_bytes))],
        )?;
        gauge(
            &mut enc,
            "connections",
            "Open TCP connections, by direction",
            &[
                (&[("direction", "inbound")], signed(t.connections_in)),
                (&[("direction", "outbound")], signed(t.connections_out)),
            ],
        )?;
        counter(
            &mut enc,
            "send_failures",
            "Sends that failed, per destination",
            &[(&[], t.send_failures)],
        )?;
        // ACK latency: a histogram in seconds.
        {
            let h = &t.ack_latency;
            let mut cumulative = 0u64;
            let mut buckets = Vec::with_capacity(h.counts.len());
            for (i, c) in h.counts.iter().enumerate() {
                cumulative += c;
                #[allow(clippy::cast_precision_loss)]
                let bound = ACK_LATENCY_BOUNDS_US
                    .get(i)
                    .map_or(f64::MAX, |us| *us as f64 / 1e6);
                buckets.push((bound, cumulative));
            }
            let mut metric = enc.encode_descriptor(
                "ack_latency_seconds",
                "Time from a frame's write to its ACK or FAIL_ACK",
                None,
                MetricType::Histogram,
            )?;
            #[allow(clippy::cast_precision_loss)]
            let sum = h.sum_us as f64 / 1e6;
            metric.encode_histogram::<NoLabelSet>(sum, h.count(), &buckets, None)?;
        }
        // Bad input, by kind and where it was caught.
        let mut rejected: Vec<([(&str, &str); 2], u64)> = t
            .malformed
            .iter()
            .map(|(kind, v)| ([("layer", "transport"), ("kind", *kind)], *v))
            .collect();
        rejected.push((
            [("layer", "transport"), ("kind", "protocol_violation")],
            t.protocol_violations,
        ));
        rejected.push((
            [("layer", "transport"), ("kind", "hello_timeout")],
            t.hello_timeouts,
        ));
        rejected.push((
            [("layer", "transport"), ("kind", "frame_timeout")],
            t.frame_timeouts,
        ));
        rejected.push((
            [("layer", "transport"), ("kind", "unauthenticated_evicted")],
            t.unauthenticated_evicted,
        ));
        if let Some(m) = self.channel.membership_stats() {
            rejected.push((
                [("layer", "membership"), ("kind", "malformed")],
                m.malformed,
            ));
            rejected.push((
                [("layer", "membership"), ("kind", "unauthenticated")],
                m.unauthenticated,
            ));
            rejected.push(([("layer", "membership"), ("kind", "replayed")], m.replayed));
            rejected.push(([("layer", "membership"), ("kind", "stale")], m.stale));
            rejected.push((
                [("layer", "membership"), ("kind", "foreign_cluster")],
                m.foreign_cluster,
            ));
        }
        let values: Vec<(&Labels<'_>, u64)> = rejected.iter().map(|(l, v)| (&l[..], *v)).collect();
        counter(
            &mut enc,
            "input_rejected",
            "Input refused and dropped, by layer and kind (malformed, unauthenticated, replayed, ...)",
            &values,
        )?;
        Ok(())
    }
}
