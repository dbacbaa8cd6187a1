//! `hapair resync`: the program of the resync Job `<pair>-resync-<epoch>`.
//!
//! It drives the target member's agent over the pair's mTLS: checks that
//! the target is a standby, hands it the order (`POST /v1/sync/resync`),
//! and follows the agent's report until the resync is done. The target
//! pulls from the active member itself, so every file moves once, agent to
//! agent; the Job holds no data and needs no API access.
//!
//! Idempotent and resumable: the plan is computed afresh from both sides'
//! files on every run, so a run killed mid-copy and run again finishes the
//! job, and a second run finds nothing to do. The outcome is printed, and
//! written as JSON to the termination log, where the operator reads it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::Method;

use crate::api::{ConflictRule, Member, OnlyOnTarget, Role};
use crate::http::{self, Target};
use crate::proto::{AgentStatus, ResyncOrder, ResyncReport};
use crate::tls;

/// Exit code for a wrong call (clap uses 2 as well).
pub const USAGE: u8 = 2;

#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// The pair (names the target's certificate).
    #[arg(long, env = "HAPAIR_PAIR")]
    pub pair: String,
    #[arg(long, env = "HAPAIR_NAMESPACE")]
    pub namespace: String,
    /// The member whose files are reconciled with the active member's.
    #[arg(long, env = "HAPAIR_TARGET")]
    pub target: Member,
    /// Its agent's address (`IP:PORT`).
    #[arg(long, env = "HAPAIR_TARGET_ADDRESS")]
    pub target_address: SocketAddr,
    /// Directory with `ca.crt`, `tls.crt` and `tls.key`: a client identity
    /// from the pair's CA.
    #[arg(long, env = "HAPAIR_TLS_DIR", default_value = "/var/run/hapair-tls")]
    pub tls_dir: PathBuf,
    /// Names the quarantine directory (`.hapair/quarantine/<label>/`) and the report.
    #[arg(long, env = "HAPAIR_RESYNC_LABEL")]
    pub label: String,
    /// Files only on the target: Quarantine, Delete or CopyBack.
    #[arg(long, env = "HAPAIR_ONLY_ON_TARGET", default_value = "Quarantine", value_parser = parse_enum::<OnlyOnTarget>)]
    pub only_on_target: OnlyOnTarget,
    /// Files on both sides that differ: SourceWins or NewestWins.
    #[arg(long, env = "HAPAIR_CONFLICT", default_value = "SourceWins", value_parser = parse_enum::<ConflictRule>)]
    pub conflict: ConflictRule,
    /// The members' clocks agree within the pair's limit (NewestWins is
    /// honoured only then; otherwise it falls back to SourceWins).
    #[arg(long, env = "HAPAIR_CLOCKS_AGREE")]
    pub clocks_agree: bool,
    /// Reconcile every directory, not only those that diverged.
    #[arg(long, env = "HAPAIR_FULL")]
    pub full: bool,
    /// Compute and print the plan; change nothing.
    #[arg(long, env = "HAPAIR_DRY_RUN")]
    pub dry_run: bool,
    /// Give up (and fail, so the Job retries) after this long.
    #[arg(long, env = "HAPAIR_TIMEOUT_SECONDS", default_value = "900")]
    pub timeout_seconds: u64,
    /// Where the outcome is written as JSON for the operator.
    #[arg(long, env = "HAPAIR_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

/// Parses an API enum by its name as written in the pair (`CopyBack`).
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| format!("unknown value {s:?}"))
}

