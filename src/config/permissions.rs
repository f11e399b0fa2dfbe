//! `[permissions]` and `[[permissions.rules]]`: the permission policy as
//! written. It is compiled into a `perms::policy::Policy` (globs
//! built, owner and group names resolved) when the configuration is loaded,
//! so `check-config` reports a bad glob or an unknown user with its place.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use super::HumanDuration;
use crate::sys::ids::IdKind;

/// What a rule says a path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedKind {
    File,
    Directory,
}

impl fmt::Display for ExpectedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpectedKind::File => "file",
            ExpectedKind::Directory => "directory",
        })
    }
}

/// An expected mode: exactly these bits, or no bit beyond a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSpec {
    /// `"0600"`: the permission bits (including setuid, setgid, sticky) must
    /// be exactly these.
    Exactly(u32),
    /// `"at most 0640"`: no bit outside these may be set.
    AtMost(u32),
}

impl ModeSpec {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (ceiling, digits) = match t.strip_prefix("at most") {
            Some(rest) => (true, rest.trim()),
            None => (false, t),
        };
        let valid = (3..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
        if !valid {
            return Err(format!(
                "expected a mode such as \"0600\" or \"at most 0640\" (octal, 3 or 4 digits), found {text:?}"
            ));
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
        Ok(if ceiling {
            ModeSpec::AtMost(bits)
        } else {
            ModeSpec::Exactly(bits)
        })
    }

    /// Whether `mode`'s permission bits satisfy this spec.
    pub fn allows(self, mode: u32) -> bool {
        let perm = mode & 0o7777;
        match self {
            ModeSpec::Exactly(m) => perm == m,
            ModeSpec::AtMost(m) => perm & !m == 0,
        }
    }

    /// The mode remediation sets: the exact bits, or the found bits with
    /// everything beyond the ceiling cleared.
    pub fn target(self, mode: u32) -> u32 {
        match self {
            ModeSpec::Exactly(m) => m,
            ModeSpec::AtMost(m) => mode & 0o7777 & m,
        }
    }

    /// The bits this spec names as allowed (for the setuid/setgid rule).
    pub fn allowed_bits(self) -> u32 {
        match self {
            ModeSpec::Exactly(m) | ModeSpec::AtMost(m) => m,
        }
    }
}

impl fmt::Display for ModeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeSpec::Exactly(m) => write!(f, "{m:04o}"),
            ModeSpec::AtMost(m) => write!(f, "at most {m:04o}"),
        }
    }
}

impl<'de> Deserialize<'de> for ModeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ModeSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mode as a string, such as \"0600\" or \"at most 0640\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ModeSpec, E> {
                ModeSpec::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ModeSpec, E> {
                Err(E::custom(format!(
                    "write modes as quoted octal strings (\"0{v}\"), not numbers: TOML reads {v} as decimal"
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A user or group, by name or by numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSpec {
    Name(String),
    Id(u32),
}

/// The permission policy as the floor above compiled it while loading
/// (globs built, owner names resolved), kept with the configuration so
/// that it is compiled once per load and shared by every user of that
/// configuration. Opaque here: config cannot name the policy's type; the
/// policy module takes it back out (`perms::Policy::of`).
#[derive(Clone, Default)]
pub struct CompiledPolicy(pub Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>);

impl fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "compiled" } else { "not compiled" })
    }
}

/// Two compiled policies are alike when the sections they come from are:
/// `PermissionsConfig` compares those.
impl PartialEq for CompiledPolicy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A permission policy that cannot be built, with the place in the
/// configuration it comes from (`None` for `[permissions]` as a whole,
/// `Some(i)` for rule i).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub rule: Option<usize>,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl IdSpec {
    /// The numeric id this user or group stands for, through the system's
    /// NSS; the error says which name is unknown.
    pub fn resolve(&self, kind: IdKind) -> Result<u32, String> {
        match self {
            IdSpec::Id(id) => Ok(*id),
            IdSpec::Name(name) => match kind.lookup(name) {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(format!("no {} named {name:?} on this machine", kind.noun())),
                Err(e) => Err(format!("looking up {} {name:?} failed: {e}", kind.noun())),
            },
        }
    }
}

