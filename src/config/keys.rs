//! `[keys]`: key format, lifetimes, grace periods, Argon2 costs, audit
//! retention.

use serde::Deserialize;

use super::HumanDuration;

/// `[keys.argon2]`: the cost of hashing a key's secret. OWASP's minimum
/// (m=19456 KiB, t=2, p=1) is the floor; values can only go up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2Config {
    #[serde(default = "default_argon2_memory")]
    pub memory_kib: u32,
    #[serde(default = "default_argon2_iterations")]
    pub iterations: u32,
    #[serde(default = "default_argon2_parallelism")]
    pub parallelism: u32,
}

pub const ARGON2_MIN_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_MIN_ITERATIONS: u32 = 2;
/// A verify must stay affordable: 1 GiB and 16 passes are far beyond any
/// sensible setting.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 1_048_576;
pub const ARGON2_MAX_ITERATIONS: u32 = 16;
pub const ARGON2_MAX_PARALLELISM: u32 = 16;

fn default_argon2_memory() -> u32 {
    ARGON2_MIN_MEMORY_KIB
}
fn default_argon2_iterations() -> u32 {
    ARGON2_MIN_ITERATIONS
}
fn default_argon2_parallelism() -> u32 {
    1
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: ARGON2_MIN_MEMORY_KIB,
            iterations: ARGON2_MIN_ITERATIONS,
            parallelism: 1,
        }
    }
}

/// `[keys]`: the API-key model's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// First part of every key's prefix (`sk` in `sk_live_v2_…`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Second part (`live` in `sk_live_v2_…`).
    #[serde(default = "default_environment")]
    pub environment: String,
    /// Lifetime of a new key when none is asked for.
    #[serde(default = "default_lifetime")]
    pub default_lifetime: HumanDuration,
    /// Longest lifetime a key may be given.
    #[serde(default = "default_lifetime")]
    pub max_lifetime: HumanDuration,
    /// Active plus rotating keys one owner may hold.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_owner: u32,
    /// How long a rotated key keeps working beside its successor.
    #[serde(default = "default_grace")]
    pub grace_default: HumanDuration,
    #[serde(default = "default_grace_min")]
    pub grace_min: HumanDuration,
    #[serde(default = "default_grace_max")]
    pub grace_max: HumanDuration,
    /// How long audit events and job runs are kept (90 days at least).
    #[serde(default = "default_retention")]
    pub audit_retention: HumanDuration,
    #[serde(default)]
    pub argon2: Argon2Config,
}

pub const MIN_AUDIT_RETENTION_DAYS: u64 = 90;

fn default_namespace() -> String {
    "sk".into()
}
fn default_environment() -> String {
    "live".into()
}
fn default_lifetime() -> HumanDuration {
    HumanDuration::from_secs(90 * 86_400)
}
fn default_max_keys() -> u32 {
    10
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(48 * 3_600)
}
fn default_grace_min() -> HumanDuration {
    HumanDuration::from_secs(3_600)
}
fn default_grace_max() -> HumanDuration {
    HumanDuration::from_secs(7 * 86_400)
}
fn default_retention() -> HumanDuration {
    HumanDuration::from_secs(365 * 86_400)
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            namespace: default_namespace(),
            environment: default_environment(),
            default_lifetime: default_lifetime(),
            max_lifetime: default_lifetime(),
            max_keys_per_owner: default_max_keys(),
            grace_default: default_grace(),
            grace_min: default_grace_min(),
            grace_max: default_grace_max(),
            audit_retention: default_retention(),
            argon2: Argon2Config::default(),
        }
    }
}

impl super::Section for KeysConfig {
    /// Cross-field rules; each message names the keys involved.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let label_ok =
            |s: &str| !s.is_empty() && s.len() <= 16 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !label_ok(&self.namespace) {
            out.push(format!(
                "keys.namespace must be 1 to 16 lowercase letters or digits, found {:?}",
                self.namespace
            ));
        }
        if !label_ok(&self.environment) {
            out.push(format!(
                "keys.environment must be 1 to 16 lowercase letters or digits, found {:?}",
                self.environment
            ));
        }
        if self.default_lifetime.as_duration().is_zero() || self.default_lifetime > self.max_lifetime {
            out.push(format!(
                "keys.default_lifetime ({}) must be above zero and at most keys.max_lifetime ({})",
                self.default_lifetime, self.max_lifetime
            ));
        }
        if self.max_keys_per_owner == 0 {
            out.push("keys.max_keys_per_owner must be at least 1".into());
        }
        if !(self.grace_min <= self.grace_default && self.grace_default <= self.grace_max) {
            out.push(format!(
                "keys.grace_min ({}) <= keys.grace_default ({}) <= keys.grace_max ({}) does not hold",
                self.grace_min, self.grace_default, self.grace_max
            ));
        }
        if self.audit_retention.as_duration().as_secs() < MIN_AUDIT_RETENTION_DAYS * 86_400 {
            out.push(format!(
                "keys.audit_retention must be at least {MIN_AUDIT_RETENTION_DAYS}d (audit trails are kept 90 days or more), found {}",
                self.audit_retention
            ));
        }
        let a = self.argon2;
        if !(ARGON2_MIN_MEMORY_KIB..=ARGON2_MAX_MEMORY_KIB).contains(&a.memory_kib) {
            out.push(format!(
                "keys.argon2.memory_kib must be between {ARGON2_MIN_MEMORY_KIB} and {ARGON2_MAX_MEMORY_KIB}, found {}",
                a.memory_kib
            ));
        }
        if !(ARGON2_MIN_ITERATIONS..=ARGON2_MAX_ITERATIONS).contains(&a.iterations) {
            out.push(format!(
                "keys.argon2.iterations must be between {ARGON2_MIN_ITERATIONS} and {ARGON2_MAX_ITERATIONS}, found {}",
                a.iterations
            ));
        }
        if !(1..=ARGON2_MAX_PARALLELISM).contains(&a.parallelism) {
            out.push(format!(
                "keys.argon2.parallelism must be between 1 and {ARGON2_MAX_PARALLELISM}, found {}",
                a.parallelism
            ));
        }
        out
    }
}
