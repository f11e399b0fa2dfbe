//! Hashing secrets: Argon2id, stored as a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), the format node-argon2
//! and Python's argon2-cffi read and write, so a service in another language
//! can verify keywarden's keys and the other way round.

use std::sync::Mutex;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};

use crate::config::{Argon2Config, ARGON2_MAX_ITERATIONS, ARGON2_MAX_MEMORY_KIB, ARGON2_MAX_PARALLELISM};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("argon2 parameters rejected: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// Hashes and verifies secrets with the configured cost.
pub struct SecretHasher {
    argon2: Argon2<'static>,
    /// The configured cost, as PHC parameters (`m=19456,t=2,p=1`).
    params: String,
    /// Argon2's working memory, kept for the next verification: a fresh
    /// allocation of `m` KiB is returned to the system when freed, and the
    /// next one pays a page fault for every 4 KiB of it (about a tenth of
    /// the verification's time at the default cost), or, once the
    /// allocator keeps such blocks, stays resident in every thread's arena
    /// that ever verified. At most [`Self::kept`] are kept.
    memory: Mutex<Vec<Vec<Block>>>,
    kept: usize,
}

/// The salt of decoy hashes. Verifying against a decoy costs one Argon2 run
/// like any verification, and never matches: its hash is all zeros.
const DECOY_SALT: &str = "a2V5d2FyZGVuZGVjb3k";
const DECOY_HASH: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

impl SecretHasher {
    pub fn new(config: &Argon2Config) -> Result<Self, HashError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        Ok(Self {
            argon2,
            params: format!(
                "m={},t={},p={}",
                config.memory_kib, config.iterations, config.parallelism
            ),
            memory: Mutex::new(Vec::new()),
            kept: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        })
    }

    /// A decoy at the configured cost, built without hashing anything, so
    /// no command pays for it up front.
    fn decoy(&self) -> String {
        format!("$argon2id$v=19${}${DECOY_SALT}${DECOY_HASH}", self.params)
    }

    /// What a verification without a key of its own runs against: `like`
    /// (a stored hash) when its cost is acceptable, else the decoy.
    fn stand_in<'a>(&self, like: Option<&'a str>) -> std::borrow::Cow<'a, str> {
        match like.filter(|phc| acceptable_phc(phc)) {
            Some(phc) => std::borrow::Cow::Borrowed(phc),
            None => std::borrow::Cow::Owned(self.decoy()),
        }
    }

    /// The PHC string for a secret, with a fresh random salt.
    pub fn hash(&self, secret: &str) -> Result<String, HashError> {
        self.argon2
            .hash_password(secret.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError::Hash(e.to_string()))
    }

    /// True when `secret` matches the PHC string. The comparison of the
    /// computed and stored hash is constant-time. Hashes that are not
    /// Argon2id, or whose cost is beyond the configured maximums (a planted
    /// row must not be able to make a verify take minutes), never match.
    pub fn verify(&self, secret: &str, phc: &str) -> bool {
        if !acceptable_phc(phc) {
            // Burn the same time as a real verify, then refuse.
            self.verify_decoy(secret, None);
            return false;
        }
        self.verify_phc(secret.as_bytes(), phc)
    }

    /// Argon2id over the PHC string's salt and parameters into kept memory,
    /// the result compared with its hash in constant time.
    fn verify_phc(&self, secret: &[u8], phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let needed = params.block_count();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut out = [0u8; 64];
        let Some(out) = out.get_mut(..expected.len()) else {
            return false;
        };
        let mut memory = self
            .memory
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default();
        if memory.len() < needed {
            memory.resize(needed, Block::default());
        }
        let Some(blocks) = memory.get_mut(..needed) else {
            return false;
        };
        let computed = argon2.hash_password_into_with_memory(secret, salt, out, blocks).is_ok();
        if let Ok(mut kept) = self.memory.lock() {
            if kept.len() < self.kept {
                kept.push(memory);
            }
        }
        let expected = expected.as_bytes();
        let differ = out.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        computed && out.len() == expected.len() && differ == 0
    }

    /// Spends the time of one verify without a key of its own: against
    /// `like`, the stored hash of a key this stands in for (see
    /// [`crate::keys::KeyService::verify`]), so the work is exactly a real
    /// key's, whatever its cost; against a decoy at the configured cost when
    /// there is none or it is unacceptable. The outcome is thrown away.
    pub fn verify_decoy(&self, secret: &str, like: Option<&str>) {
        let _ = self.verify_phc(secret.as_bytes(), &self.stand_in(like));
    }

    /// True when a stored hash was made at another cost than the configured
    /// one: it is re-hashed on its next successful verification, so a cost
    /// raise reaches every key that is used.
    pub fn needs_rehash(&self, phc: &str) -> bool {
        phc_params(phc).is_some_and(|p| p != self.params)
    }
}

