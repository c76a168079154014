//! The identity table: the cached identities by key, sharded and bounded.
//!
//! Promises:
//! - one entry per key, made at most once: [`Table::get_or_insert_with`] looks again and
//!   inserts under the shard's write lock, so concurrent first requests share one identity;
//! - at most `capacity` entries in all (one count over the shards). Inserting into a full table
//!   first evicts from the inserting shard: of [`SAMPLE`] identities looked at (from a cursor
//!   that moves on each time, so every identity is looked at in turn; a shard of at most
//!   `SAMPLE` is looked at whole, and its victim is exact), the one nothing holds (no
//!   [`Hold`](super::Hold), no watcher) that was asked for least recently, else the least
//!   recently asked held one. The evicted identity is marked retired, and dropped after the
//!   shard's lock is released;
//! - a lookup costs one uncontended read lock and one probe, with no bookkeeping on reads:
//!   recency is the identity's own `last_used_ms`, which every ask already stores;
//! - a slot holds only the `Arc<Identity>` (the key lives in the identity, which the table
//!   hashes): 8 bytes a slot, where the moka entry it replaced cost ~350 bytes per identity
//!   (BENCHMARKS.md, row 5).
//!
//! Finding a victim dereferences [`SAMPLE`] identities whatever the capacity (reaching the
//! cursor walks the shard's control bytes, without touching the identities), and happens only
//! when the table is full and a caller brings an identity not cached yet. Tables smaller than
//! [`SHARD_SPAN`] × 16 use fewer shards, so a full table never has an empty shard to insert
//! into (which would leave nothing to evict there).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

use super::{Identity, IdentityKey};

/// At most this many shards: inserts into different shards never wait for each other.
const MAX_SHARDS: usize = 16;

/// Capacity per shard below which the table uses fewer shards.
const SHARD_SPAN: usize = 1024;

/// Identities a full shard looks at to choose its victim (Redis samples 5 for its LRU).
const SAMPLE: usize = 32;

#[derive(Default)]
struct Shard {
    table: HashTable<Arc<Identity>>,
    /// Where the next victim search starts, as a position in the table's iteration order.
    cursor: usize,
}

/// See the module docs.
pub(super) struct Table {
    /// A table has at least one shard; [`Table::shard`] picks among `first` and `others`.
    first: RwLock<Shard>,
    others: Box<[RwLock<Shard>]>,
    /// Seeded per process (foldhash, not SipHash: the key is four strings, see `IdentityCache`).
    hasher: foldhash::quality::RandomState,
    capacity: usize,
    len: AtomicUsize,
}

impl Table {
    /// An empty table for at most `capacity` identities.
    pub(super) fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        let shards = (capacity / SHARD_SPAN).clamp(1, MAX_SHARDS);
        Self {
            first: RwLock::default(),
            others: (1..shards).map(|_| RwLock::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            capacity,
            len: AtomicUsize::new(0),
        }
    }

    /// The identity cached for `key`.
    pub(super) fn get(&self, key: &IdentityKey) -> Option<Arc<Identity>> {
        let hash = self.hasher.hash_one(key);
        read(self.shard(hash))
            .table
            .find(hash, |e| e.key == *key)
            .cloned()
    }

