//! Admission of real-time connections: a total bound and a bound per user.
//!
//! Owns: [`Admission`] and its [`Admitted`] guard (one per open connection, released when the
//! relay ends, however it ends).
//!
//! Promises: never more than `max_connections` admitted at once, nor more than
//! `max_connections_per_identity` for one key; a released key's count entry is removed, so the
//! table holds only users with open connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_connections` are open.
    Total(usize),
    /// `max_connections_per_identity` are open for this user.
    PerIdentity(usize),
}

/// The open-connection counts.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_identity: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_identity: HashMap<String, usize>,
}

impl Admission {
    /// With the two limits.
    pub fn new(max_total: usize, max_per_identity: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_identity,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one connection for `key` (a hash of the user), or says which limit is reached.
    pub fn admit(self: &Arc<Self>, key: String) -> Result<Admitted, Full> {
        let mut counts = self.lock();
        if counts.total >= self.max_total {
            return Err(Full::Total(self.max_total));
        }
        let mine = counts.per_identity.get(&key).copied().unwrap_or(0);
        if mine >= self.max_per_identity {
            return Err(Full::PerIdentity(self.max_per_identity));
        }
        counts.total += 1;
        counts.per_identity.insert(key.clone(), mine + 1);
        Ok(Admitted {
            admission: self.clone(),
            key,
        })
    }

    /// Connections admitted now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// One admitted connection; dropping it releases its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    key: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_identity.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_identity.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_limits_hold_and_release() {
        let a = Admission::new(3, 2);
        let one = a.admit("u".into()).expect("first");
        let two = a.admit("u".into()).expect("second");
        assert_eq!(
            a.admit("u".into()).expect_err("refused"),
            Full::PerIdentity(2)
        );
        let other = a.admit("v".into()).expect("another user");
        assert_eq!(a.admit("w".into()).expect_err("refused"), Full::Total(3));
        drop(one);
        assert_eq!(a.open(), 2);
        let again = a.admit("u".into()).expect("a place was freed");
        drop((two, other, again));
        assert_eq!(a.open(), 0);
        assert!(a.lock().per_identity.is_empty());
    }
}
