use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cohort_wire::{AckFrame, AckRange, FailAck};
use proptest::prelude::*;

use super::{Outbound, Outcome};

const TIMEOUT: Duration = Duration::from_millis(100);

fn drain(o: &mut Outbound<u64>) -> Vec<(u64, Outcome)> {
    std::iter::from_fn(|| o.poll_completed())
        .map(|c| (c.token, c.outcome))
        .collect()
}

#[test]
fn acks_fail_acks_and_timeouts_complete_what_they_name() {
    let t0 = Instant::now();
    let mut o = Outbound::new(8, TIMEOUT);
    for id in 1..=4 {
        o.register(t0, id, id);
    }
    assert_eq!(o.room(), 4);
    o.on_ack(
        t0 + Duration::from_millis(5),
        &AckFrame {
            acked: vec![AckRange { first: 1, last: 2 }, AckRange::single(99)],
            failed: vec![FailAck {
                msg_id: 3,
                reason: "boom".into(),
            }],
        },
    );
    assert_eq!(
        drain(&mut o),
        [
            (1, Outcome::Acked),
            (2, Outcome::Acked),
            (3, Outcome::FailAck("boom".into()))
        ]
    );
    assert_eq!(o.unknown_acks(), 1);
    assert_eq!(o.poll_timeout(), Some(t0 + TIMEOUT));
    assert!(!o.on_timeout(t0 + TIMEOUT - Duration::from_millis(1)));
    assert!(o.on_timeout(t0 + TIMEOUT));
    assert_eq!(drain(&mut o), [(4, Outcome::Timeout)]);
    assert_eq!(o.poll_timeout(), None);
}

#[test]
fn a_huge_range_costs_what_is_in_flight_and_close_fails_the_rest() {
    let t0 = Instant::now();
    let mut o = Outbound::new(8, TIMEOUT);
    o.register(t0, 10, 10);
    o.register(t0, 20, 20);
    o.on_ack(t0, &AckFrame::from_ids(vec![]));
    o.on_ack(
        t0,
        &AckFrame {
            acked: vec![AckRange { first: 0, last: 15 }],
            failed: vec![],
        },
    );
    assert_eq!(drain(&mut o), [(10, Outcome::Acked)]);
    o.close("closed by peer");
    o.register(t0, 30, 30);
    assert_eq!(
        drain(&mut o),
        [
            (20, Outcome::Lost("closed by peer".into())),
            (30, Outcome::Lost("closed by peer".into()))
        ]
    );
    assert_eq!(o.room(), 0);
}

#[test]
fn a_reused_id_loses_the_older_message() {
    let t0 = Instant::now();
    let mut o = Outbound::new(8, TIMEOUT);
    o.register(t0, 1, 100);
    o.register(t0, 1, 200);
    assert_eq!(
        drain(&mut o),
        [(
            100,
            Outcome::Lost("message id reused while in flight".into())
        )]
    );
    o.on_ack(t0, &AckFrame::from_ids(vec![1]));
    assert_eq!(drain(&mut o), [(200, Outcome::Acked)]);
}

/// A reused id runs on its own deadline, not its predecessor's: reused after completing,
/// or while in flight (the older message is lost then).
#[test]
fn a_reused_id_gets_its_own_deadline() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_millis(50);
    let mut o = Outbound::new(8, TIMEOUT);
    o.register(t0, 1, 1);
    o.register(t0, 2, 2);
    o.on_ack(t0, &AckFrame::from_ids(vec![2]));
    o.register(later, 2, 20);
    o.register(t0, 3, 3);
    o.register(later, 3, 30);
    assert_eq!(
        drain(&mut o),
        [
            (2, Outcome::Acked),
            (3, Outcome::Lost("message id reused while in flight".into()))
        ]
    );
    assert!(o.on_timeout(t0 + TIMEOUT));
    assert_eq!(drain(&mut o), [(1, Outcome::Timeout)]);
    assert_eq!(o.poll_timeout(), Some(later + TIMEOUT));
    assert!(o.on_timeout(later + TIMEOUT));
    assert_eq!(
        drain(&mut o),
        [(20, Outcome::Timeout), (30, Outcome::Timeout)]
    );
}

