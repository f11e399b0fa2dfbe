//! When to renew and when to retry.
//!
//! - With ARI (RFC 9773) the CA suggests a window; a time is picked at
//!   random inside it, once per certificate, so a fleet spreads out.
//! - Without ARI: when a third of the lifetime is left, or half for
//!   certificates of 10 days or less (short-lived certificates must not
//!   wait for a fixed "30 days before"), moved earlier by a random share of
//!   up to 2% of the lifetime so hosts with the same certificate do not all
//!   renew in the same minute.
//! - A failed attempt is retried after 1 minute, 10 minutes, 100 minutes,
//!   then daily (what Let's Encrypt recommends), never hammering the CA.

use chrono::{NaiveDateTime, TimeDelta};

/// A random fraction in [0, 1) from the OS generator.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A time inside `[start, end)`, `unit` of the way in (clamped to `end`'s
/// side of `start` when the window is empty or inverted).
pub fn pick_in_window(start: NaiveDateTime, end: NaiveDateTime, unit: f64) -> NaiveDateTime {
    if end <= start {
        return start;
    }
    let span = (end - start).num_seconds() as f64;
    start + TimeDelta::seconds((span * unit.clamp(0.0, 1.0)) as i64)
}

/// A renewal time already chosen is kept while it lies inside the CA's
/// current window (RFC 9773: do not re-roll on every poll); when the window
/// moved past it, a new time is picked inside the new window.
pub fn replan(current: Option<NaiveDateTime>, start: NaiveDateTime, end: NaiveDateTime, unit: f64) -> NaiveDateTime {
    match current {
        Some(at) if at >= start && at < end => at,
        _ => pick_in_window(start, end, unit),
    }
}

/// The lifetime rule: when renewal falls due, before jitter.
pub fn lifetime_due(not_before: NaiveDateTime, not_after: NaiveDateTime) -> NaiveDateTime {
    let lifetime = not_after - not_before;
    let left = if lifetime <= TimeDelta::days(10) {
        lifetime / 2
    } else {
        lifetime / 3
    };
    not_after - left
}

/// The lifetime rule with the fleet spread: up to 2% of the lifetime earlier.
pub fn renew_at(not_before: NaiveDateTime, not_after: NaiveDateTime, unit: f64) -> NaiveDateTime {
    let spread = (not_after - not_before).num_seconds() as f64 * 0.02 * unit.clamp(0.0, 1.0);
    lifetime_due(not_before, not_after) - TimeDelta::seconds(spread as i64)
}

/// How long to wait after the `failures`-th consecutive failure.
pub fn retry_delay(failures: u32) -> TimeDelta {
    match failures {
        0 | 1 => TimeDelta::minutes(1),
        2 => TimeDelta::minutes(10),
        3 => TimeDelta::minutes(100),
        _ => TimeDelta::days(1),
    }
}

/// How long to wait after a deploy hook's `failures`-th consecutive
/// failure: shorter than a renewal's, since nothing asks the CA, and capped
/// at an hour, since the service serves the old certificate meanwhile.
pub fn deploy_retry_delay(failures: u32) -> TimeDelta {
    match failures {
        0 | 1 => TimeDelta::minutes(1),
        2 => TimeDelta::minutes(5),
        3 => TimeDelta::minutes(15),
        _ => TimeDelta::hours(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    #[test]
    fn a_third_of_the_lifetime_or_half_for_short_certificates() {
        // 90 days: due with 30 days left.
        assert_eq!(
            lifetime_due(t("2026-01-01 00:00"), t("2026-04-01 00:00")),
            t("2026-03-02 00:00")
        );
        // 6 days: due with 3 days left.
        assert_eq!(
            lifetime_due(t("2026-01-01 00:00"), t("2026-01-07 00:00")),
            t("2026-01-04 00:00")
        );
        // The spread only ever moves renewal earlier, by at most 2%.
        let nb = t("2026-01-01 00:00");
        let na = t("2026-04-01 00:00");
        assert_eq!(renew_at(nb, na, 0.0), lifetime_due(nb, na));
        let earliest = renew_at(nb, na, 0.999_999);
        assert!(earliest < lifetime_due(nb, na));
        assert!(lifetime_due(nb, na) - earliest <= TimeDelta::hours(44));
    }

    #[test]
    fn ari_window_choice_stays_inside_the_window() {
        let start = t("2026-03-01 00:00");
        let end = t("2026-03-03 00:00");
        assert_eq!(pick_in_window(start, end, 0.0), start);
        assert_eq!(pick_in_window(start, end, 0.5), t("2026-03-02 00:00"));
        assert!(pick_in_window(start, end, 0.999_999) < end);
        for _ in 0..1000 {
            let at = pick_in_window(start, end, random_unit());
            assert!(at >= start && at < end);
        }
        // A window in the wrong order means "now-ish": its start.
        assert_eq!(pick_in_window(end, start, 0.7), end);
    }

    #[test]
    fn a_chosen_time_is_kept_while_the_window_still_holds_it() {
        let chosen = t("2026-03-02 00:00");
        assert_eq!(
            replan(Some(chosen), t("2026-03-01 00:00"), t("2026-03-03 00:00"), 0.9),
            chosen
        );
        // The CA moved the window earlier (an incident): renew inside it.
        let moved = replan(Some(chosen), t("2026-02-10 00:00"), t("2026-02-11 00:00"), 0.5);
        assert_eq!(moved, t("2026-02-10 12:00"));
        assert_eq!(
            replan(None, t("2026-02-10 00:00"), t("2026-02-11 00:00"), 0.0),
            t("2026-02-10 00:00")
        );
    }

    #[test]
    fn retries_back_off_to_daily() {
        let d: Vec<i64> = (1..=6).map(|n| retry_delay(n).num_minutes()).collect();
        assert_eq!(d, [1, 10, 100, 1440, 1440, 1440]);
    }
}
