//! Shell completion for `kubectl hapair`, the way kubectl (1.26 and later)
//! completes a plugin's arguments: kubectl's own completion script (bash,
//! zsh, fish or PowerShell, from `kubectl completion SHELL`) runs an
//! executable named `kubectl_complete-hapair` with the words typed after
//! `kubectl hapair`, the last one being the word to complete, and reads one
//! candidate per line (a tab, then its description) and then
//! `:<directive>` — the protocol of cobra's `__complete`, which kubectl
//! speaks itself. `kubectl hapair __complete WORDS…` answers it (read before
//! the command line is parsed, so that `-n` and the like among the words are
//! words, not flags); `kubectl hapair completion` prints the two-line
//! `kubectl_complete-hapair` to put on the PATH.
//!
//! Commands, flags, members and output formats come from the command line's
//! own definition, so they cannot drift from it; pair names, namespaces and
//! contexts from the cluster and the kubeconfig (a cluster that does not
//! answer within two seconds gives no candidates, never an error).

use clap::{Arg, CommandFactory};

use super::Cli;

/// Cobra's directive: no file names offered after the candidates.
const NO_FILE_COMP: u32 = 4;
/// Cobra's directive: the shell's default (file names) completes the word.
const DEFAULT: u32 = 0;

/// What the word being completed can be.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    /// These candidates, with their descriptions.
    Fixed(Vec<(String, String)>),
    /// The names of the pairs in the namespace given on the command line
    /// (or the context's).
    Pairs,
    Namespaces,
    Contexts,
    /// A file name (the shell completes it).
    File,
    /// A value nobody can guess (a port).
    Nothing,
}

/// The namespace, context and kubeconfig the typed words name, for the
/// candidates that come from the cluster.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// What completes `to_complete` after `words` (the words after
/// `kubectl hapair`), from the command line's definition alone.
pub fn want(words: &[String], to_complete: &str) -> (Want, Scope) {
    let mut root = Cli::command();
    root.build();
    let mut cmd = &root;
    let mut scope = Scope::default();
    let mut positionals = 0;
    let mut value_for: Option<&Arg> = None;
    for word in words {
        if let Some(arg) = value_for.take() {
            remember(&mut scope, arg, word);
            continue;
        }
        if let Some((arg, inline)) = flag(cmd, word) {
            match inline {
                Some(v) => remember(&mut scope, arg, &v),
                None if arg.get_action().takes_values() => value_for = Some(arg),
                None => {}
            }
        } else if word.starts_with('-') {
            // A flag this command does not have: nothing sensible follows.
        } else if positionals == 0
            && let Some(sub) = cmd.find_subcommand(word).filter(|_| std::ptr::eq(cmd, &root))
        {
            cmd = sub;
        } else {
            positionals += 1;
        }
    }
    if let Some(arg) = value_for {
        return (values(arg), scope);
    }
    if to_complete.starts_with('-') {
        let mut out = Vec::new();
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let help = help.lines().next().unwrap_or_default().to_string();
            if let Some(long) = arg.get_long() {
                out.push((format!("--{long}"), help.clone()));
            }
            if let Some(short) = arg.get_short()
                && !to_complete.starts_with("--")
            {
                out.push((format!("-{short}"), help));
            }
        }
        return (Want::Fixed(out), scope);
    }
    if std::ptr::eq(cmd, &root) {
        let subs = root
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| (s.get_name().to_string(), s.get_about().map(|a| a.to_string()).unwrap_or_default()))
            .collect();
        return (Want::Fixed(subs), scope);
    }
    match cmd.get_positionals().nth(positionals) {
        Some(arg) if arg.get_id() == "name" => (Want::Pairs, scope),
        Some(arg) => (values(arg), scope),
        None => (Want::Nothing, scope),
    }
}

/// The flag `word` names in `cmd`, and its value if given inline
/// (`--output=json`, `-ojson`).
fn flag<'a>(cmd: &'a clap::Command, word: &str) -> Option<(&'a Arg, Option<String>)> {
    if let Some(long) = word.strip_prefix("--") {
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (long, None),
        };
        return cmd.get_arguments().find(|a| a.get_long() == Some(name)).map(|a| (a, inline));
    }
    let mut chars = word.strip_prefix('-')?.chars();
    let short = chars.next()?;
    let rest: String = chars.collect::<String>();
    let arg = cmd.get_arguments().find(|a| a.get_short() == Some(short))?;
    let inline = (!rest.is_empty()).then(|| rest.trim_start_matches('=').to_string());
    Some((arg, inline))
}

fn remember(scope: &mut Scope, arg: &Arg, value: &str) {
    match arg.get_id().as_str() {
        "namespace" => scope.namespace = Some(value.to_string()),
        "context" => scope.context = Some(value.to_string()),
        "kubeconfig" => scope.kubeconfig = Some(value.into()),
        _ => {}
    }
}

/// The values an argument takes.
fn values(arg: &Arg) -> Want {
    match arg.get_id().as_str() {
        "namespace" => return Want::Namespaces,
        "context" => return Want::Contexts,
        "kubeconfig" => return Want::File,
        // Parsed by the API's own `Member`, so clap does not list them.
        "member" | "keep" => {
            return Want::Fixed(crate::api::Member::BOTH.iter().map(|m| (m.to_string(), String::new())).collect());
        }
        _ => {}
    }
    let possible = arg.get_possible_values();
    if possible.is_empty() {
        return Want::Nothing;
    }
    Want::Fixed(
        possible
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| (v.get_name().to_string(), v.get_help().map(|h| h.to_string()).unwrap_or_default()))
            .collect(),
    )
}

