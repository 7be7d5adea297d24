use std::time::Duration;

use cohort_transport::{Delivered, SendError};
use cohort_wire::SendOptions;

use crate::support::*;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn ack_on_receipt() {
    let mut b = node(2, config()).await;
    let a = node(1, config()).await;
    let done = send(&a, &b.member, 1, SendOptions::USE_ACK, b"hello");
    let got = within(T, b.inbound.recv()).await.unwrap();
    assert_eq!(&got.frame.payload[..], b"hello");
    assert_eq!(got.hello.as_ref().unwrap().id, a.member.id);
    assert!(
        got.ack.is_none(),
        "USE_ACK alone is acknowledged on receipt"
    );
    assert_eq!(within(T, done).await.unwrap(), Ok(Delivered::Acked));
}
