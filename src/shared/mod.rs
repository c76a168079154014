//! Fleet mode's shared tier: what replicas share through Redis/Valkey so that N replicas cost
//! Cognito what one does. Called by the identity cache on a local miss or a renewal, never on a
//! local hit.
//!
//! Owns: the Redis connection and breaker ([`store`]), the envelopes and key names
//! ([`crypto`]), the fleet budget ([`budget`]), and the cross-replica single-flight protocol
//! (acquire → exchange → publish, or wait and adopt).
//!
//! Promises:
//! - Redis sees keyed hashes, identity ids (MAC'd, not secret) and AES-256-GCM envelopes of
//!   credential sets, each bound to its key; never a token, a session handle, a subject or an
//!   issuer;
//! - an entry that does not open or verify is dropped, counted and never used;
//! - every failure of Redis is an answer (`None`, `Unavailable`): the caller exchanges on its
//!   own; nothing here fails a request.
//!
//! [`KeyRing`], [`seal_set`] and [`open_set`] are public (hidden) for the fuzz targets only: the
//! exact path a value read from Redis takes before anything of it is used.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock;
use crate::cognito::{Budget, RawCredentials};
use crate::config::SharedConfig;
use crate::metrics::Metrics;
use crate::secret::SecretString;

mod budget;
mod crypto;
mod store;

pub use budget::LocalGcra;
#[doc(hidden)]
pub use crypto::KeyRing;
pub use crypto::{Reject, generate_key_line};
pub use store::Unavailable;

use store::{Acquired, Store};

/// How often a replica waiting for another one's exchange looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a lock outlives `lock_wait` (a holder that dies frees it by then).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The Redis key names of one identity (keyed hashes).
#[derive(Debug, Clone)]
pub struct Names {
    id: String,
    cr: String,
    lk: String,
}

/// A credential set as shared (borrowed from the served form; read back borrowed where the JSON
/// holds no escape, else owned).
#[derive(Serialize, Deserialize)]
struct Plain<'a> {
    v: u8,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    ak: Cow<'a, str>,
    #[serde(borrow)]
    sk: Cow<'a, str>,
    #[serde(borrow)]
    st: Cow<'a, str>,
    exp: u64,
    obt: u64,
}

/// A set another replica obtained.
pub struct Adopted {
    /// Its identity id.
    pub identity_id: String,
    /// The credentials.
    pub raw: RawCredentials,
    /// When the replica that exchanged got them.
    pub obtained_at: SystemTime,
}

/// What a set to share consists of.
pub struct SetRef<'a> {
    /// Identity id.
    pub identity_id: &'a str,
    /// `AccessKeyId`.
    pub access_key_id: &'a str,
    /// `SecretAccessKey`.
    pub secret_access_key: &'a str,
    /// `SessionToken`.
    pub session_token: &'a str,
    /// Expiry.
    pub expires_at: SystemTime,
    /// When it was obtained.
    pub obtained_at: SystemTime,
    /// Until when it may be served (the Redis TTL ends there).
    pub serve_until: SystemTime,
}

/// What [`SharedTier::acquire`] decided.
pub enum Turn {
    /// Another replica's set: use it, call nobody.
    Adopt(Adopted),
    /// This replica exchanges and then publishes with the lock it holds.
    Exchange(Lock),
    /// Another replica is exchanging: wait [`POLL_INTERVAL`] and ask again.
    Wait,
    /// Redis is not usable: exchange alone.
    Alone,
}

/// A held exchange lock (a random token), released by [`SharedTier::publish`] or
/// [`SharedTier::release`].
pub struct Lock(String);

