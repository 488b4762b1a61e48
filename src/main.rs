//! The pgherd command: `pgherd --config FILE` runs in the foreground; `--check` validates and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use pgherd::config::Config;

const USAGE: &str = "usage: pgherd [--check] --config FILE\n\n  --config FILE  the TOML configuration\n  --check        validate the configuration and exit\n";

fn main() -> ExitCode {
    let mut config_path: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => config_path = args.next().map(PathBuf::from),
            "--check" => check = true,
            "--help" | "-h" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("pgherd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => {
                eprint!("pgherd: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(path) = config_path else {
        eprint!("pgherd: --config FILE is required\n{USAGE}");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pgherd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    pgherd::log::set_level(config.log_level);
    if check {
        pgherd::shard::check(&config);
        return ExitCode::SUCCESS;
    }
    // A panic ends the one client (or task) it happened in, not the process: see src/isolation.rs.
    pgherd::isolation::install_panic_hook();
    match pgherd::shard::start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            pgherd::error!("{e}");
            ExitCode::from(1)
        }
    }
}
