//! prost messages (hand-written derives; no protoc, no build script) and their conversion to
//! and from the public types. The `.proto` equivalent is in docs/PROTOCOL.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

use crate::error::MalformedReason;
use crate::{
    DecodeError, EncodeError, MAX_CLUSTER_LEN, MAX_DOMAIN_LEN, MAX_NAME_LEN, Member, MemberId,
    VersionRange, WireLimits,
};

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberPb {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) addr: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub(crate) port: u32,
    #[prost(uint32, optional, tag = "4")]
    pub(crate) udp_port: Option<u32>,
    #[prost(string, tag = "5")]
    pub(crate) cluster: String,
    #[prost(bytes = "bytes", tag = "6")]
    pub(crate) domain: Bytes,
    #[prost(string, tag = "7")]
    pub(crate) name: String,
    #[prost(uint64, tag = "8")]
    pub(crate) start_time_ms: u64,
    #[prost(uint32, tag = "9")]
    pub(crate) version_min: u32,
    #[prost(uint32, tag = "10")]
    pub(crate) version_max: u32,
    #[prost(bytes = "bytes", tag = "11")]
    pub(crate) payload: Bytes,
    #[prost(string, tag = "12")]
    pub(crate) host: String,
    #[prost(string, tag = "13")]
    pub(crate) app_version: String,
    #[prost(bool, tag = "14")]
    pub(crate) same_app_version: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ExtensionPb {
    #[prost(uint32, tag = "1")]
    pub(crate) tag: u32,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) value: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DataHeaderPb {
    #[prost(uint64, tag = "1")]
    pub(crate) msg_id: u64,
    #[prost(uint32, tag = "2")]
    pub(crate) options: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) sender: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub(crate) timestamp_ms: u64,
    #[prost(uint64, tag = "5")]
    pub(crate) seq: u64,
    #[prost(message, repeated, tag = "6")]
    pub(crate) extensions: Vec<ExtensionPb>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AckRangePb {
    #[prost(uint64, tag = "1")]
    pub(crate) first: u64,
    #[prost(uint64, tag = "2")]
    pub(crate) last: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FailAckPb {
    #[prost(uint64, tag = "1")]
    pub(crate) msg_id: u64,
    #[prost(string, tag = "2")]
    pub(crate) reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AckPb {
    #[prost(message, repeated, tag = "1")]
    pub(crate) acked: Vec<AckRangePb>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) failed: Vec<FailAckPb>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HelloPb {
    #[prost(message, optional, tag = "1")]
    pub(crate) member: Option<MemberPb>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) nonce: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ChallengePb {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) nonce: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BeaconPb {
    #[prost(message, optional, tag = "1")]
    pub(crate) member: Option<MemberPb>,
    #[prost(uint32, tag = "2")]
    pub(crate) command: u32,
    #[prost(uint64, tag = "3")]
    pub(crate) seq: u64,
    #[prost(uint64, tag = "4")]
    pub(crate) sent_at_ms: u64,
}

pub(crate) fn malformed(what: &'static str, reason: MalformedReason) -> DecodeError {
    DecodeError::Malformed { what, reason }
}

pub(crate) fn out_of_range(what: &'static str, field: &'static str, detail: String) -> DecodeError {
    malformed(what, MalformedReason::OutOfRange { field, detail })
}

pub(crate) fn prost_error(what: &'static str, err: &prost::DecodeError) -> DecodeError {
    malformed(what, MalformedReason::Protobuf(err.to_string()))
}

pub(crate) fn check_len(
    what: &'static str,
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<(), DecodeError> {
    if len > max {
        return Err(malformed(
            what,
            MalformedReason::FieldTooLong { field, len, max },
        ));
    }
    Ok(())
}

fn check_encode_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::FieldTooLong { field, len, max });
    }
    Ok(())
}

/// Checks a member against the protocol limits before encoding it.
pub(crate) fn validate_member(m: &Member, limits: &WireLimits) -> Result<(), EncodeError> {
    check_encode_len("cluster", m.cluster.len(), MAX_CLUSTER_LEN)?;
    check_encode_len("domain", m.domain.len(), MAX_DOMAIN_LEN)?;
    check_encode_len("name", m.name.len(), MAX_NAME_LEN)?;
    check_encode_len("host", m.host.len(), MAX_NAME_LEN)?;
    check_encode_len("app_version", m.app_version.len(), MAX_NAME_LEN)?;
    check_encode_len("payload", m.payload.len(), limits.max_member_payload)
}

pub(crate) fn member_to_pb(m: &Member) -> MemberPb {
    MemberPb {
        id: m.id.as_bytes().to_vec(),
        addr: match m.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        },
        port: u32::from(m.port),
        udp_port: m.udp_port.map(u32::from),
        cluster: m.cluster.clone(),
        domain: m.domain.clone(),
        name: m.name.clone(),
        start_time_ms: m.start_time_ms,
        version_min: u32::from(m.versions.min),
        version_max: u32::from(m.versions.max),
        payload: m.payload.clone(),
        host: m.host.clone(),
        app_version: m.app_version.clone(),
        same_app_version: m.same_app_version,
    }
}

pub(crate) fn member_from_pb(pb: MemberPb, limits: &WireLimits) -> Result<Member, DecodeError> {
    const WHAT: &str = "member";
    let id = MemberId::from_slice(&pb.id)
        .ok_or_else(|| out_of_range(WHAT, "id", format!("{} bytes, need 16", pb.id.len())))?;
    let addr = if let Ok(v4) = <[u8; 4]>::try_from(pb.addr.as_slice()) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(pb.addr.as_slice()) {
        IpAddr::V6(Ipv6Addr::from(v6))
    } else {
        let detail = format!("{} bytes, need 4 or 16", pb.addr.len());
        return Err(out_of_range(WHAT, "addr", detail));
    };
    let port = u16::try_from(pb.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| out_of_range(WHAT, "port", format!("{} not in 1..=65535", pb.port)))?;
    let udp_port = pb
        .udp_port
        .map(|p| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| out_of_range(WHAT, "udp_port", format!("{p} not in 1..=65535")))
        })
        .transpose()?;
    check_len(WHAT, "cluster", pb.cluster.len(), MAX_CLUSTER_LEN)?;
    check_len(WHAT, "domain", pb.domain.len(), MAX_DOMAIN_LEN)?;
    check_len(WHAT, "name", pb.name.len(), MAX_NAME_LEN)?;
    check_len(WHAT, "host", pb.host.len(), MAX_NAME_LEN)?;
    check_len(WHAT, "app_version", pb.app_version.len(), MAX_NAME_LEN)?;
    check_len(WHAT, "payload", pb.payload.len(), limits.max_member_payload)?;
    let version = |field, v: u32| {
        u8::try_from(v).map_err(|_| out_of_range(WHAT, field, format!("{v} > 255")))
    };
    let versions = VersionRange {
        min: version("version_min", pb.version_min)?,
        max: version("version_max", pb.version_max)?,
    };
    if versions.min > versions.max {
        let detail = format!("{} > version_max {}", versions.min, versions.max);
        return Err(out_of_range(WHAT, "version_min", detail));
    }
    Ok(Member {
        id,
        addr,
        port,
        udp_port,
        cluster: pb.cluster,
        domain: pb.domain,
        name: pb.name,
        host: pb.host,
        start_time_ms: pb.start_time_ms,
        versions,
        app_version: pb.app_version,
        same_app_version: pb.same_app_version,
        payload: pb.payload,
    })
}
