//! A minimal authoritative DNS server on loopback for discovery tests: A, AAAA and SRV records
//! that a test adds and removes while the cluster runs, NXDOMAIN for unknown names, and a
//! count of the queries answered. One thread, UDP only, stopped and joined on drop.
//!
//! Messages are parsed and built with hickory-proto (the resolver's own codec), so the server
//! speaks real DNS on the wire.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    /// Lower-case fully qualified name → addresses.
    addrs: BTreeMap<String, Vec<IpAddr>>,
    /// Lower-case fully qualified name → (port, target).
    srv: BTreeMap<String, Vec<(u16, String)>>,
    ttl: u32,
}

/// A DNS server on 127.0.0.1 (see the module documentation).
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn fqdn(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl DnsServer {
    /// Binds 127.0.0.1 on a free port and serves until dropped. Records carry `ttl` seconds.
    pub fn start(ttl: u32) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local addr");
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let queries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (zone, queries, stop) = (zone.clone(), queries.clone(), stop.clone());
            std::thread::spawn(move || serve(&socket, &zone, &queries, &stop))
        };
        Self {
            addr,
            zone,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the A/AAAA records of `name` (an empty list removes them).
    pub fn set_addrs(&self, name: &str, addrs: &[IpAddr]) {
        let mut z = self.zone();
        if addrs.is_empty() {
            z.addrs.remove(&fqdn(name));
        } else {
            z.addrs.insert(fqdn(name), addrs.to_vec());
        }
    }

    /// Sets the SRV records of `name`: each a port on a target host, whose A records the
    /// server also sends along (an empty list removes them).
    pub fn set_srv(&self, name: &str, targets: &[(u16, &str)]) {
        let mut z = self.zone();
        if targets.is_empty() {
            z.srv.remove(&fqdn(name));
        } else {
            let t = targets.iter().map(|(p, h)| (*p, fqdn(h))).collect();
            z.srv.insert(fqdn(name), t);
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, zone: &Mutex<Zone>, queries: &AtomicU64, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let reply = {
            let z = zone.lock().unwrap_or_else(PoisonError::into_inner);
            answer(&query, &z)
        };
        if let Ok(bytes) = reply.to_vec() {
            let _ = socket.send_to(&bytes, from);
            queries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn address_records(name: &Name, ips: &[IpAddr], ttl: u32, want: Option<RecordType>) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| {
            let data = match ip {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            want.is_none_or(|t| t == data.record_type())
                .then(|| Record::from_rdata(name.clone(), ttl, data))
        })
        .collect()
}

fn answer(query: &Message, z: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    let Some(q) = query.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(q.clone());
    let name = q.name().clone();
    let key = fqdn(&name.to_ascii());
    let known = z.addrs.contains_key(&key) || z.srv.contains_key(&key);
    if !known {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    }
    match q.query_type() {
        t @ (RecordType::A | RecordType::AAAA) => {
            if let Some(ips) = z.addrs.get(&key) {
                reply.add_answers(address_records(&name, ips, z.ttl, Some(t)));
            }
        }
        RecordType::SRV => {
            for (port, target) in z.srv.get(&key).into_iter().flatten() {
                let Ok(target_name) = Name::from_ascii(target) else {
                    continue;
                };
                let srv = SRV::new(0, 0, *port, target_name.clone());
                reply.add_answer(Record::from_rdata(name.clone(), z.ttl, RData::SRV(srv)));
                if let Some(ips) = z.addrs.get(target) {
                    reply.add_additionals(address_records(&target_name, ips, z.ttl, None));
                }
            }
        }
        _ => {}
    }
    reply
}