impl fmt::Display for IdSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdSpec::Name(n) => f.write_str(n),
            IdSpec::Id(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for IdSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = IdSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a user or group name, or a numeric id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IdSpec, E> {
                let ok = !v.is_empty()
                    && v.len() <= 32
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-$".contains(&b));
                if !ok {
                    return Err(E::custom(format!("{v:?} is not a user or group name")));
                }
                Ok(IdSpec::Name(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IdSpec, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|id| *id != u32::MAX)
                    .map(IdSpec::Id)
                    .ok_or_else(|| E::custom(format!("{v} is not a valid user or group id")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// One `[[permissions.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in events and alerts; defaults to `rules[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Globs (`*` stays inside one directory, `**` crosses directories). A
    /// relative pattern applies under every root; an absolute one as is.
    pub paths: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<ExpectedKind>,
    #[serde(default)]
    pub mode: Option<ModeSpec>,
    #[serde(default)]
    pub owner: Option<IdSpec>,
    #[serde(default)]
    pub group: Option<IdSpec>,
    /// Put drift back; unset inherits from earlier matching rules, and
    /// finally from `permissions.remediate`.
    #[serde(default)]
    pub remediate: Option<bool>,
}

/// `[permissions]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsConfig {
    /// Directories watched and scanned, recursively, never following
    /// symlinks. A relative path is relative to the configuration file's
    /// directory.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// Globs never checked (and, for directories, never descended into).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The global rules: nothing world-writable, no setuid/setgid bit the
    /// policy does not name, no secret-looking file readable by others.
    #[serde(default = "default_true")]
    pub global_rules: bool,
    /// Whether drift is put back when no rule says otherwise (this also
    /// covers the global rules).
    #[serde(default)]
    pub remediate: bool,
    /// At most one drift email to the admins per interval.
    #[serde(default = "default_alert_interval")]
    pub alert_interval: HumanDuration,
    /// How often roots that could not be watched (the inotify watch limit)
    /// are rescanned instead.
    #[serde(default = "default_fallback_rescan")]
    pub fallback_rescan: HumanDuration,
    /// Later rules refine earlier ones, field by field.
    #[serde(default)]
    pub rules: Vec<Spanned<RuleConfig>>,
    /// The policy compiled from the above when the file was loaded.
    #[serde(skip)]
    pub compiled: CompiledPolicy,
}

fn default_true() -> bool {
    true
}
fn default_alert_interval() -> HumanDuration {
    HumanDuration::from_secs(3600)
}
fn default_fallback_rescan() -> HumanDuration {
    HumanDuration::from_secs(300)
}

impl Default for PermissionsConfig {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            exclude: Vec::new(),
            global_rules: true,
            remediate: false,
            alert_interval: default_alert_interval(),
            fallback_rescan: default_fallback_rescan(),
            rules: Vec::new(),
            compiled: CompiledPolicy::default(),
        }
    }
}

impl super::Section for PermissionsConfig {
    /// The policy's own rules are checked by the caller's
    /// [`super::LoadChecks::permission_rules`].
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.alert_interval.as_duration().as_secs() < 60 {
            out.push("permissions.alert_interval must be at least 1m".into());
        }
        if self.fallback_rescan.as_duration().as_secs() < 10 {
            out.push("permissions.fallback_rescan must be at least 10s".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_apply() {
        assert_eq!(ModeSpec::parse("0600").unwrap(), ModeSpec::Exactly(0o600));
        assert_eq!(ModeSpec::parse("at most 0640").unwrap(), ModeSpec::AtMost(0o640));
        assert_eq!(ModeSpec::parse("750").unwrap(), ModeSpec::Exactly(0o750));
        assert!(ModeSpec::parse("0800").is_err());
        assert!(ModeSpec::parse("rw-r--r--").is_err());
        assert!(ModeSpec::AtMost(0o640).allows(0o100600));
        assert!(!ModeSpec::AtMost(0o640).allows(0o100644));
        assert_eq!(ModeSpec::AtMost(0o640).target(0o100666), 0o640);
        assert_eq!(ModeSpec::AtMost(0o640).target(0o100604), 0o600);
        assert!(!ModeSpec::Exactly(0o600).allows(0o104600));
    }
}