/// The parameter field of a PHC string (`m=…,t=…,p=…`).
fn phc_params(phc: &str) -> Option<&str> {
    phc.strip_prefix("$argon2id$v=19$")?.split('$').next()
}

fn acceptable_phc(phc: &str) -> bool {
    let Some(rest) = phc.strip_prefix("$argon2id$v=19$") else {
        return false;
    };
    let Some(params) = rest.split('$').next() else {
        return false;
    };
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for kv in params.split(',') {
        let Some((k, v)) = kv.split_once('=') else { return false };
        let Ok(v) = v.parse::<u32>() else { return false };
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => {}
        }
    }
    matches!((m, t, p), (Some(m), Some(t), Some(p))
        if m <= ARGON2_MAX_MEMORY_KIB && t <= ARGON2_MAX_ITERATIONS && (1..=ARGON2_MAX_PARALLELISM).contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_a_phc_string_that_verifies() {
        let h = SecretHasher::new(&Argon2Config::default()).unwrap();
        let phc = h.hash("s3cret-value-1234").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify("s3cret-value-1234", &phc));
        assert!(!h.verify("s3cret-value-1235", &phc));
        assert!(!h.verify("s3cret-value-1234", "not a hash"));
        assert!(!h.verify("x", "$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA"));
        assert!(!h.needs_rehash(&phc));
        assert!(h.needs_rehash("$argon2id$v=19$m=7168,t=5,p=1$c2FsdHNhbHQ$aGFzaA"));
    }

    /// The kept-memory verification agrees with the crate's own on hashes
    /// of several costs, and on wrong secrets and altered hashes.
    #[test]
    fn verification_in_kept_memory_matches_the_crates() {
        use argon2::PasswordVerifier;
        let h = SecretHasher::new(&Argon2Config::default()).unwrap();
        for cost in [(19456, 2, 1), (7168, 5, 1), (12288, 3, 2)] {
            let maker = SecretHasher::new(&Argon2Config {
                memory_kib: cost.0,
                iterations: cost.1,
                parallelism: cost.2,
            })
            .unwrap();
            let phc = maker.hash("the secret").unwrap();
            let parsed = argon2::PasswordHash::new(&phc).unwrap();
            assert!(h.argon2.verify_password(b"the secret", &parsed).is_ok());
            // Twice: the second run reuses the first's memory.
            assert!(h.verify("the secret", &phc), "{phc}");
            assert!(h.verify("the secret", &phc), "{phc}");
            assert!(!h.verify("the secreT", &phc), "{phc}");
            let mut altered = phc.clone();
            let last = altered.pop().unwrap();
            altered.push(if last == 'A' { 'B' } else { 'A' });
            assert!(!h.verify("the secret", &altered), "{altered}");
        }
    }

    #[test]
    fn decoys_are_well_formed_at_the_cost_they_stand_in_for() {
        let h = SecretHasher::new(&Argon2Config::default()).unwrap();
        let own = h.decoy();
        assert!(own.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{own}");
        let old_cost = Argon2Config {
            memory_kib: 7168,
            iterations: 5,
            ..Argon2Config::default()
        };
        let stored = SecretHasher::new(&old_cost).unwrap().hash("a key's secret").unwrap();
        let old = h.stand_in(Some(&stored)).into_owned();
        assert!(old.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{old}");
        // A planted, absurd cost is not copied.
        let planted = h.stand_in(Some("$argon2id$v=19$m=99999999,t=2,p=1$c2FsdHNhbHQ$aGFzaA"));
        assert_eq!(planted, own);
        for decoy in [own, old] {
            let parsed = argon2::PasswordHash::new(&decoy).expect("a decoy parses as PHC");
            use argon2::PasswordVerifier;
            assert!(h.argon2.verify_password(b"anything", &parsed).is_err());
            assert!(!h.verify_phc(b"anything", &decoy));
        }
    }
}
