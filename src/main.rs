//! The `groxy` command: one binary, several jobs (see `groxy --help`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = groxy::cli::Cli::parse();
    match groxy::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("groxy: {e}");
            ExitCode::FAILURE
        }
    }
}
