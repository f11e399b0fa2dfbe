//! Problems in a configuration file, each with its file, line and column,
//! and the collector that gathers every problem of one load.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::secret;

/// One problem in a configuration file, with its place when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem is at a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Gathers errors with their places while a file is checked.
pub(super) struct Collector<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
    pub(super) errors: Vec<ConfigError>,
}

impl Collector<'_> {
    pub(super) fn at(&mut self, span: std::ops::Range<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: Some(line_col(self.text, span.start)),
            message: cut(message),
        });
    }

    /// A cross-field problem: placed at the key its message starts with
    /// (`notifications.smtp.pool_size must be …`, or `certificate "name": …`
    /// for that certificate's entry), else at `fallback`.
    pub(super) fn problem(&mut self, fallback: std::ops::Range<usize>, message: String) {
        let at = locate_problem(self.text, &message).unwrap_or(fallback);
        self.at(at, message);
    }

    pub(super) fn toml(&mut self, e: &toml::de::Error) {
        let mut message = cut(e.message().trim().to_string());
        // Name the key a secret source was expected for (the message itself
        // never carries the value).
        if message.starts_with(secret::SECRET_FORMS) {
            if let Some(key) = e.span().and_then(|s| key_on_line(self.text, s.start)) {
                message = format!("{key}: {message}");
            }
        }
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: e.span().map(|s| line_col(self.text, s.start)),
            message,
        });
    }

    /// Deserializes one section, recording its error (with place) if any.
    /// A section read and checked on its own ([`super::Section`]): its
    /// problems point at the key they name, else at the section.
    pub(super) fn checked<T: super::Section>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        let span = value.span();
        let section = self.section::<T>(value)?;
        for problem in section.problems() {
            self.problem(span.clone(), problem);
        }
        Some(section)
    }

    /// [`Self::checked`] into `slot`, which keeps its default when the
    /// section cannot be read.
    pub(super) fn checked_into<T: super::Section>(&mut self, value: Spanned<DeValue<'_>>, slot: &mut T) {
        if let Some(section) = self.checked(value) {
            *slot = section;
        }
    }

    pub(super) fn section<T: for<'de> Deserialize<'de>>(&mut self, value: Spanned<DeValue<'_>>) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml(&e);
                None
            }
        }
    }
}

/// Longest message kept whole: a 900 KB value quoted by a parser error is
/// cut, and says so.
const MAX_MESSAGE_CHARS: usize = 300;

fn cut(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let kept: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!(
        "{kept}… ({} more characters cut)",
        message.chars().count() - MAX_MESSAGE_CHARS
    )
}

/// Where the key a problem message names is written.
pub(super) fn locate_problem(text: &str, message: &str) -> Option<std::ops::Range<usize>> {
    for (prefix, array) in [("certificate \"", "certificates"), ("monitor \"", "monitor")] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (name, after) = rest.split_once("\": ").unwrap_or((rest.split('"').next()?, ""));
            // "certificate \"web\": deploy_hook must …" points at deploy_hook.
            let key = after
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches([':', ',']);
            return entry_name_span(text, array, name, key);
        }
    }
    let first = message.split_whitespace().next()?;
    let dotted = first.trim_end_matches([':', ',', ';']);
    let plausible = dotted.contains('.')
        && dotted
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !plausible {
        return None;
    }
    key_span(text, dotted)
}

/// The span of the value of `dotted` (`notifications.smtp.pool_size`), or
/// of the deepest table on that path that is written.
fn key_span(text: &str, dotted: &str) -> Option<std::ops::Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found = None;
    for part in dotted.split('.') {
        let (key, value) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        found = Some(if matches!(value.get_ref(), DeValue::Table(_)) {
            key.span()
        } else {
            value.span()
        });
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found
}

/// In the `[[array]]` entry named `name`: the span of `key`'s value when
/// the entry has that key, else of its `name = "…"`.
fn entry_name_span(text: &str, array: &str, name: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let (_, entries) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == array)?;
    let DeValue::Array(entries) = entries.get_ref() else {
        return None;
    };
    entries.iter().find_map(|entry| {
        let DeValue::Table(t) = entry.get_ref() else {
            return None;
        };
        let (_, v) = t.iter().find(|(k, _)| k.get_ref() == "name")?;
        if !matches!(v.get_ref(), DeValue::String(s) if s == name) {
            return None;
        }
        let named = t.iter().find(|(k, _)| !key.is_empty() && k.get_ref() == key);
        Some(named.map(|(_, value)| value.span()).unwrap_or_else(|| v.span()))
    })
}

/// The key written before `=` on the line holding `offset`.
fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let line_start = text.get(..offset)?.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text.get(line_start..offset)?;
    let key = line.split('=').next()?.trim().trim_start_matches('{').trim();
    let key = key.rsplit([',', '{']).next()?.trim();
    (!key.is_empty() && key.len() <= 80 && !key.contains(char::is_whitespace)).then(|| key.to_string())
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut cut = offset;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}
