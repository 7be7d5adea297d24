//! Test traffic: a node that sends numbered messages to every member, so a harness can check
//! delivery across faults (`cohort node --traffic RATE`, used by `cargo xtask scenario
//! messaging`).
//!
//! Every tick the node sends, to every member it sees, its next ASYNCHRONOUS message
//! (`traffic async <seq>`) and its next USE_ACK message (`traffic ack <seq>`), `rate` of each
//! per second. Each mode has its own sequence, counted per sending process. Receivers that run
//! with `--print-messages` write a `message` line per message; the sender writes a
//! `traffic_acked` line per USE_ACK message naming the members that acknowledged it (and
//! `traffic_failed` for those that did not). From those lines a harness checks: no duplicates,
//! each mode's sequence increasing per sender, and every acknowledged message delivered.
//!
//! `POST /api/traffic/stop` on the admin endpoint stops sending, waits for the outstanding receipts and
//! answers with the counts (also written as a `traffic_stopped` line).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cohort_channel::ChannelHandle;
use cohort_wire::SendOptions;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::node::Events;

/// Largest accepted rate (messages per second per mode).
pub const MAX_RATE: u32 = 100_000;
/// USE_ACK receipts awaited at once; when all are taken, a tick skips its USE_ACK message
/// (counted as `skipped`).
pub const MAX_RECEIPTS_IN_FLIGHT: usize = 4096;
/// How long `traffic stop` waits for outstanding receipts (they end within the transport's
/// send timeout, so this only guards against a misconfiguration).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(10);

enum State {
    Running(JoinHandle<Value>),
    Stopped(Value),
}

/// A running traffic generator.
pub struct Traffic {
    stop: watch::Sender<bool>,
    state: Mutex<State>,
}

impl Traffic {
    /// Starts sending `rate` messages per second per mode on the current runtime.
    pub fn start(channel: ChannelHandle, rate: u32, events: Events, node: String) -> Arc<Self> {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(channel, rate.max(1), events, node, stopped));
        Arc::new(Self {
            stop,
            state: Mutex::new(State::Running(task)),
        })
    }

    /// Stops sending, waits for outstanding receipts and returns the counts.
    pub async fn stop(&self) -> Value {
        let mut state = self.state.lock().await;
        if let State::Running(task) = &mut *state {
            let _ = self.stop.send(true);
            let counts = match tokio::time::timeout(STOP_TIMEOUT, task).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => json!({"error": format!("traffic task failed: {e}")}),
                Err(_) => json!({"error": "receipts still outstanding after 30 s"}),
            };
            *state = State::Stopped(counts);
        }
        match &*state {
            State::Stopped(v) => v.clone(),
            State::Running(_) => Value::Null,
        }
    }
}

#[derive(Default)]
struct Counts {
    async_sent: u64,
    ack_sent: u64,
    skipped: u64,
    send_errors: u64,
}

async fn run(
    channel: ChannelHandle,
    rate: u32,
    events: Events,
    node: String,
    mut stopped: watch::Receiver<bool>,
) -> Value {
    let receipts = Arc::new(Semaphore::new(MAX_RECEIPTS_IN_FLIGHT));
    let mut outstanding = tokio::task::JoinSet::new();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut counts = Counts::default();
    let (mut async_seq, mut ack_seq) = (0u64, 0u64);
    let started = tokio::time::Instant::now();
    let mut due = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        if *stopped.borrow() {
            break;
        }
        // Finished receipts leave the set as they go, so it stays bounded.
        while outstanding.try_join_next().is_some() {}
        let target = u64::try_from(started.elapsed().as_millis() * u128::from(rate) / 1000)
            .unwrap_or(u64::MAX);
        while due < target {
            due += 1;
            let members = channel.members();
            if members.is_empty() {
                continue;
            }
            let payload = Bytes::from(format!("traffic async {async_seq}"));
            match channel
                .send(&members, payload, SendOptions::ASYNCHRONOUS)
                .await
            {
                Ok(_) => {
                    async_seq += 1;
                    counts.async_sent += 1;
                }
                Err(_) => counts.send_errors += 1,
            }
            let Ok(permit) = receipts.clone().try_acquire_owned() else {
                counts.skipped += 1;
                continue;
            };
            let seq = ack_seq;
            let payload = Bytes::from(format!("traffic ack {seq}"));
            match channel.send(&members, payload, SendOptions::USE_ACK).await {
                Ok(receipt) => {
                    ack_seq += 1;
                    counts.ack_sent += 1;
                    let events = events.clone();
                    let node = node.clone();
                    let acked = acked.clone();
                    outstanding.spawn(async move {
                        let outcome = receipt.await;
                        drop(permit);
                        let (ok, failed): (Vec<_>, Vec<_>) =
                            outcome.results.iter().partition(|r| r.result.is_ok());
                        let ok: Vec<String> = ok.iter().map(|r| r.member.to_string()).collect();
                        if !ok.is_empty() {
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            events.emit(json!({
                                "event": "traffic_acked", "node": node, "seq": seq, "to": ok,
                            }));
                        }
                        if !failed.is_empty() {
                            let failed: Vec<Value> = failed
                                .iter()
                                .map(|r| json!({"member": r.member.to_string(), "error": format!("{:?}", r.result)}))
                                .collect();
                            events.emit(json!({
                                "event": "traffic_failed", "node": node, "seq": seq, "to": failed,
                            }));
                        }
                    });
                }
                Err(_) => counts.send_errors += 1,
            }
        }
    }
    while outstanding.join_next().await.is_some() {}
    let v = json!({
        "async_sent": counts.async_sent,
        "ack_sent": counts.ack_sent,
        "acked": acked.load(std::sync::atomic::Ordering::Relaxed),
        "skipped": counts.skipped,
        "send_errors": counts.send_errors,
    });
    let mut line = v.clone();
    line["event"] = json!("traffic_stopped");
    line["node"] = json!(node);
    events.emit(line);
    v
}
