//! Running an admin's hook: an argument list (never through a shell), with
//! a timeout after which it is killed, its output kept short for the log.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The first bytes of a hook's output kept for messages.
const OUTPUT_KEPT: usize = 2000;

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("empty command")]
    Empty,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s and was killed", .after.as_secs())]
    TimedOut { program: String, after: Duration },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed; its output (cut short) says why.
    #[error("{program} exited with {status}: {output}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Runs `argv` with `env` added; `Ok(output)` when it exits 0 in time.
pub fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<String, HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Empty);
    };
    let program_name = || program.to_string();
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HookError::Spawn {
            program: program_name(),
            source,
        })?;
    // Drain both pipes on threads, so a chatty hook cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::TimedOut {
                    program: program_name(),
                    after: timeout,
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                return Err(HookError::Wait {
                    program: program_name(),
                    source,
                })
            }
        }
    };
    let mut output = stdout.join().unwrap_or_default();
    output.extend(stderr.join().unwrap_or_default());
    output.truncate(OUTPUT_KEPT);
    let text = String::from_utf8_lossy(&output).trim().to_string();
    if status.success() {
        Ok(text)
    } else {
        Err(HookError::Failed {
            program: program_name(),
            status,
            output: text,
        })
    }
}
