//! Hashing secrets: Argon2id, stored as a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), the format node-argon2
//! and Python's argon2-cffi read and write, so a service in another language
//! can verify keywarden's keys and the other way round.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

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
    /// A hash of a random value with the same cost, verified against when a
    /// prefix is unknown so that the answer takes as long as a wrong secret.
    /// Made on first need: commands that never verify do not pay for it.
    decoy: std::sync::OnceLock<String>,
}

impl SecretHasher {
    pub fn new(config: &Argon2Config) -> Result<Self, HashError> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|e| HashError::Params(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        Ok(Self {
            argon2,
            decoy: std::sync::OnceLock::new(),
        })
    }

    fn decoy(&self) -> &str {
        self.decoy.get_or_init(|| {
            let mut random = [0u8; 32];
            // Should the system's RNG fail, any fixed input still costs a
            // full hash, which is all the decoy is for.
            let _ = getrandom::fill(&mut random);
            self.argon2
                .hash_password(&random)
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
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
            let _ = self.argon2.verify_password(secret.as_bytes(), self.decoy());
            return false;
        }
        self.argon2.verify_password(secret.as_bytes(), phc).is_ok()
    }

    /// Spends the time of one verify without a stored hash.
    pub fn verify_decoy(&self, secret: &str) {
        let _ = self.argon2.verify_password(secret.as_bytes(), self.decoy());
    }
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
    }
}
