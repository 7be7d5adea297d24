//! Golden byte vectors: the encoder must produce exactly these bytes, the decoder must read
//! them back, and docs/PROTOCOL.md must quote them. Regenerate with `COHORT_BLESS=1 cargo test
//! -p cohort-wire --test it golden` after an intended format change (and bump the version).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use cohort_wire::*;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn id() -> MemberId {
    MemberId::from_bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])
}

fn member() -> Member {
    Member {
        id: id(),
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        port: 4000,
        udp_port: None,
        cluster: "prod".into(),
        domain: Bytes::new(),
        name: "n1".into(),
        host: String::new(),
        start_time_ms: 1_000,
        versions: VersionRange { min: 1, max: 1 },
        app_version: String::new(),
        same_app_version: false,
        payload: Bytes::from_static(b"AB"),
    }
}

fn key() -> KeyRing {
    KeyRing::new(vec![ClusterKey::new(*b"0123456789abcdef").unwrap()]).unwrap()
}

enum Vector {
    Frame(Frame),
    Beacon(Beacon),
}

fn vectors() -> Vec<(&'static str, Vector, Option<KeyRing>)> {
    let data = Frame::Data(DataFrame {
        header: DataHeader {
            msg_id: 1,
            options: SendOptions::USE_ACK,
            sender: id(),
            timestamp_ms: 0x0102_0304_0506_0708,
            seq: 7,
            extensions: vec![Extension {
                tag: 1,
                value: Bytes::from_static(b"x"),
            }],
        },
        payload: Bytes::from_static(b"ABC"),
    });
    let ack = Frame::Ack(AckFrame {
        acked: vec![AckRange { first: 1, last: 3 }, AckRange::single(5)],
        failed: vec![FailAck {
            msg_id: 6,
            reason: "boom".into(),
        }],
    });
    let alive = Beacon {
        member: member(),
        command: BeaconCommand::Alive,
        seq: 1,
        sent_at_ms: 1_500,
    };
    let shutdown = Beacon {
        command: BeaconCommand::Shutdown,
        seq: 2,
        ..alive.clone()
    };
    vec![
        ("data_frame", Vector::Frame(data.clone()), None),
        ("ack_frame", Vector::Frame(ack), None),
        (
            "hello_frame",
            Vector::Frame(Frame::Hello(Box::new(cohort_wire::Hello::new(member())))),
            None,
        ),
        ("data_frame_authenticated", Vector::Frame(data), Some(key())),
        (
            "challenge_frame_authenticated",
            Vector::Frame(Frame::Challenge([0xc7; 16])),
            Some(key()),
        ),
        (
            "hello_frame_authenticated",
            Vector::Frame(Frame::Hello(Box::new(cohort_wire::Hello {
                member: member(),
                nonce: Some([0x4e; 16]),
            }))),
            Some(key()),
        ),
        ("beacon_alive", Vector::Beacon(alive), None),
        (
            "beacon_shutdown_authenticated",
            Vector::Beacon(shutdown),
            Some(key()),
        ),
    ]
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 16 == 0 {
            out.push('\n');
        } else if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out.push('\n');
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

fn encoded(vector: &Vector, codec: &CohortCodec) -> Vec<u8> {
    let mut out = BytesMut::new();
    match vector {
        Vector::Frame(f) => codec.encode_frame(f, &mut out).unwrap(),
        Vector::Beacon(b) => codec.encode_beacon(b, &mut out).unwrap(),
    }
    out.to_vec()
}

#[test]
fn golden_vectors_encode_and_decode() {
    let bless = std::env::var_os("COHORT_BLESS").is_some();
    for (name, vector, keys) in vectors() {
        let codec = CohortCodec::new(WireLimits::default(), keys).unwrap();
        let path = dir().join(format!("{name}.hex"));
        let bytes = encoded(&vector, &codec);
        if bless {
            std::fs::write(&path, to_hex(&bytes)).unwrap();
            let corpus = match vector {
                Vector::Frame(_) => "frame_stream",
                Vector::Beacon(_) => "beacon",
            };
            let seed_dir = dir().join("../../../../fuzz/corpus").join(corpus);
            std::fs::create_dir_all(&seed_dir).unwrap();
            // The frame target reads its chunk size from the first byte.
            let mut seed = if corpus == "frame_stream" {
                vec![7u8]
            } else {
                vec![]
            };
            seed.extend_from_slice(&bytes);
            std::fs::write(seed_dir.join(format!("golden_{name}")), seed).unwrap();
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with COHORT_BLESS=1)", path.display()));
        assert_eq!(to_hex(&bytes), golden, "encoding of {name} changed");
        let wire = from_hex(&golden);
        match vector {
            Vector::Frame(f) => {
                let mut buf = BytesMut::from(&wire[..]);
                assert_eq!(codec.decode_frame(&mut buf).unwrap(), Some(f), "{name}");
                assert!(buf.is_empty());
            }
            Vector::Beacon(b) => assert_eq!(codec.decode_beacon(&wire), Ok(b), "{name}"),
        }
    }
}

#[test]
fn protocol_doc_quotes_every_golden_vector() {
    let doc_path = dir().join("../../../../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let normalise = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let doc_norm = normalise(&doc);
    for (name, _, _) in vectors() {
        let golden = std::fs::read_to_string(dir().join(format!("{name}.hex"))).unwrap();
        assert!(
            doc_norm.contains(&normalise(&golden)),
            "docs/PROTOCOL.md does not quote the golden vector `{name}` (tests/golden/{name}.hex)"
        );
    }
}
