//! `kubectl hapair`: the kubectl plugin for HighAvailabilityPairs.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = hapair::cli::Cli::parse();
    eprintln!("kubectl hapair {}: not implemented yet", cli.command.name());
    ExitCode::FAILURE
}
