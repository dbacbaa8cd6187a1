//! Command line of the `kubectl hapair` plugin. Every operation writes the
//! pair's `spec.operation` (as `kubectl apply` would), so the plugin, plain
//! kubectl and GitOps drive a pair the same way.

mod run;
pub mod ui;

use clap::{Args, Parser, Subcommand};

pub use run::{CliError, events_screen, run, status_screen};

use crate::api::Member;

/// Operate HighAvailabilityPairs.
#[derive(Parser, Debug)]
#[command(name = "kubectl-hapair", bin_name = "kubectl hapair", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The usual kubectl connection flags.
#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Namespace of the pair (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file.
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Follow an operation to its outcome.
#[derive(Args, Debug)]
pub struct Wait {
    /// Wait for the operation's outcome; exit non-zero if refused or failed.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a pair's members, roles, states and last transition.
    Status {
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_parser = ["json", "yaml"])]
        output: Option<String>,
    },
    /// Show a pair's transition history and Events, newest first.
    Events { name: String },
    /// Planned, zero-data-loss handover to the standby.
    Switchover {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Fail over to the standby now.
    Failover {
        name: String,
        /// Skip the standby's health and sync checks (data may be missing).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Return the active role to the configured primary.
    Failback {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Force a member to standby.
    GoStandby {
        name: String,
        member: Member,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resolve a split brain by keeping one member's data.
    Resolve {
        name: String,
        #[arg(long)]
        keep: Member,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resync the standby's files from the active member.
    Resync {
        name: String,
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Replace the pair's CA and every certificate now (the manuals' key
    /// reset), with an overlap: nothing restarts or fails over. Takes a few
    /// minutes: each step waits for both agents to load the one before.
    RotateCertificates {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Maintenance mode: observe and report, change nothing.
    Pause { name: String },
    /// Leave maintenance mode.
    Resume { name: String },
    /// Remove HA: stop the standby (its claim is kept); the active serves
    /// alone (`spec.standby: Removed`, mode NotConfigured).
    RemoveStandby { name: String },
    /// Add the standby back: it registers again (`spec.standby: Enabled`).
    AddStandby { name: String },
    /// The Health Monitor page: states, events, history and the actions
    /// possible now, updated live, served on this machine only (it prints
    /// its address) and acting as your kubeconfig's user.
    Ui {
        /// One pair (default: every pair in the namespace).
        name: Option<String>,
        /// Every pair in every namespace you may list.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Port on 127.0.0.1 (default: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where the operator runs (its logs go into the logs download).
        #[arg(long, default_value = "hapair-system")]
        operator_namespace: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status { .. } => "status",
            Command::Events { .. } => "events",
            Command::Switchover { .. } => "switchover",
            Command::Failover { .. } => "failover",
            Command::Failback { .. } => "failback",
            Command::GoStandby { .. } => "go-standby",
            Command::Resolve { .. } => "resolve",
            Command::Resync { .. } => "resync",
            Command::RotateCertificates { .. } => "rotate-certificates",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::RemoveStandby { .. } => "remove-standby",
            Command::AddStandby { .. } => "add-standby",
            Command::Ui { .. } => "ui",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_standby_takes_a_configured_member() {
        let cli = Cli::try_parse_from(["kubectl-hapair", "-n", "prod", "go-standby", "db", "secondary"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("prod"));
        assert!(matches!(cli.command, Command::GoStandby { member: Member::Secondary, .. }));
    }

    #[test]
    fn an_unknown_member_is_refused_with_the_choices() {
        let err = Cli::try_parse_from(["kubectl-hapair", "go-standby", "db", "tertiary"]).unwrap_err();
        assert!(err.to_string().contains("expected primary or secondary"), "{err}");
    }

    #[test]
    fn status_output_format_is_checked() {
        assert!(Cli::try_parse_from(["kubectl-hapair", "status", "db", "-o", "xml"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-hapair", "status", "db", "-o", "yaml"]).is_ok());
    }
}
