//! The key format: `<namespace>_<environment>_v2_<lookup id>.<secret>`,
//! for example `sk_live_v2_3f9a0c1b7d2e4a65.Yx3…` (the guide's format).
//!
//! - The part before the dot is the *prefix*: public, stored in clear, used
//!   to find the key. Its random lookup id is 16 hex digits (64 bits).
//! - The part after the dot is the *secret*: 32 bytes from the operating
//!   system's CSPRNG, base64url without padding (43 characters). Only its
//!   Argon2id hash is stored.
//!
//! The parser accepts any key of this shape, including keys made by other
//! implementations of the guide (whose lookup ids differ), and refuses
//! everything else before any database or hashing work.

use std::fmt;

use base64ct::{Base64UrlUnpadded, Encoding};

use crate::config::Secret;

/// The key format's version tag, part of every prefix.
pub const FORMAT_VERSION: &str = "v2";

/// Longest input the parser looks at; longer input is refused unread.
pub const MAX_KEY_LEN: usize = 256;
const MAX_PREFIX_LEN: usize = 64;
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 128;

/// Why a string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key is empty")]
    Empty,
    #[error("the key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("a key has the form <prefix>.<secret> with exactly one dot")]
    NoSeparator,
    #[error("the key prefix must be 3 to {MAX_PREFIX_LEN} letters, digits or underscores")]
    BadPrefix,
    #[error("the key secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} base64url characters")]
    BadSecret,
}

/// A key split into its parts; borrows the input.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    pub prefix: &'a str,
    secret: &'a str,
}

impl<'a> ParsedKey<'a> {
    pub fn secret(&self) -> &'a str {
        self.secret
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("prefix", &self.prefix)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Checks that a prefix is well formed (for commands that take one).
pub fn check_prefix(prefix: &str) -> Result<(), KeyFormatError> {
    let ok = (3..=MAX_PREFIX_LEN).contains(&prefix.len())
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !prefix.starts_with('_')
        && !prefix.ends_with('_');
    if ok {
        Ok(())
    } else {
        Err(KeyFormatError::BadPrefix)
    }
}

/// Splits and checks a presented key. Surrounding whitespace (a trailing
/// newline from stdin) is ignored; anything else odd is refused.
pub fn parse(input: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    if input.len() > MAX_KEY_LEN + 2 {
        return Err(KeyFormatError::TooLong);
    }
    let key = input.trim_matches(|c| c == '\n' || c == '\r' || c == ' ' || c == '\t');
    if key.is_empty() {
        return Err(KeyFormatError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyFormatError::TooLong);
    }
    let mut parts = key.split('.');
    let (Some(prefix), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(KeyFormatError::NoSeparator);
    };
    check_prefix(prefix)?;
    let secret_ok = (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !secret_ok {
        return Err(KeyFormatError::BadSecret);
    }
    Ok(ParsedKey { prefix, secret })
}

/// A newly generated key. The full key is a [`Secret`]: shown once, never
/// stored or logged.
pub struct NewKey {
    pub prefix: String,
    pub full: Secret,
}

impl NewKey {
    pub fn secret(&self) -> &str {
        // The full key was built as prefix + "." + secret.
        &self.full.expose()[self.prefix.len() + 1..]
    }
}

/// Makes a new key with a fresh lookup id and secret.
pub fn generate(namespace: &str, environment: &str) -> Result<NewKey, getrandom::Error> {
    let mut lookup = [0u8; 8];
    getrandom::fill(&mut lookup)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let lookup_hex: String = lookup.iter().map(|b| format!("{b:02x}")).collect();
    let prefix = format!("{namespace}_{environment}_{FORMAT_VERSION}_{lookup_hex}");
    let encoded = Base64UrlUnpadded::encode_string(&secret);
    zeroize::Zeroize::zeroize(&mut secret);
    let full = Secret::new(format!("{prefix}.{encoded}"));
    Ok(NewKey { prefix, full })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        let key = generate("sk", "live").unwrap();
        assert!(key.prefix.starts_with("sk_live_v2_"));
        assert_eq!(key.prefix.len(), "sk_live_v2_".len() + 16);
        let parsed = parse(key.full.expose()).unwrap();
        assert_eq!(parsed.prefix, key.prefix);
        assert_eq!(parsed.secret(), key.secret());
        assert_eq!(key.secret().len(), 43);
        assert_ne!(generate("sk", "live").unwrap().full, key.full);
    }

    #[test]
    fn the_guides_keys_parse() {
        // The guide's own shape: timestamp in base 36 plus 8 hex digits.
        let k = "sk_live_v2_m3x9k2p1a4b5c6d7.q2V0aGlzLWlzLWEtMzItYnl0ZS1zZWNyZXQtdmFsdWU";
        assert_eq!(parse(k).unwrap().prefix, "sk_live_v2_m3x9k2p1a4b5c6d7");
    }

    #[test]
    fn malformed_keys_are_refused() {
        let long = "a".repeat(400);
        let cases: &[(&str, KeyFormatError)] = &[
            ("", KeyFormatError::Empty),
            ("\n", KeyFormatError::Empty),
            ("sk_live_v2_abc", KeyFormatError::NoSeparator),
            ("a.b.c", KeyFormatError::NoSeparator),
            ("sk live.aaaaaaaaaaaaaaaaaaaa", KeyFormatError::BadPrefix),
            ("_sk.aaaaaaaaaaaaaaaaaaaa", KeyFormatError::BadPrefix),
            ("sk_live_v2_x.short", KeyFormatError::BadSecret),
            ("sk_live_v2_x.aaaaaaaaaaaaaaaaaaa=", KeyFormatError::BadSecret),
            ("sk_live_v2_x.aaaaaaaaaaaaaaaaéaaa", KeyFormatError::BadSecret),
            (&long, KeyFormatError::TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap_err(), *want, "{input:?}");
        }
    }

    /// A fuzz pass over the parser: random and mutated inputs must never
    /// panic, and anything accepted must satisfy the format's invariants.
    #[test]
    fn parser_survives_random_and_mutated_input() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "sk_live_v2.abcXYZ019-_=+/ \n\t\u{0}é😀.".chars().collect();
        let valid = generate("sk", "live").unwrap();
        for i in 0..200_000 {
            let input: String = if i % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                let mut chars: Vec<char> = valid.full.expose().chars().collect();
                for _ in 0..(next() % 4 + 1) {
                    let pos = (next() % (chars.len() as u64 + 1)) as usize;
                    match next() % 3 {
                        0 if pos < chars.len() => {
                            chars.remove(pos);
                        }
                        1 => chars.insert(pos, alphabet[(next() % alphabet.len() as u64) as usize]),
                        _ if pos < chars.len() => chars[pos] = alphabet[(next() % alphabet.len() as u64) as usize],
                        _ => {}
                    }
                }
                chars.into_iter().collect()
            };
            if let Ok(parsed) = parse(&input) {
                assert!(check_prefix(parsed.prefix).is_ok());
                assert!(parsed
                    .secret()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
                let rebuilt = format!("{}.{}", parsed.prefix, parsed.secret());
                assert_eq!(
                    rebuilt,
                    input.trim_matches(|c| c == '\n' || c == '\r' || c == ' ' || c == '\t')
                );
            }
        }
    }
}
