//! One pass over every configured certificate: what `renew-certs` and
//! `keywarden certs renew|check` run.
//!
//! For an issued certificate: read what is installed; issue now when it is
//! missing or no longer matches its domains or key type; otherwise renew
//! once its renewal time has come (ARI choice or lifetime rule, fixed once
//! per serial), unless a failed attempt's back-off has not run out. A
//! success installs the pair atomically, records it and runs the deploy hook
//! once; a failure leaves the installed files alone, records the error and
//! the next attempt, and (near expiry) emails the admins once per window.
//! For a monitored certificate: read it and email the admins when it
//! enters a warning window.

use crate::telemetry::one_line;
use std::path::Path;

use chrono::NaiveDateTime;
use serde::Serialize;
use tracing::{error, info, warn};

use super::certinfo::{self, CertInfo};
use super::client::{self, Issued};
use super::decide::{decide, CertState, Decision, OwedDeploy};
pub use super::decide::{Mode, Outcome};
use super::install::{self, Target};
use super::store::{self, kind, CertRow};
use super::{hooks, monitor, timing, AcmeError};
use crate::config::acme::{CertificateConfig, MonitorConfig};
use crate::config::permissions::{IdSpec, ModeSpec};
use crate::config::Config;
use crate::db::DbConnection;
use crate::notify::alerts::enqueue_admin_alert;
use crate::notify::render::AdminAlert;
use crate::sys::ids;

/// How often the CA's ARI window is asked for again for the same
/// certificate.
const ARI_POLL: chrono::TimeDelta = chrono::TimeDelta::hours(6);

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub kind: &'static str,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The certificate in place after the pass, if any.
    pub serial: Option<String>,
    pub not_after: Option<NaiveDateTime>,
}

fn exact(mode: ModeSpec) -> u32 {
    match mode {
        ModeSpec::Exactly(m) | ModeSpec::AtMost(m) => m,
    }
}

/// Why the installed certificate must be replaced now, if it must.
fn replace_now(cert: &CertificateConfig, installed: &Result<CertInfo, String>) -> Option<String> {
    match installed {
        Err(e) => Some(e.clone()),
        Ok(info) if !info.matches_domains(&cert.domains) => Some(format!(
            "the installed certificate names {} but the configuration asks for {}",
            info.domains.join(", "),
            cert.domains.join(", ")
        )),
        Ok(info) if info.key_type != Some(cert.key_type) => Some(format!(
            "the installed key is {} but the configuration asks for {}",
            info.key_type.map(|k| k.as_str()).unwrap_or("of another type"),
            cert.key_type.as_str()
        )),
        Ok(_) if !cert.key_file.exists() => Some(format!("{} is missing", cert.key_file.display())),
        Ok(_) => None,
    }
}

fn read_installed(path: &Path) -> Result<CertInfo, String> {
    match std::fs::read(path) {
        Ok(pem) => certinfo::parse_pem_leaf(&pem).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{} does not exist yet", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Runs a pass. `only` limits it to one certificate or monitor by name.
pub fn run_pass(
    conn: &mut DbConnection,
    config: &Config,
    only: Option<&str>,
    mode: Mode,
) -> Result<Vec<Report>, AcmeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AcmeError::io("starting the ACME runtime"))?;
    let mut session = Session {
        conn,
        config,
        runtime,
        account: None,
        ari_offered: None,
    };
    let mut reports = Vec::new();
    for cert in config.certificates.iter().filter(|c| only.is_none_or(|n| n == c.name)) {
        reports.push(session.issued(cert, mode)?);
    }
    for m in config.monitors.iter().filter(|m| only.is_none_or(|n| n == m.name)) {
        reports.push(session.monitored(m)?);
    }
    Ok(reports)
}

struct Session<'a> {
    conn: &'a mut DbConnection,
    config: &'a Config,
    runtime: tokio::runtime::Runtime,
    account: Option<instant_acme::Account>,
    /// Whether the CA offers ARI, once a renewal-info request has told.
    ari_offered: Option<bool>,
}

