//! The whole configuration loader, on any text: never a panic; every error
//! names the file.
#![no_main]

use std::path::Path;

use keywarden::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = Config::from_toml(Path::new("fuzz.toml"), text) {
        for e in &errors.0 {
            assert!(e.to_string().starts_with("fuzz.toml"));
        }
    }
});
