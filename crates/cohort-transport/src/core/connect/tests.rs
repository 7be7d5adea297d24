use proptest::prelude::*;

use super::*;

#[test]
fn back_off_doubles_to_its_cap_and_a_connect_ends_it() {
    let t0 = Instant::now();
    let (base, max) = (Duration::from_millis(100), Duration::from_millis(350));
    let mut b = Backoff::default();
    assert_eq!(b.accepting(t0), Ok(()));
    assert_eq!(b.round_failed(t0, base, max), base);
    assert_eq!(b.accepting(t0), Err(base));
    assert_eq!(
        b.accepting(t0 + Duration::from_millis(40)),
        Err(Duration::from_millis(60))
    );
    assert_eq!(b.accepting(t0 + base), Ok(()), "passed: sends go again");
    let backoffs: Vec<_> = (0..3).map(|_| b.round_failed(t0, base, max)).collect();
    assert_eq!(
        backoffs,
        [Duration::from_millis(200), max, max],
        "doubled, then capped"
    );
    b.connected();
    assert_eq!(b.accepting(t0), Ok(()));
    assert_eq!(b.round_failed(t0, base, max), base, "from the base again");
}

#[test]
fn a_round_pauses_from_the_minimum_doubling_to_its_cap() {
    let cap = Duration::from_millis(50);
    let mut last = None;
    let pauses: Vec<_> = (0..4)
        .map(|_| {
            let p = retry_pause(last, cap);
            last = Some(p);
            p.as_millis()
        })
        .collect();
    assert_eq!(pauses, [10, 20, 40, 50]);
    assert_eq!(
        retry_pause(Some(MIN_RETRY_PAUSE), Duration::ZERO),
        MIN_RETRY_PAUSE
    );
}

#[test]
fn a_write_stops_once_its_bytes_are_spent_or_acks_have_no_room() {
    let mut b = WriteBatch::new(300, 1);
    let taken: Vec<bool> = [(100, false), (100, true), (100, false), (1, false)]
        .iter()
        .map(|&(len, ack)| b.take(len, ack))
        .collect();
    assert_eq!(taken, [true, true, true, false], "300 bytes: spent");
    let mut b = WriteBatch::new(300, 1);
    assert!(b.take(10, true));
    assert!(!b.take(10, true), "no room for a second ACK");
    let mut b = WriteBatch::new(300, 0);
    assert!(b.take(1000, true), "the first frame always goes");
}

proptest! {
    /// Whatever the queue holds: a batch takes a prefix of it, at least one frame, no more
    /// ACK-wanting frames than the room (unless the first alone), and stops only when the
    /// byte budget is spent or the next ACK-wanting frame would not fit.
    #[test]
    fn a_write_takes_a_bounded_prefix(
        frames in proptest::collection::vec((1usize..64, any::<bool>()), 1..100),
        max_bytes in 1usize..1024,
        ack_room in 0usize..10,
    ) {
        let mut batch = WriteBatch::new(max_bytes, ack_room);
        let taken = frames.iter().take_while(|(len, ack)| batch.take(*len, *ack)).count();
        prop_assert!(taken >= 1);
        let prefix = &frames[..taken];
        let bytes: usize = prefix.iter().map(|(l, _)| l).sum();
        let acks = prefix.iter().filter(|(_, a)| *a).count();
        prop_assert_eq!(batch.bytes(), bytes);
        if taken > 1 {
            prop_assert!(acks <= ack_room);
            let before_last: usize = prefix[..taken - 1].iter().map(|(l, _)| l).sum();
            prop_assert!(before_last < max_bytes);
        }
        if let Some((_, next_ack)) = frames.get(taken) {
            prop_assert!(bytes >= max_bytes || acks + usize::from(*next_ack) > ack_room);
        }
    }
}