/// The answer kubectl reads: the candidates that start with `to_complete`,
/// one per line, then the directive.
pub fn answer(candidates: &[(String, String)], to_complete: &str, directive: u32) -> String {
    let mut out = String::new();
    for (value, help) in candidates.iter().filter(|(v, _)| v.starts_with(to_complete)) {
        out.push_str(value);
        if !help.is_empty() {
            out.push('\t');
            out.push_str(help);
        }
        out.push('\n');
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

/// `kubectl hapair __complete WORDS… TO_COMPLETE`: the candidates, asking
/// the cluster (as the words' `--kubeconfig`, `--context` and `-n`, or
/// `KUBECONFIG` and the context's namespace) when the word is a pair or a
/// namespace.
pub async fn complete(args: &[String]) -> String {
    let (words, to_complete) = match args.split_last() {
        Some((last, words)) => (words, last.as_str()),
        None => (&[][..], ""),
    };
    let (want, scope) = want(words, to_complete);
    let global = super::GlobalArgs {
        namespace: scope.namespace,
        context: scope.context,
        kubeconfig: scope.kubeconfig.or_else(|| std::env::var_os("KUBECONFIG").map(Into::into)),
    };
    let names = |items: Vec<String>| items.into_iter().map(|n| (n, String::new())).collect::<Vec<_>>();
    let candidates = match want {
        Want::Fixed(c) => c,
        Want::File => return answer(&[], to_complete, DEFAULT),
        Want::Nothing => Vec::new(),
        Want::Contexts => names(contexts(&global)),
        Want::Pairs | Want::Namespaces => {
            let asked = super::run::names(&global, want == Want::Pairs);
            let listed = tokio::time::timeout(std::time::Duration::from_secs(2), asked).await;
            names(listed.ok().and_then(Result::ok).unwrap_or_default())
        }
    };
    answer(&candidates, to_complete, NO_FILE_COMP)
}

/// The contexts of the kubeconfig in use.
fn contexts(global: &super::GlobalArgs) -> Vec<String> {
    let config = match &global.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path),
        None => kube::config::Kubeconfig::read(),
    };
    config.map(|c| c.contexts.into_iter().map(|c| c.name).collect()).unwrap_or_default()
}

/// The script kubectl runs to complete `kubectl hapair`.
pub const SCRIPT: &str = "#!/bin/sh\n# Completion of `kubectl hapair` for kubectl's own shell completion.\nexec kubectl hapair __complete \"$@\"\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn want_of(line: &str) -> Want {
        let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
        let to_complete = if line.ends_with(' ') { String::new() } else { words.pop().unwrap_or_default() };
        want(&words, &to_complete).0
    }

    fn fixed(w: Want) -> Vec<String> {
        match w {
            Want::Fixed(c) => c.into_iter().map(|(v, _)| v).collect(),
            other => panic!("not fixed: {other:?}"),
        }
    }

    #[test]
    fn commands_flags_and_values_come_from_the_command_line_itself() {
        let commands = fixed(want_of(""));
        assert!(commands.contains(&"switchover".to_string()) && commands.contains(&"rotate-certificates".into()));
        assert!(!commands.iter().any(|c| c.starts_with("__")), "the hidden protocol command is not offered");
        assert_eq!(want_of("switchover "), Want::Pairs);
        assert_eq!(want_of("-n prod failover "), Want::Pairs);
        assert_eq!(fixed(want_of("go-standby db ")), ["primary", "secondary"]);
        assert_eq!(fixed(want_of("resolve db --keep ")), ["primary", "secondary"]);
        assert_eq!(fixed(want_of("status db -o ")), ["json", "yaml"]);
        assert_eq!(fixed(want_of("events db --output ")), ["json", "yaml"]);
        assert_eq!(want_of("status db -o json "), Want::Nothing);
        assert_eq!(want_of("status -n "), Want::Namespaces);
        assert_eq!(want_of("--context "), Want::Contexts);
        assert_eq!(want_of("status db --kubeconfig "), Want::File);
        let flags = fixed(want_of("failover db --"));
        for f in ["--force", "--wait", "--namespace", "--context", "--kubeconfig", "--help"] {
            assert!(flags.contains(&f.to_string()), "{f} in {flags:?}");
        }
        assert!(!flags.contains(&"-n".to_string()), "long flags only after --");
        assert!(fixed(want_of("failover db -")).contains(&"-n".to_string()));
    }

    #[test]
    fn the_namespace_and_context_typed_so_far_scope_the_cluster_lookups() {
        let words: Vec<String> = ["--context=staging", "-n", "prod", "switchover"].map(String::from).to_vec();
        let (w, scope) = want(&words, "d");
        assert_eq!(w, Want::Pairs);
        assert_eq!(scope, Scope { namespace: Some("prod".into()), context: Some("staging".into()), kubeconfig: None });
        let (_, scope) = want(&["status".into(), "-nprod".into()], "");
        assert_eq!(scope.namespace.as_deref(), Some("prod"));
    }

    #[test]
    fn the_answer_is_the_matching_candidates_then_the_directive() {
        let c = [("switchover".to_string(), "Planned handover".to_string()), ("status".into(), String::new())];
        assert_eq!(answer(&c, "sw", NO_FILE_COMP), "switchover\tPlanned handover\n:4\n");
        assert_eq!(answer(&c, "x", NO_FILE_COMP), ":4\n");
        assert_eq!(answer(&c, "", DEFAULT), "switchover\tPlanned handover\nstatus\n:0\n");
    }
}