/// Behind a head that is never ACKed, the holes its successors leave are swept, not kept:
/// the table stays within a bound of what is in flight, and an ACK frame naming the same
/// ranges many times matches what is there once.
#[test]
fn holes_behind_a_stuck_head_are_bounded() {
    let t0 = Instant::now();
    let mut o = Outbound::new(10_000, TIMEOUT);
    for id in 1..=5_000 {
        o.register(t0, id, id);
    }
    o.on_ack(t0, &AckFrame::from_ids((2..=5_000).collect()));
    assert_eq!(drain(&mut o).len(), 4_999);
    assert_eq!(o.len(), 1);
    assert!(o.slot_count() <= 2 + 64, "{} slots", o.slot_count());
    for id in 5_001..=6_000 {
        o.register(t0, id, id);
    }
    let everything = AckRange {
        first: 2,
        last: u64::MAX,
    };
    o.on_ack(
        t0,
        &AckFrame {
            acked: vec![everything; 4_096],
            failed: vec![],
        },
    );
    assert_eq!(drain(&mut o).len(), 1_000);
    assert_eq!(o.len(), 1);
}

#[derive(Clone, Debug)]
enum Op {
    Register(u8),
    /// Ranges in any order, overlapping or not.
    Ack(Vec<(u8, u8)>),
    Fail(u8),
    Advance(u8),
    Close,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Register),
        3 => proptest::collection::vec((any::<u8>(), any::<u8>()), 1..4)
            .prop_map(|rs| Op::Ack(rs.into_iter().map(|(a, b)| (a.min(b), a.max(b))).collect())),
        1 => any::<u8>().prop_map(Op::Fail),
        2 => any::<u8>().prop_map(Op::Advance),
        1 => Just(Op::Close),
    ]
}

proptest! {
    /// Any interleaving of sends, ACKs (in range, out of range, duplicated), FAIL_ACKs,
    /// timeouts and a disconnect, with ids in any order and reused: every message completes
    /// exactly once, ACKed or failed, never both, and as the step that completed it says (an
    /// ACK completes only ids in its range, and leaves none of them in flight; a FAIL_ACK only
    /// its id); the table never holds more than its limit; nothing is left once closed.
    #[test]
    fn every_send_completes_exactly_once(ops in proptest::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut o: Outbound<u64> = Outbound::new(16, TIMEOUT);
        let mut next_token = 0u64;
        let mut registered: BTreeMap<u64, u8> = BTreeMap::new();
        let mut completed: BTreeMap<u64, Outcome> = BTreeMap::new();
        for op in ops {
            let before = completed.len();
            match &op {
                Op::Register(id) => {
                    if o.room() > 0 || o.is_closed() {
                        next_token += 1;
                        registered.insert(next_token, *id);
                        o.register(now, u64::from(*id), next_token);
                    }
                }
                Op::Ack(rs) => o.on_ack(now, &AckFrame {
                    acked: rs
                        .iter()
                        .map(|&(a, b)| AckRange { first: u64::from(a), last: u64::from(b) })
                        .collect(),
                    failed: vec![],
                }),
                Op::Fail(id) => o.on_ack(now, &AckFrame {
                    acked: vec![],
                    failed: vec![FailAck { msg_id: u64::from(*id), reason: "x".into() }],
                }),
                Op::Advance(ms) => {
                    now += Duration::from_millis(u64::from(*ms));
                    if o.poll_timeout().is_some_and(|d| d <= now) {
                        o.on_timeout(now);
                    }
                }
                Op::Close => o.close("gone"),
            }
            while let Some(c) = o.poll_completed() {
                let id = registered[&c.token];
                let fits = match (&op, &c.outcome) {
                    (Op::Ack(rs), Outcome::Acked) => rs.iter().any(|&(a, b)| (a..=b).contains(&id)),
                    (Op::Fail(f), Outcome::FailAck(_)) => *f == id,
                    (Op::Advance(_), Outcome::Timeout)
                    | (Op::Close | Op::Register(_), Outcome::Lost(_)) => true,
                    _ => false,
                };
                prop_assert!(fits, "{:?} completed {} (id {}) as {:?}", op, c.token, id, c.outcome);
                prop_assert!(completed.insert(c.token, c.outcome).is_none(), "completed twice");
            }
            if let Op::Ack(rs) = &op {
                let left = registered
                    .iter()
                    .filter(|(t, id)| {
                        !completed.contains_key(t) && rs.iter().any(|&(a, b)| (a..=b).contains(*id))
                    })
                    .count();
                prop_assert_eq!(left, 0, "an ACKed id left in flight");
            }
            if matches!(op, Op::Advance(_)) && completed.len() > before {
                prop_assert!(o.poll_timeout().is_none_or(|d| d > now));
            }
            prop_assert!(o.len() <= 16);
            prop_assert!(o.slot_count() <= 2 * o.len() + 64, "holes are bounded");
            prop_assert_eq!(o.len() + completed.len(), registered.len());
        }
        o.close("end");
        while let Some(c) = o.poll_completed() {
            prop_assert!(completed.insert(c.token, c.outcome).is_none(), "completed twice");
        }
        prop_assert_eq!(completed.len(), registered.len());
        prop_assert!(o.is_empty());
    }
}
