//! From configured patterns to what the policy matches with: roots
//! checked and cleaned, each pattern expanded under every root and built
//! into a glob, owner and group names resolved. Problems are collected,
//! not returned at the first, so `check-config` lists them all.

use std::path::{Path, PathBuf};

use globset::GlobBuilder;

use crate::config::permissions::{IdSpec, RuleProblem};
use crate::sys::ids;

pub(super) fn glob(pattern: &str) -> Result<globset::Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("bad glob {pattern:?}: {e}"))
}

/// The absolute patterns a written pattern stands for: itself when absolute,
/// otherwise one per root.
pub(super) fn expand(pattern: &str, roots: &[PathBuf]) -> Result<Vec<String>, String> {
    if pattern.trim().is_empty() {
        return Err("an empty path pattern".into());
    }
    if pattern.starts_with('/') {
        if !roots.iter().any(|r| Path::new(pattern).starts_with(r)) {
            return Err(format!(
                "{pattern:?} is not under any of permissions.roots, so nothing would ever match it"
            ));
        }
        return Ok(vec![pattern.to_string()]);
    }
    let relative = pattern.trim_start_matches("./");
    Ok(roots
        .iter()
        .map(|r| {
            format!(
                "{}/{relative}",
                globset::escape(&r.to_string_lossy()).trim_end_matches('/')
            )
        })
        .collect())
}

fn resolve(spec: &IdSpec, kind: ids::IdKind) -> Result<(u32, String), String> {
    spec.resolve(kind).map(|id| (id, spec.to_string()))
}

/// The roots, checked (absolute, directories, not nested in each other)
/// and cleaned.
pub(super) fn compile_roots(configured: &[PathBuf], errors: &mut Vec<RuleProblem>) -> Vec<PathBuf> {
    let whole = |message: String| RuleProblem { rule: None, message };
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in configured {
        if !root.is_absolute() {
            errors.push(whole(format!(
                "permissions.roots: {} is not an absolute path",
                root.display()
            )));
            continue;
        }
        // A root that does not exist yet (an application not deployed
        // yet) is reported by every scan, not refused here: the rest of
        // the daemon should not stop for it.
        if std::fs::metadata(root).is_ok_and(|m| !m.is_dir()) {
            errors.push(whole(format!(
                "permissions.roots: {} is not a directory",
                root.display()
            )));
        }
        let clean: PathBuf = root.components().collect();
        if roots.iter().any(|r| clean.starts_with(r) || r.starts_with(&clean)) {
            errors.push(whole(format!(
                "permissions.roots: {} overlaps another root; list only the outer directory",
                root.display()
            )));
            continue;
        }
        roots.push(clean);
    }
    roots
}

/// The globs of a rule's patterns under every root; a pattern that does
/// not expand or compile is a problem of the rule.
pub(super) fn rule_globs(
    patterns: &[String],
    roots: &[PathBuf],
    problem: &mut impl FnMut(String),
) -> Vec<globset::Glob> {
    let mut globs = Vec::new();
    for pattern in patterns {
        match expand(pattern, roots) {
            Ok(expanded) => {
                for p in expanded {
                    match glob(&p) {
                        Ok(g) => globs.push(g),
                        Err(e) => problem(e),
                    }
                }
            }
            Err(e) => problem(e),
        }
    }
    globs
}

/// A rule's owner or group as an id and a name; an unknown one is a
/// problem of the rule.
pub(super) fn resolved(
    spec: Option<&IdSpec>,
    kind: ids::IdKind,
    problem: &mut impl FnMut(String),
) -> Option<(u32, String)> {
    match spec.map(|s| resolve(s, kind))? {
        Ok(found) => Some(found),
        Err(e) => {
            problem(e);
            None
        }
    }
}
