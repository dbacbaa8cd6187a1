//! The `hapair` binary: every hapair process runs from this one image.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs an application as an active/standby pair on Kubernetes.
#[derive(Parser)]
#[command(name = "hapair", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: watch pairs and keep exactly one member active.
    Operator,
    /// Run the member sidecar: status endpoint, health check, Lease renewal.
    Agent,
    /// Reconcile a returning member's files with the active member's (run as a Job).
    Resync,
    /// Run a split-brain repair step (run as a Job).
    Repair,
    /// Print the HighAvailabilityPair CustomResourceDefinition as YAML.
    Crd {
        /// Print the API reference (Markdown) instead.
        #[arg(long)]
        reference: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let not_yet = |name: &str| {
        eprintln!("hapair {name}: not implemented yet");
        ExitCode::FAILURE
    };
    match cli.command {
        Command::Crd { reference } => {
            let text = if reference { hapair::api::reference::markdown() } else { hapair::api::crd_yaml() };
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hapair crd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Operator => not_yet("operator"),
        Command::Agent => not_yet("agent"),
        Command::Resync => not_yet("resync"),
        Command::Repair => not_yet("repair"),
    }
}