    /// The identity cached for `key`, made by `make` (and inserted) if there is none; with the
    /// number of identities evicted to make room.
    pub(super) fn get_or_insert_with(
        &self,
        key: &IdentityKey,
        make: impl FnOnce() -> Identity,
    ) -> (Arc<Identity>, usize) {
        let hash = self.hasher.hash_one(key);
        let mut shard = write(self.shard(hash));
        if let Some(entry) = shard.table.find(hash, |e| e.key == *key) {
            return (entry.clone(), 0);
        }
        // Made before it is counted, so nothing between the count and the insert can fail.
        let entry = Arc::new(make());
        // Dropped once the lock is released: the last reference frees a token and a body.
        let mut evicted = Vec::new();
        loop {
            let n = self.len.load(Ordering::Acquire);
            if n < self.capacity {
                if self
                    .len
                    .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            // Full: make room in this shard. Another shard's insert may take the room freed
            // first, so this can take more than one eviction.
            match self.evict_one(&mut shard) {
                Some(victim) => evicted.push(victim),
                None => {
                    // Nothing here to evict (only while other shards' inserts race a nearly
                    // empty one): over by one until the next removal.
                    self.len.fetch_add(1, Ordering::AcqRel);
                    break;
                }
            }
        }
        let hasher = &self.hasher;
        shard
            .table
            .insert_unique(hash, entry.clone(), |e| hasher.hash_one(&e.key));
        drop(shard);
        (entry, evicted.len())
    }

    /// Removes the identity cached for `key`.
    pub(super) fn remove(&self, key: &IdentityKey) -> Option<Arc<Identity>> {
        let hash = self.hasher.hash_one(key);
        let mut shard = write(self.shard(hash));
        let (entry, _) = shard
            .table
            .find_entry(hash, |e| e.key == *key)
            .ok()?
            .remove();
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(entry)
    }

    /// Removes `entry` if it is still the one cached for its key.
    pub(super) fn remove_entry(&self, entry: &Identity) -> bool {
        let hash = self.hasher.hash_one(&entry.key);
        let mut shard = write(self.shard(hash));
        let Ok(found) = shard
            .table
            .find_entry(hash, |e| std::ptr::eq(Arc::as_ptr(e), entry))
        else {
            return false;
        };
        found.remove();
        self.len.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Every cached identity.
    pub(super) fn all(&self) -> Vec<Arc<Identity>> {
        let mut all = Vec::with_capacity(self.len());
        for shard in self.shards() {
            all.extend(read(shard).table.iter().cloned());
        }
        all
    }

    /// Identities cached.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Evicts the victim the module docs describe from `shard`; `None` when it is empty.
    fn evict_one(&self, shard: &mut Shard) -> Option<Arc<Identity>> {
        let n = shard.table.len();
        if n == 0 {
            return None;
        }
        let start = shard.cursor % n;
        shard.cursor = start + SAMPLE;
        let victim = shard
            .table
            .iter()
            .skip(start)
            .chain(shard.table.iter())
            .take(SAMPLE.min(n))
            .min_by_key(|e| (e.is_held(), e.last_used_ms.load(Ordering::Relaxed)))?
            .clone();
        let hash = self.hasher.hash_one(&victim.key);
        if let Ok(found) = shard.table.find_entry(hash, |e| Arc::ptr_eq(e, &victim)) {
            found.remove();
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        victim.retired.store(true, Ordering::Release);
        Some(victim)
    }

    /// The shard of `hash`.
    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        // Middle bits: the table in the shard places entries by the low bits and tags them
        // with the top 7, so either would cluster a shard's entries.
        let i = (hash >> 40) as usize % (self.others.len() + 1);
        i.checked_sub(1)
            .and_then(|i| self.others.get(i))
            .unwrap_or(&self.first)
    }

    fn shards(&self) -> impl Iterator<Item = &RwLock<Shard>> {
        std::iter::once(&self.first).chain(self.others.iter())
    }
}

fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|p| p.into_inner())
}

