//! The order in which the owner hands one pass's frames to the transport.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cohort_channel::{ChannelTransport, CustomTransport};
use cohort_transport::{Completion, DataSend, Delivered, TransportStats};
use cohort_wire::{CohortCodec, Member, MemberId, SendOptions};

use crate::support::*;

/// A transport that records what it is handed, and completes it at once.
#[derive(Default)]
struct Recording {
    calls: Mutex<Vec<String>>,
}

impl Recording {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

fn first_byte(p: &Bytes) -> u8 {
    p.first().copied().unwrap_or_default()
}

impl ChannelTransport for Recording {
    fn send(&self, to: &Member, _frame: Bytes, msg_id: u64, _o: SendOptions, done: Completion) {
        self.log(format!("encoded {} #{msg_id}", to.port));
        done.complete(Ok(Delivered::Sent));
    }

    fn send_data_many(&self, to: &Member, frames: Vec<DataSend>, _codec: &CohortCodec) {
        let bytes: Vec<u8> = frames
            .iter()
            .map(|f| first_byte(&f.frame.payload))
            .collect();
        self.log(format!("data {} {bytes:?}", to.port));
        for f in frames {
            f.done.complete(Ok(Delivered::Sent));
        }
    }

    fn send_multicast(&self, _frame: Bytes, done: Completion) {
        self.log("multicast".into());
        done.complete(Ok(Delivered::Sent));
    }

    fn is_connected(&self, _addr: SocketAddr) -> bool {
        true
    }
    fn disconnect(&self, _addr: SocketAddr) {}
    fn retain(&self, _keep: &dyn Fn(SocketAddr) -> bool) {}
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
    fn stop(&self) {}
}

fn member(n: u8) -> Member {
    Member::new(
        MemberId::from_bytes([n; 16]),
        Ipv4Addr::LOCALHOST.into(),
        5000 + u16::from(n),
    )
}

/// Sends queued before the owner runs go down in one pass: each destination's frames reach
/// the transport together and in send order, and a multicast send between them leaves in
/// its place (what was collected before it goes first), not before the frames sent earlier.
#[tokio::test(flavor = "current_thread")]
async fn a_pass_hands_frames_over_per_destination_in_order() {
    let rec = Arc::new(Recording::default());
    let (_tx, rx) = tokio::sync::mpsc::channel(8);
    let custom: CustomTransport = (rec.clone(), rx, member(9));
    let ch = start(builder().custom_transport(custom)).await;
    let (a, b) = (member(1), member(2));
    let sends: [(&Member, u8, SendOptions); 6] = [
        (&a, 1, SendOptions::NONE),
        (&b, 2, SendOptions::NONE),
        (&a, 3, SendOptions::NONE),
        (&a, 4, SendOptions::MULTICAST),
        (&b, 5, SendOptions::NONE),
        (&a, 6, SendOptions::NONE),
    ];
    // No await yields between these (the command queue has room): one pass takes them all.
    let mut receipts = Vec::new();
    for (to, byte, options) in sends {
        let r = ch
            .send(std::slice::from_ref(to), Bytes::from(vec![byte]), options)
            .await;
        receipts.push(r.unwrap());
    }
    for r in receipts {
        assert!(r.await.is_ok());
    }
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            "data 5001 [1, 3]".to_owned(),
            "data 5002 [2]".to_owned(),
            "multicast".to_owned(),
            "data 5002 [5]".to_owned(),
            "data 5001 [6]".to_owned(),
        ]
    );
    ch.stop().await;
}
