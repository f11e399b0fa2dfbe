//! `keywarden check-config`: validates without reading secrets, so it works
//! from `ExecReload=` and `ExecStartPre=`.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match super::load_config(path) {
        Ok(_) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
