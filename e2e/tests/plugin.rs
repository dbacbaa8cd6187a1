//! The plugin as users get it: its krew manifest (`.krew.yaml`) installed
//! by krew itself (the template rendered as krew's release bot would for an
//! archive built by `deploy/krew/archive.sh`, `krew install --manifest
//! --archive` into a scratch krew root, the installed `kubectl-hapair` run
//! from there), and its shell completion through kubectl's own.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use common::{run, tool};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.krew.yaml` as the release bot renders it for `tag`, pointing at an
/// archive whose SHA-256 is `sha`.
fn render(tag: &str, sha: &str) -> String {
    let template = std::fs::read_to_string(repo().join(".krew.yaml")).unwrap();
    let mut out = String::new();
    for line in template.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let line = line.replace("{{ .TagName }}", tag);
        match line.trim().strip_prefix("{{addURIAndSha \"") {
            Some(rest) => {
                let uri = rest.split('"').next().unwrap();
                out.push_str(&format!("{indent}uri: {uri}\n{indent}sha256: {sha}\n"));
            }
            None => {
                assert!(!line.contains("{{"), "a template expression the test does not render: {line}");
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    out
}

fn archive(dir: &Path) -> (PathBuf, String) {
    // The test build's binary without its debug information, as a release
    // binary is (compressing hundreds of megabytes would be most of the
    // test's time).
    let bin = dir.join("kubectl-hapair");
    let (ok, _, err) = run(Command::new("strip").arg("-o").arg(&bin).arg(env!("CARGO_BIN_EXE_kubectl-hapair")));
    assert!(ok, "strip: {err}");
    let out = dir.join("kubectl-hapair_linux_amd64.tar.gz");
    let (ok, _, err) = run(Command::new(repo().join("deploy/krew/archive.sh")).arg(&bin).arg(&out));
    assert!(ok, "archive.sh: {err}");
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&out).unwrap()));
    (out, sha)
}

