//! `Encryption`: an AEAD (AES-256-GCM or ChaCha20-Poly1305) over the payload that also
//! authenticates the header fields that matter, with replay protection and a key ring.
//!
//! Sent form: extension [`tags::ENCRYPTION`] = algorithm (1 byte) ‖ key id (4) ‖ nonce (12,
//! random per message); payload = AEAD(plaintext = timestamp ms (8) ‖ counter (8) ‖ payload).
//! The associated data binds the sender id, the options (SECURE is set on every encrypted
//! message), the extensions of the layers above, and the extension itself, so none can be
//! changed or forged (Tribes leaves its header in clear and unauthenticated, §5.7).
//!
//! Receiving, in order: the extension parses, the key id is in the ring, the AEAD verifies,
//! the timestamp lies within `replay_window` of the local clock, and the sender's counter was
//! not seen (a sliding window of `replay_window_messages` per sender). Any failure drops the
//! message, counts it by cause, and fails its ACK; nothing unauthenticated is delivered. With
//! `require` (the default), messages without the extension are dropped too.
//!
//! Rotation: every node holds every key in use; the first key (or `active`) encrypts, any
//! key decrypts by id. Roll a new key out as a second key everywhere, then make it active
//! ([`EncryptionKeys::activate`] or a config change), then remove the old one.

use crate::ConfigError;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use bytes::{BufMut, Bytes, BytesMut};
use cohort_channel::{Cx, Inbound, Interceptor, Outbound, SendOptions, TagKind, tags};
use cohort_wire::{Extension, MemberId};
use rand_core::RngCore;

use crate::util::{Counter, bad, be_u32, be_u64, take_ext};

/// The AEADs offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "kebab-case")
)]
pub enum Algorithm {
    /// AES-256-GCM (Tribes' default mode since 10.1.58, with a 256-bit key). The default.
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305: fast without AES hardware.
    Chacha20Poly1305,
}

impl Algorithm {
    fn code(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::Chacha20Poly1305 => 2,
        }
    }
}

/// One key of the ring.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct KeyConfig {
    /// Its id, sent with every message it encrypts.
    pub id: u32,
    /// 32 bytes as 64 hex digits, or as standard base64 (44 characters).
    pub key: String,
}

impl KeyConfig {
    /// A key from its 32 bytes (as from a secrets store), rather than hex text.
    ///
    /// ```
    /// use cohort_interceptors::encryption::KeyConfig;
    /// let k = KeyConfig::from_bytes(3, [0xab; 32]);
    /// assert_eq!(k.id, 3);
    /// assert_eq!(k.bytes(), Some([0xab; 32]));
    /// ```
    pub fn from_bytes(id: u32, key: [u8; 32]) -> Self {
        use std::fmt::Write as _;
        let mut hex = String::with_capacity(64);
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        Self { id, key: hex }
    }

    /// The key's 32 bytes, when `key` is 64 hex digits or standard base64 of 32 bytes.
    pub fn bytes(&self) -> Option<[u8; 32]> {
        parse_key(&self.key)
    }

    /// A key from text, as a secrets file holds it: 64 hex digits or standard base64 of 32
    /// bytes. The error says which forms are accepted (it never repeats the text).
    ///
    /// ```
    /// use cohort_interceptors::encryption::KeyConfig;
    /// let hex = KeyConfig::from_text(1, &"ab".repeat(32)).unwrap();
    /// let b64 = KeyConfig::from_text(1, "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=").unwrap();
    /// assert_eq!(hex.bytes(), b64.bytes());
    /// assert!(KeyConfig::from_text(1, "too short").is_err());
    /// ```
    pub fn from_text(id: u32, text: &str) -> Result<Self, crate::ConfigError> {
        match parse_key(text) {
            Some(bytes) => Ok(Self::from_bytes(id, bytes)),
            None => Err(crate::ConfigError {
                key: "keys.key".into(),
                reason: "a key is 32 bytes: 64 hex digits or 44 characters of standard base64"
                    .into(),
            }),
        }
    }
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyConfig {{ id: {}, key: <redacted> }}", self.id)
    }
}

