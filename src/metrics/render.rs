//! The exposition: OpenMetrics 1.0 text for scrapes that ask for it, and
//! Prometheus's text format 0.0.4 for node_exporter's textfile collector and
//! for plain scrapes. The two differ only in how a counter's family is
//! named on its `# TYPE` line and in the closing `# EOF`; every value is a
//! gauge or a counter, which both formats know.

use std::fmt::Write;

use chrono::NaiveDateTime;

use super::counters::JobCounters;
use super::snapshot::Snapshot;
use crate::acme::store::{kind, CertRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// A label value escaped as both formats require.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(t: NaiveDateTime) -> f64 {
    t.and_utc().timestamp_millis() as f64 / 1000.0
}

struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    /// Starts a family; counters are named without `_total` in OpenMetrics.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.trim_end_matches("_total"),
            _ => name,
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A gauge family with one sample per item that has a value.
    fn gauges<T>(
        &mut self,
        name: &str,
        help: &str,
        items: &[T],
        sample: impl Fn(&T) -> Option<(Vec<(&str, String)>, f64)>,
    ) {
        self.family(name, "gauge", help);
        for item in items {
            if let Some((labels, value)) = sample(item) {
                let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.sample(name, &labels, value);
            }
        }
    }
}

/// The whole exposition of `snap` and this process's `counters`.
pub fn render(snap: &Snapshot, counters: &JobCounters, format: Format) -> String {
    let mut w = Writer {
        out: String::with_capacity(8192),
        format,
    };
    w.family("keywarden_build_info", "gauge", "The running keywarden's version.");
    w.sample("keywarden_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    w.family(
        "keywarden_metrics_collected_timestamp_seconds",
        "gauge",
        "When these figures were read from the database.",
    );
    w.sample(
        "keywarden_metrics_collected_timestamp_seconds",
        &[],
        seconds(snap.taken_at),
    );
    w.family(
        "keywarden_metrics_collect_duration_seconds",
        "gauge",
        "How long reading them took.",
    );
    w.sample("keywarden_metrics_collect_duration_seconds", &[], snap.took);
    certificates(&mut w, snap);
    keys(&mut w, snap);
    jobs(&mut w, snap, counters);
    outbox_and_drift(&mut w, snap);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

fn certificates(w: &mut Writer, snap: &Snapshot) {
    let certs = &snap.certificates;
    let id = |c: &CertRow| vec![("name", c.name.clone()), ("kind", c.kind.clone())];
    w.gauges(
        "keywarden_certificate_not_after_timestamp_seconds",
        "The end of validity of the certificate in place (issued) or served (monitored).",
        certs,
        |c| c.not_after.map(|t| (id(c), seconds(t))),
    );
    w.gauges(
        "keywarden_certificate_not_before_timestamp_seconds",
        "The start of validity of the certificate in place or served.",
        certs,
        |c| c.not_before.map(|t| (id(c), seconds(t))),
    );
    let issued: Vec<&CertRow> = certs.iter().filter(|c| c.kind == kind::ISSUED).collect();
    w.gauges(
        "keywarden_certificate_renewal_ok",
        "1 when the last renewal attempt of an issued certificate succeeded (or none has failed since), 0 while failing.",
        &issued,
        |c| Some((id(c), if c.failures == 0 { 1.0 } else { 0.0 })),
    );
    w.gauges(
        "keywarden_certificate_renewal_failures",
        "Failed renewal attempts in a row.",
        &issued,
        |c| Some((id(c), c.failures as f64)),
    );
    w.gauges(
        "keywarden_certificate_last_renewal_success_timestamp_seconds",
        "When the certificate was last issued or renewed.",
        &issued,
        |c| c.last_success_at.map(|t| (id(c), seconds(t))),
    );
    w.gauges(
        "keywarden_certificate_deploy_pending",
        "1 while the deploy hook of the installed certificate has not succeeded.",
        &issued,
        |c| Some((id(c), if c.pending_deploy().is_some() { 1.0 } else { 0.0 })),
    );
    w.gauges(
        "keywarden_certificate_deploy_failures",
        "Failed runs in a row of the deploy hook still owed (0 when none is owed).",
        &issued,
        |c| {
            Some((
                id(c),
                if c.pending_deploy().is_some() {
                    c.deploy_failures as f64
                } else {
                    0.0
                },
            ))
        },
    );
    let monitored: Vec<&CertRow> = certs.iter().filter(|c| c.kind == kind::MONITORED).collect();
    w.gauges(
        "keywarden_certificate_monitor_error",
        "1 when a monitored certificate could not be read or is stale at its last check.",
        &monitored,
        |c| Some((id(c), if c.last_error.is_some() { 1.0 } else { 0.0 })),
    );
}

fn keys(w: &mut Writer, snap: &Snapshot) {
    w.gauges(
        "keywarden_keys",
        "API keys by status.",
        &snap.keys_by_status,
        |(status, n)| Some((vec![("status", status.clone())], *n as f64)),
    );
    w.gauges(
        "keywarden_keys_expiring",
        "Active keys that expire within each notification window.",
        &snap.keys_expiring,
        |(window, n)| Some((vec![("window", window.clone())], *n as f64)),
    );
    w.family(
        "keywarden_key_verifications_valid_total",
        "counter",
        "Successful verifications, all keys (the keys' usage counts).",
    );
    w.sample(
        "keywarden_key_verifications_valid_total",
        &[],
        snap.verifications_valid as f64,
    );
    w.gauges(
        "keywarden_key_verifications_refused_last_hour",
        "Refused verifications recorded in the last hour, by reason.",
        &snap.refusals_last_hour,
        |(reason, n)| Some((vec![("reason", reason.to_string())], *n as f64)),
    );
}

fn jobs(w: &mut Writer, snap: &Snapshot, counters: &JobCounters) {
    let job = |j: &super::snapshot::JobFigures| vec![("job", j.job.to_string())];
    w.gauges(
        "keywarden_job_last_start_timestamp_seconds",
        "When the job's last run started (on any replica).",
        &snap.jobs,
        |j| j.last_start.map(|t| (job(j), seconds(t))),
    );
    w.gauges(
        "keywarden_job_last_end_timestamp_seconds",
        "When the job's last run ended.",
        &snap.jobs,
        |j| j.last_end.map(|t| (job(j), seconds(t))),
    );
    w.gauges(
        "keywarden_job_last_success_timestamp_seconds",
        "When a run of the job last ended well.",
        &snap.jobs,
        |j| j.last_success.map(|t| (job(j), seconds(t))),
    );
    w.gauges(
        "keywarden_job_last_ok",
        "1 when the job's last run ended well, 0 when it failed or was interrupted.",
        &snap.jobs,
        |j| {
            j.last_outcome
                .as_deref()
                .filter(|o| *o != "running")
                .map(|o| (job(j), if o == "ok" { 1.0 } else { 0.0 }))
        },
    );
    w.gauges(
        "keywarden_job_last_rows_affected",
        "Rows the job's last run changed.",
        &snap.jobs,
        |j| j.last_rows.map(|n| (job(j), n as f64)),
    );
    let tallies = counters.read();
    w.family(
        "keywarden_job_runs_total",
        "counter",
        "Runs this daemon started, by job and outcome (ok, failed, skipped).",
    );
    for ((name, outcome), t) in &tallies {
        w.sample(
            "keywarden_job_runs_total",
            &[("job", name), ("outcome", outcome)],
            t.runs as f64,
        );
    }
    w.family(
        "keywarden_job_rows_affected_total",
        "counter",
        "Rows changed by this daemon's runs, by job.",
    );
    let mut rows: std::collections::BTreeMap<&str, u64> = Default::default();
    for ((name, _), t) in &tallies {
        *rows.entry(name).or_default() += t.rows;
    }
    for (name, n) in rows {
        w.sample("keywarden_job_rows_affected_total", &[("job", name)], n as f64);
    }
}

fn outbox_and_drift(w: &mut Writer, snap: &Snapshot) {
    w.gauges(
        "keywarden_outbox_notifications",
        "Notifications in the outbox, by status.",
        &snap.outbox_by_status,
        |(status, n)| Some((vec![("status", status.clone())], *n as f64)),
    );
    w.family(
        "keywarden_outbox_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest notification waiting to be sent (0 when none waits).",
    );
    let age = snap
        .outbox_oldest_pending
        .map(|t| ((snap.taken_at - t).num_milliseconds() as f64 / 1000.0).max(0.0))
        .unwrap_or(0.0);
    w.sample("keywarden_outbox_oldest_pending_age_seconds", &[], age);
    w.family(
        "keywarden_permission_drift_open",
        "gauge",
        "Paths that violate the permission policy now.",
    );
    w.sample("keywarden_permission_drift_open", &[], snap.drift_open as f64);
    w.gauges(
        "keywarden_permission_drift_events_last_day",
        "Permission drift events of the last 24 hours, by action (detected, remediated, remediation-refused, resolved).",
        &snap.drift_events_last_day,
        |(action, n)| Some((vec![("action", action.clone())], *n as f64)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn counters_are_named_per_format_and_openmetrics_ends_with_eof() {
        let snap = Snapshot {
            taken_at: chrono::DateTime::from_timestamp(1_800_000_000, 0)
                .unwrap_or_default()
                .naive_utc(),
            took: 0.01,
            certificates: vec![],
            keys_by_status: vec![("active".into(), 3)],
            keys_expiring: vec![("7d".into(), 1)],
            verifications_valid: 5,
            refusals_last_hour: vec![],
            jobs: vec![],
            outbox_by_status: vec![],
            outbox_oldest_pending: None,
            drift_open: 0,
            drift_events_last_day: vec![],
        };
        let counters = JobCounters::default();
        counters.record("expire-keys", "ok", 2);
        let om = render(&snap, &counters, Format::OpenMetrics);
        assert!(om.contains("# TYPE keywarden_job_runs counter\n"));
        assert!(om.contains("keywarden_job_runs_total{job=\"expire-keys\",outcome=\"ok\"} 1\n"));
        assert!(om.ends_with("# EOF\n"));
        let text = render(&snap, &counters, Format::Prometheus);
        assert!(text.contains("# TYPE keywarden_job_runs_total counter\n"));
        assert!(!text.contains("# EOF"));
        assert!(text.contains("keywarden_keys{status=\"active\"} 3\n"));
    }
}
