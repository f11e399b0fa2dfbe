//! The compiled permission policy: which rules apply to a path, what they
//! expect of it, and whether what was found satisfies them.
//!
//! Every rule's globs go into one [`GlobSet`] (and every exclude into
//! another), so a path costs two set matches however many rules there are;
//! that keeps a full scan close to `find`'s speed.

use std::path::{Path, PathBuf};

use globset::{Candidate, GlobSet, GlobSetBuilder};

use super::patterns::{compile_roots, expand, glob, resolved, rule_globs};
use crate::config::permissions::{ExpectedKind, ModeSpec, PermissionsConfig, RuleProblem};
use crate::sys::ids;
use crate::sys::inode::{Inode, InodeKind};

/// Which check a finding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Kind,
    Mode,
    Owner,
    Group,
    WorldWritable,
    SetId,
    SecretReadable,
}

/// One way a path differs from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: Check,
    /// The rule's name (`global` for the global rules).
    pub rule: String,
    /// What was expected, in words an admin reads.
    pub expected: String,
}

/// Everything wrong with one path, and what remediation would set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// The permission bits (07777) remediation sets; equals the found bits
    /// when only the owner or group is wrong.
    pub target_mode: u32,
    pub target_uid: Option<u32>,
    pub target_gid: Option<u32>,
    /// False when a remedy would need more than a chmod/chown (wrong type).
    pub fixable: bool,
    /// Whether the policy asks for this drift to be put back.
    pub remediate: bool,
}

impl Verdict {
    /// The rules involved, each once, in the order found.
    pub fn rules(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for f in &self.findings {
            if !names.contains(&f.rule.as_str()) {
                names.push(&f.rule);
            }
        }
        names.join(", ")
    }

