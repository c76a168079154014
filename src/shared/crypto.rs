//! What the shared tier seals and names: AES-256-GCM envelopes for credential sets, keyed
//! names for Redis keys, a MAC over shared identity ids.
//!
//! Promises:
//! - an envelope opens only under the Redis key it was sealed for (the key is associated
//!   data), only with a listed key, and only if nothing in it changed; its clear header says
//!   only the key id and the expiry;
//! - Redis key names are an HMAC of the identity (under a key derived from the `naming` line),
//!   so Redis never sees a subject, issuer, pool or role, and a guessable subject cannot be
//!   confirmed without the key; an `id` name and a `cr` name of one user are unlinkable;
//! - plaintext lives only in zeroizing buffers.

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::config::SharedConfig;

const AAD_DOMAIN: &[u8] = b"credbroker/cr/v1\0";
const TAG_LEN: usize = 16;

/// Why an entry read from Redis is not used (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Did not authenticate (changed, or sealed for another key name).
    Decrypt,
    /// Sealed with a key id that is not listed.
    UnknownKey,
    /// Not an envelope / identity-id value at all.
    Malformed,
    /// The clear header and the sealed contents disagree.
    Mismatch,
    /// An identity id whose MAC does not verify.
    BadMac,
    /// The Redis key holds another type.
    WrongType,
}

impl Reject {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Decrypt => "decrypt",
            Self::UnknownKey => "unknown_key",
            Self::Malformed => "malformed",
            Self::Mismatch => "mismatch",
            Self::BadMac => "bad_mac",
            Self::WrongType => "wrong_type",
        }
    }
}

/// The keys of the keys file, ready to use.
pub struct KeyRing {
    names: hmac::Key,
    id_mac: hmac::Key,
    /// `(id, key)`, the first one encrypts.
    aead: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(prk: &hkdf::Prk, info: &[u8]) -> hmac::Key {
    let mut out = Zeroizing::new([0u8; 32]);
    // `expand` and `fill` fail only for lengths above 255 × 32 bytes.
    if let Ok(okm) = prk.expand(&[info], Len(32)) {
        let _ = okm.fill(&mut out[..]);
    }
    hmac::Key::new(hmac::HMAC_SHA256, &out[..])
}

impl KeyRing {
    /// From the validated configuration.
    pub fn new(config: &SharedConfig) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"credbroker shared tier v1");
        let prk = salt.extract(config.naming_key.expose());
        let aead = config
            .encryption_keys
            .iter()
            .filter_map(|(id, key)| {
                let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).ok()?;
                Some((id.clone(), LessSafeKey::new(unbound)))
            })
            .collect();
        Self {
            names: derive(&prk, b"key names"),
            id_mac: derive(&prk, b"identity id mac"),
            aead,
            rng: SystemRandom::new(),
        }
    }

    /// A keyed name for `fields` under `label`: 32 hex characters.
    pub fn name(&self, label: &str, fields: &[Option<&str>]) -> String {
        let mut ctx = hmac::Context::with_key(&self.names);
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        for field in fields {
            match field {
                Some(f) => {
                    ctx.update(&[1]);
                    ctx.update(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
                    ctx.update(f.as_bytes());
                }
                None => ctx.update(&[0]),
            }
        }
        let tag = ctx.sign();
        tag.as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn id_tag(&self, redis_key: &str, identity_id: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.id_mac);
        ctx.update(redis_key.as_bytes());
        ctx.update(&[0]);
        ctx.update(identity_id.as_bytes());
        let tag = ctx.sign();
        let short = tag.as_ref().get(..16).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(short)
    }

    /// The stored form of an identity id: `i1:<id>:<mac>`.
    pub fn seal_identity_id(&self, redis_key: &str, identity_id: &str) -> String {
        format!("i1:{identity_id}:{}", self.id_tag(redis_key, identity_id))
    }

    /// The identity id of a stored value, if its MAC verifies.
    pub fn open_identity_id(&self, redis_key: &str, value: &[u8]) -> Result<String, Reject> {
        let text = std::str::from_utf8(value).map_err(|_| Reject::Malformed)?;
        let body = text.strip_prefix("i1:").ok_or(Reject::Malformed)?;
        // Identity ids contain `:` (`us-east-1:uuid`); the MAC never does.
        let (id, tag) = body.rsplit_once(':').ok_or(Reject::Malformed)?;
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(Reject::Malformed);
        }
        let expected = self.id_tag(redis_key, id);
        if subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), tag.as_bytes()).into() {
            Ok(id.to_owned())
        } else {
            Err(Reject::BadMac)
        }
    }

    /// Whether credentials can be sealed (an encryption key is listed).
    pub fn can_seal(&self) -> bool {
        !self.aead.is_empty()
    }

    /// Seals `plain` for `redis_key`: `c1:<key id>:<expires ms>:` ‖ nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, redis_key: &str, expires_ms: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let (kid, key) = self.aead.first()?;
        let header = format!("c1:{kid}:{expires_ms}:");
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = Zeroizing::new(plain.to_vec());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(redis_key, header.as_bytes())),
            &mut *buf,
        )
        .ok()?;
        Some([header.as_bytes(), &nonce, &buf[..]].concat())
    }

    /// Opens an envelope stored at `redis_key`; returns the expiry of its header and the plaintext.
    pub fn open(&self, redis_key: &str, value: &[u8]) -> Result<(u64, Zeroizing<Vec<u8>>), Reject> {
        let mut parts = value.splitn(4, |b| *b == b':');
        let (Some(b"c1"), Some(kid), Some(exp), Some(sealed)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let expires_ms: u64 = std::str::from_utf8(exp)
            .ok()
            .and_then(|e| e.parse().ok())
            .ok_or(Reject::Malformed)?;
        let header_len = 3 + kid.len() + 1 + exp.len() + 1;
        let header = value.get(..header_len).ok_or(Reject::Malformed)?;
        let (_, key) = self
            .aead
            .iter()
            .find(|(id, _)| id.as_bytes() == kid)
            .ok_or(Reject::UnknownKey)?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Reject::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Reject::Malformed)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain_len = key
            .open_in_place(nonce, Aad::from(aad(redis_key, header)), &mut buf[..])
            .map_err(|_| Reject::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok((expires_ms, buf))
    }
}

