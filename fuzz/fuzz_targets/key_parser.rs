//! The API-key parser: any bytes, never a panic; what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = keywarden::keys::format::parse(text) {
        assert_eq!(format!("{}.{}", parsed.prefix, parsed.secret()), text.trim());
    }
    let _ = keywarden::keys::format::check_prefix(text);
});