    /// What was expected, all findings in one line.
    pub fn expected(&self) -> String {
        self.findings
            .iter()
            .map(|f| f.expected.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A rule after compilation.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    kind: Option<ExpectedKind>,
    mode: Option<ModeSpec>,
    owner: Option<(u32, String)>,
    group: Option<(u32, String)>,
    remediate: Option<bool>,
}

/// What the matching rules, merged field by field in file order, expect.
#[derive(Debug, Default)]
struct Expectation<'a> {
    kind: Option<(ExpectedKind, &'a str)>,
    mode: Option<(ModeSpec, &'a str)>,
    owner: Option<(u32, &'a str, &'a str)>,
    group: Option<(u32, &'a str, &'a str)>,
    remediate: Option<bool>,
}

/// The global rules' name in findings and events.
pub const GLOBAL_RULE: &str = "global";

/// The compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    roots: Vec<PathBuf>,
    rules: Vec<Rule>,
    includes: GlobSet,
    /// Include glob index -> rule index.
    include_rule: Vec<usize>,
    excludes: GlobSet,
    exclude_rule: Vec<usize>,
    /// `[permissions] exclude`: never checked, never descended into.
    skip: GlobSet,
    global_rules: bool,
    remediate_default: bool,
}

impl Policy {
    /// The policy compiled when this configuration was loaded (once per
    /// load, shared); compiled now for a configuration loaded without it.
    pub fn of(cfg: &PermissionsConfig) -> Result<std::sync::Arc<Policy>, Vec<RuleProblem>> {
        let loaded = cfg
            .compiled
            .0
            .as_ref()
            .and_then(|p| p.clone().downcast::<Policy>().ok());
        match loaded {
            Some(policy) => Ok(policy),
            None => Policy::compile(cfg).map(std::sync::Arc::new),
        }
    }

    /// Builds the policy, reporting every problem found.
    pub fn compile(cfg: &PermissionsConfig) -> Result<Policy, Vec<RuleProblem>> {
        let mut errors = Vec::new();
        let whole = |message: String| RuleProblem { rule: None, message };
        let roots = compile_roots(&cfg.roots, &mut errors);
        let mut skip = GlobSetBuilder::new();
        for pattern in &cfg.exclude {
            match expand(pattern, &roots).and_then(|ps| ps.iter().map(|p| glob(p)).collect::<Result<Vec<_>, _>>()) {
                Ok(globs) => {
                    for g in globs {
                        skip.add(g);
                    }
                }
                Err(e) => errors.push(whole(format!("permissions.exclude: {e}"))),
            }
        }

        let mut rules = Vec::new();
        let mut includes = GlobSetBuilder::new();
        let mut include_rule = Vec::new();
        let mut excludes = GlobSetBuilder::new();
        let mut exclude_rule = Vec::new();
        for (i, spanned) in cfg.rules.iter().enumerate() {
            let rc = spanned.get_ref();
            let name = rc.name.clone().unwrap_or_else(|| format!("rules[{}]", i + 1));
            let mut problem = |message: String| {
                errors.push(RuleProblem {
                    rule: Some(i),
                    message: format!("permissions rule {name:?}: {message}"),
                })
            };
            if rc.paths.is_empty() {
                problem("`paths` is empty".into());
            }
            if rc.kind.is_none()
                && rc.mode.is_none()
                && rc.owner.is_none()
                && rc.group.is_none()
                && rc.remediate.is_none()
            {
                problem("the rule expects nothing; give it a type, mode, owner or group".into());
            }
            for (patterns, set, owners) in [
                (&rc.paths, &mut includes, &mut include_rule),
                (&rc.exclude, &mut excludes, &mut exclude_rule),
            ] {
                for g in rule_globs(patterns, &roots, &mut problem) {
                    set.add(g);
                    owners.push(i);
                }
            }
            let owner = resolved(rc.owner.as_ref(), ids::IdKind::User, &mut problem);
            let group = resolved(rc.group.as_ref(), ids::IdKind::Group, &mut problem);
            rules.push(Rule {
                name,
                kind: rc.kind,
                mode: rc.mode,
                owner,
                group,
                remediate: rc.remediate,
            });
        }
        let build = |b: GlobSetBuilder, errors: &mut Vec<RuleProblem>| match b.build() {
            Ok(set) => set,
            Err(e) => {
                errors.push(whole(format!("permissions: globs could not be compiled: {e}")));
                GlobSet::empty()
            }
        };
        let includes = build(includes, &mut errors);
        let excludes = build(excludes, &mut errors);
        let skip = build(skip, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            roots,
            rules,
            includes,
            include_rule,
            excludes,
            exclude_rule,
            skip,
            global_rules: cfg.global_rules,
            remediate_default: cfg.remediate,
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The root a path lies under.
    pub fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots.iter().find(|r| path.starts_with(r)).map(PathBuf::as_path)
    }

    /// True for paths `[permissions] exclude` names.
    pub fn is_skipped(&self, path: &Path) -> bool {
        !self.skip.is_empty() && self.skip.is_match(path)
    }

    /// Checks what was found at `path` against the policy; `None` when it
    /// complies. `scratch` is reused between calls to avoid allocating.
    pub fn evaluate(&self, path: &Path, found: &Inode, scratch: &mut Vec<usize>) -> Option<Verdict> {
        let expect = self.expectation(path, scratch);
        let kind = found.kind();
        let perm = found.mode & 0o7777;
        let mut findings = Vec::new();
        let mut target_mode = perm;
        let mut fixable = true;

        if let Some((want, rule)) = expect.kind {
            let ok = matches!(
                (want, kind),
                (ExpectedKind::File, InodeKind::File) | (ExpectedKind::Directory, InodeKind::Directory)
            );
            if !ok {
                fixable = false;
                findings.push(Finding {
                    check: Check::Kind,
                    rule: rule.to_string(),
                    expected: format!("a {want}, found a {kind}"),
                });
            }
        }
        // A symlink's own mode means nothing, and sockets or devices are
        // not this policy's business: only the type is checked for them.
        if matches!(kind, InodeKind::File | InodeKind::Directory) {
            if let Some((spec, rule)) = expect.mode {
                if !spec.allows(perm) {
                    target_mode = spec.target(perm);
                    findings.push(Finding {
                        check: Check::Mode,
                        rule: rule.to_string(),
                        expected: format!("mode {spec}"),
                    });
                }
            }
            if let Some((uid, name, rule)) = expect.owner {
                if found.uid != uid {
                    findings.push(Finding {
                        check: Check::Owner,
                        rule: rule.to_string(),
                        expected: format!("owner {name}"),
                    });
                }
            }
            if let Some((gid, name, rule)) = expect.group {
                if found.gid != gid {
                    findings.push(Finding {
                        check: Check::Group,
                        rule: rule.to_string(),
                        expected: format!("group {name}"),
                    });
                }
            }
            if self.global_rules {
                let named = expect.mode.map(|(m, _)| m.allowed_bits()).unwrap_or(0);
                if perm & 0o002 != 0 && named & 0o002 == 0 {
                    target_mode &= !0o002;
                    findings.push(Finding {
                        check: Check::WorldWritable,
                        rule: GLOBAL_RULE.into(),
                        expected: "not world-writable".into(),
                    });
                }
                let setid = perm & 0o6000 & !named;
                if setid != 0 {
                    target_mode &= !setid;
                    findings.push(Finding {
                        check: Check::SetId,
                        rule: GLOBAL_RULE.into(),
                        expected: "no setuid or setgid bit the policy does not name".into(),
                    });
                }
                if kind == InodeKind::File && perm & 0o004 != 0 && named & 0o004 == 0 && looks_secret(path) {
                    target_mode &= !0o007;
                    findings.push(Finding {
                        check: Check::SecretReadable,
                        rule: GLOBAL_RULE.into(),
                        expected: "a secret-looking file not readable by others".into(),
                    });
                }
            }
        }
        if findings.is_empty() {
            return None;
        }
        Some(Verdict {
            findings,
            target_mode,
            target_uid: expect.owner.map(|(u, _, _)| u).filter(|u| *u != found.uid),
            target_gid: expect.group.map(|(g, _, _)| g).filter(|g| *g != found.gid),
            fixable,
            remediate: expect.remediate.unwrap_or(self.remediate_default),
        })
    }

    fn expectation<'a>(&'a self, path: &Path, scratch: &mut Vec<usize>) -> Expectation<'a> {
        let mut out = Expectation::default();
        if self.rules.is_empty() {
            return out;
        }
        let candidate = Candidate::new(path);
        scratch.clear();
        self.includes.matches_candidate_into(&candidate, scratch);
        if scratch.is_empty() {
            return out;
        }
        let mut matched: Vec<usize> = scratch.iter().map(|g| self.include_rule[*g]).collect();
        matched.sort_unstable();
        matched.dedup();
        if !self.excludes.is_empty() {
            self.excludes.matches_candidate_into(&candidate, scratch);
            for g in scratch.iter() {
                let r = self.exclude_rule[*g];
                matched.retain(|m| *m != r);
            }
        }
        for i in matched {
            let rule = &self.rules[i];
            let name = rule.name.as_str();
            if let Some(k) = rule.kind {
                out.kind = Some((k, name));
            }
            if let Some(m) = rule.mode {
                out.mode = Some((m, name));
            }
            if let Some((uid, shown)) = &rule.owner {
                out.owner = Some((*uid, shown.as_str(), name));
            }
            if let Some((gid, shown)) = &rule.group {
                out.group = Some((*gid, shown.as_str(), name));
            }
            if let Some(r) = rule.remediate {
                out.remediate = Some(r);
            }
        }
        out
    }
}

/// Names the global rule treats as secrets: `.env*`, `*.key`, `*.pem`,
/// `*.p12`, `credentials.json`.
pub fn looks_secret(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with(".env")
        || name.ends_with(".key")
        || name.ends_with(".pem")
        || name.ends_with(".p12")
        || name == "credentials.json"
}

#[cfg(test)]
mod tests {
    /// The policy's own check, as the job registry hands it to config.
    fn checks() -> crate::config::LoadChecks<'static> {
        crate::config::LoadChecks {
            jobs: &[],
            permission_rules: |p| {
                Policy::compile(p).map(|policy| crate::config::CompiledPolicy(Some(std::sync::Arc::new(policy))))
            },
        }
    }

