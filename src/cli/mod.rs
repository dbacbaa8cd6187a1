//! Command line of the `kubectl hapair` plugin. Every operation writes the
//! pair's `spec.operation` (as `kubectl apply` would), so the plugin, plain
//! kubectl and GitOps drive a pair the same way.

pub mod complete;
mod history;
mod run;
pub mod ui;

use clap::{Args, Parser, Subcommand};

pub use history::{HistoryRow, events_screen, history_rows};
pub use run::{CliError, run, status_screen};

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

/// A machine-readable output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

impl Output {
    pub fn render<T: serde::Serialize>(self, value: &T) -> String {
        let out = match self {
            Output::Json => serde_json::to_string_pretty(value).map_err(|e| e.to_string()),
            Output::Yaml => serde_yaml::to_string(value).map_err(|e| e.to_string()),
        };
        // Only maps with string keys are rendered here: neither can fail.
        out.unwrap_or_else(|e| format!("cannot render: {e}"))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show a pair's members, roles, states and last transition.
    #[command(after_help = "Examples:\n  kubectl hapair status db -n prod\n  kubectl hapair status db -n prod -o yaml")]
    Status {
        name: String,
        /// Output format: the whole pair object, as `kubectl get -o`.
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Show a pair's transition history and Events, newest first.
    #[command(
        after_help = "Examples:\n  kubectl hapair events db -n prod\n  kubectl hapair events db -o json | jq '.[] | select(.source == \"transition\")'"
    )]
    Events {
        name: String,
        /// Output format: a list of rows (time, source, type, reason, from,
        /// to, epoch, message, count).
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Planned, zero-data-loss handover to the standby.
    #[command(after_help = "Examples:\n  kubectl hapair switchover db -n prod --wait")]
    Switchover {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Fail over to the standby now.
    #[command(
        after_help = "Examples:\n  kubectl hapair failover db -n prod --wait\n  kubectl hapair failover db --force   # even if the standby is behind"
    )]
    Failover {
        name: String,
        /// Skip the standby's health and sync checks (data may be missing).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Return the active role to the configured primary.
    #[command(after_help = "Examples:\n  kubectl hapair failback db -n prod --wait")]
    Failback {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Force a member to standby.
    #[command(after_help = "Examples:\n  kubectl hapair go-standby db primary --wait")]
    GoStandby {
        name: String,
        member: Member,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resolve a split brain by keeping one member's data.
    #[command(after_help = "Examples:\n  kubectl hapair resolve db --keep secondary --wait")]
    Resolve {
        name: String,
        #[arg(long)]
        keep: Member,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resync the standby's files from the active member.
    #[command(after_help = "Examples:\n  kubectl hapair resync db --dry-run\n  kubectl hapair resync db --wait")]
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
    #[command(after_help = "Examples:\n  kubectl hapair rotate-certificates db -n prod --wait")]
    RotateCertificates {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Maintenance mode: observe and report, change nothing.
    #[command(after_help = "Examples:\n  kubectl hapair pause db -n prod")]
    Pause { name: String },
    /// Leave maintenance mode.
    #[command(after_help = "Examples:\n  kubectl hapair resume db -n prod")]
    Resume { name: String },
    /// Remove HA: stop the standby (its claim is kept); the active serves
    /// alone (`spec.standby: Removed`, mode NotConfigured).
    #[command(after_help = "Examples:\n  kubectl hapair remove-standby db -n prod")]
    RemoveStandby { name: String },
    /// Add the standby back: it registers again (`spec.standby: Enabled`).
    #[command(after_help = "Examples:\n  kubectl hapair add-standby db -n prod")]
    AddStandby { name: String },
    /// Completion of `kubectl hapair` in kubectl's own shell completion
    /// (bash, zsh, fish, PowerShell; kubectl 1.26 or later): prints the
    /// `kubectl_complete-hapair` script to put on your PATH.
    #[command(
        after_help = "Examples:\n  kubectl hapair completion > ~/.local/bin/kubectl_complete-hapair && chmod +x ~/.local/bin/kubectl_complete-hapair\n  source <(kubectl completion bash)   # once per shell, as for kubectl itself"
    )]
    Completion,
    /// The Health Monitor page: states, events, history and the actions
    /// possible now, updated live, served on this machine only (it prints
    /// its address) and acting as your kubeconfig's user.
    #[command(
        after_help = "Examples:\n  kubectl hapair ui -n prod\n  kubectl hapair ui db --port 8080\n  kubectl hapair ui -A"
    )]
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
            Command::Completion => "completion",
        }
    }
}

/// A pair named apps/web with `status`, for the screens' tests.
#[cfg(test)]
pub(crate) fn test_pair(status: serde_json::Value) -> crate::api::HighAvailabilityPair {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "hapair.dev/v1alpha1", "kind": "HighAvailabilityPair",
        "metadata": {"name": "web", "namespace": "apps"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app"}]}},
                 "service": {"ports": [{"name": "http", "port": 80}]}},
        "status": status,
    }))
    .unwrap()
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
    fn every_command_shows_an_example_of_itself_in_its_help() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name();
            let help = sub.clone().render_long_help().to_string();
            let example = format!("  kubectl hapair {name} ");
            assert!(help.contains("Examples:") && help.contains(&example), "{name}'s --help: {help}");
            // Each example parses as the command it shows.
            for line in help.lines().filter(|l| l.starts_with(&example)) {
                let words: Vec<&str> = line.split(['#', '|', '>', '&']).next().unwrap().split_whitespace().collect();
                let argv = [&["kubectl-hapair"], &words[2..]].concat();
                Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line}: {e}"));
            }
        }
    }

    #[test]
    fn output_formats_are_checked() {
        for command in ["status", "events"] {
            let err = Cli::try_parse_from(["kubectl-hapair", command, "db", "-o", "xml"]).unwrap_err();
            assert!(err.to_string().contains("[possible values: json, yaml]"), "{err}");
            let cli = Cli::try_parse_from(["kubectl-hapair", command, "db", "-o", "yaml"]).unwrap();
            assert!(matches!(
                cli.command,
                Command::Status { output: Some(Output::Yaml), .. } | Command::Events { output: Some(Output::Yaml), .. }
            ));
        }
    }
}
