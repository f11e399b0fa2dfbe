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

/// The man page (section 8: a system administration command and daemon).
pub fn manpage() -> ExitCode {
    let cmd = Cli::command().name("keywarden");
    let man = clap_mangen::Man::new(cmd).section("8").manual("keywarden manual");
    let mut buf = Vec::new();
    let written = man.render(&mut buf).and_then(|_| {
        // The exit codes and files, which clap does not know about.
        buf.extend_from_slice(EXTRA_SECTIONS.as_bytes());
        std::io::stdout().write_all(&buf)
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

const EXTRA_SECTIONS: &str = r#".SH "EXIT STATUS"
.TP
0
success
.TP
1
failure at run time (database unreachable, job failed)
.TP
2
bad command line
.TP
75
jobs run: skipped because another process holds the job's lock
.TP
78
bad configuration or unreadable secret
.SH FILES
.TP
/etc/keywarden/keywarden.toml
the configuration (readable by all; no secrets)
.TP
/var/lib/keywarden
the SQLite database and the mail outbox of the embedded default
.SH SIGNALS
.TP
SIGHUP
read and validate the configuration, then apply it or keep the old one
.TP
SIGTERM, SIGINT
stop after running jobs finish (a second signal stops at once)
.SH "SEE ALSO"
.BR systemctl (1),
.BR journalctl (1)
"#;
