//! `keywarden completions SHELL` and the man page, both generated from the
//! command definitions so they never drift from `--help`.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use super::{Cli, EXIT_FAILURE};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn completions(shell: Shell) -> ExitCode {
    let mut cmd = Cli::command();
    // Generated into memory: the generator panics on a failed write (a
    // closed pipe), writing ourselves does not.
    let mut buf = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "keywarden", &mut buf);
    let mut out = std::io::stdout().lock();
    match out.write_all(&buf).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

/// The man page (section 8: a system administration command and daemon):
/// one page with every command in it, so it names no page that is not
/// shipped. clap_mangen renders the title, name, description and global
/// options; the synopsis, the commands and the rest are written here.
pub fn manpage() -> ExitCode {
    let mut cmd = Cli::command().name("keywarden");
    // Built, so that every argument knows how many values it takes.
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("keywarden manual");
    let mut buf = Vec::new();
    let rendered = man
        .render_title(&mut buf)
        .and_then(|_| man.render_name_section(&mut buf))
        .and_then(|_| {
            buf.extend_from_slice(SYNOPSIS.as_bytes());
            man.render_description_section(&mut buf)
        })
        .and_then(|_| man.render_options_section(&mut buf));
    let written = rendered.and_then(|_| {
        buf.extend_from_slice(b".SH COMMANDS\n");
        for sub in cmd.get_subcommands() {
            commands_section(&mut buf, "keywarden", sub);
        }
        // The exit codes, files and signals, which clap does not know about.
        buf.extend_from_slice(EXTRA_SECTIONS.as_bytes());
        std::io::stdout().write_all(&buf)
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

const SYNOPSIS: &str =
    ".SH SYNOPSIS\n\\fBkeywarden\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]\n\
.br\n\\fBkeywarden\\fR \\fB\\-\\-help\\fR | \\fB\\-\\-version\\fR\n";

/// Escapes text for roff: backslashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

/// One command (and, below it, each of its own), as a subsection with its
/// usage line, what it does and its arguments.
fn commands_section(buf: &mut Vec<u8>, parent: &str, cmd: &clap::Command) {
    if cmd.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", cmd.get_name());
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| c.get_name() != "help").collect();
    if subs.is_empty() {
        let mut leaf = cmd.clone().bin_name(path.clone());
        let usage = leaf.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        buf.extend_from_slice(format!(".SS \"{}\"\n", roff(usage)).as_bytes());
    } else {
        buf.extend_from_slice(format!(".SS \"{} COMMAND\"\n", roff(&path)).as_bytes());
    }
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    for para in about.split("\n\n") {
        buf.extend_from_slice(format!(".PP\n{}\n", roff(para.trim())).as_bytes());
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set()) {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" {
            continue;
        }
        let values = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| id.to_ascii_uppercase());
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let name = match (arg.get_long(), arg.get_short()) {
            (Some(l), Some(s)) => format!("-{s}, --{l}"),
            (Some(l), None) => format!("--{l}"),
            (None, Some(s)) => format!("-{s}"),
            (None, None) => values.clone(),
        };
        let shown = if (arg.get_long().is_some() || arg.get_short().is_some()) && takes_value {
            format!("\\fB{}\\fR \\fI{}\\fR", roff(&name), roff(&values))
        } else if arg.get_long().is_some() || arg.get_short().is_some() {
            format!("\\fB{}\\fR", roff(&name))
        } else {
            format!("\\fI{}\\fR", roff(&name))
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        buf.extend_from_slice(format!(".TP\n{shown}\n{}\n", roff(&help)).as_bytes());
    }
    for sub in subs {
        commands_section(buf, &path, sub);
    }
}

const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
0
success
.TP
1
failure at run time (database unreachable, job failed, a certificate failing)
.TP
2
bad command line
.TP
3
perms scan: a path violates the permission policy
.TP
75
jobs run, certs renew: skipped because another process holds the job's lock
.TP
78
bad configuration or unreadable secret
.TP
128+n
run: stopped at once by a second stop signal n while jobs were still running
.SH FILES
.TP
/etc/keywarden/keywarden.toml
the configuration (readable by all; no secrets)
.TP
/var/lib/keywarden
the SQLite database and the mail outbox of the embedded default
.SH ENVIRONMENT
.TP
KEYWARDEN_CONFIG
the configuration file when \-\-config is not given
.SH SIGNALS
.TP
SIGHUP
read and validate the configuration, then apply it or keep the old one
.TP
SIGTERM, SIGINT
stop after running jobs finish (a second signal stops at once)
.SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1),
.BR systemd-sysusers (8),
.BR systemd-tmpfiles (8)
"#;