fn write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::oidc::test_token;

    struct Fixture {
        provider: Arc<crate::oidc::Provider>,
    }

    impl Fixture {
        fn new() -> Self {
            let token = test_token(
                "https://issuer.test/",
                "sub",
                SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000),
            );
            Self {
                provider: token.provider.clone(),
            }
        }

        fn key(&self, subject: &str) -> IdentityKey {
            IdentityKey {
                pool: "us-east-1:pool".into(),
                issuer: self.provider.issuer().clone(),
                subject: subject.into(),
                role: None,
            }
        }

        /// Caches `subject` as last asked for at `used_ms`; the identities evicted for it.
        fn ask(&self, table: &Table, subject: &str, used_ms: u64) -> (Arc<Identity>, usize) {
            let key = self.key(subject);
            let (entry, evicted) = table.get_or_insert_with(&key, || {
                Identity::new(key.clone(), self.provider.clone(), 1)
            });
            entry.last_used_ms.store(used_ms, Ordering::Relaxed);
            (entry, evicted)
        }

        fn cached(&self, table: &Table) -> Vec<String> {
            let mut subjects: Vec<String> = table
                .all()
                .iter()
                .map(|e| e.key.subject.to_string())
                .collect();
            subjects.sort();
            subjects
        }
    }

    #[test]
    fn a_full_table_evicts_the_identity_asked_for_least_recently() {
        let f = Fixture::new();
        let table = Table::new(3);
        let (b, _) = {
            f.ask(&table, "a", 10);
            let b = f.ask(&table, "b", 20);
            f.ask(&table, "c", 30);
            b
        };
        f.ask(&table, "a", 40); // a hit: no eviction, and now the newest
        assert_eq!(table.len(), 3);

        let (_, evicted) = f.ask(&table, "d", 50);
        assert_eq!(evicted, 1);
        assert_eq!(
            f.cached(&table),
            ["a", "c", "d"],
            "b was asked least recently"
        );
        assert!(
            b.retired.load(Ordering::Acquire),
            "the evicted identity is retired"
        );
        assert!(table.get(&f.key("b")).is_none());
        assert_eq!(table.len(), 3);

        for (i, s) in ["e", "f", "g", "h"].iter().enumerate() {
            f.ask(&table, s, 60 + i as u64);
            assert_eq!(table.len(), 3, "never more than the capacity");
        }
        assert_eq!(f.cached(&table), ["f", "g", "h"]);
    }

    #[test]
    fn held_identities_are_evicted_only_when_nothing_else_is_left() {
        let f = Fixture::new();
        let table = Table::new(2);
        let (held, _) = f.ask(&table, "configured", 1);
        held.holds.fetch_add(1, Ordering::Relaxed);
        f.ask(&table, "b", 2);
        f.ask(&table, "c", 3);
        assert_eq!(
            f.cached(&table),
            ["c", "configured"],
            "the held one stays although oldest"
        );

        let (c, _) = f.ask(&table, "c", 4);
        c.holds.fetch_add(1, Ordering::Relaxed);
        f.ask(&table, "d", 5);
        assert_eq!(table.len(), 2, "all held: the bound still holds");
        assert_eq!(
            f.cached(&table),
            ["c", "d"],
            "the least recently asked held one went"
        );
    }

    #[test]
    fn concurrent_first_asks_share_one_identity() {
        let f = Fixture::new();
        let table = Table::new(100);
        let barrier = Barrier::new(8);
        let entries: Vec<Arc<Identity>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        f.ask(&table, "popular", 1).0
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        assert_eq!(entries.len(), 8);
        assert!(entries.iter().all(|e| Arc::ptr_eq(e, &entries[0])));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_large_full_shard_evicts_old_identities_not_recent_ones() {
        let f = Fixture::new();
        let table = Table::new(1024);
        assert_eq!(table.shards().count(), 1);
        for i in 0..1024 {
            f.ask(&table, &format!("old-{i}"), 1 + i);
        }
        for j in 0..512 {
            let (_, evicted) = f.ask(&table, &format!("new-{j}"), 10_000 + j);
            assert_eq!(evicted, 1);
        }
        let cached = f.cached(&table);
        assert_eq!(cached.len(), 1024);
        assert_eq!(
            cached.iter().filter(|s| s.starts_with("new-")).count(),
            512,
            "every victim was one of the old identities"
        );
    }

    #[test]
    fn concurrent_inserts_and_removes_keep_the_count_exact() {
        let f = Fixture::new();
        let table = Table::new(2048);
        assert_eq!(table.shards().count(), 2);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (f, table) = (&f, &table);
                scope.spawn(move || {
                    for i in 0..3_000u64 {
                        let subject = format!("t{t}-{i}");
                        f.ask(table, &subject, i);
                        if i % 3 == 0 {
                            table.remove(&f.key(&subject));
                        }
                    }
                });
            }
        });
        assert_eq!(table.len(), table.all().len());
        assert!(table.len() <= 2048, "{} cached", table.len());
    }

    #[test]
    fn removing_an_entry_leaves_a_newer_one_for_the_same_key() {
        let f = Fixture::new();
        let table = Table::new(10);
        let (old, _) = f.ask(&table, "a", 1);
        assert!(
            table
                .remove(&f.key("a"))
                .is_some_and(|e| Arc::ptr_eq(&e, &old))
        );
        let (new, _) = f.ask(&table, "a", 2);
        assert!(!table.remove_entry(&old), "the old entry is gone already");
        assert!(
            table
                .get(&f.key("a"))
                .is_some_and(|e| Arc::ptr_eq(&e, &new))
        );
        assert!(table.remove_entry(&new));
        assert_eq!(table.len(), 0);
        assert!(table.get(&f.key("a")).is_none());
    }

    #[test]
    fn large_tables_spread_over_every_shard() {
        let f = Fixture::new();
        let table = Table::new(64 * 1024);
        assert_eq!(table.shards().count(), MAX_SHARDS);
        for i in 0..4_000 {
            f.ask(&table, &format!("user-{i}"), i);
        }
        for shard in table.shards() {
            let n = read(shard).table.len();
            assert!(
                (150..350).contains(&n),
                "{n} identities in one shard of 16 for 4,000"
            );
        }
        assert_eq!(
            Table::new(3).shards().count(),
            1,
            "a small table is one shard"
        );
    }
}
