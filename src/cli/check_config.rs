//! `keywarden check-config`: validates without reading secrets, so it works
//! from `ExecReload=` and `ExecStartPre=`.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match super::load_config(path) {
        Ok(config) => {
            let problems = config.check_local();
            if !problems.is_empty() {
                for p in problems {
                    eprintln!("{p}");
                }
                return ExitCode::from(super::EXIT_CONFIG);
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
