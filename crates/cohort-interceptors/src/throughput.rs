//! `Throughput`: messages and bytes per direction, in total and per interval, as stats (and a
//! log line per interval when `log` is on). Tribes counts per 10,000 messages; a time interval
//! gives rates that mean the same at any load.

use crate::ConfigError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cohort_channel::{Cx, Inbound, Interceptor, Outbound};

use crate::util::bad;

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ThroughputConfig {
    /// Rate interval. Default 10,000 ms.
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "interval_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub interval: Duration,
    /// Log the rates at each interval (tracing, info). Default true.
    pub log: bool,
}

impl Default for ThroughputConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            log: true,
        }
    }
}

impl ThroughputConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(100) {
            return bad("interval_ms", "must be at least 100");
        }
        Ok(())
    }
}

/// Totals and the last complete interval's rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ThroughputSnapshot {
    /// Messages sent (one per application message, before fan-out).
    pub tx_messages: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// Messages received.
    pub rx_messages: u64,
    /// Payload bytes received.
    pub rx_bytes: u64,
    /// Messages sent per second over the last interval.
    pub tx_msgs_per_s: f64,
    /// Bytes sent per second over the last interval.
    pub tx_bytes_per_s: f64,
    /// Messages received per second over the last interval.
    pub rx_msgs_per_s: f64,
    /// Bytes received per second over the last interval.
    pub rx_bytes_per_s: f64,
    /// Intervals completed.
    pub intervals: u64,
}

/// Shared read access to the figures.
#[derive(Clone, Debug, Default)]
pub struct ThroughputHandle(Arc<Mutex<ThroughputSnapshot>>);

impl ThroughputHandle {
    /// The current figures.
    pub fn snapshot(&self) -> ThroughputSnapshot {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The interceptor.
pub struct Throughput {
    cfg: ThroughputConfig,
    now: ThroughputSnapshot,
    mark: ThroughputSnapshot,
    next: Option<Instant>,
    shared: ThroughputHandle,
}

impl Throughput {
    /// A meter with `cfg`.
    pub fn new(cfg: ThroughputConfig) -> Self {
        Self {
            cfg,
            now: ThroughputSnapshot::default(),
            mark: ThroughputSnapshot::default(),
            next: None,
            shared: ThroughputHandle::default(),
        }
    }

    /// Read access to its figures.
    pub fn handle(&self) -> ThroughputHandle {
        self.shared.clone()
    }

    fn publish(&self) {
        *self.shared.0.lock().unwrap_or_else(PoisonError::into_inner) = self.now;
    }
}

impl Interceptor for Throughput {
    fn name(&self) -> &'static str {
        "throughput"
    }

    fn on_start(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        self.next = Some(now + self.cfg.interval);
    }

    fn on_send(&mut self, msg: Outbound, cx: &mut Cx<'_>) {
        self.now.tx_messages += 1;
        self.now.tx_bytes += msg.payload.len() as u64;
        cx.send_down(msg);
    }

    fn on_receive(&mut self, msg: Inbound, cx: &mut Cx<'_>) {
        self.now.rx_messages += 1;
        self.now.rx_bytes += msg.payload.len() as u64;
        cx.deliver_up(msg);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    #[allow(clippy::cast_precision_loss)]
    fn on_timeout(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        let secs = self.cfg.interval.as_secs_f64();
        let (n, m) = (&mut self.now, &self.mark);
        n.tx_msgs_per_s = (n.tx_messages - m.tx_messages) as f64 / secs;
        n.tx_bytes_per_s = (n.tx_bytes - m.tx_bytes) as f64 / secs;
        n.rx_msgs_per_s = (n.rx_messages - m.rx_messages) as f64 / secs;
        n.rx_bytes_per_s = (n.rx_bytes - m.rx_bytes) as f64 / secs;
        n.intervals += 1;
        self.mark = *n;
        self.next = Some(now + self.cfg.interval);
        self.publish();
        if self.cfg.log {
            let n = &self.now;
            tracing::info!(
                tx_msgs_per_s = n.tx_msgs_per_s,
                tx_mb_per_s = n.tx_bytes_per_s / 1e6,
                rx_msgs_per_s = n.rx_msgs_per_s,
                rx_mb_per_s = n.rx_bytes_per_s / 1e6,
                tx_total = n.tx_messages,
                rx_total = n.rx_messages,
                "throughput"
            );
        }
    }

    fn on_heartbeat(&mut self, _now: Instant, _cx: &mut Cx<'_>) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use cohort_channel::SendOptions;

    #[test]
    fn counts_and_rates_per_interval() {
        let t = Throughput::new(ThroughputConfig {
            interval: Duration::from_secs(1),
            log: false,
        });
        let h = t.handle();
        let mut p = pipeline(vec![Box::new(t)], 1);
        let t0 = Instant::now();
        p.start(t0);
        for i in 0..10 {
            p.send(t0, outbound(i, &[member(2)], SendOptions::NONE, &[0; 100]));
        }
        let m = outbound(99, &[member(1)], SendOptions::NONE, &[0; 50]);
        p.receive(t0, arrive(&m, &member(2)));
        drain(&mut p);
        p.handle_timeout(t0 + Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(
            (s.tx_messages, s.tx_bytes, s.rx_messages, s.rx_bytes),
            (10, 1000, 1, 50)
        );
        assert!((s.tx_msgs_per_s - 10.0).abs() < 1e-9);
        p.handle_timeout(t0 + Duration::from_secs(2));
        assert!(h.snapshot().tx_msgs_per_s.abs() < 1e-9, "an idle interval");
    }
}
