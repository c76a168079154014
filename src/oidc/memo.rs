//! The verified-token memo behind [`Validator::validate`](super::Validator::validate): tokens
//! already verified, by a keyed 64-bit hash of the raw token's length and tail
//! (`Validator::memo_key`).
//!
//! Promises:
//! - at most `capacity` tokens are held (split evenly over the shards); inserting into a full
//!   shard first drops its tokens that are no longer servable, then, if it is still full, one
//!   token chosen by its (random, keyed) hash: a dropped token only costs its next caller one
//!   signature check;
//! - a token is dropped once it has less than `min_token_validity` left: by the caller that
//!   finds it so ([`Memo::remove`]), and by a sweep of its shard at most every [`SWEEP_EVERY`]
//!   when tokens are inserted, so tokens nobody presents again do not linger;
//! - a hit costs one uncontended read lock and one hash-table probe (no per-read bookkeeping:
//!   the memo replaced a moka cache whose read path cost ~1,100 instructions per request and
//!   whose entries cost ~300 bytes each, see BENCHMARKS.md).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use super::VerifiedToken;

/// Shards: writers of different shards never wait for each other.
const SHARDS: usize = 16;

/// How often, at most, inserting into a shard also sweeps it.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(60);

type Table = HashMap<u64, Arc<VerifiedToken>, BuildHasherDefault<KeyedHasher>>;

struct Shard {
    tokens: Table,
    next_sweep: SystemTime,
}

/// See the module docs.
pub(super) struct Memo {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
    min_token_validity: Duration,
}

impl Memo {
    /// An empty memo for at most `capacity` tokens.
    pub(super) fn new(capacity: u64, min_token_validity: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(Shard {
                        tokens: Table::default(),
                        next_sweep: SystemTime::UNIX_EPOCH,
                    })
                })
                .collect(),
            per_shard: capacity.div_ceil(SHARDS),
            min_token_validity,
        }
    }

    /// The token filed under `key`, if any (the caller confirms it is the presented one).
    pub(super) fn get(&self, key: u64) -> Option<Arc<VerifiedToken>> {
        self.read(key)?.tokens.get(&key).cloned()
    }

    /// Files `token` under `key`. See the module docs for what makes room.
    pub(super) fn insert(&self, key: u64, token: Arc<VerifiedToken>, now: SystemTime) {
        let min = self.min_token_validity;
        let Some(mut shard) = self.write(key) else {
            return;
        };
        let full = shard.tokens.len() >= self.per_shard && !shard.tokens.contains_key(&key);
        if full || now >= shard.next_sweep {
            shard.tokens.retain(|_, t| servable(t, now, min));
            shard.next_sweep = now + SWEEP_EVERY;
        }
        if shard.tokens.len() >= self.per_shard && !shard.tokens.contains_key(&key) {
            let victim = shard.tokens.keys().next().copied();
            if let Some(victim) = victim {
                shard.tokens.remove(&victim);
            }
        }
        shard.tokens.insert(key, token);
    }

    /// Drops the token filed under `key` if it is `token` (another may have replaced it).
    pub(super) fn remove(&self, key: u64, token: &Arc<VerifiedToken>) {
        let Some(mut shard) = self.write(key) else {
            return;
        };
        if shard
            .tokens
            .get(&key)
            .is_some_and(|t| Arc::ptr_eq(t, token))
        {
            shard.tokens.remove(&key);
        }
    }

    /// Tokens held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).tokens.len())
            .sum()
    }

    /// `key`'s shard (always `Some`: the index is below `SHARDS`).
    fn shard(&self, key: u64) -> Option<&RwLock<Shard>> {
        // The top bits: the table inside the shard probes with the low ones.
        self.shards.get((key >> 60) as usize % SHARDS)
    }

    fn read(&self, key: u64) -> Option<RwLockReadGuard<'_, Shard>> {
        Some(self.shard(key)?.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self, key: u64) -> Option<RwLockWriteGuard<'_, Shard>> {
        Some(self.shard(key)?.write().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether `token` may still be served at `now` (the rule `validate` applies on a hit).
fn servable(token: &VerifiedToken, now: SystemTime, min_token_validity: Duration) -> bool {
    token
        .expires_at
        .duration_since(now)
        .is_ok_and(|left| left >= min_token_validity)
}

/// Passes a `u64` key through: the memo's keys already are keyed hashes, so hashing them again
/// (SipHash, std's default) buys nothing.
#[derive(Debug, Default)]
pub(super) struct KeyedHasher(u64);

impl Hasher for KeyedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; fold anything else in rather than ignore it.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::test_token;

    fn token(expires_in: u64) -> Arc<VerifiedToken> {
        test_token(
            "https://issuer.test/",
            "sub",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + expires_in),
        )
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        NOW + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn holds_at_most_its_capacity_and_keeps_the_newest() {
        let memo = Memo::new(32, Duration::from_secs(60));
        for k in 0..1_000u64 {
            // Spread over the shards like real keyed hashes.
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            memo.insert(key, token(3_600), at(0));
            assert!(memo.get(key).is_some(), "the token just inserted is held");
            assert!(memo.len() <= 32, "{} tokens held", memo.len());
        }
    }

    #[test]
    fn unservable_tokens_are_swept_when_room_is_needed_or_a_minute_has_passed() {
        let memo = Memo::new(SHARDS as u64, Duration::from_secs(60));
        let shard_key = |i: u64| i; // all in shard 0: top bits zero
        memo.insert(shard_key(1), token(100), at(0));
        // Full shard (one per shard): the expiring token makes room without losing a live one.
        memo.insert(shard_key(2), token(3_600), at(50));
        assert!(
            memo.get(shard_key(1)).is_none(),
            "less than 60 s left: swept"
        );
        assert!(memo.get(shard_key(2)).is_some());

        let roomy = Memo::new(1_000, Duration::from_secs(60));
        roomy.insert(1, token(100), at(0));
        roomy.insert(2, token(3_600), at(10));
        assert!(roomy.get(1).is_some(), "swept at most once a minute");
        roomy.insert(3, token(3_600), at(61));
        assert!(roomy.get(1).is_none(), "the minute passed: swept");
        assert_eq!(roomy.len(), 2);
    }

    #[test]
    fn remove_drops_only_the_token_it_names() {
        let memo = Memo::new(100, Duration::from_secs(60));
        let (old, new) = (token(3_600), token(7_200));
        memo.insert(7, old.clone(), at(0));
        memo.insert(7, new.clone(), at(1));
        memo.remove(7, &old);
        assert!(memo.get(7).is_some_and(|t| Arc::ptr_eq(&t, &new)));
        memo.remove(7, &new);
        assert!(memo.get(7).is_none());
    }
}
