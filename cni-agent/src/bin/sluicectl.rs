//! `sluicectl`: thin shell over `cni_agent::cli`.

use std::io::Write as _;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cni_agent::cli::Cli::parse();
    match cni_agent::cli::run(&cli) {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sluicectl: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