#[test]
fn the_krew_manifest_installs_the_plugin_with_krew() {
    let dir = tempdir();
    let (archive, sha) = archive(&dir);
    // The same binary gives the same archive: the manifest's SHA-256 holds.
    let (_, again) = self::archive(&dir.join("again"));
    assert_eq!(sha, again, "archive.sh is reproducible");

    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let manifest = dir.join("hapair.yaml");
    std::fs::write(&manifest, render(&tag, &sha)).unwrap();
    let root = dir.join("krew");
    let krew = || {
        let mut c = Command::new(tool("krew"));
        c.env("KREW_ROOT", &root).env("HOME", &dir).env_remove("KREW_OS").env_remove("KREW_ARCH");
        c
    };
    let (ok, out, err) = run(krew().args(["install", "--manifest"]).arg(&manifest).arg("--archive").arg(&archive));
    assert!(ok, "krew install: {out}{err}");
    // What `krew list` reads (it wants the central index, which this test
    // does not fetch): the install's receipt, as krew wrote it.
    let receipt = std::fs::read_to_string(root.join("receipts/hapair.yaml")).expect("krew's receipt");
    assert!(receipt.contains("name: hapair") && receipt.contains(&format!("version: {tag}")), "{receipt}");

    // What krew put on the user's PATH is the plugin, and it runs.
    let installed = root.join("bin/kubectl-hapair");
    let (ok, help, err) = run(Command::new(&installed).arg("--help"));
    assert!(ok && help.contains("Usage: kubectl hapair") && help.contains("switchover"), "{help}{err}");
    let (ok, version, _) = run(Command::new(&installed).arg("--version"));
    assert!(ok && version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // A manifest whose checksum does not match the archive is refused.
    let tampered = dir.join("tampered.yaml");
    let other = format!("{:x}", Sha256::digest(b"another archive"));
    std::fs::write(&tampered, render(&tag, &other)).unwrap();
    let mut fresh = krew();
    fresh.env("KREW_ROOT", dir.join("krew-tampered"));
    let (ok, out, err) = run(fresh.args(["install", "--manifest"]).arg(&tampered).arg("--archive").arg(&archive));
    let said = out + &err;
    assert!(!ok && said.contains("checksum does not match"), "a wrong checksum is refused: {said}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("hapair-plugin-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("again")).unwrap();
    dir
}

/// kubectl's own shell completion, run as users have it: `kubectl
/// completion bash` with bash-completion, the plugin and the
/// `kubectl_complete-hapair` script `kubectl hapair completion` prints on
/// the PATH, pairs on the testbed's API server.
#[tokio::test]
async fn kubectl_completes_the_plugins_commands_pairs_and_values() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let ns = common::TestNamespace::new(&client, "complete").await;
    let pairs = common::dynamic_pairs(&client, &ns.name);
    for name in ["db", "web"] {
        let pair = serde_json::from_value(common::minimal_pair(name)).unwrap();
        pairs.create(&Default::default(), &pair).await.expect("pair created");
    }

    let dir = tempdir().join("path");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kubectl-hapair"), dir.join("kubectl-hapair")).unwrap();
    let (ok, script, err) = run(Command::new(env!("CARGO_BIN_EXE_kubectl-hapair")).arg("completion"));
    assert!(ok && script.starts_with("#!/bin/sh"), "{script}{err}");
    let complete = dir.join("kubectl_complete-hapair");
    std::fs::write(&complete, script).unwrap();
    std::fs::set_permissions(&complete, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let kubectl_dir =
        PathBuf::from(std::env::var("HAPAIR_TESTBED_BIN").expect("HAPAIR_TESTBED_BIN (make chart-cluster)"));
    let path = format!("{}:{}:/usr/local/bin:/usr/bin:/bin", dir.display(), kubectl_dir.display());
    let env = |c: &mut Command| {
        c.env("PATH", &path).env("KUBECONFIG", common::kubeconfig_path()).env("HOME", dir.parent().unwrap());
    };

    // kubectl's protocol, which its bash, zsh, fish and PowerShell scripts
    // all call: `kubectl __complete hapair WORDS… WORD`.
    let candidates = |words: &[&str]| -> Vec<String> {
        let mut c = Command::new(kubectl_dir.join("kubectl"));
        env(c.arg("__complete").arg("hapair").args(words));
        let (ok, out, err) = run(&mut c);
        assert!(ok, "kubectl __complete hapair {words:?}: {err}");
        let (directive, lines) = out.trim_end().rsplit_once('\n').map(|(l, d)| (d, l)).unwrap_or((out.trim(), ""));
        assert!(directive.starts_with(':'), "a directive ends the answer: {out}");
        lines.lines().map(|l| l.split('\t').next().unwrap().to_string()).collect()
    };
    let commands = candidates(&[""]);
    assert!(["switchover", "failover", "events", "completion"].iter().all(|c| commands.contains(&c.to_string())));
    assert_eq!(candidates(&["-n", &ns.name, "switchover", ""]), ["db", "web"]);
    assert_eq!(candidates(&["--namespace", &ns.name, "status", "w"]), ["web"]);
    assert_eq!(candidates(&["go-standby", "db", ""]), ["primary", "secondary"]);
    assert_eq!(candidates(&["status", "db", "-o", ""]), ["json", "yaml"]);
    assert!(candidates(&["-n", ""]).contains(&ns.name), "namespaces from the cluster");
    assert!(candidates(&["failover", "db", "--f"]).contains(&"--force".to_string()));

    // In bash, through kubectl's completion script and bash-completion.
    let line = format!("kubectl hapair -n {} go-standby web ", ns.name);
    let bash = format!(
        r#"source /usr/share/bash-completion/bash_completion
source <(kubectl completion bash)
COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9
COMP_WORDS=({line} ""); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
__start_kubectl kubectl "" web
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let mut c = Command::new("bash");
    env(c.arg("-c").arg(&bash));
    let (ok, out, err) = run(&mut c);
    let got: Vec<&str> = out.lines().map(|l| l.split_whitespace().next().unwrap_or_default()).collect();
    assert!(ok && got == ["primary", "secondary"], "bash completed {line:?} as {out:?}: {err}");

    // In zsh, through `kubectl completion zsh` in an interactive zsh on a
    // pseudo-terminal, a tab typed after the line; what the completion
    // offers is caught on its way to `compadd`.
    let line = format!("kubectl hapair -n {} switchover ", ns.name);
    let zsh = format!(
        r#"zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='' RPROMPT=''"
zpty -w z 'autoload -U compinit && compinit -u -D'
zpty -w z 'source <(kubectl completion zsh)'
zpty -w z 'compadd() {{ local -a hits; builtin compadd -O hits "$@"; local h; for h in $hits; do print -r -- "<<$h>>"; done; builtin compadd "$@"; }}'
out=''
read_until() {{
  local end=$(( SECONDS + 20 ))
  while (( SECONDS < end )) && [[ $out != $~1 ]]; do
    zpty -r -t z chunk && out+=$chunk || sleep 0.1
  done
}}
zpty -w -n z '{line}'$'\t'
# The line is cleared only once the completion has offered something
# (typed ahead, it would cancel the completion).
read_until '*<<[a-z]*'
# What else it offers comes within the next moment.
sleep 1
while zpty -r -t z chunk; do out+=$chunk; done
zpty -w -n z $'\x15'
zpty -w z 'print END-OF-$((1+1))'
read_until '*END-OF-2*'
zpty -d z
print -r -- "$out""#
    );
    let mut c = Command::new("zsh");
    env(c.arg("-f").arg("-c").arg(&zsh));
    let (ok, out, err) = run(&mut c);
    // The typed definition of the catcher echoes `<<$h>>` too.
    let hits = out.split("<<").skip(1).filter_map(|s| s.split_once(">>").map(|(hit, _)| hit));
    let mut got: Vec<&str> = hits.filter(|h| *h != "$h").collect();
    got.sort_unstable();
    got.dedup();
    assert!(ok && got == ["db", "web"], "zsh completed {line:?} as {got:?}: {out:?} {err}");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}
