//! The sans-IO part of a session manager: how sessions are laid out in a map, which sessions
//! have expired, and the batch of access times waiting to be replicated. No IO, no clock:
//! times come in as `now_ms`.

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, Bytes, BytesMut};

use crate::model::{Meta, SessionData, SessionId};

/// The kind byte after the id in a delta map key: the session's times.
const META: u8 = 0;
/// The kind byte after the id in a delta map key: one attribute, its name follows.
const ATTRIBUTE: u8 = 1;

/// The key of a session's times in the delta manager's map: the id's 16 bytes and 0.
pub fn meta_key(id: SessionId) -> Bytes {
    let mut k = BytesMut::with_capacity(17);
    k.put_slice(id.as_bytes());
    k.put_u8(META);
    k.freeze()
}

/// The key of one attribute: the id's 16 bytes, 1, and the name. Every key of a session
/// starts with its id, so a session is one range of the map.
pub fn attribute_key(id: SessionId, name: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(17 + name.len());
    k.put_slice(id.as_bytes());
    k.put_u8(ATTRIBUTE);
    k.put_slice(name.as_bytes());
    k.freeze()
}

/// Encodes a session's times.
pub fn encode_meta(meta: &Meta) -> Bytes {
    Bytes::from(postcard::to_stdvec(meta).unwrap_or_default())
}

/// Rebuilds a session from the entries of its range; `None` without its times (a session
/// half removed, or a key of garbage).
pub fn assemble(id: SessionId, entries: &[(Bytes, Bytes)]) -> Option<SessionData> {
    let mut meta = None;
    let mut attributes = BTreeMap::new();
    for (k, v) in entries {
        let Some(rest) = k.strip_prefix(&id.as_bytes()[..]) else {
            continue;
        };
        match rest.split_first() {
            Some((&META, [])) => meta = postcard::from_bytes::<Meta>(v).ok(),
            Some((&ATTRIBUTE, name)) => {
                if let Ok(name) = std::str::from_utf8(name) {
                    attributes.insert(name.to_owned(), v.clone());
                }
            }
            _ => {}
        }
    }
    Some(SessionData {
        id,
        meta: meta?,
        attributes,
    })
}

/// The id and times behind a delta map key of kind "times".
pub fn parse_meta_key(key: &[u8]) -> Option<SessionId> {
    let (id, kind) = key.split_at_checked(16)?;
    (kind == [META]).then(|| SessionId::from_bytes(id.try_into().expect("16 bytes")))
}

/// Whether a session last seen with `meta` is gone at `now_ms`. `grace_ms` covers access
/// times still waiting in another member's batch and clock skew between members.
pub fn is_expired(meta: &Meta, now_ms: u64, grace_ms: u64) -> bool {
    now_ms > meta.expires_at_ms().saturating_add(grace_ms)
}

/// Access times waiting to be replicated: at most one per session (the latest), sent together
/// every flush period instead of one message per request. Bounded: past `max` sessions the
/// caller flushes at once.
#[derive(Debug, Default)]
pub struct AccessBatch {
    pending: HashMap<SessionId, Meta>,
    max: usize,
}

impl AccessBatch {
    /// A batch that asks to be flushed past `max` sessions.
    pub fn new(max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Records an access; true when the batch is full and must be flushed now.
    pub fn touch(&mut self, id: SessionId, meta: Meta) -> bool {
        let e = self.pending.entry(id).or_insert(meta);
        if meta.last_access_ms >= e.last_access_ms {
            *e = meta;
        }
        self.pending.len() >= self.max
    }

    /// A session whose change was just replicated (its times with it): nothing to send.
    pub fn sent(&mut self, id: SessionId) {
        self.pending.remove(&id);
    }

    /// Everything waiting, emptied.
    pub fn take(&mut self) -> Vec<(SessionId, Meta)> {
        self.pending.drain().collect()
    }

    /// Sessions waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(last: u64) -> Meta {
        Meta {
            created_ms: 1,
            last_access_ms: last,
            max_inactive_ms: 1000,
        }
    }

    #[test]
    fn a_session_is_one_range_of_keys_and_assembles_back() {
        let id = SessionId::from_bytes([7; 16]);
        let other = SessionId::from_bytes([8; 16]);
        let mut entries = [
            (meta_key(id), encode_meta(&meta(5))),
            (attribute_key(id, "cart"), Bytes::from_static(b"[1,2]")),
            (attribute_key(id, ""), Bytes::from_static(b"0")),
            (attribute_key(other, "x"), Bytes::from_static(b"1")),
        ];
        entries.sort();
        let mine: Vec<_> = entries
            .iter()
            .filter(|(k, _)| k.starts_with(id.as_bytes()))
            .cloned()
            .collect();
        assert_eq!(mine.len(), 3);
        let s = assemble(id, &mine).unwrap();
        assert_eq!(s.meta, meta(5));
        assert_eq!(s.attributes.len(), 2);
        assert_eq!(parse_meta_key(&meta_key(id)), Some(id));
        assert_eq!(parse_meta_key(&attribute_key(id, "a")), None);
        // Without its times a range is no session.
        assert!(assemble(id, &mine[1..]).is_none());
    }

    #[test]
    fn expiry_counts_the_grace() {
        let m = meta(10_000);
        assert!(!is_expired(&m, 11_000, 0));
        assert!(is_expired(&m, 11_001, 0));
        assert!(!is_expired(&m, 11_500, 500));
    }

    #[test]
    fn the_batch_keeps_the_latest_access_and_asks_to_flush_when_full() {
        let mut b = AccessBatch::new(2);
        let a = SessionId::from_bytes([1; 16]);
        assert!(!b.touch(a, meta(5)));
        assert!(
            !b.touch(a, meta(3)),
            "an older access does not replace a newer"
        );
        assert!(b.touch(SessionId::from_bytes([2; 16]), meta(1)));
        let mut got = b.take();
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(got[0], (a, meta(5)));
        assert!(b.is_empty());
    }

    proptest! {
        #[test]
        fn garbage_keys_never_panic(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10)) {
            let id = SessionId::from_bytes([3; 16]);
            let entries: Vec<(Bytes, Bytes)> = keys.into_iter().map(|k| (Bytes::from(k.clone()), Bytes::from(k))).collect();
            let _ = assemble(id, &entries);
            for (k, _) in &entries {
                let _ = parse_meta_key(k);
            }
        }
    }
}
