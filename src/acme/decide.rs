//! What a pass does with one issued certificate, decided from its state
//! and the time alone (no I/O), so that every case has a unit test;
//! [`super::renew`] reads the state, asks, and carries the decision out.

use chrono::NaiveDateTime;
use serde::Serialize;

/// What happened to one certificate in a pass. The serial and validity
/// of the certificate in place are the [`super::renew::Report`]'s.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    Renewed,
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
    /// Installed, but its deploy hook has not succeeded: the service may
    /// still serve the previous certificate. Retried with back-off.
    DeployFailed {
        error: String,
        failures: i32,
        next_attempt_at: NaiveDateTime,
    },
    /// The deploy hook owed since an earlier pass ran and succeeded.
    Deployed,
    Monitored,
    /// A monitored endpoint still serves the certificate that keywarden
    /// replaced (`replaced_by`) some time after the install.
    Stale {
        replaced_by: String,
        installed_at: NaiveDateTime,
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
                | Outcome::Stale { .. }
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

/// A deploy hook owed for the certificate in place.
#[derive(Debug, Clone, Copy)]
pub struct OwedDeploy<'a> {
    /// The last failure's error (none when the hook never ran: a pass was
    /// cut off between the install and the hook).
    pub error: Option<&'a str>,
    pub failures: i32,
    pub next_attempt_at: NaiveDateTime,
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
    /// The last failed attempt's error.
    pub last_error: Option<&'a str>,
    /// The deploy hook owed for the certificate in place, if any.
    pub deploy: Option<OwedDeploy<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to issue: this is how the certificate stands.
    Report(Outcome),
    /// Run the owed deploy hook again (its back-off has run out).
    Deploy,
    /// Order a certificate now, for this reason.
    Issue { why: String },
}

impl OwedDeploy<'_> {
    fn outcome(&self) -> Outcome {
        Outcome::DeployFailed {
            error: self.error.unwrap_or("the deploy hook has not run yet").to_string(),
            failures: self.failures,
            next_attempt_at: self.next_attempt_at,
        }
    }
}

/// `certs check` only reports. Otherwise an owed deploy hook is run again
/// once its back-off runs out (before anything else: the service serves
/// the old certificate until it succeeds); a certificate is issued when
/// its files must be replaced, when forced, or when its renewal time has
/// come; but not while a failed attempt's back-off runs (unless forced).
pub fn decide(state: &CertState<'_>, mode: Mode, now: NaiveDateTime) -> Decision {
    let renew_at = state.renew_at.unwrap_or(now);
    if mode == Mode::CheckOnly {
        let outcome = match (state.deploy, state.replace_now, state.last_error, state.next_attempt_at) {
            (Some(owed), None, _, _) => owed.outcome(),
            (_, _, Some(e), Some(next)) if state.failures > 0 => Outcome::Waiting {
                next_attempt_at: next,
                last_error: e.to_string(),
            },
            (_, Some(r), _, _) => Outcome::Failed { error: r.to_string() },
            (_, None, _, _) => Outcome::NotDue { renew_at },
        };
        return Decision::Report(outcome);
    }
    if let (Some(owed), None, Mode::Renew) = (state.deploy, state.replace_now, mode) {
        return if owed.next_attempt_at <= now {
            Decision::Deploy
        } else {
            Decision::Report(owed.outcome())
        };
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
            deploy: None,
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
            deploy: Some(OwedDeploy {
                error: Some("exit 1"),
                failures: 1,
                next_attempt_at: at(1),
            }),
            ..healthy(60)
        };
        assert_eq!(
            decide(&hook_failed, Mode::CheckOnly, at(5)),
            Decision::Report(Outcome::DeployFailed {
                error: "exit 1".into(),
                failures: 1,
                next_attempt_at: at(1)
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

    #[test]
    fn an_owed_deploy_is_retried_after_its_back_off_and_before_a_renewal() {
        let owed = CertState {
            deploy: Some(OwedDeploy {
                error: Some("kill: Operation not permitted"),
                failures: 2,
                next_attempt_at: at(10),
            }),
            ..healthy(-5)
        };
        assert_eq!(
            decide(&owed, Mode::Renew, at(0)),
            Decision::Report(Outcome::DeployFailed {
                error: "kill: Operation not permitted".into(),
                failures: 2,
                next_attempt_at: at(10)
            })
        );
        assert_eq!(decide(&owed, Mode::Renew, at(10)), Decision::Deploy);
        // Forcing renews (and the new certificate's hook runs after its install).
        assert_eq!(decide(&owed, Mode::Force, at(0)), issue("renewal forced"));
        // Files that must be replaced come first: a hook for them would deploy nothing new.
        let missing = CertState {
            replace_now: Some("missing"),
            ..owed
        };
        assert_eq!(decide(&missing, Mode::Renew, at(0)), issue("missing"));
    }
}