fn aad(redis_key: &str, header: &[u8]) -> Vec<u8> {
    [AAD_DOMAIN, redis_key.as_bytes(), b"\0", header].concat()
}

/// A new keys-file line: `<id>:<base64 of 32 random bytes>`.
pub fn generate_key_line(id: &str) -> Option<String> {
    let mut key = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(&mut key[..]).ok()?;
    Some(format!(
        "{id}:{}",
        base64::engine::general_purpose::STANDARD.encode(&key[..])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_keys;

    fn ring(lines: &str) -> KeyRing {
        let (naming_key, encryption_keys) = parse_keys(lines).expect("keys");
        let config = SharedConfig {
            url: "redis://127.0.0.1/".to_owned().into(),
            topology: crate::config::Topology::Standalone,
            nodes: Vec::new(),
            tls_ca: None,
            key_prefix: "t:".to_owned(),
            share_identity_ids: true,
            share_credentials: true,
            naming_key,
            encryption_keys,
            connect_timeout: std::time::Duration::from_secs(1),
            op_timeout: std::time::Duration::from_secs(1),
            lock_wait: std::time::Duration::from_secs(1),
            retry_interval: std::time::Duration::from_secs(1),
            identity_id_ttl: std::time::Duration::from_secs(3600),
            budget: crate::config::BudgetConfig {
                get_id_rate: 1.0,
                credentials_rate: 1.0,
                burst_seconds: 1.0,
                background_headroom: 0.0,
                max_wait: std::time::Duration::ZERO,
                expected_replicas: 1,
            },
        };
        KeyRing::new(&config)
    }

    fn lines(ids: &[&str]) -> String {
        ids.iter()
            .map(|id| generate_key_line(id).expect("rng"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn envelopes_open_only_where_and_with_what_they_were_sealed() {
        let keys = lines(&["naming", "k2", "k1"]);
        let r = ring(&keys);
        let sealed = r.seal("p:{a}:cr", 1234, b"secret").expect("sealed");
        assert!(sealed.starts_with(b"c1:k2:1234:"), "the first key encrypts");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let (exp, plain) = r.open("p:{a}:cr", &sealed).expect("opens");
        assert_eq!((exp, &plain[..]), (1234, &b"secret"[..]));
        assert_eq!(
            r.open("p:{b}:cr", &sealed).map(|_| ()),
            Err(Reject::Decrypt)
        );
        let mut flipped = sealed.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        assert_eq!(
            r.open("p:{a}:cr", &flipped).map(|_| ()),
            Err(Reject::Decrypt)
        );
        let mut later = sealed.clone();
        later.splice(6..10, b"9999".iter().copied());
        assert_eq!(r.open("p:{a}:cr", &later).map(|_| ()), Err(Reject::Decrypt));
        assert_eq!(
            r.open("p:{a}:cr", b"junk").map(|_| ()),
            Err(Reject::Malformed)
        );
        assert_eq!(
            r.open("p:{a}:cr", b"c1:zz:1:0123456789abcdefghijklmnopqrstuvwxyz")
                .map(|_| ()),
            Err(Reject::UnknownKey)
        );
        // Rotation: a ring that lists k1 first still opens what k2 sealed.
        let (naming, _) = keys.split_once('\n').expect("lines");
        let rotated = ring(&format!(
            "{naming}\n{}\n{}",
            lines(&["k3"]),
            keys.lines().nth(1).unwrap_or("")
        ));
        assert!(rotated.open("p:{a}:cr", &sealed).is_ok());
        assert!(
            rotated
                .seal("x", 1, b"y")
                .expect("sealed")
                .starts_with(b"c1:k3:")
        );
    }

    #[test]
    fn names_are_keyed_and_identity_ids_verified() {
        let a = ring(&lines(&["naming", "k1"]));
        let b = ring(&lines(&["naming", "k1"]));
        let fields = [
            Some("pool"),
            Some("https://issuer/"),
            Some("auth0|alice"),
            None,
        ];
        let name = a.name("cr", &fields);
        assert_eq!(name.len(), 32);
        assert_eq!(name, a.name("cr", &fields), "stable");
        assert_ne!(name, b.name("cr", &fields), "keyed");
        assert_ne!(name, a.name("id", &fields), "labels separate");
        assert_ne!(
            name,
            a.name(
                "cr",
                &[
                    Some("pool"),
                    Some("https://issuer/"),
                    Some("auth0|alice"),
                    Some("")
                ]
            ),
            "no role and an empty role differ"
        );
        let stored = a.seal_identity_id("k", "us-east-1:abc");
        assert_eq!(
            a.open_identity_id("k", stored.as_bytes()),
            Ok("us-east-1:abc".to_owned())
        );
        assert_eq!(
            a.open_identity_id("other", stored.as_bytes()),
            Err(Reject::BadMac)
        );
        let forged = stored.replace("abc", "abd");
        assert_eq!(
            a.open_identity_id("k", forged.as_bytes()),
            Err(Reject::BadMac)
        );
        assert_eq!(a.open_identity_id("k", b"\xff"), Err(Reject::Malformed));
    }
}