    use super::*;

    fn policy(toml_text: &str, root: &Path) -> Policy {
        let text = toml_text.replace("ROOT", &root.display().to_string());
        let cfg = crate::config::Config::from_toml(Path::new("t.toml"), &text, &checks()).unwrap();
        Policy::compile(&cfg.permissions).unwrap()
    }

    fn file(mode: u32) -> Inode {
        Inode {
            mode: libc::S_IFREG | mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            dev: 1,
            ino: 1,
        }
    }

    #[test]
    fn later_rules_refine_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(
            r#"[permissions]
roots = ["ROOT"]
[[permissions.rules]]
name = "code"
paths = ["**/*"]
mode = "at most 0644"
owner = 0
[[permissions.rules]]
name = "secrets"
paths = [".env", "config/*.json"]
exclude = ["config/public.json"]
mode = "0600"
"#,
            dir.path(),
        );
        let mut s = Vec::new();
        let env = dir.path().join(".env");
        let v = p.evaluate(&env, &file(0o644), &mut s).unwrap();
        assert_eq!(v.findings.len(), 2, "{v:?}"); // mode 0600 by secrets, plus secret-readable
        assert_eq!(v.findings[0].rule, "secrets");
        assert_eq!(v.target_mode, 0o600);
        assert!(p.evaluate(&env, &file(0o600), &mut s).is_none());
        // The exclude takes the file out of "secrets" but not out of "code".
        let public = dir.path().join("config/public.json");
        assert!(p.evaluate(&public, &file(0o644), &mut s).is_none());
        let v = p
            .evaluate(&dir.path().join("config/db.json"), &file(0o640), &mut s)
            .unwrap();
        assert_eq!(v.rules(), "secrets");
        // `*` does not cross directories.
        assert!(p
            .evaluate(&dir.path().join("config/sub/x.json"), &file(0o644), &mut s)
            .is_none());
    }

    #[test]
    fn global_rules_apply_everywhere_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy("[permissions]\nroots = [\"ROOT\"]\n", dir.path());
        let mut s = Vec::new();
        let any = dir.path().join("a/b.txt");
        let v = p.evaluate(&any, &file(0o666), &mut s).unwrap();
        assert_eq!(v.findings[0].check, Check::WorldWritable);
        assert_eq!(v.target_mode, 0o664);
        let v = p.evaluate(&any, &file(0o4755), &mut s).unwrap();
        assert_eq!(v.findings[0].check, Check::SetId);
        assert_eq!(v.target_mode, 0o755);
        let v = p
            .evaluate(&dir.path().join("tls/site.key"), &file(0o644), &mut s)
            .unwrap();
        assert_eq!(v.findings[0].check, Check::SecretReadable);
        assert_eq!(v.target_mode, 0o640);
        assert!(p.evaluate(&any, &file(0o644), &mut s).is_none());
        let named = policy(
            "[permissions]\nroots = [\"ROOT\"]\n[[permissions.rules]]\npaths = [\"bin/*\"]\nmode = \"4755\"\n",
            dir.path(),
        );
        assert!(named
            .evaluate(&dir.path().join("bin/x"), &file(0o4755), &mut s)
            .is_none());
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[permissions]\nroots = [\"{}\", \"/etc/hostname\"]\n[[permissions.rules]]\npaths = [\"/elsewhere/x\", \"a[\"]\nowner = \"no-such-user-kw\"\n",
            dir.path().display()
        );
        let err = crate::config::Config::from_toml(Path::new("t.toml"), &text, &checks()).unwrap_err();
        let all = err.to_string();
        assert!(all.contains("/etc/hostname is not a directory"), "{all}");
        assert!(all.contains("not under any of permissions.roots"), "{all}");
        assert!(all.contains("bad glob"), "{all}");
        assert!(all.contains("no user named \"no-such-user-kw\""), "{all}");
        // Rule problems point at the rule.
        assert!(all.contains("t.toml:3:"), "{all}");
    }
}
