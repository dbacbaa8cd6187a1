//! The `hapair` binary: every hapair process runs from this one image.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs an application as an active/standby pair on Kubernetes.
#[derive(Parser)]
#[command(name = "hapair", version, about)]
struct Cli {
    /// Log level (or set RUST_LOG).
    #[arg(long, global = true, env = "HAPAIR_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log one JSON object per line.
    #[arg(long, global = true, env = "HAPAIR_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: watch pairs and keep exactly one member active.
    Operator(hapair::operator::Config),
    /// Run the member sidecar: status endpoint, health check, Lease renewal.
    Agent(hapair::agent::Config),
    /// Reconcile a member's files with the active member's (the resync Job's program).
    Resync(hapair::resync::Config),
    /// Print the HighAvailabilityPair CustomResourceDefinition as YAML.
    Crd {
        /// Print the API reference (Markdown) instead.
        #[arg(long)]
        reference: bool,
    },
}

fn run_async<F>(level: &str, json: bool, name: &str, fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    hapair::telemetry::init(level, json);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hapair {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hapair {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Operator(config) => run_async(&cli.log_level, cli.log_json, "operator", hapair::operator::run(config)),
        Command::Agent(config) => run_async(&cli.log_level, cli.log_json, "agent", hapair::agent::run(config)),
        Command::Resync(config) => run_async(&cli.log_level, cli.log_json, "resync", hapair::resync::run(config)),
    }
}