impl Session<'_> {
    fn account(&mut self) -> Result<instant_acme::Account, AcmeError> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let acme = self
            .config
            .acme
            .as_ref()
            .ok_or_else(|| AcmeError::Config("no [acme] section".into()))?;
        let account = self.runtime.block_on(client::account(acme))?;
        self.account = Some(account.clone());
        Ok(account)
    }

    /// The CA's suggested renewal window, when it offers ARI.
    fn ari_window(&mut self, info: &CertInfo) -> Option<(NaiveDateTime, NaiveDateTime)> {
        let ari_id = info.ari_id.as_ref()?;
        let window = self
            .account()
            .and_then(|account| self.runtime.block_on(client::renewal_window(&account, ari_id)));
        match window {
            Ok(w) => {
                self.ari_offered = Some(w.is_some());
                w
            }
            Err(e) => {
                warn!(
                    "renewal info unavailable ({}); using the lifetime rule",
                    one_line(&e.to_string())
                );
                None
            }
        }
    }

    /// When the certificate in place should be renewed: a random time in
    /// the CA's ARI window when it offers one, else the lifetime rule.
    fn plan(&mut self, info: &CertInfo) -> NaiveDateTime {
        match self.ari_window(info) {
            Some((start, end)) => timing::pick_in_window(start, end, timing::random_unit()),
            None => timing::renew_at(info.not_before, info.not_after, timing::random_unit()),
        }
    }

    /// When the certificate in place is to be renewed. Decided once per
    /// serial; with ARI the window is asked for again every ARI_POLL and
    /// the time kept while it fits.
    fn renewal_time(
        &mut self,
        row: &CertRow,
        info: &CertInfo,
        mode: Mode,
        now: NaiveDateTime,
    ) -> Result<Option<NaiveDateTime>, AcmeError> {
        if row.serial.as_deref() != Some(info.serial.as_str()) || row.renew_at.is_none() {
            let at = if mode == Mode::CheckOnly {
                timing::renew_at(info.not_before, info.not_after, timing::random_unit())
            } else {
                self.plan(info)
            };
            store::record_observed(self.conn, row.id, info, Some(at), now)?;
            return Ok(Some(at));
        }
        let poll_due = row.renew_planned_at.is_none_or(|t| now - t >= ARI_POLL);
        if mode != Mode::CheckOnly && info.ari_id.is_some() && poll_due {
            // Ask the CA again: it moves windows earlier after incidents.
            if let Some((start, end)) = self.ari_window(info) {
                let at = timing::replan(row.renew_at, start, end, timing::random_unit());
                store::record_plan(self.conn, row.id, at, now)?;
                return Ok(Some(at));
            }
        }
        Ok(row.renew_at)
    }

    /// The ARI id of the certificate being replaced, when the CA speaks ARI
    /// (it may then relax rate limits for the renewal); a CA without ARI
    /// would refuse an order carrying `replaces`.
    fn replaces(&mut self, installed: Option<&CertInfo>) -> Option<String> {
        match installed {
            Some(info) if info.ari_id.is_some() => {
                let offered = match self.ari_offered {
                    Some(known) => known,
                    None => self.ari_window(info).is_some(),
                };
                if offered {
                    info.ari_id.clone()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn issued(&mut self, cert: &CertificateConfig, mode: Mode) -> Result<Report, AcmeError> {
        let now = crate::db::now();
        let row = store::ensure(
            self.conn,
            &cert.name,
            kind::ISSUED,
            &cert.cert_file.display().to_string(),
            now,
        )?;
        let installed = read_installed(&cert.cert_file);
        let reason = replace_now(cert, &installed);
        let report = |outcome: Outcome, info: Option<&CertInfo>| Report {
            name: cert.name.clone(),
            kind: kind::ISSUED,
            outcome,
            serial: info.map(|i| i.serial.clone()),
            not_after: info.map(|i| i.not_after),
        };
        let renew_at = match &installed {
            Ok(info) => self.renewal_time(&row, info, mode, now)?,
            Err(_) => row.renew_at,
        };
        // A deploy is owed only for the certificate still in place.
        let owed = match (&installed, row.pending_deploy()) {
            (Ok(info), Some(serial)) if info.serial == serial => Some(OwedDeploy {
                error: row.deploy_error.as_deref(),
                failures: row.deploy_failures,
                next_attempt_at: row.next_deploy_at.unwrap_or(now),
            }),
            _ => None,
        };
        let state = CertState {
            replace_now: reason.as_deref(),
            renew_at,
            failures: row.failures,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error.as_deref(),
            deploy: owed,
        };
        let why = match decide(&state, mode, now) {
            Decision::Report(outcome) => return Ok(report(outcome, installed.as_ref().ok())),
            Decision::Deploy => {
                let Ok(info) = &installed else {
                    return Ok(report(Outcome::NotDue { renew_at: now }, None));
                };
                info!(cert = %cert.name, "certificate {}: running the deploy hook again", cert.name);
                let outcome = self.deploy_owed(cert, &row, info, row.deploy_failures, Outcome::Deployed)?;
                return Ok(report(outcome, Some(info)));
            }
            Decision::Issue { why } => why,
        };
        info!(cert = %cert.name, "certificate {}: issuing ({why})", cert.name);
        let replaces = self.replaces(installed.as_ref().ok());
        let obtained = self.obtain_once_more_if_unknown(cert, replaces.as_deref());
        match obtained {
            Ok(info) => {
                let next_renewal = self.plan(&info);
                let replaced = installed.as_ref().ok().map(|i| i.serial.as_str());
                let has_hook = !cert.deploy_hook.is_empty();
                store::record_install(
                    self.conn,
                    row.id,
                    &info,
                    replaced,
                    Some(next_renewal),
                    has_hook,
                    crate::db::now(),
                )?;
                info!(
                    cert = %cert.name, serial = %info.serial, not_after = %info.not_after, issuer = %info.issuer,
                    message_id = crate::telemetry::message_ids::CERT_RENEWED,
                    "certificate {} installed: serial {}, valid until {} UTC", cert.name, info.serial, info.not_after
                );
                let outcome = if has_hook {
                    self.deploy_owed(cert, &row, &info, 0, Outcome::Renewed)?
                } else {
                    Outcome::Renewed
                };
                Ok(report(outcome, Some(&info)))
            }
            Err(e) => {
                let error = e.to_string();
                let failures = row.failures.saturating_add(1);
                let next = crate::db::now() + timing::retry_delay(failures as u32);
                store::record_failure(self.conn, row.id, &error, failures, next, crate::db::now())?;
                error!(
                    cert = %cert.name, error = %error, failures, next_attempt_at = %next,
                    message_id = crate::telemetry::message_ids::CERT_RENEWAL_FAILED,
                    "certificate {}: renewal failed ({failures} in a row), next attempt at {next} UTC: {error}", cert.name
                );
                self.alert_failing(cert, &row, installed.as_ref().ok(), &error)?;
                Ok(report(Outcome::Failed { error }, installed.as_ref().ok()))
            }
        }
    }

    /// Obtains and installs; when the CA no longer knows the stored account
    /// (a test CA restarted, a staging reset), sets the file aside and
    /// registers again, once.
    fn obtain_once_more_if_unknown(
        &mut self,
        cert: &CertificateConfig,
        replaces: Option<&str>,
    ) -> Result<CertInfo, AcmeError> {
        let obtained = self.obtain_and_install(cert, replaces);
        if !matches!(&obtained, Err(AcmeError::UnknownAccount { .. })) {
            return obtained;
        }
        let Some(acme) = &self.config.acme else { return obtained };
        let aside = format!("{}.unknown", acme.account_file.display());
        warn!(
            "the CA does not know the stored ACME account; moving {} to {aside} and registering a new one",
            acme.account_file.display()
        );
        let _ = std::fs::rename(&acme.account_file, &aside);
        self.account = None;
        self.obtain_and_install(cert, None)
    }

    /// Runs the deploy hook owed for `info` (after `failures_before` failed
    /// runs of it): a success settles the debt and reads as `success`; a
    /// failure is recorded with its back-off and alerted once per streak.
    fn deploy_owed(
        &mut self,
        cert: &CertificateConfig,
        row: &CertRow,
        info: &CertInfo,
        failures_before: i32,
        success: Outcome,
    ) -> Result<Outcome, AcmeError> {
        let env = [
            ("KEYWARDEN_CERT_NAME", cert.name.clone()),
            ("KEYWARDEN_CERT_FILE", cert.cert_file.display().to_string()),
            ("KEYWARDEN_KEY_FILE", cert.key_file.display().to_string()),
            ("KEYWARDEN_DOMAINS", cert.domains.join(" ")),
            ("KEYWARDEN_SERIAL", info.serial.clone()),
        ];
        let error = match hooks::run(&cert.deploy_hook, &env, cert.hook_timeout.as_duration()) {
            Ok(out) => {
                store::record_deployed(self.conn, row.id, crate::db::now())?;
                info!(cert = %cert.name, "certificate {}: deploy hook ran: {}", cert.name, one_line(&out));
                return Ok(success);
            }
            Err(e) => one_line(&e.to_string()),
        };
        let failures = failures_before.saturating_add(1);
        let now = crate::db::now();
        let next = now + timing::deploy_retry_delay(failures as u32);
        store::record_deploy_failure(self.conn, row.id, &error, failures, next, now)?;
        error!(
            cert = %cert.name, error = %error, failures, next_attempt_at = %next,
            message_id = crate::telemetry::message_ids::CERT_DEPLOY_FAILED,
            "certificate {}: deploy hook failed ({failures} in a row), next attempt at {next} UTC: {error}", cert.name
        );
        let alert = AdminAlert {
            title: format!("Certificate {}: the deploy hook keeps failing", cert.name),
            lines: vec![
                format!("Installed serial: {} (valid until {} UTC)", info.serial, info.not_after.format("%Y-%m-%d %H:%M")),
                format!("Hook: {}", cert.deploy_hook.join(" ")),
                format!("Error: {error}"),
                "The service may still serve the previous certificate.".to_string(),
            ],
            action: Some(format!(
                "Fix the hook; keywarden runs it again on its own (next at {next} UTC), or run `keywarden certs renew {} --force`.",
                cert.name
            )),
        };
        // One alert per streak: the installed serial names the streak.
        enqueue_admin_alert(
            self.conn,
            &self.config.notifications,
            crate::notify::kind::CERTIFICATE,
            &cert.name,
            &format!("deploy:{}", info.serial),
            "deploy",
            &alert,
            now,
        )?;
        Ok(Outcome::DeployFailed {
            error,
            failures,
            next_attempt_at: next,
        })
    }

    fn obtain_and_install(&mut self, cert: &CertificateConfig, replaces: Option<&str>) -> Result<CertInfo, AcmeError> {
        let acme = self
            .config
            .acme
            .as_ref()
            .ok_or_else(|| AcmeError::Config("no [acme] section".into()))?;
        let account = self.account()?;
        let timeout = acme.order_timeout.as_duration() + std::time::Duration::from_secs(30);
        let issued: Issued = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, client::issue(acme, &account, cert, replaces)).await })
            .map_err(|_| AcmeError::Protocol(format!("the order did not complete within {}s", timeout.as_secs())))??;
        let info = certinfo::parse_pem_leaf(issued.chain_pem.as_bytes())?;
        if !info.matches_domains(&cert.domains) {
            return Err(AcmeError::Protocol(format!(
                "the CA issued a certificate for {} instead of {}",
                info.domains.join(", "),
                cert.domains.join(", ")
            )));
        }
        let id = |spec: &Option<IdSpec>, kind| spec.as_ref().map(|s| s.resolve(kind)).transpose();
        let uid = id(&cert.owner, ids::IdKind::User).map_err(AcmeError::Config)?;
        let gid = id(&cert.group, ids::IdKind::Group).map_err(AcmeError::Config)?;
        install::install_pair(
            &Target {
                path: &cert.key_file,
                mode: exact(cert.key_mode),
                uid,
                gid,
            },
            issued.key_pem.as_bytes(),
            &Target {
                path: &cert.cert_file,
                mode: exact(cert.cert_mode),
                uid,
                gid,
            },
            issued.chain_pem.as_bytes(),
        )
        .map_err(AcmeError::io(format!("installing {}", cert.cert_file.display())))?;
        Ok(info)
    }

    fn alert_failing(
        &mut self,
        cert: &CertificateConfig,
        row: &CertRow,
        installed: Option<&CertInfo>,
        error: &str,
    ) -> Result<(), AcmeError> {
        let Some(acme) = &self.config.acme else { return Ok(()) };
        let now = crate::db::now();
        let (window, generation, left) = match installed {
            Some(info) => {
                let left = info.not_after - now;
                if left > acme.alert_margin.as_time_delta() {
                    return Ok(());
                }
                (window_for(self.config, left), info.serial.clone(), describe_left(left))
            }
            None => (
                "missing".to_string(),
                "none".to_string(),
                "no certificate is installed".to_string(),
            ),
        };
        let alert = AdminAlert {
            title: format!("Certificate {} is failing to renew ({left})", cert.name),
            lines: vec![
                format!("Domains: {}", cert.domains.join(", ")),
                format!("File: {}", cert.cert_file.display()),
                format!("Failed attempts in a row: {}", row.failures + 1),
                format!("Last error: {error}"),
            ],
            action: Some(format!(
                "Run `keywarden certs renew {} --force` after fixing the cause; `keywarden certs list` shows the state.",
                cert.name
            )),
        };
        enqueue_admin_alert(
            self.conn,
            &self.config.notifications,
            crate::notify::kind::CERTIFICATE,
            &cert.name,
            &generation,
            &window,
            &alert,
            now,
        )?;
        Ok(())
    }

    fn monitored(&mut self, m: &MonitorConfig) -> Result<Report, AcmeError> {
        let now = crate::db::now();
        let row = store::ensure(self.conn, &m.name, kind::MONITORED, &monitor::source(m), now)?;
        let report = |outcome: Outcome, serial: Option<String>, not_after: Option<NaiveDateTime>| Report {
            name: m.name.clone(),
            kind: kind::MONITORED,
            outcome,
            serial,
            not_after,
        };
        let info = match monitor::read(m) {
            Ok(info) => info,
            Err(e) => {
                let e = e.to_string();
                store::record_error(self.conn, row.id, &e, now)?;
                warn!(cert = %m.name, "monitored certificate {} unreadable: {}", m.name, one_line(&e));
                return Ok(report(
                    Outcome::Unreadable { error: e },
                    row.serial.clone(),
                    row.not_after,
                ));
            }
        };
        store::record_success(self.conn, row.id, &info, None, now)?;
        if let Some(outcome) = self.stale(m, row.id, &info, now)? {
            return Ok(report(outcome, Some(info.serial), Some(info.not_after)));
        }
        let left = info.not_after - now;
        let widest = self
            .config
            .notifications
            .sorted_windows()
            .first()
            .map(|w| w.as_time_delta());
        if widest.is_some_and(|w| left <= w) || left <= chrono::TimeDelta::zero() {
            let window = window_for(self.config, left);
            let alert = AdminAlert {
                title: format!("Certificate {} {}", m.name, describe_left(left)),
                lines: vec![
                    format!("Source: {}", monitor::source(m)),
                    format!("Names: {}", info.domains.join(", ")),
                    format!("Issuer: {}", info.issuer),
                    format!("Valid until: {} UTC", info.not_after.format("%Y-%m-%d %H:%M")),
                ],
                action: Some("keywarden does not issue this certificate: renew it where it comes from.".into()),
            };
            enqueue_admin_alert(
                self.conn,
                &self.config.notifications,
                crate::notify::kind::CERTIFICATE,
                &m.name,
                &info.serial,
                &window,
                &alert,
                now,
            )?;
        }
        Ok(report(Outcome::Monitored, Some(info.serial), Some(info.not_after)))
    }

    /// Whether the endpoint serves a certificate keywarden has replaced,
    /// longer than `stale_after` after the install: recorded, logged and
    /// alerted once per served serial.
    fn stale(
        &mut self,
        m: &MonitorConfig,
        row_id: i64,
        info: &CertInfo,
        now: NaiveDateTime,
    ) -> Result<Option<Outcome>, AcmeError> {
        let Some(newer) = store::replaced_by(self.conn, &info.serial)? else {
            return Ok(None);
        };
        let (Some(installed_at), Some(current)) = (newer.installed_at, newer.serial.clone()) else {
            return Ok(None);
        };
        if current == info.serial || now - installed_at < m.stale_after.as_time_delta() {
            return Ok(None);
        }
        let error = format!(
            "serving a stale certificate: serial {} was replaced by {current} ({}) at {installed_at} UTC",
            info.serial, newer.name
        );
        store::record_error(self.conn, row_id, &error, now)?;
        warn!(
            cert = %m.name, serial = %info.serial, expected = %current,
            message_id = crate::telemetry::message_ids::CERT_STALE,
            "monitored endpoint {}: {error}", m.name
        );
        let alert = AdminAlert {
            title: format!("{} serves a stale certificate", m.name),
            lines: vec![
                format!("Source: {}", monitor::source(m)),
                format!("Served serial: {} (valid until {} UTC)", info.serial, info.not_after.format("%Y-%m-%d %H:%M")),
                format!("Installed instead: {current} by certificate {} at {installed_at} UTC", newer.name),
            ],
            action: Some(format!(
                "The service did not load the new files: check certificate {}'s deploy hook (`keywarden certs list`) and reload the service.",
                newer.name
            )),
        };
        enqueue_admin_alert(
            self.conn,
            &self.config.notifications,
            crate::notify::kind::CERTIFICATE,
            &m.name,
            &format!("stale:{}", info.serial),
            "stale",
            &alert,
            now,
        )?;
        Ok(Some(Outcome::Stale {
            replaced_by: current,
            installed_at,
        }))
    }
}

/// The tightest warning window `left` is inside ("7d"), or "expired".
fn window_for(config: &Config, left: chrono::TimeDelta) -> String {
    if left <= chrono::TimeDelta::zero() {
        return "expired".into();
    }
    config
        .notifications
        .sorted_windows()
        .into_iter()
        .rev()
        .find(|w| left <= w.as_time_delta())
        .map(|w| w.to_string())
        .unwrap_or_else(|| "margin".into())
}

fn describe_left(left: chrono::TimeDelta) -> String {
    if left <= chrono::TimeDelta::zero() {
        "has expired".into()
    } else if left.num_days() >= 1 {
        format!("expires in {} day(s)", left.num_days())
    } else {
        format!("expires in {} hour(s)", left.num_hours().max(1))
    }
}
