//! What a pass does with one issued certificate, decided from its state
//! and the time alone (no I/O), so that every case has a unit test;
//! [`super::renew`] reads the state, asks, and carries the decision out.

use chrono::NaiveDateTime;
use serde::Serialize;

/// What happened to one certificate in a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Renewed {
        serial: String,
        not_after: NaiveDateTime,
    },
    NotDue {
        renew_at: NaiveDateTime,
    },
    /// A failed attempt's back-off has not run out.
    Waiting {
        next_attempt_at: NaiveDateTime,
        last_error: String,
    },
    Failed {
        error: String,
    },
    /// Installed, but its deploy hook failed.
    DeployFailed {
        error: String,
    },
    Monitored {
        not_after: NaiveDateTime,
    },
    Unreadable {
        error: String,
    },
}

impl Outcome {
    /// Whether `certs check` counts this as a problem.
    pub fn is_failing(&self) -> bool {
        matches!(
            self,
            Outcome::Waiting { .. }
                | Outcome::Failed { .. }
                | Outcome::DeployFailed { .. }
                | Outcome::Unreadable { .. }
        )
    }
}

/// Whether a pass may contact the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Renew what is due.
    Renew,
    /// Renew now, due or not (`certs renew NAME --force`).
    Force,
    /// Only read and report (`certs check`).
    CheckOnly,
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct CertState<'a> {
    /// Why the installed files must be replaced at once (missing, other
    /// domains, unreadable), when they must.
    pub replace_now: Option<&'a str>,
    /// When the certificate in place is to be renewed.
    pub renew_at: Option<NaiveDateTime>,
    /// Failed attempts in a row, and when the next may start.
    pub failures: i32,
    pub next_attempt_at: Option<NaiveDateTime>,
    /// The last error recorded (a failed attempt or deploy hook).
    pub last_error: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to issue: this is how the certificate stands.
    Report(Outcome),
    /// Order a certificate now, for this reason.
    Issue { why: String },
}

/// `certs check` only reports. Otherwise a certificate is issued when its
/// files must be replaced, when forced, or when its renewal time has come;
/// but not while a failed attempt's back-off runs (unless forced).
pub fn decide(state: &CertState<'_>, mode: Mode, now: NaiveDateTime) -> Decision {
    let renew_at = state.renew_at.unwrap_or(now);
    if mode == Mode::CheckOnly {
        let outcome = match (state.replace_now, state.last_error, state.next_attempt_at) {
            (_, Some(e), Some(next)) if state.failures > 0 => Outcome::Waiting {
                next_attempt_at: next,
                last_error: e.to_string(),
            },
            (_, Some(e), _) => Outcome::DeployFailed { error: e.to_string() },
            (Some(r), None, _) => Outcome::Failed { error: r.to_string() },
            (None, None, _) => Outcome::NotDue { renew_at },
        };
        return Decision::Report(outcome);
    }
    if mode != Mode::Force && state.failures > 0 {
        if let Some(next) = state.next_attempt_at.filter(|n| *n > now) {
            return Decision::Report(Outcome::Waiting {
                next_attempt_at: next,
                last_error: state.last_error.unwrap_or_default().to_string(),
            });
        }
    }
    let due = state.replace_now.is_some() || mode == Mode::Force || state.renew_at.is_some_and(|at| now >= at);
    if !due {
        return Decision::Report(Outcome::NotDue { renew_at });
    }
    let why = match (state.replace_now, mode) {
        (Some(reason), _) => reason.to_string(),
        (None, Mode::Force) => "renewal forced".to_string(),
        (None, _) => "renewal is due".to_string(),
    };
    Decision::Issue { why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn at(minutes: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap().naive_utc() + TimeDelta::minutes(minutes)
    }

    fn healthy(renew_at: i64) -> CertState<'static> {
        CertState {
            replace_now: None,
            renew_at: Some(at(renew_at)),
            failures: 0,
            next_attempt_at: None,
            last_error: None,
        }
    }

    fn issue(why: &str) -> Decision {
        Decision::Issue { why: why.to_string() }
    }

    #[test]
    fn renews_once_its_time_has_come() {
        assert_eq!(
            decide(&healthy(10), Mode::Renew, at(0)),
            Decision::Report(Outcome::NotDue { renew_at: at(10) })
        );
        assert_eq!(decide(&healthy(10), Mode::Renew, at(10)), issue("renewal is due"));
        assert_eq!(decide(&healthy(10), Mode::Renew, at(11)), issue("renewal is due"));
    }

    #[test]
    fn missing_or_mismatched_files_are_replaced_at_once() {
        let state = CertState {
            replace_now: Some("the certificate file does not exist yet"),
            renew_at: None,
            ..healthy(0)
        };
        assert_eq!(
            decide(&state, Mode::Renew, at(0)),
            issue("the certificate file does not exist yet")
        );
    }

    #[test]
    fn force_issues_whatever_the_time_and_the_back_off() {
        assert_eq!(decide(&healthy(600), Mode::Force, at(0)), issue("renewal forced"));
        let backing_off = CertState {
            failures: 2,
            next_attempt_at: Some(at(30)),
            last_error: Some("CA down"),
            ..healthy(-5)
        };
        assert_eq!(decide(&backing_off, Mode::Force, at(0)), issue("renewal forced"));
    }

    #[test]
    fn a_failure_waits_for_its_back_off() {
        let state = CertState {
            failures: 1,
            next_attempt_at: Some(at(10)),
            last_error: Some("CA down"),
            ..healthy(-5)
        };
        assert_eq!(
            decide(&state, Mode::Renew, at(0)),
            Decision::Report(Outcome::Waiting {
                next_attempt_at: at(10),
                last_error: "CA down".into()
            })
        );
        // Once the back-off has run out, the due renewal is tried again.
        assert_eq!(decide(&state, Mode::Renew, at(10)), issue("renewal is due"));
    }

    #[test]
    fn check_only_reports_and_never_issues() {
        assert_eq!(
            decide(&healthy(-5), Mode::CheckOnly, at(0)),
            Decision::Report(Outcome::NotDue { renew_at: at(-5) })
        );
        let missing = CertState {
            replace_now: Some("missing"),
            ..healthy(0)
        };
        assert_eq!(
            decide(&missing, Mode::CheckOnly, at(0)),
            Decision::Report(Outcome::Failed {
                error: "missing".into()
            })
        );
        let hook_failed = CertState {
            last_error: Some("deploy hook: exit 1"),
            ..healthy(60)
        };
        assert_eq!(
            decide(&hook_failed, Mode::CheckOnly, at(0)),
            Decision::Report(Outcome::DeployFailed {
                error: "deploy hook: exit 1".into()
            })
        );
        let failing = CertState {
            failures: 3,
            next_attempt_at: Some(at(100)),
            last_error: Some("rate limited"),
            ..healthy(-60)
        };
        assert_eq!(
            decide(&failing, Mode::CheckOnly, at(0)),
            Decision::Report(Outcome::Waiting {
                next_attempt_at: at(100),
                last_error: "rate limited".into()
            })
        );
    }
}