/// Settings.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct EncryptionConfig {
    /// The AEAD for sending (both are accepted). Default AES-256-GCM.
    pub algorithm: Algorithm,
    /// The key ring; required.
    pub keys: Vec<KeyConfig>,
    /// The key that encrypts; default the first.
    pub active: Option<u32>,
    /// Drop messages that arrive unencrypted. Default true.
    pub require: bool,
    /// Encrypt only messages with the SECURE option (others pass in clear both ways). Default
    /// false: everything.
    pub secure_only: bool,
    /// Largest clock difference accepted. Default 60,000 ms (Tribes: 10,000; the counter
    /// window below does the exact work here, this only covers forgotten senders).
    #[cfg_attr(
        feature = "serde",
        serde(
            rename = "replay_window_ms",
            deserialize_with = "crate::util::ms::deserialize"
        )
    )]
    pub replay_window: Duration,
    /// Counters remembered per sender. Default 8192 (Tribes' `replayWindowMessageCount`).
    pub replay_window_messages: usize,
    /// Senders whose windows are kept; beyond, the idle longest is forgotten. Default 4096.
    pub max_senders: usize,
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Aes256Gcm,
            keys: Vec::new(),
            active: None,
            require: true,
            secure_only: false,
            replay_window: Duration::from_secs(60),
            replay_window_messages: 8192,
            max_senders: 4096,
        }
    }
}

/// 32 bytes from 64 hex digits, or from standard base64 (44 characters, padded).
fn parse_key(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim();
    if hex.len() == 44 {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD.decode(hex).ok()?;
        return <[u8; 32]>::try_from(bytes.as_slice()).ok();
    }
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl EncryptionConfig {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keys.is_empty() {
            return bad("keys", "at least one key is required");
        }
        let mut ids = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            if parse_key(&k.key).is_none() {
                return bad(
                    &format!("keys[{i}].key"),
                    "must be 64 hex digits or 44 characters of standard base64 (32 bytes)",
                );
            }
            if !ids.insert(k.id) {
                return bad(&format!("keys[{i}].id"), format!("{} appears twice", k.id));
            }
        }
        if let Some(a) = self.active {
            if !ids.contains(&a) {
                return bad("active", format!("no key with id {a}"));
            }
        }
        if self.replay_window < Duration::from_secs(1) {
            return bad("replay_window_ms", "must be at least 1000");
        }
        if !(64..=1 << 20).contains(&self.replay_window_messages) {
            return bad("replay_window_messages", "must be between 64 and 1048576");
        }
        if self.max_senders == 0 {
            return bad("max_senders", "must be at least 1");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Ring {
    active: u32,
    keys: BTreeMap<u32, [u8; 32]>,
}

/// The key ring, shared between the interceptor and whoever rotates keys at run time.
#[derive(Clone)]
pub struct EncryptionKeys(Arc<RwLock<Ring>>);

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.0.read().unwrap_or_else(PoisonError::into_inner);
        write!(
            f,
            "EncryptionKeys {{ active: {}, ids: {:?} }}",
            r.active,
            r.keys.keys().collect::<Vec<_>>()
        )
    }
}

impl EncryptionKeys {
    /// Adds (or replaces) a key.
    pub fn add(&self, id: u32, key: [u8; 32]) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .insert(id, key);
    }

    /// Makes key `id` the one that encrypts; false if unknown.
    pub fn activate(&self, id: u32) -> bool {
        let mut r = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if r.keys.contains_key(&id) {
            r.active = id;
            true
        } else {
            false
        }
    }

    /// Removes key `id`; refused (false) for the active key.
    pub fn remove(&self, id: u32) -> bool {
        let mut r = self.0.write().unwrap_or_else(PoisonError::into_inner);
        r.active != id && r.keys.remove(&id).is_some()
    }

    /// The active key's id.
    pub fn active(&self) -> u32 {
        self.0.read().unwrap_or_else(PoisonError::into_inner).active
    }
}

