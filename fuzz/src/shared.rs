//! The `shared_entries` target: values read back from Redis in fleet mode, through the exact
//! read path of the shared tier (`credbroker::shared::open_set` for credential sets,
//! `KeyRing::open_identity_id` for identity ids), with a fixed key ring.
//!
//! Input: one byte choosing what the rest is (its value modulo 5), then the rest:
//!
//! - 0, planted set: a value anyone who can write to Redis could store at a set's key
//!   (committed seeds start `c1:k1:` or `c1:k0:`, the ring's key ids);
//! - 1, sealed plaintext: the rest (after 8 bytes of header expiry) sealed with the ring's own
//!   key, so the fuzzer reaches the parser of the decrypted plaintext (a writer with the key,
//!   or an older credbroker);
//! - 2, a set round trip: NUL-separated identity id, access key id, secret key, session token,
//!   then 8 bytes each of expiry and obtained-at (ms) and a 2-byte position and a byte to
//!   change the sealed value with;
//! - 3, planted identity id: a value stored at an identity id's key;
//! - 4, an identity id round trip: 2 bytes of position, a byte, then the identity id.
//!
//! The oracles: no panic; a planted value is always refused, and classified as its shape says;
//! anything accepted round-trips (sealing what was opened and opening it again gives the same);
//! a sealed value opens under its own key name only, in a ring that lists its key (first or
//! not), and any change to it is refused; an accepted identity id value is exactly what the
//! ring would store for that id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credbroker::config::{BudgetConfig, SharedConfig, Topology, parse_keys};
use credbroker::secret::Secret;
use credbroker::shared::{Adopted, KeyRing, Reject, SetRef, open_set, seal_set};

/// The Redis key names values are sealed for and planted at.
pub const SET_KEY: &str = "credbroker:{0123456789abcdef0123456789abcdef}:cr";
const OTHER_SET_KEY: &str = "credbroker:{fedcba9876543210fedcba9876543210}:cr";
const ID_KEY: &str = "credbroker:{00112233445566778899aabbccddeeff}:id";

const NAMING: &str = "naming:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const K1: &str = "k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const K0: &str = "k0:QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";

fn ring(lines: &[&str]) -> KeyRing {
    let (naming_key, encryption_keys) = parse_keys(&lines.join("\n")).expect("fixed keys parse");
    KeyRing::new(&SharedConfig {
        url: Secret::new("redis://127.0.0.1/".to_owned()),
        topology: Topology::Standalone,
        nodes: Vec::new(),
        tls_ca: None,
        key_prefix: "credbroker:".to_owned(),
        share_identity_ids: true,
        share_credentials: true,
        naming_key,
        encryption_keys,
        connect_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(1),
        lock_wait: Duration::from_secs(1),
        retry_interval: Duration::from_secs(1),
        identity_id_ttl: Duration::from_secs(3600),
        budget: BudgetConfig {
            get_id_rate: 1.0,
            credentials_rate: 1.0,
            burst_seconds: 1.0,
            background_headroom: 0.0,
            max_wait: Duration::ZERO,
            expected_replicas: 1,
        },
    })
}

/// The rings: the fleet's (k1 encrypts, k0 still opens), a rotated one (k0 first) and one that
/// no longer lists k1.
pub struct SharedWorld {
    ring: KeyRing,
    rotated: KeyRing,
    without_k1: KeyRing,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    for (to, from) in b.iter_mut().zip(bytes) {
        *to = *from;
    }
    u64::from_be_bytes(b)
}

/// What an adopted set consists of, comparable.
fn fields(a: &Adopted) -> (String, String, String, String, u64, u64) {
    (
        a.identity_id.clone(),
        a.raw.access_key_id.clone(),
        a.raw.secret_key.expose_str().to_owned(),
        a.raw.session_token.expose_str().to_owned(),
        millis(a.raw.expiration),
        millis(a.obtained_at),
    )
}

impl Default for SharedWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedWorld {
    /// The fixed rings.
    pub fn new() -> Self {
        Self {
            ring: ring(&[NAMING, K1, K0]),
            rotated: ring(&[NAMING, K0, K1]),
            without_k1: ring(&[NAMING, K0]),
        }
    }

    /// One input.
    pub fn run(&self, input: &[u8]) {
        let Some((&mode, rest)) = input.split_first() else {
            return;
        };
        match mode % 5 {
            0 => self.planted_set(rest),
            1 => self.sealed_plaintext(rest),
            2 => self.set_round_trip(rest),
            3 => self.planted_identity_id(rest),
            _ => self.identity_id_round_trip(rest),
        }
    }

    fn planted_set(&self, value: &[u8]) {
        let verdict = open_set(&self.ring, SET_KEY, value).map(|_| ());
        let Err(why) = verdict else {
            panic!("a planted value was accepted");
        };
        let mut parts = value.splitn(4, |b| *b == b':');
        let (magic, kid, exp) = (parts.next(), parts.next(), parts.next());
        let sealed = parts.next();
        let number = |e: &[u8]| std::str::from_utf8(e).is_ok_and(|e| e.parse::<u64>().is_ok());
        let expected = match (magic, kid, exp, sealed) {
            (Some(b"c1"), Some(kid), Some(exp), Some(sealed)) if number(exp) => {
                if kid != b"k1" && kid != b"k0" {
                    Reject::UnknownKey
                } else if sealed.len() < 12 + 16 {
                    Reject::Malformed
                } else {
                    Reject::Decrypt
                }
            }
            _ => Reject::Malformed,
        };
        assert_eq!(why, expected, "refused for the wrong reason");
    }

