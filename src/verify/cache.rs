//! Recent successful verifications, so that a key presented again within
//! `verify.cache_ttl` is answered without another Argon2 run.
//!
//! Entries are keyed by a keyed BLAKE2b-256 of the whole presented key
//! (the key is random per process: the table is no oracle for anyone who
//! reads the process's memory, and the secret itself is never kept). An
//! entry holds the key's row as it was when it verified; the request's own
//! checks (time, allow-list, scopes) run again on every use.
//!
//! Freshness is what keeps revocation immediate:
//! - PostgreSQL: triggers announce every change of a key or its owner on
//!   the channel `keywarden_keys` (migration `000010_verify_notify`); the
//!   listener forgets the key at once. While the listener is not
//!   connected the cache is not used at all. A generation counter, read
//!   before a verification reads its row, keeps a verification that raced
//!   with a change from storing what it read.
//! - SQLite: `PRAGMA data_version` (it changes with every commit of another
//!   connection) is read on every use; an entry older than the current
//!   version has its row read again and compared before it is used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac;

use crate::keys::model::ApiKey;

/// The hash an entry is found by.
pub type Fingerprint = [u8; 32];

/// One remembered success.
#[derive(Clone)]
pub struct Entry {
    pub key: ApiKey,
    /// The key's prefix, shared by the records of its uses.
    pub prefix: std::sync::Arc<str>,
    /// When it verified with Argon2.
    pub verified_at: Instant,
    /// SQLite: the `data_version` its row was last read at; PostgreSQL: the
    /// generation it was stored at (unused afterwards).
    pub version: i64,
}

pub struct Cache {
    mac_key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Fingerprint, Entry>>,
    /// Bumped by every invalidation (PostgreSQL).
    generation: AtomicU64,
    /// Whether entries may be used: on PostgreSQL, while the listener is
    /// connected.
    live: AtomicBool,
}

impl Cache {
    /// A cache; `live` says whether it may be used before anything else
    /// says so (SQLite: yes; PostgreSQL: once the listener is connected).
    pub fn new(ttl: Duration, capacity: usize, live: bool) -> Result<Cache, getrandom::Error> {
        let mut mac_key = [0u8; 32];
        getrandom::fill(&mut mac_key)?;
        Ok(Cache {
            mac_key,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            live: AtomicBool::new(live),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    pub fn is_live(&self) -> bool {
        self.enabled() && self.live.load(Ordering::Acquire)
    }

    /// The fingerprint of a presented key.
    pub fn fingerprint(&self, presented: &str) -> Fingerprint {
        // A 32-byte key is always a valid BLAKE2b key.
        match <Blake2bMac<U32> as KeyInit>::new_from_slice(&self.mac_key) {
            Ok(mut mac) => {
                mac.update(presented.as_bytes());
                mac.finalize().into_bytes().into()
            }
            Err(_) => [0u8; 32],
        }
    }

    /// The current generation, read before a verification reads its row.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The entry for `fp`, if it is live and younger than the TTL.
    pub fn get(&self, fp: &Fingerprint) -> Option<Entry> {
        if !self.is_live() {
            return None;
        }
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get(fp)?;
        if entry.verified_at.elapsed() >= self.ttl {
            entries.remove(fp);
            return None;
        }
        Some(entry.clone())
    }

    /// Stores a success read at `generation` (from [`Self::generation`]),
    /// unless something was invalidated since: the row read may be stale.
    pub fn insert(&self, fp: Fingerprint, key: ApiKey, generation: u64, version: i64) {
        if !self.is_live() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        // Checked under the lock that invalidations take.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&fp) {
            let ttl = self.ttl;
            entries.retain(|_, e| e.verified_at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // The oldest goes.
                if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.verified_at).map(|(k, _)| *k) {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(
            fp,
            Entry {
                prefix: key.prefix.as_str().into(),
                key,
                verified_at: Instant::now(),
                version,
            },
        );
    }

    /// Marks an entry's row as read again at `version` (SQLite).
    pub fn confirm(&self, fp: &Fingerprint, version: i64) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(e) = entries.get_mut(fp) {
                e.version = e.version.max(version);
            }
        }
    }

    pub fn forget(&self, fp: &Fingerprint) {
        self.invalidate(|entries| {
            entries.remove(fp);
        });
    }

    pub fn forget_key(&self, key_id: i64) {
        self.invalidate(|entries| entries.retain(|_, e| e.key.id != key_id));
    }

    pub fn forget_owner(&self, owner_id: i64) {
        self.invalidate(|entries| entries.retain(|_, e| e.key.owner_id != owner_id));
    }

    pub fn clear(&self) {
        self.invalidate(|entries| entries.clear());
    }

    /// Starts or stops using the cache; either way it starts empty.
    pub fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn invalidate(&self, f: impl FnOnce(&mut HashMap<Fingerprint, Entry>)) {
        match self.entries.lock() {
            Ok(mut entries) => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                f(&mut entries);
            }
            Err(poisoned) => {
                // A panic elsewhere left the lock poisoned: use nothing more.
                self.live.store(false, Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
                poisoned.into_inner().clear();
            }
        }
    }
}
