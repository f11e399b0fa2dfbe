//! Cron schedules. Admins write the classic five fields
//! (`min hour day-of-month month day-of-week`); six fields put seconds first.
//! Every schedule is evaluated in UTC.

use std::fmt;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::de::{self, Deserialize, Deserializer};

/// A validated cron schedule, normalised to six fields (seconds first), which
/// is what the scheduler runs.
#[derive(Clone)]
pub struct Schedule {
    /// What the admin wrote (or the built-in default).
    written: String,
    /// Six fields, seconds first.
    normalised: String,
    cron: Cron,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let written = text.trim().to_string();
        let fields = written.split_whitespace().count();
        let normalised = if written.starts_with('@') {
            written.clone()
        } else {
            match fields {
                5 => format!("0 {}", written.split_whitespace().collect::<Vec<_>>().join(" ")),
                6 => written.split_whitespace().collect::<Vec<_>>().join(" "),
                n => {
                    return Err(format!(
                        "expected a cron schedule of 5 fields (\"min hour day month weekday\") \
                         or 6 fields (seconds first), found {n} field(s) in {written:?}"
                    ))
                }
            }
        };
        let cron = parser()
            .parse(&normalised)
            .map_err(|e| format!("invalid cron schedule {written:?}: {e}"))?;
        // A schedule that never fires (31 February) is almost certainly a typo.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(format!("cron schedule {written:?} never fires"));
        }
        Ok(Self {
            written,
            normalised,
            cron,
        })
    }

    /// The six-field form handed to the scheduler.
    pub fn six_fields(&self) -> &str {
        &self.normalised
    }

    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The first time strictly after `after` at which the schedule fires.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

/// The parser the scheduler itself uses: seconds required, day-of-month and
/// day-of-week combined with AND as in Vixie cron's documented rule of thumb.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.normalised == other.normalised
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.written)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_get_a_zero_seconds_field() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(s.six_fields(), "0 */5 * * * *");
        let t0 = DateTime::parse_from_rfc3339("2026-11-28T11:02:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = s.next_after(t0).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-28T11:05:00+00:00");
    }

    #[test]
    fn six_fields_are_kept() {
        assert_eq!(Schedule::parse("*/2 * * * * *").unwrap().six_fields(), "*/2 * * * * *");
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "0 0 31 2 *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