impl Config {
    pub fn order(&self) -> ResyncOrder {
        ResyncOrder {
            label: self.label.clone(),
            only_on_target: self.only_on_target,
            conflict: self.conflict,
            clocks_agree: self.clocks_agree,
            dry_run: self.dry_run,
            full: self.full,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error("the label must be a plain name (letters, digits, '-', '.', '_'), got {0:?}")]
    Label(String),
    #[error("cannot read the client identity in {0}: {1}")]
    Identity(String, String),
    #[error("{0} is {1:?}, not a standby: a resync never writes into the serving member")]
    NotStandby(Member, Role),
    #[error("{target} did not finish within {secs}s ({last})")]
    Timeout { target: Member, secs: u64, last: String },
}

/// A label is a directory name under `.hapair/quarantine/`.
pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 100
        && label != "."
        && label != ".."
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Runs the resync; the outcome is printed and written to the termination log.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    if !valid_label(&config.label) {
        return Err(ResyncError::Label(config.label.clone()).into());
    }
    let read = |f: &str| {
        std::fs::read_to_string(config.tls_dir.join(f))
            .map_err(|e| ResyncError::Identity(config.tls_dir.display().to_string(), format!("{f}: {e}")))
    };
    let id = tls::Identity { ca: read("ca.crt")?, cert: read("tls.crt")?, key: read("tls.key")? };
    let target = Target {
        addr: config.target_address,
        server_name: tls::server_name(&tls::member_server_name(config.target, &config.pair, &config.namespace))?,
        tls: tls::client_config(&id)?,
    };
    let order = config.order();
    let deadline = Instant::now() + Duration::from_secs(config.timeout_seconds);
    let mut last: String;
    let mut said = String::new();
    // The order, once the target answers as a standby.
    let since = loop {
        match http::get_json::<AgentStatus>(&target, "/v1/status", Duration::from_secs(5)).await {
            Ok(s) if s.role == Role::Standby => {
                match http::call(
                    &target,
                    Method::POST,
                    &format!("/v1/sync/resync?{}", order.to_query()),
                    Duration::from_secs(5),
                )
                .await
                {
                    Ok(_) => break s.wall_clock,
                    Err(e) => last = format!("ordering: {e}"),
                }
            }
            Ok(s) if s.role == Role::Active => return Err(ResyncError::NotStandby(config.target, s.role).into()),
            Ok(s) => last = format!("{} is {:?}", config.target, s.role),
            Err(e) => last = format!("status: {e}"),
        }
        waiting(&mut said, &last);
        if Instant::now() >= deadline {
            return Err(ResyncError::Timeout { target: config.target, secs: config.timeout_seconds, last }.into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "resync {}: {} of {}/{} ({}), ordered",
        order.label,
        config.target,
        config.namespace,
        config.pair,
        if order.dry_run { "dry run" } else { "changes files" }
    );
    // Its report: this run's (started after the order), done.
    loop {
        match http::get_json::<AgentStatus>(&target, "/v1/status", Duration::from_secs(5)).await {
            Ok(s) => {
                let report = s
                    .sync
                    .as_ref()
                    .and_then(|y| y.resync_report(&order.label).cloned())
                    .filter(|r| r.dry_run == order.dry_run && r.started_at >= since);
                match report {
                    Some(r) if r.done => {
                        print!("{}", describe(&r));
                        let _ = std::fs::write(&config.termination_log, outcome_json(&r));
                        return Ok(());
                    }
                    Some(r) => last = format!("running: {:?}", r.summary),
                    None if s.role != Role::Standby => {
                        return Err(ResyncError::NotStandby(config.target, s.role).into());
                    }
                    None => last = "waiting for the target's next sync round".into(),
                }
            }
            Err(e) => last = format!("status: {e}"),
        }
        waiting(&mut said, &last);
        if Instant::now() >= deadline {
            return Err(ResyncError::Timeout { target: config.target, secs: config.timeout_seconds, last }.into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tells the Job's log what the program waits for, once per change (the
/// counts of a running resync change often: those only every line's start).
fn waiting(said: &mut String, now: &str) {
    let key = now.split(':').next().unwrap_or(now);
    if said.split(':').next() != Some(key) || said.is_empty() {
        eprintln!("waiting: {now}");
        *said = now.to_string();
    }
}

/// The report as people read it: counts, warnings, and for a dry run the
/// first actions of the plan.
pub fn describe(r: &ResyncReport) -> String {
    let s = &r.summary;
    let took = r.finished_at.map(|f| (f - r.started_at).num_milliseconds().max(0)).unwrap_or(0);
    let mut out = format!(
        "{} {}: {} copied, {} updated, {} quarantined, {} deleted, {} copied back, {} conflicts, {} bytes, {} ms\n",
        r.label,
        if r.dry_run { "would do" } else { "done" },
        s.copies,
        s.updates,
        s.quarantines,
        s.deletions,
        s.copy_backs,
        s.conflicts,
        s.bytes,
        took
    );
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    for a in &r.actions {
        out.push_str(&format!("  {a}\n"));
    }
    out
}

/// The report as the operator reads it from the termination log (at most
/// 4 KiB, the kubelet's limit: the list of actions is cut first).
pub fn outcome_json(r: &ResyncReport) -> String {
    let mut r = r.clone();
    loop {
        let text = serde_json::to_string(&r).unwrap_or_default();
        if text.len() <= 4096 || (r.actions.is_empty() && r.warnings.is_empty()) {
            return text;
        }
        if r.actions.pop().is_none() {
            r.warnings.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::plan::Summary;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = ["resync", "--pair", "db", "--namespace", "ns", "--target", "secondary"];
        let args = base.iter().chain(["--target-address", "10.0.0.2:7443", "--label", "resync-3"].iter()).chain(extra);
        Cli::try_parse_from(args).map(|c| c.config)
    }

    #[test]
    fn the_command_line_becomes_the_order_and_wrong_calls_are_refused() {
        let c = parse(&["--only-on-target", "CopyBack", "--conflict", "NewestWins", "--dry-run"]).unwrap();
        let o = c.order();
        assert_eq!(
            (o.only_on_target, o.conflict, o.dry_run, o.full),
            (OnlyOnTarget::CopyBack, ConflictRule::NewestWins, true, false)
        );
        assert_eq!(c.target, Member::Secondary);
        let d = parse(&[]).unwrap().order();
        assert_eq!(
            (d.only_on_target, d.conflict, d.clocks_agree),
            (OnlyOnTarget::Quarantine, ConflictRule::SourceWins, false)
        );
        for bad in [&["--only-on-target", "Keep"][..], &["--conflict", "newest"], &["--target", "tertiary"]] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["resync", "--pair", "db"]).is_err(), "missing arguments");
    }

    #[test]
    fn labels_are_plain_directory_names() {
        for ok in ["resync-3", "req.a_1"] {
            assert!(valid_label(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(101)] {
            assert!(!valid_label(bad), "{bad}");
        }
    }

    #[test]
    fn the_outcome_fits_the_termination_log_and_says_what_was_done() {
        let now = chrono::Utc::now();
        let r = ResyncReport {
            label: "resync-3".into(),
            dry_run: true,
            done: true,
            started_at: now,
            finished_at: Some(now + chrono::Duration::milliseconds(1500)),
            summary: Summary { copies: 2, quarantines: 1, bytes: 10, ..Default::default() },
            warnings: vec!["NewestWins refused: clocks disagree".into()],
            actions: (0..500).map(|i| format!("copy dir/file-{i}.txt")).collect(),
        };
        let text = describe(&r);
        assert!(text.starts_with("resync-3 would do: 2 copied, 0 updated, 1 quarantined"), "{text}");
        assert!(
            text.contains("1500 ms")
                && text.contains("warning: NewestWins refused")
                && text.contains("  copy dir/file-0.txt")
        );
        let json = outcome_json(&r);
        assert!(json.len() <= 4096);
        let back: ResyncReport = serde_json::from_str(&json).unwrap();
        assert_eq!((back.summary, back.warnings), (r.summary, r.warnings));
        assert!(!back.actions.is_empty() && back.actions.len() < 500);
    }
}
