//! Cron schedules in five or six fields: never a panic, never a hang; what
//! parses has a next run.
#![no_main]

use keywarden::config::Schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.len() > 256 {
        return;
    }
    if let Ok(s) = Schedule::parse(text) {
        assert!(s.next_after(chrono::Utc::now()).is_some());
    }
});
