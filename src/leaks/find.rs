//! Finding key-shaped strings in bytes, a stream at a time.
//!
//! Both keywarden's format and the guide's share `_v2_` inside the prefix
//! (`sk_live_v2_3f9a0c1b7d2e4a65.<secret>`, `sk_live_v2_<base36 time><hex>.<secret>`),
//! which `memchr`'s SIMD substring search finds at memory speed; around
//! each hit the candidate is grown to the prefix's and the secret's
//! alphabets and checked with the key parser. Nothing here decides whether
//! a candidate is a key: [`super::act`] looks its prefix up and verifies
//! its secret.
//!
//! A stream is fed in windows: each window starts with the last
//! [`TAIL`] bytes of the previous one, so a key split across two reads is
//! seen whole, once.

use memchr::memmem;

use crate::config::Secret;
use crate::keys::format;

/// Bytes of the previous window kept at the start of the next: longer than
/// any key the parser accepts.
pub const TAIL: usize = format::MAX_KEY_LEN;

/// A string of the key's shape, where it was found.
pub struct Candidate {
    pub key: Secret,
    /// 1-based.
    pub line: u64,
}

/// Newlines in `bytes`. Every byte scanned is counted, so this must cost
/// no more than the search: 32 byte-wide counters over blocks of 255 lanes
/// (they cannot overflow), which the compiler turns into one compare and
/// one subtract per 32 bytes.
pub fn newlines(bytes: &[u8]) -> u64 {
    const LANES: usize = 32;
    let mut total = 0u64;
    let mut acc = [0u8; LANES];
    let mut rounds = 0u32;
    let mut lanes = bytes.chunks_exact(LANES);
    for lane in &mut lanes {
        // A fixed-size array: one vector compare and subtract.
        let Ok(lane) = <&[u8; LANES]>::try_from(lane) else {
            continue;
        };
        for i in 0..LANES {
            acc[i] = acc[i].wrapping_add(u8::from(lane[i] == b'\n'));
        }
        rounds += 1;
        if rounds == 255 {
            total += acc.iter().map(|&v| u64::from(v)).sum::<u64>();
            acc = [0u8; LANES];
            rounds = 0;
        }
    }
    total += acc.iter().map(|&v| u64::from(v)).sum::<u64>();
    total + lanes.remainder().iter().filter(|&&b| b == b'\n').count() as u64
}

fn prefix_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn secret_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Where a stream is: what the next window continues.
#[derive(Debug, Clone, Default)]
pub struct Position {
    /// Bytes of the stream consumed.
    pub offset: u64,
    /// Newlines among them.
    pub lines: u64,
    /// Their last bytes (at most [`TAIL`]).
    pub tail: Vec<u8>,
}

/// Scans `window`, whose first `seen` bytes are the previous window's
/// tail (already scanned, newlines already counted in `pos.lines`), and
/// advances `pos` past it. With `at_end`, a candidate touching the end is
/// complete; otherwise it is left for the next window.
pub fn scan_window(window: &[u8], seen: usize, at_end: bool, pos: &mut Position, out: &mut Vec<Candidate>) {
    let finder = memmem::Finder::new(b"_v2_");
    // Newlines before window[0]: those counted, minus those in the tail.
    let lines_at_start = pos.lines - newlines(&window[..seen]);
    let mut counted_to = 0usize;
    let mut lines_to = lines_at_start;
    let mut from = 0usize;
    while let Some(hit) = finder.find(&window[from..]).map(|h| h + from) {
        let mut start = hit;
        while start > 0 && prefix_byte(window[start - 1]) {
            start -= 1;
        }
        let mut dot = hit + 4;
        while dot < window.len() && prefix_byte(window[dot]) {
            dot += 1;
        }
        from = hit + 1;
        if dot >= window.len() {
            // Incomplete here; whole in the next window, which starts with
            // this one's tail.
            continue;
        }
        if window[dot] != b'.' {
            continue;
        }
        let mut end = dot + 1;
        while end < window.len() && secret_byte(window[end]) {
            end += 1;
        }
        from = end.max(hit + 1);
        if end == window.len() && !at_end {
            // May go on in the next window.
            continue;
        }
        if end < seen {
            // Ends inside the tail: reported with the previous window. One
            // that ends exactly where the previous window ended was left
            // for this one (it might have gone on).
            continue;
        }
        let Ok(text) = std::str::from_utf8(&window[start..end]) else {
            continue;
        };
        if format::parse(text).is_err() {
            continue;
        }
        lines_to += newlines(&window[counted_to..start]);
        counted_to = start;
        out.push(Candidate {
            key: Secret::new(text),
            line: lines_to + 1,
        });
    }
    pos.lines += newlines(&window[seen..]);
    pos.offset += (window.len() - seen) as u64;
    let keep = window.len().min(TAIL);
    pos.tail.clear();
    pos.tail.extend_from_slice(&window[window.len() - keep..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &[u8], chunk: usize) -> Vec<(String, u64)> {
        let mut pos = Position::default();
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let end = (i + chunk).min(text.len());
            let mut window = pos.tail.clone();
            let seen = window.len();
            window.extend_from_slice(&text[i..end]);
            scan_window(&window, seen, end == text.len(), &mut pos, &mut out);
            i = end;
        }
        assert_eq!(pos.offset, text.len() as u64);
        out.into_iter().map(|c| (c.key.expose().to_string(), c.line)).collect()
    }

    const KEY: &str = "sk_live_v2_3f9a0c1b7d2e4a65.Yx3kL0qzJ9vQ2mN5pR8sT1uW4xZ7aC0dE3fG6hJ9kLm";
    const GUIDE: &str = "sk_live_v2_mfx1k2a9c0ffee1.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_abcdef";

    #[test]
    fn keys_are_found_once_with_their_line_whatever_the_reads() {
        let text = format!(
            "start\nAuthorization: Bearer {KEY}\nnoise _v2_ sk_test_v2_x. and {GUIDE},\nsk_live_1234567890abcdef\nkey={KEY}"
        );
        let want = vec![(KEY.to_string(), 2), (GUIDE.to_string(), 3), (KEY.to_string(), 5)];
        for chunk in [1, 7, 50, 64, 100, 4096] {
            assert_eq!(all(text.as_bytes(), chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn newlines_are_counted_in_any_length() {
        for len in [0, 1, 31, 32, 33, 8159, 8160, 8161, 100_000] {
            let bytes: Vec<u8> = (0..len).map(|i| if i % 7 == 3 { b'\n' } else { b'x' }).collect();
            let want = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(newlines(&bytes), want, "{len}");
        }
        assert_eq!(newlines(&[b'\n'; 20_000]), 20_000);
    }

    #[test]
    fn shapes_that_are_not_keys_are_not_candidates() {
        for text in [
            "sk_live_v2_abc",                                    // no secret
            "sk_live_v2_abc.short",                              // secret too short
            "sk_live_1234567890abcdef.AAAAAAAAAAAAAAAAAAAAAAAA", // another format
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",          // another product's token
        ] {
            assert!(all(text.as_bytes(), 4096).is_empty(), "{text}");
        }
    }
}