/// Counters, by cause.
#[derive(Debug, Default)]
pub struct EncryptionStats {
    encrypted: Counter,
    decrypted: Counter,
    plaintext_dropped: Counter,
    unknown_key: Counter,
    auth_failed: Counter,
    stale: Counter,
    replayed: Counter,
    malformed: Counter,
}

/// A snapshot of [`EncryptionStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncryptionSnapshot {
    /// Messages encrypted.
    pub encrypted: u64,
    /// Messages that verified and were passed up.
    pub decrypted: u64,
    /// Unencrypted messages dropped (`require`).
    pub plaintext_dropped: u64,
    /// Messages under a key id not in the ring.
    pub unknown_key: u64,
    /// Messages that failed authentication (wrong key, tampering).
    pub auth_failed: u64,
    /// Messages whose timestamp lay outside the replay window.
    pub stale: u64,
    /// Messages whose counter was already seen or too old.
    pub replayed: u64,
    /// Messages with a malformed extension or plaintext.
    pub malformed: u64,
}

impl EncryptionStats {
    /// The current values.
    pub fn snapshot(&self) -> EncryptionSnapshot {
        EncryptionSnapshot {
            encrypted: self.encrypted.get(),
            decrypted: self.decrypted.get(),
            plaintext_dropped: self.plaintext_dropped.get(),
            unknown_key: self.unknown_key.get(),
            auth_failed: self.auth_failed.get(),
            stale: self.stale.get(),
            replayed: self.replayed.get(),
            malformed: self.malformed.get(),
        }
    }
}

/// A sliding window of counters seen from one sender.
struct Window {
    highest: u64,
    bits: Vec<u64>,
    last_used: Instant,
}

impl Window {
    fn new(size: usize, now: Instant) -> Self {
        Self {
            highest: 0,
            bits: vec![0; size.div_ceil(64)],
            last_used: now,
        }
    }

