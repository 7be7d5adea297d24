//! A tour of the wire format: encodes a beacon and a data frame, prints their bytes, and shows
//! what the decoders say about damaged or foreign input.
//!
//! Run with `cargo run -p cohort-wire --example wire_tour`.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr};

use bytes::{Bytes, BytesMut};
use cohort_wire::{
    Beacon, BeaconCodec, BeaconCommand, ClusterKey, CohortCodec, DataFrame, DataHeader, Frame,
    FrameCodec, KeyRing, Member, MemberId, SendOptions, WireLimits,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = KeyRing::new(vec![ClusterKey::new(*b"demo cluster key!")?])?;
    let codec = CohortCodec::new(WireLimits::default(), Some(keys))?;
    let mut member = Member::new(
        MemberId::random(&mut rand::rngs::OsRng),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        4000,
    );
    member.cluster = "demo".into();
    member.name = "node-1".into();

    let beacon = Beacon {
        member: member.clone(),
        command: BeaconCommand::Alive,
        seq: 1,
        sent_at_ms: 0,
    };
    let mut datagram = BytesMut::new();
    codec.encode_beacon(&beacon, &mut datagram)?;
    println!("beacon ({} bytes): {}", datagram.len(), hex(&datagram));
    println!(
        "decoded: {:?}",
        codec.decode_beacon(&datagram)?.member.key()
    );

    let frame = Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 1,
            options: SendOptions::USE_ACK | SendOptions::SYNCHRONIZED_ACK,
            sender: member.id,
            ..DataHeader::default()
        },
        payload: Bytes::from_static(b"hello, cluster"),
    });
    let mut stream = BytesMut::new();
    codec.encode_frame(&frame, &mut stream)?;
    println!("frame ({} bytes): {}", stream.len(), hex(&stream));

    let mut damaged = stream.clone();
    damaged[20] ^= 0xff;
    println!(
        "damaged frame: {}",
        codec.decode_frame(&mut damaged).unwrap_err()
    );
    let keyless = CohortCodec::new(WireLimits::default(), None)?;
    println!(
        "keyless node: {}",
        keyless.decode_frame(&mut stream.clone()).unwrap_err()
    );
    println!("decoded: {:?}", codec.decode_frame(&mut stream)?);
    Ok(())
}