/// The shared tier of this replica.
pub struct SharedTier {
    store: Arc<Store>,
    keys: KeyRing,
    prefix: String,
    config: SharedConfig,
    budget: Arc<budget::FleetBudget>,
    metrics: Metrics,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedTier {
    /// Connects lazily (never blocks, never fails on an unreachable Redis).
    pub fn new(config: &SharedConfig, metrics: Metrics) -> Result<Self, String> {
        // redis-rs builds its TLS config with the process default provider: make it ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Arc::new(Store::new(config, metrics.clone())?);
        let budget = Arc::new(budget::FleetBudget::new(
            store.clone(),
            &config.key_prefix,
            config.budget,
            metrics.clone(),
        ));
        Ok(Self {
            store,
            keys: KeyRing::new(config),
            prefix: config.key_prefix.clone(),
            config: config.clone(),
            budget,
            metrics,
        })
    }

    /// The fleet budget, for the exchanger.
    pub fn budget(&self) -> Arc<dyn Budget> {
        self.budget.clone()
    }

    /// How long a replica waits for another one's exchange.
    pub fn lock_wait(&self) -> Duration {
        self.config.lock_wait
    }

    /// Whether credential sets are shared.
    pub fn shares_credentials(&self) -> bool {
        self.config.share_credentials && self.keys.can_seal()
    }

    /// `None` while Redis answers; else since when it has not and why.
    pub fn outage(&self) -> Option<(SystemTime, &'static str)> {
        self.store.outage()
    }

    /// The key names for an identity (`role` is not part of the identity id's name).
    pub fn names(&self, pool: &str, issuer: &str, subject: &str, role: Option<&str>) -> Names {
        let id = self
            .keys
            .name("id", &[Some(pool), Some(issuer), Some(subject)]);
        let cr = self
            .keys
            .name("cr", &[Some(pool), Some(issuer), Some(subject), role]);
        let p = &self.prefix;
        Names {
            id: format!("{p}{{{id}}}:id"),
            lk: format!("{p}{{{cr}}}:lk"),
            cr: format!("{p}{{{cr}}}:cr"),
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics
            .shared
            .lookups
            .with_label_values(&[kind, result])
            .inc();
    }

    fn reject(&self, kind: &str, why: Reject) {
        self.count(kind, "rejected");
        self.metrics
            .shared
            .rejected
            .with_label_values(&[why.label()])
            .inc();
        tracing::warn!(
            kind,
            reason = why.label(),
            "a shared-tier entry did not verify; dropped and exchanged again"
        );
    }

    fn unavailable(&self, kind: &str) {
        let skipped = self.store.outage().is_some();
        self.count(kind, if skipped { "skipped" } else { "error" });
    }

    /// The identity id the fleet knows for `names`, renewing its TTL.
    pub async fn identity_id(&self, names: &Names) -> Option<String> {
        if !self.config.share_identity_ids {
            return None;
        }
        let value = match self
            .store
            .get_renew(&names.id, self.config.identity_id_ttl)
            .await
        {
            Ok(Some(v)) => v,
            Ok(None) => {
                self.count("identity_id", "miss");
                return None;
            }
            Err(Unavailable) => {
                self.unavailable("identity_id");
                return None;
            }
        };
        match self.keys.open_identity_id(&names.id, &value) {
            Ok(id) => {
                self.count("identity_id", "hit");
                self.avoided("GetId", "shared_id");
                Some(id)
            }
            Err(why) => {
                self.reject("identity_id", why);
                let _ = self.store.del_if_eq(&names.id, &value).await;
                None
            }
        }
    }

    /// Shares an identity id (best effort).
    pub async fn store_identity_id(&self, names: &Names, identity_id: &str) {
        if !self.config.share_identity_ids {
            return;
        }
        let value = self.keys.seal_identity_id(&names.id, identity_id);
        let _ = self
            .store
            .set(
                "set_id",
                &names.id,
                value.as_bytes(),
                self.config.identity_id_ttl,
            )
            .await;
    }

    /// Counts a Cognito call the shared tier made unnecessary.
    pub fn avoided(&self, operation: &str, reason: &str) {
        self.metrics
            .shared
            .calls_avoided
            .with_label_values(&[operation, reason])
            .inc();
    }

    /// One step of the cross-replica single-flight: a shared set that expires after
    /// `newer_than` (if any), else the lock, else wait.
    pub async fn acquire(&self, names: &Names, newer_than: Option<SystemTime>) -> Turn {
        if !self.shares_credentials() {
            return Turn::Alone;
        }
        let token = lock_token();
        let lease = self.config.lock_wait + LEASE_MARGIN;
        let newer = newer_than.map_or(0, clock::unix_millis);
        // A bad entry is deleted and looked up again; a writer that keeps planting bad entries
        // gets at most three lookups before this replica exchanges alone.
        for _ in 0..3 {
            let (found, bad) = match self
                .store
                .acquire(&names.cr, &names.lk, &token, lease, newer)
                .await
            {
                Ok(r) => r,
                Err(Unavailable) => {
                    self.unavailable("credentials");
                    return Turn::Alone;
                }
            };
            if bad {
                self.reject("credentials", Reject::WrongType);
            }
            match found {
                Acquired::Found(value) => match open_set(&self.keys, &names.cr, &value) {
                    Ok(adopted) => {
                        self.count("credentials", "hit");
                        return Turn::Adopt(adopted);
                    }
                    Err(why) => {
                        self.reject("credentials", why);
                        if self.store.del_if_eq(&names.cr, &value).await.is_err() {
                            return Turn::Alone;
                        }
                    }
                },
                Acquired::Locked => {
                    self.count("credentials", "miss");
                    self.metrics
                        .shared
                        .locks
                        .with_label_values(&["acquired"])
                        .inc();
                    return Turn::Exchange(Lock(token));
                }
                Acquired::Contended => {
                    self.metrics
                        .shared
                        .locks
                        .with_label_values(&["contended"])
                        .inc();
                    return Turn::Wait;
                }
            }
        }
        Turn::Alone
    }

    /// Shares a set obtained by this replica (kept only if no later set is there) and releases
    /// `lock` if held. `now` is the injected clock's.
    pub async fn publish(
        &self,
        names: &Names,
        set: &SetRef<'_>,
        now: SystemTime,
        lock: Option<Lock>,
    ) {
        let token = lock.map(|l| l.0).unwrap_or_default();
        let ttl = clock::saturating_sub(set.serve_until, now);
        let exp = clock::unix_millis(set.expires_at);
        let sealed = if ttl.is_zero() || !self.shares_credentials() {
            None
        } else {
            seal_set(&self.keys, &names.cr, set)
        };
        let _ = self
            .store
            .publish(
                &names.cr,
                &names.lk,
                sealed.as_deref().unwrap_or_default(),
                exp,
                ttl,
                &token,
            )
            .await;
    }

    /// Releases a lock without sharing anything (the exchange failed).
    pub async fn release(&self, names: &Names, lock: Lock) {
        let _ = self
            .store
            .publish(
                &names.cr,
                &names.lk,
                b"",
                0,
                Duration::from_millis(1),
                &lock.0,
            )
            .await;
    }

    /// Drops the shared set of an identity (logout): the next exchange anywhere is fresh.
    pub async fn forget(&self, names: &Names) {
        let _ = self.store.del(&names.cr).await;
    }
}

/// A credential set sealed for `redis_key` (`None`: no encryption key, or the system random
/// generator failed).
#[doc(hidden)]
pub fn seal_set(keys: &KeyRing, redis_key: &str, set: &SetRef<'_>) -> Option<Vec<u8>> {
    let exp = clock::unix_millis(set.expires_at);
    let plain = Plain {
        v: 1,
        id: Cow::Borrowed(set.identity_id),
        ak: Cow::Borrowed(set.access_key_id),
        sk: Cow::Borrowed(set.secret_access_key),
        st: Cow::Borrowed(set.session_token),
        exp,
        obt: clock::unix_millis(set.obtained_at),
    };
    let bytes = Zeroizing::new(serde_json::to_vec(&plain).ok()?);
    keys.seal(redis_key, exp, &bytes)
}

/// The set in a value read from `redis_key`, if it opens and its contents agree with its
/// header; else why it is refused.
#[doc(hidden)]
pub fn open_set(keys: &KeyRing, redis_key: &str, value: &[u8]) -> Result<Adopted, Reject> {
    let (header_exp, plain) = keys.open(redis_key, value)?;
    let p: Plain<'_> = serde_json::from_slice(&plain).map_err(|_| Reject::Malformed)?;
    if p.v != 1 || p.exp != header_exp {
        return Err(Reject::Mismatch);
    }
    Ok(Adopted {
        identity_id: p.id.into_owned(),
        raw: RawCredentials {
            access_key_id: p.ak.into_owned(),
            secret_key: SecretString::new(p.sk.into_owned()),
            session_token: SecretString::new(p.st.into_owned()),
            expiration: clock::from_unix_millis(p.exp),
        },
        obtained_at: clock::from_unix_millis(p.obt),
    })
}

/// `credbroker gen-key`: prints keys-file lines (`naming` first when asked for).
pub fn gen_key(id: Option<&str>, naming: bool) -> std::process::ExitCode {
    let today = chrono::Utc::now().format("k%Y%m%d").to_string();
    let id = id.unwrap_or(&today);
    let valid = !id.is_empty()
        && id.len() <= 32
        && id != crate::config::NAMING_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if !valid {
        eprintln!(
            "credbroker gen-key: a key id is 1 to 32 characters of A-Z a-z 0-9 _ - (and not \"naming\")"
        );
        return std::process::ExitCode::from(64);
    }
    let lines = [
        naming.then(|| generate_key_line(crate::config::NAMING_KEY_ID)),
        Some(generate_key_line(id)),
    ];
    for line in lines.into_iter().flatten() {
        match line {
            Some(l) => println!("{l}"),
            None => {
                eprintln!("credbroker gen-key: the system random generator failed");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

fn lock_token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 16] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BudgetConfig, Topology, parse_keys};

    fn ring() -> KeyRing {
        let lines = ["naming", "k1"]
            .iter()
            .map(|id| generate_key_line(id).expect("rng"))
            .collect::<Vec<_>>()
            .join("\n");
        let (naming_key, encryption_keys) = parse_keys(&lines).expect("keys");
        KeyRing::new(&SharedConfig {
            url: "redis://127.0.0.1/".to_owned().into(),
            topology: Topology::Standalone,
            nodes: Vec::new(),
            tls_ca: None,
            key_prefix: "t:".to_owned(),
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

    #[test]
    fn every_sealed_set_opens_as_it_was_even_where_json_escapes_it() {
        // Found by the shared_entries fuzz target: the plaintext was read into borrowed `&str`
        // fields, and serde_json cannot borrow a string holding an escape, so a set with a `"`,
        // `\` or control character in any field was refused as malformed by every replica.
        let keys = ring();
        let at = |ms: u64| clock::from_unix_millis(ms);
        for odd in [
            "plain",
            "quo\"te",
            "back\\slash",
            "ctrl\u{2}",
            "new\nline",
            "é ☃",
        ] {
            let secret = format!("wJalrXUtnFEMI/K7MDENG+{odd}");
            let token = format!("FwoGZXIvYXdz{odd}==");
            let id = format!("us-east-1:{odd}");
            let set = SetRef {
                identity_id: &id,
                access_key_id: odd,
                secret_access_key: &secret,
                session_token: &token,
                expires_at: at(1_893_459_600_000),
                obtained_at: at(1_893_456_000_000),
                serve_until: at(1_893_459_000_000),
            };
            let sealed = seal_set(&keys, "t:{a}:cr", &set).expect("sealed");
            let opened = open_set(&keys, "t:{a}:cr", &sealed)
                .unwrap_or_else(|why| panic!("{odd:?}: refused as {why:?}"));
            assert_eq!(opened.identity_id, id);
            assert_eq!(opened.raw.access_key_id, odd);
            assert_eq!(opened.raw.secret_key.expose_str(), secret);
            assert_eq!(opened.raw.session_token.expose_str(), token);
            assert_eq!(opened.raw.expiration, set.expires_at);
            assert_eq!(opened.obtained_at, set.obtained_at);
            assert_eq!(
                open_set(&keys, "t:{b}:cr", &sealed).map(|_| ()),
                Err(Reject::Decrypt)
            );
        }
    }
}