    fn sealed_plaintext(&self, rest: &[u8]) {
        let (exp, plain) = rest.split_at(rest.len().min(8));
        let exp = u64_of(exp);
        let sealed = self.ring.seal(SET_KEY, exp, plain).expect("seals");
        let Ok(adopted) = open_set(&self.ring, SET_KEY, &sealed) else {
            return;
        };
        assert_eq!(millis(adopted.raw.expiration), exp, "the header's expiry");
        let again = self.reseal(&adopted);
        assert_eq!(
            fields(&again),
            fields(&adopted),
            "an accepted set round-trips"
        );
    }

    fn reseal(&self, a: &Adopted) -> Adopted {
        let set = SetRef {
            identity_id: &a.identity_id,
            access_key_id: &a.raw.access_key_id,
            secret_access_key: a.raw.secret_key.expose_str(),
            session_token: a.raw.session_token.expose_str(),
            expires_at: a.raw.expiration,
            obtained_at: a.obtained_at,
            serve_until: a.raw.expiration,
        };
        let sealed = seal_set(&self.ring, SET_KEY, &set).expect("seals");
        open_set(&self.ring, SET_KEY, &sealed).expect("what was sealed opens")
    }

    fn set_round_trip(&self, rest: &[u8]) {
        let mut parts = rest.splitn(5, |b| *b == 0);
        let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let (id, ak, sk, st) = (text(), text(), text(), text());
        let tail = parts.next().unwrap_or_default();
        let num = |at: usize| u64_of(tail.get(at..).unwrap_or_default());
        let (exp, obt) = (num(0) % (1 << 52), num(8) % (1 << 52));
        let position = usize::from(u16::from_be_bytes([
            tail.get(16).copied().unwrap_or(0),
            tail.get(17).copied().unwrap_or(0),
        ]));
        let flip = tail.get(18).copied().unwrap_or(1).max(1);
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let set = SetRef {
            identity_id: &id,
            access_key_id: &ak,
            secret_access_key: &sk,
            session_token: &st,
            expires_at: at(exp),
            obtained_at: at(obt),
            serve_until: at(exp),
        };
        let sealed = seal_set(&self.ring, SET_KEY, &set).expect("seals");
        let opened = open_set(&self.ring, SET_KEY, &sealed).expect("what was sealed opens");
        let want = (id.clone(), ak.clone(), sk.clone(), st.clone(), exp, obt);
        assert_eq!(fields(&opened), want, "seal → open returns the same set");
        let rotated = open_set(&self.rotated, SET_KEY, &sealed).expect("a rotated ring opens it");
        assert_eq!(fields(&rotated), want);
        assert_eq!(
            open_set(&self.without_k1, SET_KEY, &sealed).map(|_| ()),
            Err(Reject::UnknownKey),
            "a ring without the key refuses it"
        );
        assert_eq!(
            open_set(&self.ring, OTHER_SET_KEY, &sealed).map(|_| ()),
            Err(Reject::Decrypt),
            "a set copied to another identity's key is refused"
        );
        for plaintext in [sk.as_bytes(), st.as_bytes()] {
            if plaintext.len() >= 8 {
                assert!(
                    !sealed.windows(plaintext.len()).any(|w| w == plaintext),
                    "a secret in clear in the sealed value"
                );
            }
        }
        let p = position % sealed.len();
        let mut changed = sealed.clone();
        changed[p] ^= flip;
        assert!(
            open_set(&self.ring, SET_KEY, &changed).is_err(),
            "byte {p} changed"
        );
        assert!(
            open_set(&self.ring, SET_KEY, &sealed[..p]).is_err(),
            "cut at {p}"
        );
        let mut longer = sealed.clone();
        longer.insert(p, flip);
        assert!(
            open_set(&self.ring, SET_KEY, &longer).is_err(),
            "a byte inserted at {p}"
        );
    }

    fn planted_identity_id(&self, value: &[u8]) {
        if let Ok(id) = self.ring.open_identity_id(ID_KEY, value) {
            let stored = self.ring.seal_identity_id(ID_KEY, &id);
            assert_eq!(
                stored.as_bytes(),
                value,
                "accepted only as the ring stores it"
            );
        }
    }

    fn identity_id_round_trip(&self, rest: &[u8]) {
        let (head, id) = rest.split_at(rest.len().min(3));
        let id = String::from_utf8_lossy(id);
        let stored = self.ring.seal_identity_id(ID_KEY, &id);
        let valid = (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
        let opened = self.ring.open_identity_id(ID_KEY, stored.as_bytes());
        if valid {
            assert_eq!(opened.as_deref(), Ok(&*id), "an identity id round-trips");
        } else {
            assert_eq!(opened, Err(Reject::Malformed));
            return;
        }
        assert_eq!(
            self.ring
                .open_identity_id(ID_KEY.trim_end_matches("id"), stored.as_bytes()),
            Err(Reject::BadMac),
            "bound to its key name"
        );
        let position = usize::from(u16::from_be_bytes([
            head.first().copied().unwrap_or(0),
            head.get(1).copied().unwrap_or(0),
        ]));
        let flip = head.get(2).copied().unwrap_or(1).max(1);
        let mut changed = stored.clone().into_bytes();
        let p = position % changed.len();
        changed[p] ^= flip;
        assert!(
            self.ring.open_identity_id(ID_KEY, &changed).is_err(),
            "byte {p} changed"
        );
        assert!(
            self.ring
                .open_identity_id(ID_KEY, &stored.as_bytes()[..p])
                .is_err(),
            "cut at {p}"
        );
    }
}