    fn size(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn bit(&mut self, n: u64) -> (&mut u64, u64) {
        let i = usize::try_from((n / 64) % self.bits.len() as u64).unwrap_or(0);
        (&mut self.bits[i], 1 << (n % 64))
    }

    /// Records `n`; false if seen or older than the window.
    fn accept(&mut self, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        if n > self.highest {
            // Clear the bits of the numbers the window slides over.
            let clear = (n - self.highest).min(self.size());
            for k in 1..=clear {
                let (w, b) = self.bit(self.highest + k);
                *w &= !b;
            }
            self.highest = n;
        } else if self.highest - n >= self.size() {
            return false;
        }
        let (w, b) = self.bit(n);
        if *w & b != 0 {
            return false;
        }
        *w |= b;
        true
    }
}

/// The interceptor. See the module docs.
pub struct Encryption {
    cfg: EncryptionConfig,
    ring: EncryptionKeys,
    rng: Box<dyn RngCore + Send>,
    counter: u64,
    windows: HashMap<MemberId, Window>,
    stats: Arc<EncryptionStats>,
}

const ENV_LEN: usize = 17;

fn aad(sender: &MemberId, options: SendOptions, exts: &[Extension], env: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(64 + exts.iter().map(|e| e.value.len() + 8).sum::<usize>());
    a.extend_from_slice(b"COHE");
    a.extend_from_slice(sender.as_bytes());
    a.extend_from_slice(&options.bits().to_be_bytes());
    for e in exts {
        a.extend_from_slice(&e.tag.to_be_bytes());
        a.extend_from_slice(
            &u32::try_from(e.value.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        a.extend_from_slice(&e.value);
    }
    a.extend_from_slice(env);
    a
}

fn seal(alg: u8, key: &[u8; 32], nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let payload = Payload { msg, aad };
    match alg {
        1 => aes_gcm::Aes256Gcm::new(key.into())
            .encrypt(nonce.into(), payload)
            .ok(),
        2 => chacha20poly1305::ChaCha20Poly1305::new(key.into())
            .encrypt(nonce.into(), payload)
            .ok(),
        _ => None,
    }
}

fn open(alg: u8, key: &[u8; 32], nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let payload = Payload { msg, aad };
    match alg {
        1 => aes_gcm::Aes256Gcm::new(key.into())
            .decrypt(nonce.into(), payload)
            .ok(),
        2 => chacha20poly1305::ChaCha20Poly1305::new(key.into())
            .decrypt(nonce.into(), payload)
            .ok(),
        _ => None,
    }
}

impl Encryption {
    /// An encryptor with `cfg` (validated) and `rng` for nonces. Fails if `cfg` is invalid.
    pub fn new(cfg: EncryptionConfig, rng: Box<dyn RngCore + Send>) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut keys = BTreeMap::new();
        for k in &cfg.keys {
            keys.insert(k.id, parse_key(&k.key).unwrap_or([0; 32]));
        }
        let active = cfg.active.unwrap_or(cfg.keys[0].id);
        Ok(Self {
            cfg,
            ring: EncryptionKeys(Arc::new(RwLock::new(Ring { active, keys }))),
            rng,
            counter: 0,
            windows: HashMap::new(),
            stats: Arc::default(),
        })
    }

    /// The key ring (rotate keys at run time through it).
    pub fn keys(&self) -> EncryptionKeys {
        self.ring.clone()
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<EncryptionStats> {
        self.stats.clone()
    }

    fn reject(&self, counter: &Counter, msg: Inbound, why: &str) {
        counter.inc();
        tracing::debug!(msg_id = msg.msg_id, from = %msg.from.short(), why, "message not authenticated; dropped");
        if let Some(a) = msg.ack {
            a.fail(format!("not accepted: {why}"));
        }
    }
}

impl Interceptor for Encryption {
    fn name(&self) -> &'static str {
        "encryption"
    }

    fn tags(&self) -> &'static [(u32, TagKind)] {
        &[(tags::ENCRYPTION, TagKind::Transform)]
    }

    fn must_be_above(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "tcp_failure_detector",
            "probes and pings must stay readable below the encryption, as in Tribes",
        )]
    }

    fn option_mask(&self) -> SendOptions {
        if self.cfg.secure_only {
            SendOptions::SECURE
        } else {
            SendOptions::NONE
        }
    }

    fn on_send(&mut self, mut msg: Outbound, cx: &mut Cx<'_>) {
        let Some(local) = cx.local().map(|m| m.id) else {
            tracing::error!("encryption without a local member; message dropped");
            return;
        };
        let (id, key) = {
            let r = self.ring.0.read().unwrap_or_else(PoisonError::into_inner);
            (r.active, r.keys.get(&r.active).copied().unwrap_or([0; 32]))
        };
        let alg = self.cfg.algorithm.code();
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        let mut env = BytesMut::with_capacity(ENV_LEN);
        env.put_u8(alg);
        env.put_u32(id);
        env.put_slice(&nonce);
        msg.options = msg.options.union(SendOptions::SECURE);
        self.counter += 1;
        let mut plain = Vec::with_capacity(16 + msg.payload.len());
        plain.extend_from_slice(&cx.wall_clock_ms().to_be_bytes());
        plain.extend_from_slice(&self.counter.to_be_bytes());
        plain.extend_from_slice(&msg.payload);
        let a = aad(&local, msg.options, &msg.extensions, &env);
        let Some(sealed) = seal(alg, &key, &nonce, &plain, &a) else {
            tracing::error!("encryption failed; message dropped");
            return;
        };
        self.stats.encrypted.inc();
        msg.extensions.push(Extension {
            tag: tags::ENCRYPTION,
            value: env.freeze(),
        });
        msg.payload = Bytes::from(sealed);
        cx.send_down(msg);
    }

    fn on_receive(&mut self, mut msg: Inbound, cx: &mut Cx<'_>) {
        let Some(env) = take_ext(&mut msg.extensions, tags::ENCRYPTION) else {
            if self.cfg.require {
                self.reject(&self.stats.plaintext_dropped, msg, "unencrypted");
            } else {
                cx.deliver_up(msg);
            }
            return;
        };
        let (Some(&alg), Some(id), ENV_LEN) = (env.first(), be_u32(&env, 1), env.len()) else {
            return self.reject(&self.stats.malformed, msg, "malformed encryption extension");
        };
        let key = {
            let r = self.ring.0.read().unwrap_or_else(PoisonError::into_inner);
            r.keys.get(&id).copied()
        };
        let Some(key) = key else {
            return self.reject(&self.stats.unknown_key, msg, "unknown key id");
        };
        let a = aad(&msg.from, msg.options, &msg.extensions, &env);
        let Some(plain) = open(alg, &key, &env[5..], &msg.payload, &a) else {
            return self.reject(&self.stats.auth_failed, msg, "authentication failed");
        };
        let (Some(ts), Some(counter)) = (be_u64(&plain, 0), be_u64(&plain, 8)) else {
            return self.reject(&self.stats.malformed, msg, "short plaintext");
        };
        let skew = cx.wall_clock_ms().abs_diff(ts);
        if u128::from(skew) > self.cfg.replay_window.as_millis() {
            return self.reject(
                &self.stats.stale,
                msg,
                "timestamp outside the replay window",
            );
        }
        let now = cx.now();
        if !self.windows.contains_key(&msg.from) && self.windows.len() >= self.cfg.max_senders {
            if let Some(k) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(k, _)| *k)
            {
                self.windows.remove(&k);
            }
        }
        let size = self.cfg.replay_window_messages;
        let window = self
            .windows
            .entry(msg.from)
            .or_insert_with(|| Window::new(size, now));
        window.last_used = now;
        if !window.accept(counter) {
            return self.reject(&self.stats.replayed, msg, "replayed");
        }
        self.stats.decrypted.inc();
        msg.payload = Bytes::from(plain).slice(16..);
        cx.deliver_up(msg);
    }

    fn on_heartbeat(&mut self, now: Instant, _cx: &mut Cx<'_>) {
        // A sender idle for twice the window has nothing left to replay that the time check
        // would let through.
        let idle = self.cfg.replay_window * 2;
        self.windows
            .retain(|_, w| now.saturating_duration_since(w.last_used) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use rand::SeedableRng;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn enc(algorithm: Algorithm, keys: &[(u32, &str)]) -> Encryption {
        let cfg = EncryptionConfig {
            algorithm,
            keys: keys
                .iter()
                .map(|(id, k)| KeyConfig {
                    id: *id,
                    key: (*k).into(),
                })
                .collect(),
            ..Default::default()
        };
        Encryption::new(cfg, Box::new(rand::rngs::StdRng::seed_from_u64(7))).unwrap()
    }

    #[test]
    fn a_bad_config_is_a_typed_error_naming_the_key() {
        let cfg = EncryptionConfig {
            keys: vec![KeyConfig {
                id: 1,
                key: "not hex".into(),
            }],
            ..Default::default()
        };
        let Err(err) = Encryption::new(cfg, Box::new(rand::rngs::StdRng::seed_from_u64(7))) else {
            panic!("accepted");
        };
        assert_eq!(err.key, "keys[0].key");
        assert!(err.reason.contains("64 hex digits"), "{err}");
        let as_error: &dyn std::error::Error = &err;
        assert_eq!(as_error.to_string(), format!("{}: {}", err.key, err.reason));
    }

    #[test]
    fn round_trips_with_both_algorithms_and_rotation() {
        for alg in [Algorithm::Aes256Gcm, Algorithm::Chacha20Poly1305] {
            let a = enc(alg, &[(1, K1), (2, K2)]);
            let ring = a.keys();
            let mut tx = pipeline(vec![Box::new(a)], 1);
            let mut rx = pipeline(vec![Box::new(enc(alg, &[(2, K2), (1, K1)]))], 2);
            let now = Instant::now();
            let got = through(
                &mut tx,
                &mut rx,
                &member(1),
                now,
                outbound(1, &[member(2)], SendOptions::USE_ACK, b"secret"),
            );
            assert_eq!(&got[0].payload[..], b"secret");
            assert!(got[0].options.contains(SendOptions::SECURE));
            assert!(ring.activate(2));
            assert!(!ring.remove(2), "the active key stays");
            let got = through(
                &mut tx,
                &mut rx,
                &member(1),
                now,
                outbound(2, &[member(2)], SendOptions::NONE, b"rotated"),
            );
            assert_eq!(&got[0].payload[..], b"rotated");
        }
    }

    #[test]
    fn tampering_wrong_keys_replays_and_plaintext_are_dropped_and_counted() {
        let mut tx = pipeline(vec![Box::new(enc(Algorithm::Aes256Gcm, &[(1, K1)]))], 1);
        let rxe = enc(Algorithm::Aes256Gcm, &[(1, K1)]);
        let stats = rxe.stats();
        let mut rx = pipeline(vec![Box::new(rxe)], 2);
        let mut wrong = pipeline(vec![Box::new(enc(Algorithm::Aes256Gcm, &[(1, K2)]))], 3);
        let now = Instant::now();
        tx.send(now, outbound(1, &[member(2)], SendOptions::USE_ACK, b"pay"));
        let sent = drain(&mut tx).sent.remove(0);
        // Tampered payload, options, sender, extension.
        let mut t1 = arrive(&sent, &member(1));
        let mut p = t1.payload.to_vec();
        p[3] ^= 1;
        t1.payload = p.into();
        rx.receive(now, t1);
        let mut t2 = arrive(&sent, &member(1));
        t2.options = t2.options.union(SendOptions::SYNCHRONIZED_ACK);
        rx.receive(now, t2);
        rx.receive(now, arrive(&sent, &member(4)));
        assert!(drain(&mut rx).delivered.is_empty());
        assert_eq!(stats.snapshot().auth_failed, 3);
        // The genuine one passes once; its replay does not.
        rx.receive(now, arrive(&sent, &member(1)));
        rx.receive(now, arrive(&sent, &member(1)));
        assert_eq!(drain(&mut rx).delivered.len(), 1);
        assert_eq!(stats.snapshot().replayed, 1);
        // Another cluster's key, plaintext, an unknown key id, a stale clock.
        wrong.send(now, outbound(1, &[member(2)], SendOptions::NONE, b"x"));
        rx.receive(now, arrive(&drain(&mut wrong).sent[0], &member(3)));
        rx.receive(
            now,
            arrive(
                &outbound(5, &[member(2)], SendOptions::NONE, b"plain"),
                &member(1),
            ),
        );
        let mut unknown = sent;
        let mut env = unknown.extensions[0].value.to_vec();
        env[4] = 9;
        unknown.extensions[0].value = env.into();
        rx.receive(now, arrive(&unknown, &member(1)));
        tx.send(now, outbound(6, &[member(2)], SendOptions::NONE, b"old"));
        let old = drain(&mut tx).sent.remove(0);
        rx.set_wall_clock_ms(1_700_000_000_000 + 61_000);
        rx.receive(now, arrive(&old, &member(1)));
        assert!(drain(&mut rx).delivered.is_empty());
        let s = stats.snapshot();
        assert_eq!(
            (s.auth_failed, s.plaintext_dropped, s.unknown_key, s.stale),
            (4, 1, 1, 1)
        );
    }

    #[test]
    fn the_replay_window_slides() {
        let mut w = Window::new(128, Instant::now());
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(200));
        assert!(!w.accept(5), "fell out of the window");
        assert!(w.accept(199));
        assert!(!w.accept(0));
        assert!(w.accept(100_000));
        assert!(!w.accept(200));
    }
}
